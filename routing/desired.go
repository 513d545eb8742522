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
	"github.com/tabby-net/tabby/internal/ipprefix"
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

// rules are the facts every route of a block depends on besides the block, its affinity
// and the nodes it names: the host, its own Node and the pools. They also yield the
// State's devices, pod MTU and pool list. Desired derives them on each call; a Planner
// keeps the routes of every block for as long as its rules stay equal.
type rules struct {
	local Local

	selfAddr   netip.Addr   // the local node's underlay address, if it has one
	selfSubnet netip.Prefix // its ipv4Address prefix, masked: "the same subnet" of CrossSubnet
	pools      []pool       // by name

	tunl0    *IPIPDevice
	vxlan    *VXLANDevice
	podMTU   int
	problems []string // about the local node and host, in the order found
}

// newRules derives the rules from the local node, the pools and the host's facts.
func newRules(self *datastore.Node, pools map[string]*datastore.IPPool, local Local) *rules {
	r := &rules{local: local}
	if addr, subnet, ok := nodeAddress(self); ok {
		r.selfAddr, r.selfSubnet = addr, subnet
	} else {
		r.problem("local node %q has no valid spec.bgp.ipv4Address: CrossSubnet treats every node as outside its subnet and vxlan.tabby cannot be configured", local.NodeName)
	}
	r.parsePools(pools)
	r.devices(self)
	return r
}

// equal reports whether two sets of rules yield the same routes for every block and the
// same devices: the Underlay is compared by value, the devices by content.
func (r *rules) equal(o *rules) bool {
	return r.local.NodeName == o.local.NodeName && r.local.NIC == o.local.NIC &&
		r.local.HostMTU == o.local.HostMTU && slices.Equal(r.local.Underlay, o.local.Underlay) &&
		r.selfAddr == o.selfAddr && r.selfSubnet == o.selfSubnet && slices.Equal(r.pools, o.pools) &&
		equalPtr(r.tunl0, o.tunl0, func(a, b IPIPDevice) bool { return a == b }) &&
		equalPtr(r.vxlan, o.vxlan, func(a, b VXLANDevice) bool { return a.String() == b.String() }) &&
		r.podMTU == o.podMTU && slices.Equal(r.problems, o.problems)
}

// equalPtr compares two optional values: both absent, or both present and equal.
func equalPtr[T any](a, b *T, eq func(a, b T) bool) bool {
	if a == nil || b == nil {
		return a == b
	}
	return eq(*a, *b)
}

func (r *rules) problem(format string, args ...any) {
	r.problems = append(r.problems, fmt.Sprintf(format, args...))
}

// emitter receives what the rules yield for blocks and learned routes, in order. Desired's
// assembler builds a State from it directly; a Planner records each block's share, so
// that a change of one block costs only that block.
type emitter interface {
	// route wants r in the main table.
	route(r Route)
	// vxlanRoute wants r (through vxlan.tabby, r.Gateway being the remote tunnel address)
	// with the neighbour and FDB entry it needs; node names the remote node.
	vxlanRoute(r Route, mac net.HardwareAddr, nodeIP netip.Addr, node string)
	// skip counts one route left out, for the reason given.
	skip(reason string)
	// problem reports something that cannot be routed.
	problem(msg string)
	// usesNode records that what was emitted depends on the Node named node, present or not.
	usesNode(node string)
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
//
// Desired recomputes everything from the whole snapshot; a Planner gives the same result
// at the cost of what changed since its previous call.
func Desired(snap *datastore.Snapshot, local Local, learned []LearnedRoute) State {
	if hold, ok := holdReason(snap, local); !ok {
		return State{Hold: hold}
	}
	r := newRules(snap.Nodes[local.NodeName], snap.Pools, local)
	a := newAssembler(len(snap.Blocks) + len(learned))
	for _, p := range r.problems {
		a.problem(p)
	}
	cidrs := slices.AppendSeq(make([]netip.Prefix, 0, len(snap.Blocks)), maps.Keys(snap.Blocks))
	slices.SortFunc(cidrs, ipprefix.Compare)
	for _, cidr := range cidrs {
		r.block(a, snap, cidr, snap.Blocks[cidr])
	}
	r.learned(a, learned, a.has)
	return a.finish(r)
}

// holdReason says why no State can be computed from snap, if so (ok false).
func holdReason(snap *datastore.Snapshot, local Local) (reason string, ok bool) {
	if snap == nil {
		return "no datastore snapshot yet", false
	}
	if _, ok := snap.Nodes[local.NodeName]; !ok {
		return fmt.Sprintf("local node %q is not in the datastore", local.NodeName), false
	}
	return "", true
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

func (r *rules) parsePools(pools map[string]*datastore.IPPool) {
	for _, name := range slices.Sorted(maps.Keys(pools)) {
		p := pools[name]
		cidr, err := netip.ParsePrefix(p.Spec.CIDR)
		if err != nil || !cidr.Addr().Is4() {
			continue // the syncer only hands over valid pools; IPv6 pools are not routed here
		}
		r.pools = append(r.pools, pool{name: name, cidr: cidr.Masked(), ipip: modeOf(p.Spec.IPIPMode), vxlan: modeOf(p.Spec.VXLANMode)})
	}
}

func modeOf(m datastore.EncapMode) datastore.EncapMode {
	if m == "" {
		return datastore.EncapNever
	}
	return m
}

// poolFor returns the pool that contains p.
func (r *rules) poolFor(p netip.Prefix) (pool, bool) {
	for _, pl := range r.pools {
		if pl.cidr.Bits() <= p.Bits() && pl.cidr.Contains(p.Addr()) {
			return pl, true
		}
	}
	return pool{}, false
}

// devices decides which tunnel devices the host needs and the pod MTU. Pools count whether
// enabled or not: the routes of a disabled pool stay, and so must the devices they use.
func (r *rules) devices(self *datastore.Node) {
	var anyIPIP, anyVXLAN bool
	for _, p := range r.pools {
		anyIPIP = anyIPIP || p.ipip != datastore.EncapNever
		anyVXLAN = anyVXLAN || p.vxlan != datastore.EncapNever
	}
	mtu := r.local.HostMTU
	if anyIPIP {
		var addr netip.Addr
		var ok bool
		if self.Spec.BGP != nil {
			addr, ok = parseTunnelAddr(self.Spec.BGP.IPv4IPIPTunnelAddr)
		}
		if ok {
			r.tunl0 = &IPIPDevice{Address: addr, MTU: minus(mtu, IPIPOverhead)}
		} else {
			r.problem("local node %q has no IPIP tunnel address: tunl0 is not configured", r.local.NodeName)
		}
	}
	if anyVXLAN {
		addr, okAddr := parseTunnelAddr(self.Spec.IPv4VXLANTunnelAddr)
		mac, errMAC := net.ParseMAC(self.Spec.VXLANTunnelMACAddr)
		switch {
		case !okAddr || errMAC != nil || len(mac) != 6:
			r.problem("local node %q has no VXLAN tunnel address or VTEP MAC: vxlan.tabby is not configured", r.local.NodeName)
		case !r.selfAddr.IsValid():
			// Reported with the missing address.
		case r.local.NIC == "":
			r.problem("the interface of the node address is unknown: vxlan.tabby is not configured")
		default:
			r.vxlan = &VXLANDevice{
				VNI: VXLANVNI, Port: VXLANPort, Source: r.selfAddr, Parent: r.local.NIC,
				MAC: mac, Address: addr, MTU: minus(mtu, VXLANOverhead),
			}
		}
	}
	switch {
	case mtu <= 0:
	case anyVXLAN:
		r.podMTU = mtu - VXLANOverhead
	case anyIPIP:
		r.podMTU = mtu - IPIPOverhead
	default:
		r.podMTU = mtu
	}
}

func minus(mtu, overhead int) int {
	if mtu <= overhead {
		return 0
	}
	return mtu - overhead
}

// block emits the route of a confirmed block and the /32 of every address borrowed from it.
// What it emits depends on the block, its owner's affinity, the rules and the nodes it
// reports with usesNode, nothing else.
func (r *rules) block(e emitter, snap *datastore.Snapshot, cidr netip.Prefix, blk *datastore.AllocationBlock) {
	if blk.Deleted || !cidr.Addr().Is4() {
		return
	}
	pl, ok := r.poolFor(cidr)
	if !ok {
		e.problem(fmt.Sprintf("block %s is outside every pool: ignored", cidr))
		return
	}
	if owner, ok := snap.BlockOwner(cidr); ok {
		if owner == r.local.NodeName {
			e.route(Route{Dst: cidr, Blackhole: true, Kind: KindBlackhole})
		} else {
			r.routeTo(e, snap.Nodes, cidr, pl, owner)
		}
	}
	r.borrowed(e, snap.Nodes, cidr, blk, pl)
}

// borrowed emits a /32 for each address of the block used by a node other than its affine
// host, towards that node. The block's own route (if any) covers the rest; the /32 wins by
// being more specific.
func (r *rules) borrowed(e emitter, nodes map[string]*datastore.Node, cidr netip.Prefix, blk *datastore.AllocationBlock, pl pool) {
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
		if user == "" || user == affine || user == r.local.NodeName {
			continue
		}
		if !cidr.Contains(ip) {
			break
		}
		r.routeTo(e, nodes, netip.PrefixFrom(ip, 32), pl, user)
	}
}

// routeTo emits the route to dst, owned or used by the remote node named node, in the mode
// of pool pl (the table of SPEC §5).
func (r *rules) routeTo(e emitter, nodes map[string]*datastore.Node, dst netip.Prefix, pl pool, node string) {
	e.usesNode(node)
	n, ok := nodes[node]
	if !ok {
		e.skip(fmt.Sprintf("node %q is not in the datastore", node))
		return
	}
	nodeIP, _, ok := nodeAddress(n)
	if !ok {
		e.skip(fmt.Sprintf("node %q has no valid spec.bgp.ipv4Address", node))
		return
	}
	sameSubnet := r.selfSubnet.IsValid() && r.selfSubnet.Contains(nodeIP)
	switch {
	case pl.vxlan == datastore.EncapAlways || (pl.vxlan == datastore.EncapCrossSubnet && !sameSubnet):
		r.vxlanRoute(e, dst, n, node, nodeIP)
	case pl.vxlan == datastore.EncapCrossSubnet:
		r.directRoute(e, dst, node, nodeIP)
	case pl.ipip == datastore.EncapAlways || (pl.ipip == datastore.EncapCrossSubnet && !sameSubnet):
		if r.tunl0 == nil {
			e.skip(fmt.Sprintf("local node %q has no IPIP tunnel address, routes via %s", r.local.NodeName, DeviceIPIP))
			return
		}
		e.route(Route{Dst: dst, Gateway: nodeIP, Dev: DeviceIPIP, OnLink: true, MTU: r.tunl0.MTU, Kind: KindIPIP})
	case pl.ipip == datastore.EncapCrossSubnet:
		dev := r.local.NIC
		if dev == "" {
			if u, ok := r.lookup(nodeIP); ok {
				dev = u.Dev
			}
		}
		if dev == "" {
			e.skip(fmt.Sprintf("no interface reaches node %q", node))
			return
		}
		e.route(Route{Dst: dst, Gateway: nodeIP, Dev: dev, OnLink: true, Kind: KindDirect})
	default:
		r.directRoute(e, dst, node, nodeIP)
	}
}

// directRoute emits an unencapsulated route: via the node itself when it is on-link, else
// via the gateway the host uses to reach it (recursive, as BIRD does; it works only where
// the fabric knows the destination, e.g. a router peered over BGP).
func (r *rules) directRoute(e emitter, dst netip.Prefix, node string, nodeIP netip.Addr) {
	u, ok := r.lookup(nodeIP)
	if !ok {
		e.skip(fmt.Sprintf("no underlay route to node %q (%s)", node, nodeIP))
		return
	}
	gw := u.Gateway
	if !gw.IsValid() {
		gw = nodeIP
	}
	e.route(Route{Dst: dst, Gateway: gw, Dev: u.Dev, Kind: KindDirect})
}

// vxlanRoute emits the route through vxlan.tabby with the neighbour and FDB entry it needs.
func (r *rules) vxlanRoute(e emitter, dst netip.Prefix, n *datastore.Node, node string, nodeIP netip.Addr) {
	if r.vxlan == nil {
		e.skip(fmt.Sprintf("vxlan.tabby is not configured on the local node, routes via %s", DeviceVXLAN))
		return
	}
	tunIP, okAddr := parseTunnelAddr(n.Spec.IPv4VXLANTunnelAddr)
	mac, errMAC := net.ParseMAC(n.Spec.VXLANTunnelMACAddr)
	if !okAddr || errMAC != nil || len(mac) != 6 {
		e.skip(fmt.Sprintf("node %q has no VXLAN tunnel address or VTEP MAC", node))
		return
	}
	e.vxlanRoute(Route{Dst: dst, Gateway: tunIP, Dev: DeviceVXLAN, OnLink: true, MTU: r.vxlan.MTU, Kind: KindVXLAN}, mac, nodeIP, node)
}

// lookup finds the underlay route the host uses to reach ip: longest prefix, then lowest
// metric. An unreachable route matches but yields no next hop.
func (r *rules) lookup(ip netip.Addr) (UnderlayRoute, bool) {
	best, found := UnderlayRoute{}, false
	for _, u := range r.local.Underlay {
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

// learned emits the BGP-learned routes for prefixes outside every pool. Inside a pool the
// datastore decides (SPEC §7). taken reports a destination that already has a route: a
// block's, or a learned one emitted before (a second path for the same prefix: the first,
// with the lowest next hop, stays).
func (r *rules) learned(e emitter, learned []LearnedRoute, taken func(netip.Prefix) bool) {
	sorted := slices.Clone(learned)
	slices.SortFunc(sorted, func(x, y LearnedRoute) int {
		if c := ipprefix.Compare(x.Prefix, y.Prefix); c != 0 {
			return c
		}
		return x.NextHop.Compare(y.NextHop)
	})
	for _, l := range sorted {
		if !l.Prefix.IsValid() || !l.Prefix.Addr().Is4() || !l.NextHop.Is4() {
			continue
		}
		dst := l.Prefix.Masked()
		if _, inPool := r.poolFor(dst); inPool {
			continue
		}
		if taken(dst) {
			continue
		}
		if l.NextHop == r.selfAddr {
			continue
		}
		u, ok := r.lookup(l.NextHop)
		if !ok {
			e.skip(fmt.Sprintf("BGP next hop %s is unreachable through the underlay", l.NextHop))
			continue
		}
		gw := u.Gateway
		if !gw.IsValid() {
			gw = l.NextHop
		}
		e.route(Route{Dst: dst, Gateway: gw, Dev: u.Dev, Kind: KindBGP})
	}
}

// assembler is Desired's emitter: it builds the State in the order of emission, a later
// route for a destination replacing an earlier one, and a VXLAN route whose VTEP MAC or
// tunnel address another node already claimed left out.
type assembler struct {
	routes    map[netip.Prefix]Route
	neighbors map[netip.Addr]Neighbor
	fdb       map[string]FDBEntry // by MAC bytes
	problems  map[string]bool
	skipped   map[string]int // routes not installed, by reason
}

func newAssembler(routes int) *assembler {
	return &assembler{
		routes:    make(map[netip.Prefix]Route, routes),
		neighbors: map[netip.Addr]Neighbor{},
		fdb:       map[string]FDBEntry{},
		problems:  map[string]bool{},
		skipped:   map[string]int{},
	}
}

func (a *assembler) route(r Route)           { a.routes[r.Dst] = r }
func (a *assembler) skip(reason string)      { a.skipped[reason]++ }
func (a *assembler) problem(msg string)      { a.problems[msg] = true }
func (a *assembler) usesNode(string)         {}
func (a *assembler) has(p netip.Prefix) bool { _, ok := a.routes[p]; return ok }

func (a *assembler) vxlanRoute(r Route, mac net.HardwareAddr, nodeIP netip.Addr, node string) {
	tunIP := r.Gateway
	if prev, ok := a.fdb[string(mac)]; ok && prev.Dst != nodeIP {
		a.skip(fmt.Sprintf("VTEP MAC %s is claimed by two nodes (%s and %q)", mac, prev.Dst, node))
		return
	}
	if prev, ok := a.neighbors[tunIP]; ok && !bytes.Equal(prev.MAC, mac) {
		a.skip(fmt.Sprintf("VXLAN tunnel address %s is claimed by two nodes", tunIP))
		return
	}
	a.neighbors[tunIP] = Neighbor{IP: tunIP, MAC: mac}
	a.fdb[string(mac)] = FDBEntry{MAC: mac, Dst: nodeIP}
	a.routes[r.Dst] = r
}

func (a *assembler) finish(r *rules) State {
	s := r.globalState()
	s.Routes = slices.AppendSeq(make([]Route, 0, len(a.routes)), maps.Values(a.routes))
	s.Neighbors = slices.AppendSeq(make([]Neighbor, 0, len(a.neighbors)), maps.Values(a.neighbors))
	s.FDB = slices.AppendSeq(make([]FDBEntry, 0, len(a.fdb)), maps.Values(a.fdb))
	for p := range a.problems {
		s.Problems = append(s.Problems, p)
	}
	s.Problems = appendSkipped(s.Problems, a.skipped)
	sortState(&s)
	return s
}

// globalState is the part of a State that comes from the rules alone: devices, pod MTU
// and pools.
func (r *rules) globalState() State {
	s := State{Tunl0: r.tunl0, VXLAN: r.vxlan, PodMTU: r.podMTU}
	for _, p := range r.pools {
		s.Pools = append(s.Pools, p.cidr)
	}
	return s
}

// appendSkipped adds one problem line per reason routes were left out, with their number.
func appendSkipped(problems []string, skipped map[string]int) []string {
	for reason, n := range skipped {
		if n > 0 {
			problems = append(problems, fmt.Sprintf("%s: %s not installed", strings.TrimSpace(reason), plural(n, "route")))
		}
	}
	return problems
}
