// Package nodereg keeps this host's Node resource in etcd in line with the host (SPEC §4):
// its address, its labels, its IPIP and VXLAN tunnel addresses (from IPAM, for the pools
// that select the node and encapsulate) and its VTEP MAC. It is one more reconciler: Set
// hands it each new snapshot, its own goroutine writes what differs.
package nodereg

import (
	"crypto/sha1"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"slices"

	"github.com/tabby-net/tabby/datastore"
	"github.com/tabby-net/tabby/datastore/ipam"
	"github.com/tabby-net/tabby/datastore/selector"
)

// Identity is what this host says about itself: its name, address and labels.
type Identity struct {
	Name string
	// Address is the node address with its prefix length (CrossSubnet decides by it).
	Address netip.Prefix
	// Labels are merged into the Node's labels; labels the operator set on the Node
	// under other keys are kept.
	Labels map[string]string
}

// Tunnels lists both tunnel kinds, in the order they are handled.
func Tunnels() []ipam.TunnelKind { return []ipam.TunnelKind{ipam.TunnelIPIP, ipam.TunnelVXLAN} }

// TunnelHandles are the IPAM handles of node's tunnel addresses: the only handles the
// registrar reads from snapshots.
func TunnelHandles(node string) []string {
	var ids []string
	for _, t := range Tunnels() {
		ids = append(ids, t.Handle(node))
	}
	return ids
}

// VTEPMAC is the VXLAN MAC of a node that has none yet: 0x66 followed by the first five
// bytes of sha1(node name). 0x66 has the locally-administered bit set and the multicast
// bit clear, so the MAC is a valid unicast address that no NIC vendor uses.
func VTEPMAC(node string) net.HardwareAddr {
	sum := sha1.Sum([]byte(node))
	return net.HardwareAddr{0x66, sum[0], sum[1], sum[2], sum[3], sum[4]}
}

// NeededTunnels returns, per tunnel kind, the pools that ask this node for that tunnel:
// enabled pools whose nodeSelector selects labels and whose ipipMode / vxlanMode is not
// Never, and which allow tunnel addresses. Disabled pools give no new addresses, so they do
// not count. The lists are sorted.
func NeededTunnels(pools map[string]*datastore.IPPool, labels map[string]string) map[ipam.TunnelKind][]netip.Prefix {
	out := map[ipam.TunnelKind][]netip.Prefix{}
	for _, p := range pools {
		if p.Spec.Disabled || !slices.Contains(allowedUses(p), datastore.UseTunnel) {
			continue
		}
		cidr, err := netip.ParsePrefix(p.Spec.CIDR)
		if err != nil {
			continue // the syncer only hands out valid pools
		}
		sel, err := selector.Parse(p.Spec.NodeSelector)
		if err != nil || !sel.Matches(labels) {
			continue
		}
		if on(p.Spec.IPIPMode) {
			out[ipam.TunnelIPIP] = append(out[ipam.TunnelIPIP], cidr)
		}
		if on(p.Spec.VXLANMode) {
			out[ipam.TunnelVXLAN] = append(out[ipam.TunnelVXLAN], cidr)
		}
	}
	for t := range out {
		slices.SortFunc(out[t], func(a, b netip.Prefix) int {
			if c := a.Addr().Compare(b.Addr()); c != 0 {
				return c
			}
			return a.Bits() - b.Bits()
		})
	}
	return out
}

func allowedUses(p *datastore.IPPool) []string {
	if len(p.Spec.AllowedUses) == 0 {
		return []string{datastore.UseWorkload, datastore.UseTunnel}
	}
	return p.Spec.AllowedUses
}

func on(m datastore.EncapMode) bool {
	return m == datastore.EncapAlways || m == datastore.EncapCrossSubnet
}

// MergedLabels is the Node's label set: the stored labels with this host's labels
// written over them.
func MergedLabels(stored *datastore.Node, id Identity) map[string]string {
	out := map[string]string{}
	if stored != nil {
		maps.Copy(out, stored.Metadata.Labels)
	}
	maps.Copy(out, id.Labels)
	return out
}

// TunnelAddr returns the tunnel address a Node records for a kind, if any.
func TunnelAddr(n *datastore.Node, t ipam.TunnelKind) (netip.Addr, bool) {
	if n == nil {
		return netip.Addr{}, false
	}
	var s string
	switch t {
	case ipam.TunnelIPIP:
		if n.Spec.BGP != nil {
			s = n.Spec.BGP.IPv4IPIPTunnelAddr
		}
	case ipam.TunnelVXLAN:
		s = n.Spec.IPv4VXLANTunnelAddr
	}
	a, err := netip.ParseAddr(s)
	return a, err == nil
}

// Desired returns the Node as this host wants it, starting from the stored one (nil when
// there is none): the address and merged labels of id, the given tunnel addresses (a kind
// missing from tunnels has its address cleared), and a VTEP MAC when VXLAN is on and the
// Node has none. Fields the host does not own (AS number, route reflector cluster ID,
// annotations, an operator's MAC) are kept.
func Desired(stored *datastore.Node, id Identity, tunnels map[ipam.TunnelKind]netip.Addr) *datastore.Node {
	var n *datastore.Node
	if stored != nil {
		n = datastore.Clone(stored)
	} else {
		n = datastore.NewNode(id.Name)
	}
	n.Metadata.Labels = MergedLabels(stored, id)
	if len(n.Metadata.Labels) == 0 {
		n.Metadata.Labels = nil
	}
	if n.Spec.BGP == nil {
		n.Spec.BGP = &datastore.NodeBGPSpec{}
	}
	n.Spec.BGP.IPv4Address = id.Address.String()
	n.Spec.BGP.IPv4IPIPTunnelAddr = ""
	if a, ok := tunnels[ipam.TunnelIPIP]; ok {
		n.Spec.BGP.IPv4IPIPTunnelAddr = a.String()
	}
	n.Spec.IPv4VXLANTunnelAddr = ""
	if a, ok := tunnels[ipam.TunnelVXLAN]; ok {
		n.Spec.IPv4VXLANTunnelAddr = a.String()
		if n.Spec.VXLANTunnelMACAddr == "" {
			n.Spec.VXLANTunnelMACAddr = VTEPMAC(id.Name).String()
		}
	}
	return n
}

// describe renders the fields Desired owns, for log lines and for comparing.
func describe(n *datastore.Node) string {
	if n == nil {
		return "<none>"
	}
	var bgp datastore.NodeBGPSpec
	if n.Spec.BGP != nil {
		bgp = *n.Spec.BGP
	}
	return fmt.Sprintf("address=%s ipip=%s vxlan=%s mac=%s labels=%v", bgp.IPv4Address,
		bgp.IPv4IPIPTunnelAddr, n.Spec.IPv4VXLANTunnelAddr, n.Spec.VXLANTunnelMACAddr, n.Metadata.Labels)
}
