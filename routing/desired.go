package routing

import (
	"bytes"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"slices"
	"strings"

	"github.com/tabby-net/tabby/datastore"
)

// Local is what Desired needs to know about the host it computes for, beyond the snapshot.
type Local struct {
	// NodeName is the local node's name in the datastore.
	NodeName string
	// NIC is the interface that carries the node address: the device of CrossSubnet routes
	// and the parent of vxlan.tabby.
	NIC string
	// HostMTU is the underlay MTU; tunnel MTUs and the pod MTU derive from it. 0 = unknown.
	HostMTU int
	// Underlay is the host's own main-table routes (every route whose protocol is not
	// tabby's), captured by the caller with ReadUnderlay. Direct routes to nodes that are not
	// on-link, and BGP-learned routes, are resolved through it by longest-prefix match, the
	// way BIRD resolves a recursive next hop.
	Underlay []UnderlayRoute
}

// UnderlayRoute is one of the host's own routes, as far as next-hop resolution cares.
type UnderlayRoute struct {
	Dst netip.Prefix
	// Gateway is the next hop; invalid for a connected (on-link) route.
	Gateway netip.Addr
	Dev     string
	Metric  int
	// Unreachable marks blackhole, unreachable and prohibit routes: a destination they
	// match has no next hop.
	Unreachable bool
}

// LearnedRoute is a best path from BGP: a prefix and the next hop the peer announced.
type LearnedRoute struct {
	Prefix  netip.Prefix
	NextHop netip.Addr
}

// pool is a parsed IPPool, as routing needs it.
type pool struct {
	name  string
	cidr  netip.Prefix
	ipip  datastore.EncapMode
	vxlan datastore.EncapMode
}

// desiredBuilder accumulates one Desired computation.
type desiredBuilder struct {
	snap  *datastore.Snapshot
	local Local

	selfAddr   netip.Addr   // the local node's underlay address, if it has one
	selfSubnet netip.Prefix // its ipv4Address prefix, masked: "the same subnet" of CrossSubnet
	pools      []pool

	state     State
	routes    map[netip.Prefix]Route
	neighbors map[netip.Addr]Neighbor
	fdb       map[string]FDBEntry // by MAC bytes

	problems map[string]bool
	skipped  map[string]int // routes not installed, by reason
}

// Desired computes the kernel state the local host must have (SPEC §5) from a datastore
// snapshot, facts about the host and the BGP-learned routes. It makes no system call: the
// host's own routes come in through local.Underlay.
//
// For each confirmed block B of a remote node N it yields a route in the mode of B's pool;
// for each block of the local node, a blackhole; for each address borrowed from a block by
// a node other than the block's affine host, a /32 towards the borrower (none when the
// borrower is local: that route is the CNI's); for each learned prefix outside every pool,
// a route via its next hop resolved through the underlay. Local workload /32 routes are not
// part of it: tabby-cni installs them with the kernel's default protocol.
//
// A snapshot without the local node yields a State with Hold set; what cannot be routed
// (a node without an address, a block outside every pool, a tunnel the local node has no
// address for) is left out and listed in Problems.
func Desired(snap *datastore.Snapshot, local Local, learned []LearnedRoute) State {
	if snap == nil {
		return State{Hold: "no datastore snapshot yet"}
	}
	self, ok := snap.Nodes[local.NodeName]
	if !ok {
		return State{Hold: fmt.Sprintf("local node %q is not in the datastore", local.NodeName)}
	}
	b := &desiredBuilder{
		snap:      snap,
		local:     local,
		routes:    make(map[netip.Prefix]Route, len(snap.Blocks)+len(learned)),
		neighbors: map[netip.Addr]Neighbor{},
		fdb:       map[string]FDBEntry{},
		problems:  map[string]bool{},
		skipped:   map[string]int{},
	}
	if addr, subnet, ok := nodeAddress(self); ok {
		b.selfAddr, b.selfSubnet = addr, subnet
	} else {
		b.problem("local node %q has no valid spec.bgp.ipv4Address: CrossSubnet treats every node as outside its subnet and vxlan.tabby cannot be configured", local.NodeName)
	}
	b.parsePools()
	b.devices(self)
	b.blocks()
	b.learned(learned)
	return b.finish()
}

// nodeAddress returns a node's underlay address and its subnet (the prefix of
// spec.bgp.ipv4Address, masked).
func nodeAddress(n *datastore.Node) (netip.Addr, netip.Prefix, bool) {
	if n == nil || n.Spec.BGP == nil || n.Spec.BGP.IPv4Address == "" {
		return netip.Addr{}, netip.Prefix{}, false
	}
	s := n.Spec.BGP.IPv4Address
	if p, err := netip.ParsePrefix(s); err == nil && p.Addr().Is4() {
		return p.Addr(), p.Masked(), true
	}
	if a, err := netip.ParseAddr(s); err == nil && a.Is4() {
		return a, netip.PrefixFrom(a, 32), true
	}
	return netip.Addr{}, netip.Prefix{}, false
}

// parseTunnelAddr parses a tunnel address field, which Calico stores without a prefix
// length (but tolerates one).
func parseTunnelAddr(s string) (netip.Addr, bool) {
	if s == "" {
		return netip.Addr{}, false
	}
	if a, err := netip.ParseAddr(s); err == nil && a.Is4() {
		return a, true
	}
	if p, err := netip.ParsePrefix(s); err == nil && p.Addr().Is4() {
		return p.Addr(), true
	}
	return netip.Addr{}, false
}

func (b *desiredBuilder) problem(format string, args ...any) {
	b.problems[fmt.Sprintf(format, args...)] = true
}

func (b *desiredBuilder) skip(format string, args ...any) {
	b.skipped[fmt.Sprintf(format, args...)]++
}

func (b *desiredBuilder) parsePools() {
	for _, name := range slices.Sorted(maps.Keys(b.snap.Pools)) {
		p := b.snap.Pools[name]
		cidr, err := netip.ParsePrefix(p.Spec.CIDR)
		if err != nil || !cidr.Addr().Is4() {
			continue // the syncer only hands over valid pools; IPv6 pools are not routed here
		}
		b.pools = append(b.pools, pool{name: name, cidr: cidr.Masked(), ipip: modeOf(p.Spec.IPIPMode), vxlan: modeOf(p.Spec.VXLANMode)})
		b.state.Pools = append(b.state.Pools, cidr.Masked())
	}
}

func modeOf(m datastore.EncapMode) datastore.EncapMode {
	if m == "" {
		return datastore.EncapNever
	}
	return m
}

// poolFor returns the pool that contains p.
func (b *desiredBuilder) poolFor(p netip.Prefix) (pool, bool) {
	for _, pl := range b.pools {
		if pl.cidr.Bits() <= p.Bits() && pl.cidr.Contains(p.Addr()) {
			return pl, true
		}
	}
	return pool{}, false
}

// devices decides which tunnel devices the host needs and the pod MTU. Pools count whether
// enabled or not: the routes of a disabled pool stay, and so must the devices they use.
func (b *desiredBuilder) devices(self *datastore.Node) {
	var anyIPIP, anyVXLAN bool
	for _, p := range b.pools {
		anyIPIP = anyIPIP || p.ipip != datastore.EncapNever
		anyVXLAN = anyVXLAN || p.vxlan != datastore.EncapNever
	}
	mtu := b.local.HostMTU
	if anyIPIP {
		var addr netip.Addr
		var ok bool
		if self.Spec.BGP != nil {
			addr, ok = parseTunnelAddr(self.Spec.BGP.IPv4IPIPTunnelAddr)
		}
		if ok {
			b.state.Tunl0 = &IPIPDevice{Address: addr, MTU: minus(mtu, IPIPOverhead)}
		} else {
			b.problem("local node %q has no IPIP tunnel address: tunl0 is not configured", b.local.NodeName)
		}
	}
	if anyVXLAN {
		addr, okAddr := parseTunnelAddr(self.Spec.IPv4VXLANTunnelAddr)
		mac, errMAC := net.ParseMAC(self.Spec.VXLANTunnelMACAddr)
		switch {
		case !okAddr || errMAC != nil || len(mac) != 6:
			b.problem("local node %q has no VXLAN tunnel address or VTEP MAC: vxlan.tabby is not configured", b.local.NodeName)
		case !b.selfAddr.IsValid():
			// Reported with the missing address.
		case b.local.NIC == "":
			b.problem("the interface of the node address is unknown: vxlan.tabby is not configured")
		default:
			b.state.VXLAN = &VXLANDevice{
				VNI: VXLANVNI, Port: VXLANPort, Source: b.selfAddr, Parent: b.local.NIC,
				MAC: mac, Address: addr, MTU: minus(mtu, VXLANOverhead),
			}
		}
	}
	switch {
	case mtu <= 0:
	case anyVXLAN:
		b.state.PodMTU = mtu - VXLANOverhead
	case anyIPIP:
		b.state.PodMTU = mtu - IPIPOverhead
	default:
		b.state.PodMTU = mtu
	}
}

func minus(mtu, overhead int) int {
	if mtu <= overhead {
		return 0
	}
	return mtu - overhead
}

// blocks adds the route of every confirmed block and the /32 of every borrowed address.
func (b *desiredBuilder) blocks() {
	cidrs := slices.AppendSeq(make([]netip.Prefix, 0, len(b.snap.Blocks)), maps.Keys(b.snap.Blocks))
	slices.SortFunc(cidrs, comparePrefix)
	for _, cidr := range cidrs {
		blk := b.snap.Blocks[cidr]
		if blk.Deleted || !cidr.Addr().Is4() {
			continue
		}
		pl, ok := b.poolFor(cidr)
		if !ok {
			b.problem("block %s is outside every pool: ignored", cidr)
			continue
		}
		if owner, ok := b.snap.BlockOwner(cidr); ok {
			if owner == b.local.NodeName {
				b.routes[cidr] = Route{Dst: cidr, Blackhole: true, Kind: KindBlackhole}
			} else {
				b.routeTo(cidr, pl, owner)
			}
		}
		b.borrowed(cidr, blk, pl)
	}
}

// borrowed adds a /32 for each address of the block used by a node other than its affine
// host, towards that node. The block's own route (if any) covers the rest; the /32 wins by
// being more specific.
func (b *desiredBuilder) borrowed(cidr netip.Prefix, blk *datastore.AllocationBlock, pl pool) {
	affine := blk.AffinityHost()
	ip := cidr.Addr()
	for ord, idx := range blk.Allocations {
		if ord > 0 {
			ip = ip.Next()
		}
		if idx == nil || *idx < 0 || *idx >= len(blk.Attributes) {
			continue
		}
		user := blk.Attributes[*idx].Secondary["node"]
		if user == "" || user == affine || user == b.local.NodeName {
			continue
		}
		if !cidr.Contains(ip) {
			break
		}
		b.routeTo(netip.PrefixFrom(ip, 32), pl, user)
	}
}

// routeTo adds the route to dst, owned or used by the remote node named node, in the mode
// of pool pl (the table of SPEC §5).
func (b *desiredBuilder) routeTo(dst netip.Prefix, pl pool, node string) {
	n, ok := b.snap.Nodes[node]
	if !ok {
		b.skip("node %q is not in the datastore", node)
		return
	}
	nodeIP, _, ok := nodeAddress(n)
	if !ok {
		b.skip("node %q has no valid spec.bgp.ipv4Address", node)
		return
	}
	sameSubnet := b.selfSubnet.IsValid() && b.selfSubnet.Contains(nodeIP)
	switch {
	case pl.vxlan == datastore.EncapAlways || (pl.vxlan == datastore.EncapCrossSubnet && !sameSubnet):
		b.vxlanRoute(dst, n, node, nodeIP)
	case pl.vxlan == datastore.EncapCrossSubnet:
		b.directRoute(dst, node, nodeIP)
	case pl.ipip == datastore.EncapAlways || (pl.ipip == datastore.EncapCrossSubnet && !sameSubnet):
		if b.state.Tunl0 == nil {
			b.skip("local node %q has no IPIP tunnel address, routes via %s", b.local.NodeName, DeviceIPIP)
			return
		}
		b.routes[dst] = Route{Dst: dst, Gateway: nodeIP, Dev: DeviceIPIP, OnLink: true, MTU: b.state.Tunl0.MTU, Kind: KindIPIP}
	case pl.ipip == datastore.EncapCrossSubnet:
		dev := b.local.NIC
		if dev == "" {
			if u, ok := b.lookup(nodeIP); ok {
				dev = u.Dev
			}
		}
		if dev == "" {
			b.skip("no interface reaches node %q", node)
			return
		}
		b.routes[dst] = Route{Dst: dst, Gateway: nodeIP, Dev: dev, OnLink: true, Kind: KindDirect}
	default:
		b.directRoute(dst, node, nodeIP)
	}
}

// directRoute adds an unencapsulated route: via the node itself when it is on-link, else via
// the gateway the host uses to reach it (recursive, as BIRD does; it works only where the
// fabric knows the destination, e.g. a router peered over BGP).
func (b *desiredBuilder) directRoute(dst netip.Prefix, node string, nodeIP netip.Addr) {
	u, ok := b.lookup(nodeIP)
	if !ok {
		b.skip("no underlay route to node %q (%s)", node, nodeIP)
		return
	}
	gw := u.Gateway
	if !gw.IsValid() {
		gw = nodeIP
	}
	b.routes[dst] = Route{Dst: dst, Gateway: gw, Dev: u.Dev, Kind: KindDirect}
}

// vxlanRoute adds the route through vxlan.tabby with the neighbour and FDB entries it needs.
func (b *desiredBuilder) vxlanRoute(dst netip.Prefix, n *datastore.Node, node string, nodeIP netip.Addr) {
	if b.state.VXLAN == nil {
		b.skip("vxlan.tabby is not configured on the local node, routes via %s", DeviceVXLAN)
		return
	}
	tunIP, okAddr := parseTunnelAddr(n.Spec.IPv4VXLANTunnelAddr)
	mac, errMAC := net.ParseMAC(n.Spec.VXLANTunnelMACAddr)
	if !okAddr || errMAC != nil || len(mac) != 6 {
		b.skip("node %q has no VXLAN tunnel address or VTEP MAC", node)
		return
	}
	if prev, ok := b.fdb[string(mac)]; ok && prev.Dst != nodeIP {
		b.skip("VTEP MAC %s is claimed by two nodes (%s and %q)", mac, prev.Dst, node)
		return
	}
	if prev, ok := b.neighbors[tunIP]; ok && !bytes.Equal(prev.MAC, mac) {
		b.skip("VXLAN tunnel address %s is claimed by two nodes", tunIP)
		return
	}
	b.neighbors[tunIP] = Neighbor{IP: tunIP, MAC: mac}
	b.fdb[string(mac)] = FDBEntry{MAC: mac, Dst: nodeIP}
	b.routes[dst] = Route{Dst: dst, Gateway: tunIP, Dev: DeviceVXLAN, OnLink: true, MTU: b.state.VXLAN.MTU, Kind: KindVXLAN}
}

// lookup finds the underlay route the host uses to reach ip: longest prefix, then lowest
// metric. An unreachable route matches but yields no next hop.
func (b *desiredBuilder) lookup(ip netip.Addr) (UnderlayRoute, bool) {
	best, found := UnderlayRoute{}, false
	for _, u := range b.local.Underlay {
		if !u.Dst.Contains(ip) {
			continue
		}
		if !found || u.Dst.Bits() > best.Dst.Bits() || (u.Dst.Bits() == best.Dst.Bits() && u.Metric < best.Metric) {
			best, found = u, true
		}
	}
	if !found || best.Unreachable || best.Dev == "" {
		return UnderlayRoute{}, false
	}
	return best, true
}

// learned adds the BGP-learned routes for prefixes outside every pool. Inside a pool the
// datastore decides (SPEC §7).
func (b *desiredBuilder) learned(learned []LearnedRoute) {
	sorted := slices.Clone(learned)
	slices.SortFunc(sorted, func(x, y LearnedRoute) int {
		if c := comparePrefix(x.Prefix, y.Prefix); c != 0 {
			return c
		}
		return x.NextHop.Compare(y.NextHop)
	})
	for _, l := range sorted {
		if !l.Prefix.IsValid() || !l.Prefix.Addr().Is4() || !l.NextHop.Is4() {
			continue
		}
		dst := l.Prefix.Masked()
		if _, inPool := b.poolFor(dst); inPool {
			continue
		}
		if _, dup := b.routes[dst]; dup {
			continue // a second path for the same prefix: the first (lowest next hop) stays
		}
		if l.NextHop == b.selfAddr {
			continue
		}
		u, ok := b.lookup(l.NextHop)
		if !ok {
			b.skip("BGP next hop %s is unreachable through the underlay", l.NextHop)
			continue
		}
		gw := u.Gateway
		if !gw.IsValid() {
			gw = l.NextHop
		}
		b.routes[dst] = Route{Dst: dst, Gateway: gw, Dev: u.Dev, Kind: KindBGP}
	}
}

func (b *desiredBuilder) finish() State {
	s := b.state
	s.Routes = slices.AppendSeq(make([]Route, 0, len(b.routes)), maps.Values(b.routes))
	s.Neighbors = slices.AppendSeq(make([]Neighbor, 0, len(b.neighbors)), maps.Values(b.neighbors))
	s.FDB = slices.AppendSeq(make([]FDBEntry, 0, len(b.fdb)), maps.Values(b.fdb))
	for p := range b.problems {
		s.Problems = append(s.Problems, p)
	}
	for reason, n := range b.skipped {
		s.Problems = append(s.Problems, fmt.Sprintf("%s: %s not installed", strings.TrimSpace(reason), plural(n, "route")))
	}
	sortState(&s)
	return s
}
