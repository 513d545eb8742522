package routing

import (
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// routeKey identifies a route in the main table as the kernel does for IPv4 (tos is always
// 0 here): one destination, one metric.
type routeKey struct {
	dst    netip.Prefix
	metric int
}

// kroute is a route as the kernel holds it, reduced to what tabby sets. Two kroutes are
// equal exactly when replacing one by the other would change nothing tabby cares about.
type kroute struct {
	dst       netip.Prefix
	metric    int
	blackhole bool
	gw        netip.Addr
	link      int
	onlink    bool
	mtu       int
}

func (r kroute) key() routeKey { return routeKey{dst: r.dst, metric: r.metric} }

// netlink builds the request for r with the given protocol, in the main table.
func (r kroute) netlink(protocol int) *netlink.Route {
	nr := &netlink.Route{
		Dst:      &net.IPNet{IP: r.dst.Addr().AsSlice(), Mask: net.CIDRMask(r.dst.Bits(), 32)},
		Protocol: netlink.RouteProtocol(protocol),
		Table:    unix.RT_TABLE_MAIN,
		Priority: r.metric,
		Type:     unix.RTN_UNICAST,
		MTU:      r.mtu,
	}
	if r.blackhole {
		nr.Type = unix.RTN_BLACKHOLE
		return nr
	}
	if r.gw.IsValid() {
		nr.Gw = r.gw.AsSlice()
	}
	nr.LinkIndex = r.link
	if r.onlink {
		nr.Flags = int(netlink.FLAG_ONLINK)
	}
	return nr
}

// fromNetlink reduces a route read from the kernel. ok is false for what tabby never writes
// (IPv6, multipath).
func fromNetlink(nr netlink.Route) (kroute, bool) {
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
	return r, true
}

// installed is one route of tabby's protocol that the kernel has, as far as tabby knows.
type installed struct {
	kr   kroute
	kind RouteKind
	// adopted marks a route tabby found in the kernel (a previous run's, or one someone
	// else wrote with tabby's protocol) and has not matched to its desired state yet. An
	// unwanted adopted route is swept only once the first full sync is done.
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

// record is the reconciler's knowledge of what the kernel holds: the state it really
// reached, updated after every successful operation and from kernel events and dumps.
type record struct {
	routes map[routeKey]installed
	// conflicts are wanted routes whose key the kernel holds under another protocol. They
	// are left alone (SPEC §5: only tabby's protocol is ever changed) and reported.
	conflicts map[routeKey]int
	neighs    map[netip.Addr]string // on vxlan.tabby: tunnel address → MAC text
	fdb       map[string]netip.Addr // on vxlan.tabby: MAC text → underlay address
	links     map[string]int        // name → ifindex of the devices routes use
	ipip      devRecord
	vxlan     devRecord
}

func newRecord() *record {
	return &record{
		routes:    map[routeKey]installed{},
		conflicts: map[routeKey]int{},
		neighs:    map[netip.Addr]string{},
		fdb:       map[string]netip.Addr{},
		links:     map[string]int{},
	}
}
