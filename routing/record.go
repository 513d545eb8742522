package routing

import (
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// The record is what the reconciler knows the kernel holds besides the installed side of
// its keyed tables: devices, the link indexes routes use, nexthop objects, prefixes held by
// other protocols, and counts kept as routes come and go. This file also has the kernel
// form of a route (kroute, routeKey) and the one reusable request routes are written with.

// routeKey identifies a route in the main table as the kernel does for IPv4 (tos is always
// 0 here): one destination, one metric. It is packed small and pointer-free because the
// reconciler's maps are keyed by it: hashing and garbage collection are most of its cost
// per route.
type routeKey struct {
	addr, bits, metric uint32 // no padding: hashed and compared as 12 plain bytes
}

func keyOf(dst netip.Prefix, metric int) routeKey {
	a := dst.Addr().As4()
	return routeKey{addr: uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3]), bits: uint32(dst.Bits()), metric: uint32(metric)}
}

// prefix is the key's destination.
func (k routeKey) prefix() netip.Prefix {
	return netip.PrefixFrom(netip.AddrFrom4([4]byte{byte(k.addr >> 24), byte(k.addr >> 16), byte(k.addr >> 8), byte(k.addr)}), int(k.bits))
}

// kroute is a route as the kernel holds it, reduced to what tabby sets. Two kroutes are
// equal exactly when replacing one by the other would change nothing tabby cares about.
type kroute struct {
	dst    netip.Prefix
	metric int
	// gw, link and onlink are the next hop, whether the route names it itself or through
	// the nexthop object nhid (0: none).
	gw        netip.Addr
	link      int
	onlink    bool
	blackhole bool // beside onlink and nhid, where it takes no room of its own
	nhid      uint32
	mtu       int
}

func (r kroute) key() routeKey { return keyOf(r.dst, r.metric) }

// nextHop is what a nexthop object for this route would hold.
func (r kroute) nextHop() nhKey { return nhKey{gw: r.gw, link: r.link, onlink: r.onlink} }

// request is a reusable netlink route request: the library does not keep the route it is
// given, so one request (and its address buffers) serves every write of a pass.
type request struct {
	route nlRoute
	dst   net.IPNet
	dstIP [4]byte
	gwIP  [4]byte
}

// masks are the IPv4 netmasks by prefix length.
var masks = func() (m [33]net.IPMask) {
	for i := range m {
		m[i] = net.CIDRMask(i, 32)
	}
	return m
}()

// fill makes q the request for r with the given protocol, in the main table. A route with
// a nexthop object names only its id: the kernel refuses a gateway or device beside it.
func (q *request) fill(r kroute, protocol int) *nlRoute {
	q.dstIP = r.dst.Addr().As4()
	q.dst = net.IPNet{IP: q.dstIP[:], Mask: masks[r.dst.Bits()]}
	q.route = nlRoute{Route: netlink.Route{
		Dst:      &q.dst,
		Protocol: netlink.RouteProtocol(protocol),
		Table:    unix.RT_TABLE_MAIN,
		Priority: r.metric,
		Type:     unix.RTN_UNICAST,
		MTU:      r.mtu,
	}}
	if r.blackhole {
		q.route.Type = unix.RTN_BLACKHOLE
		return &q.route
	}
	if r.nhid != 0 {
		q.route.NHID = r.nhid
		return &q.route
	}
	if r.gw.IsValid() {
		q.gwIP = r.gw.As4()
		q.route.Gw = q.gwIP[:]
	}
	q.route.LinkIndex = r.link
	if r.onlink {
		q.route.Flags = int(netlink.FLAG_ONLINK)
	}
	return &q.route
}

// fromNetlink reduces a route read from the kernel. ok is false for what tabby never writes
// (IPv6, multipath). The next hop of a route that uses a nexthop object is what the kernel
// reported beside the id; the caller fills it from its record when it knows the object.
func fromNetlink(in nlRoute) (kroute, bool) {
	nr := in.Route
	var dst netip.Prefix
	if nr.Dst == nil {
		dst = netip.PrefixFrom(netip.IPv4Unspecified(), 0)
	} else {
		a, ok := netip.AddrFromSlice(nr.Dst.IP)
		if !ok {
			return kroute{}, false
		}
		ones, bits := nr.Dst.Mask.Size()
		if bits == 0 {
			return kroute{}, false
		}
		dst = netip.PrefixFrom(a.Unmap(), ones)
	}
	if !dst.Addr().Is4() || len(nr.MultiPath) > 0 {
		return kroute{}, false
	}
	r := kroute{dst: dst, metric: nr.Priority, mtu: nr.MTU}
	if nr.Type == unix.RTN_BLACKHOLE {
		r.blackhole = true
		return r, true
	}
	if nr.Gw != nil {
		if gw, ok := netip.AddrFromSlice(nr.Gw); ok {
			r.gw = gw.Unmap()
		}
	}
	r.link = nr.LinkIndex
	r.onlink = nr.Flags&int(netlink.FLAG_ONLINK) != 0
	r.nhid = in.NHID
	return r, true
}

// routeEntry is one route of tabby's protocol: wanted (a desired route resolved to kernel
// terms) or installed (what the kernel has, as far as tabby knows).
type routeEntry struct {
	kr   kroute
	kind RouteKind
	// adopted marks an installed route tabby found in the kernel (a previous run's, or one
	// someone else wrote with tabby's protocol) and has not matched to its desired state
	// yet. An unwanted adopted route is swept only once the first full sync is done. A
	// wanted route is never adopted.
	adopted bool
}

// devRecord is what the reconciler knows about one of its tunnel devices.
type devRecord struct {
	// ok: the device is configured as applied and nothing has been seen to change it since.
	ok          bool
	index       int
	unsupported bool // the kernel has no driver for it
	ipip        IPIPDevice
	vxlan       VXLANDevice
}

// record is the reconciler's knowledge of what the kernel holds beside its tables' installed
// side: the state it really reached, updated after every successful operation and from
// kernel events and dumps.
type record struct {
	// kinds and adopted count installed routes by kind (adopted ones apart), kept up to
	// date by Kernel.putRoute and delRoute so that status costs nothing per pass.
	kinds   [len(routeKinds)]int
	adopted int
	// conflicts are wanted routes whose key the kernel holds under another protocol. They
	// are left alone (SPEC §5: only tabby's protocol is ever changed) and reported.
	conflicts map[routeKey]int
	links     map[string]int // name → ifindex of the devices routes use
	// nexthops are tabby's nexthop objects by id, nhByKey the one routes get for a next
	// hop, nhIdle those no route uses (to delete), nhForeign the ids of every other
	// nexthop object in the namespace (never to be allocated).
	nexthops  map[uint32]*nhEntry
	nhByKey   map[nhKey]uint32
	nhIdle    map[uint32]struct{}
	nhForeign map[uint32]struct{}
	// nhNext is where the search for a free nexthop id starts.
	nhNext uint32
	// linksGen changes whenever a cached link index is dropped: routes compiled with the
	// old index must be compiled again.
	linksGen uint64
	ipip     devRecord
	vxlan    devRecord
}

func newRecord() *record {
	return &record{
		conflicts: map[routeKey]int{},
		links:     map[string]int{},
		nexthops:  map[uint32]*nhEntry{},
		nhByKey:   map[nhKey]uint32{},
		nhIdle:    map[uint32]struct{}{},
		nhForeign: map[uint32]struct{}{},
		nhNext:    1,
	}
}

// routeKinds are the kinds counted, in order; anything else counts as the last.
var routeKinds = [...]RouteKind{KindIPIP, KindVXLAN, KindDirect, KindBlackhole, KindBGP, ""}

func kindIndex(k RouteKind) int {
	switch k {
	case KindIPIP:
		return 0
	case KindVXLAN:
		return 1
	case KindDirect:
		return 2
	case KindBlackhole:
		return 3
	case KindBGP:
		return 4
	}
	return 5
}

// count adds (d = 1) or takes back (d = -1) one installed route.
func (r *record) count(in routeEntry, d int) {
	if in.adopted {
		r.adopted += d
	} else {
		r.kinds[kindIndex(in.kind)] += d
	}
	if in.kr.nhid != 0 {
		r.nhRef(in.kr.nhid, d)
	}
}

// recount counts the installed routes again from nothing (after a dump).
func (r *record) recount(routes map[routeKey]routeEntry) {
	r.kinds = [len(routeKinds)]int{}
	r.adopted = 0
	for id, e := range r.nexthops {
		e.refs = 0
		r.nhIdle[id] = struct{}{}
	}
	for _, in := range routes {
		r.count(in, 1)
	}
}

func (r *record) dropLink(name string) {
	if _, ok := r.links[name]; ok {
		delete(r.links, name)
		r.linksGen++
	}
}

func (r *record) dropLinks() {
	clear(r.links)
	r.linksGen++
}
