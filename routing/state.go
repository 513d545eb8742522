// Package routing turns a datastore snapshot into the kernel state a host must have (routes,
// tunnel devices, VXLAN neighbours and FDB entries: SPEC §5) and keeps the kernel there.
//
// The package has two halves that meet at State. Desired is a pure function: snapshot,
// local facts and BGP-learned routes in, State out, with no netlink call, so every rule of
// SPEC §5 is tested by tables; a Planner returns the same States for a succession of
// snapshots at the cost of what changed between them. Kernel is the one owner of tabby's
// routes in the main table: it is given States with Set, and one goroutine (Run) diffs each
// against the record of what it really installed, applies the difference with netlink and
// repairs what others remove.
package routing

import (
	"bytes"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"

	"github.com/tabby-net/tabby/internal/ipprefix"
)

// Names and numbers fixed by SPEC §5.
const (
	// DeviceIPIP is the kernel's IP-in-IP fallback device; Calico uses it too.
	DeviceIPIP = "tunl0"
	// DeviceVXLAN is tabby's VXLAN device (Calico's is vxlan.calico).
	DeviceVXLAN = "vxlan.tabby"
	// VXLANVNI and VXLANPort are the VXLAN network identifier and UDP port, as Calico's.
	VXLANVNI  = 4096
	VXLANPort = 4789
	// IPIPOverhead and VXLANOverhead are what each encapsulation takes from the host MTU.
	IPIPOverhead  = 20
	VXLANOverhead = 50
	// DefaultProtocol is the route protocol number tabby writes on its routes ("proto tabby").
	DefaultProtocol = 95
	// ProtocolName is the name registered for the protocol number in rt_protos.d.
	ProtocolName = "tabby"
)

// RouteKind says why a route exists. Status counts installed routes by kind.
type RouteKind string

const (
	// KindIPIP is a route to a remote node through tunl0.
	KindIPIP RouteKind = "ipip"
	// KindVXLAN is a route to a remote node's VTEP through vxlan.tabby.
	KindVXLAN RouteKind = "vxlan"
	// KindDirect is an unencapsulated route to a remote node, on-link or through the
	// gateway the host uses to reach it.
	KindDirect RouteKind = "direct"
	// KindBlackhole is the blackhole of a block the local node owns: addresses of the block
	// that no workload uses are dropped here instead of following the default route.
	KindBlackhole RouteKind = "blackhole"
	// KindBGP is a route learned over BGP for a prefix outside every pool.
	KindBGP RouteKind = "bgp"
)

// Route is one route tabby wants in the main table. Every route carries tabby's protocol
// number and metric 0; Dst is the key (the kernel allows one such route per prefix).
type Route struct {
	Dst netip.Prefix
	// Blackhole makes the route drop its traffic; Gateway and Dev are then unset.
	Blackhole bool
	Gateway   netip.Addr
	Dev       string
	// OnLink tells the kernel the gateway is on Dev even though no connected route says so
	// (tunnel next hops, CrossSubnet next hops).
	OnLink bool
	// MTU is the route's mtu attribute (tunnel routes), 0 for none.
	MTU  int
	Kind RouteKind
}

// String renders the route as `ip route` prints it.
func (r Route) String() string {
	var b strings.Builder
	if r.Blackhole {
		b.WriteString("blackhole ")
	}
	b.WriteString(r.Dst.String())
	if r.Gateway.IsValid() {
		b.WriteString(" via ")
		b.WriteString(r.Gateway.String())
	}
	if r.Dev != "" {
		b.WriteString(" dev ")
		b.WriteString(r.Dev)
	}
	b.WriteString(" proto ")
	b.WriteString(ProtocolName)
	if r.OnLink {
		b.WriteString(" onlink")
	}
	if r.MTU > 0 {
		fmt.Fprintf(&b, " mtu %d", r.MTU)
	}
	return b.String()
}

// Neighbor is a permanent neighbour entry on vxlan.tabby: a remote node's VXLAN tunnel
// address and its VTEP MAC. Without it the kernel would ARP over the tunnel.
type Neighbor struct {
	IP  netip.Addr
	MAC net.HardwareAddr
}

// String renders the entry as `ip neigh` prints it.
func (n Neighbor) String() string {
	return fmt.Sprintf("%s dev %s lladdr %s PERMANENT", n.IP, DeviceVXLAN, n.MAC)
}

// FDBEntry tells vxlan.tabby which underlay address a VTEP MAC lives at.
type FDBEntry struct {
	MAC net.HardwareAddr
	Dst netip.Addr
}

// String renders the entry as `bridge fdb` prints it.
func (f FDBEntry) String() string {
	return fmt.Sprintf("%s dev %s dst %s self permanent", f.MAC, DeviceVXLAN, f.Dst)
}

// IPIPDevice is the desired configuration of tunl0.
type IPIPDevice struct {
	// Address is the node's IPIP tunnel address, configured as a /32.
	Address netip.Addr
	// MTU is host MTU − 20; 0 leaves the device's MTU alone (host MTU unknown).
	MTU int
}

// String renders the device in a compact `ip -d link` style.
func (d IPIPDevice) String() string {
	s := fmt.Sprintf("link %s ipip", DeviceIPIP)
	if d.MTU > 0 {
		s += fmt.Sprintf(" mtu %d", d.MTU)
	}
	return s + fmt.Sprintf(" up addr %s/32", d.Address)
}

// VXLANDevice is the desired configuration of vxlan.tabby.
type VXLANDevice struct {
	VNI  int
	Port int
	// Source is the node's underlay address, the outer source of encapsulated packets.
	Source netip.Addr
	// Parent is the NIC that carries the node address.
	Parent string
	// MAC is the node's VTEP MAC (Node.spec.vxlanTunnelMACAddr).
	MAC net.HardwareAddr
	// Address is the node's VXLAN tunnel address, configured as a /32.
	Address netip.Addr
	// MTU is host MTU − 50; 0 leaves the device's MTU alone (host MTU unknown).
	MTU int
}

// String renders the device in a compact `ip -d link` style.
func (d VXLANDevice) String() string {
	s := fmt.Sprintf("link %s vxlan id %d local %s dev %s dstport %d nolearning lladdr %s",
		DeviceVXLAN, d.VNI, d.Source, d.Parent, d.Port, d.MAC)
	if d.MTU > 0 {
		s += fmt.Sprintf(" mtu %d", d.MTU)
	}
	return s + fmt.Sprintf(" up addr %s/32", d.Address)
}

// State is everything tabby wants in the kernel of one host. Slices are sorted (Routes by
// destination, Neighbors by address, FDB by MAC) so that two equal states render the same.
type State struct {
	// Hold, when not empty, says why no desired state could be computed (e.g. the local
	// node is not in the datastore). A Kernel given such a State keeps the previous one in
	// force: nothing is torn down because of a transient gap in the datastore.
	Hold string

	Tunl0     *IPIPDevice  // nil: tunl0 is not wanted
	VXLAN     *VXLANDevice // nil: vxlan.tabby is not wanted
	Neighbors []Neighbor
	FDB       []FDBEntry
	Routes    []Route

	// PodMTU is the MTU workloads get: host MTU less the largest encapsulation overhead any
	// pool uses; 0 when the host MTU is unknown.
	PodMTU int
	// Pools are the CIDRs of every pool. The kernel side uses them to recognise tunnel
	// addresses it may remove from a tunl0 it can no longer delete.
	Pools []netip.Prefix

	// Problems lists, sorted and one line each, what could not be honoured (a node with no
	// address, a block outside every pool, …). They are reported, never fatal.
	Problems []string
}

// String renders the state as sorted text: devices, neighbours, FDB entries, routes in
// `ip route` form, the pod MTU and the problems.
func (s State) String() string {
	var b strings.Builder
	if s.Hold != "" {
		fmt.Fprintf(&b, "hold: %s\n", s.Hold)
	}
	if s.Tunl0 != nil {
		b.WriteString(s.Tunl0.String() + "\n")
	}
	if s.VXLAN != nil {
		b.WriteString(s.VXLAN.String() + "\n")
	}
	for _, n := range s.Neighbors {
		b.WriteString("neigh " + n.String() + "\n")
	}
	for _, f := range s.FDB {
		b.WriteString("fdb " + f.String() + "\n")
	}
	for _, r := range s.Routes {
		b.WriteString(r.String() + "\n")
	}
	if s.PodMTU > 0 {
		fmt.Fprintf(&b, "podmtu %d\n", s.PodMTU)
	}
	for _, p := range s.Problems {
		b.WriteString("problem: " + p + "\n")
	}
	return b.String()
}

// sortState puts the slices of s in their canonical order.
func sortState(s *State) {
	slices.SortFunc(s.Routes, func(a, b Route) int { return ipprefix.Compare(a.Dst, b.Dst) })
	slices.SortFunc(s.Neighbors, func(a, b Neighbor) int { return a.IP.Compare(b.IP) })
	slices.SortFunc(s.FDB, func(a, b FDBEntry) int { return bytes.Compare(a.MAC, b.MAC) })
	slices.SortFunc(s.Pools, ipprefix.Compare)
	slices.Sort(s.Problems)
}
