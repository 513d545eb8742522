package routing

import (
	"errors"
	"fmt"
	"net"
	"strings"
	"sync/atomic"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// netlinker is the part of netlink the reconciler uses. *netlink.Handle implements it; the
// tests implement it with a fake kernel that renders its state as text.
type netlinker interface {
	// RouteWrites, RouteDelete, RouteDump and the nexthop calls are tabby's own codec (rtnl.go): the
	// library knows neither nexthop objects nor routes that use them.
	RouteWrites(ws []routeWrite) []writeAnswer
	RouteDelete(r *nlRoute, nhid uint32) (nhErr, err error)
	RouteDump(f func(nlRoute) bool) error
	NexthopDel(id uint32) error
	NexthopDump(f func(nexthop) bool) error
	// The library's route calls serve what needs no nexthop id: deletes by key, and the
	// host's own routes (ReadUnderlay, Cleanup).
	RouteDel(*netlink.Route) error
	RouteListFilteredIter(family int, filter *netlink.Route, mask uint64, f func(netlink.Route) bool) error

	LinkByName(name string) (netlink.Link, error)
	LinkList() ([]netlink.Link, error)
	LinkAdd(netlink.Link) error
	LinkDel(netlink.Link) error
	LinkSetUp(netlink.Link) error
	LinkSetDown(netlink.Link) error
	LinkSetMTU(netlink.Link, int) error
	LinkSetHardwareAddr(netlink.Link, net.HardwareAddr) error

	AddrList(link netlink.Link, family int) ([]netlink.Addr, error)
	AddrReplace(netlink.Link, *netlink.Addr) error
	AddrDel(netlink.Link, *netlink.Addr) error

	NeighSet(*netlink.Neigh) error
	NeighDel(*netlink.Neigh) error
	NeighList(linkIndex, family int) ([]netlink.Neigh, error)
}

// eventSource delivers the kernel's route, nexthop and link notifications. A channel is closed when
// its subscription dies (typically the socket overflowed and events were lost); the
// reconciler then subscribes again and resynchronises in full.
type eventSource interface {
	subscribeRoutes(done <-chan struct{}) (<-chan routeUpdate, error)
	subscribeLinks(done <-chan struct{}) (<-chan netlink.LinkUpdate, error)
}

// eventBuffer is the channel depth of a subscription. The socket buffer behind it is set
// large (subscribeBuffer) so that the echo of a burst of our own changes is rarely lost;
// that buffer is the kernel's memory and holds tens of thousands of notifications, while
// each slot of the channel is a decoded routeUpdate (about 400 bytes) on tabbyd's heap,
// allocated up front: 4,096 of them were 1.5 MB of a 5,000-node daemon's 23 MB heap.
const (
	eventBuffer     = 512
	subscribeBuffer = 8 << 20
)

// handleSource subscribes in the namespace a real handle is bound to.
type handleSource struct {
	ns *netns.NsHandle // nil: the caller's namespace
}

func (s handleSource) subscribeRoutes(done <-chan struct{}) (<-chan routeUpdate, error) {
	ch, err := subscribeRouteEvents(s.ns, done, true)
	if err != nil {
		// Forcing the buffer size needs CAP_NET_ADMIN; settle for what the kernel allows.
		ch, err = subscribeRouteEvents(s.ns, done, false)
	}
	return ch, err
}

func (s handleSource) subscribeLinks(done <-chan struct{}) (<-chan netlink.LinkUpdate, error) {
	ch := make(chan netlink.LinkUpdate, eventBuffer)
	opts := netlink.LinkSubscribeOptions{Namespace: s.ns, ReceiveBufferSize: subscribeBuffer, ReceiveBufferForceSize: true}
	if err := netlink.LinkSubscribeWithOptions(ch, done, opts); err != nil {
		ch = make(chan netlink.LinkUpdate, eventBuffer)
		opts.ReceiveBufferForceSize = false
		if err := netlink.LinkSubscribeWithOptions(ch, done, opts); err != nil {
			return nil, fmt.Errorf("subscribe to link events: %w", err)
		}
	}
	return ch, nil
}

// OpCounts counts netlink requests by kind. A request is one round trip to the kernel.
type OpCounts struct {
	RouteWrites uint64 // route adds, replaces and deletes
	NexthopOps  uint64 // nexthop deletes and dumps
	// Riders counts messages sent in the request of another, not a round trip more: a
	// nexthop object created with the first route through it or deleted with the last,
	// and the routes of a bulk pass, sent in groups.
	Riders      uint64
	RouteDumps  uint64
	LinkOps     uint64 // LinkByName, LinkAdd, LinkDel, LinkSet*
	AddrOps     uint64
	NeighWrites uint64 // neighbour and FDB entries
	NeighDumps  uint64
}

// Total is the number of netlink requests (round trips).
func (c OpCounts) Total() uint64 {
	return c.RouteWrites + c.NexthopOps + c.RouteDumps + c.LinkOps + c.AddrOps + c.NeighWrites + c.NeighDumps
}

// counting wraps a netlinker and counts its requests, for Status and the benchmarks.
type counting struct {
	nl                                                    netlinker
	routeWrites, nexthopOps, routeDumps, linkOps, addrOps atomic.Uint64
	riders                                                atomic.Uint64
	neighWrites, neighDumps                               atomic.Uint64
}

func (c *counting) counts() OpCounts {
	return OpCounts{
		RouteWrites: c.routeWrites.Load(), NexthopOps: c.nexthopOps.Load(), Riders: c.riders.Load(), RouteDumps: c.routeDumps.Load(), LinkOps: c.linkOps.Load(),
		AddrOps: c.addrOps.Load(), NeighWrites: c.neighWrites.Load(), NeighDumps: c.neighDumps.Load(),
	}
}

func (c *counting) RouteWrites(ws []routeWrite) []writeAnswer {
	c.routeWrites.Add(1)
	riders := uint64(len(ws) - 1)
	for _, w := range ws {
		if w.nh != nil {
			riders++
		}
	}
	c.riders.Add(riders)
	return c.nl.RouteWrites(ws)
}
func (c *counting) RouteDelete(r *nlRoute, nhid uint32) (error, error) {
	c.routeWrites.Add(1)
	if nhid != 0 {
		c.riders.Add(1)
	}
	return c.nl.RouteDelete(r, nhid)
}
func (c *counting) RouteDump(f func(nlRoute) bool) error {
	c.routeDumps.Add(1)
	return c.nl.RouteDump(f)
}
func (c *counting) NexthopDel(id uint32) error { c.nexthopOps.Add(1); return c.nl.NexthopDel(id) }
func (c *counting) NexthopDump(f func(nexthop) bool) error {
	c.nexthopOps.Add(1)
	return c.nl.NexthopDump(f)
}
func (c *counting) RouteDel(r *netlink.Route) error { c.routeWrites.Add(1); return c.nl.RouteDel(r) }
func (c *counting) RouteListFilteredIter(family int, filter *netlink.Route, mask uint64, f func(netlink.Route) bool) error {
	c.routeDumps.Add(1)
	return c.nl.RouteListFilteredIter(family, filter, mask, f)
}
func (c *counting) LinkByName(name string) (netlink.Link, error) {
	c.linkOps.Add(1)
	return c.nl.LinkByName(name)
}
func (c *counting) LinkList() ([]netlink.Link, error) { c.linkOps.Add(1); return c.nl.LinkList() }
func (c *counting) LinkAdd(l netlink.Link) error      { c.linkOps.Add(1); return c.nl.LinkAdd(l) }
func (c *counting) LinkDel(l netlink.Link) error      { c.linkOps.Add(1); return c.nl.LinkDel(l) }
func (c *counting) LinkSetUp(l netlink.Link) error    { c.linkOps.Add(1); return c.nl.LinkSetUp(l) }
func (c *counting) LinkSetDown(l netlink.Link) error  { c.linkOps.Add(1); return c.nl.LinkSetDown(l) }
func (c *counting) LinkSetMTU(l netlink.Link, m int) error {
	c.linkOps.Add(1)
	return c.nl.LinkSetMTU(l, m)
}
func (c *counting) LinkSetHardwareAddr(l netlink.Link, a net.HardwareAddr) error {
	c.linkOps.Add(1)
	return c.nl.LinkSetHardwareAddr(l, a)
}
func (c *counting) AddrList(l netlink.Link, family int) ([]netlink.Addr, error) {
	c.addrOps.Add(1)
	return c.nl.AddrList(l, family)
}
func (c *counting) AddrReplace(l netlink.Link, a *netlink.Addr) error {
	c.addrOps.Add(1)
	return c.nl.AddrReplace(l, a)
}
func (c *counting) AddrDel(l netlink.Link, a *netlink.Addr) error {
	c.addrOps.Add(1)
	return c.nl.AddrDel(l, a)
}
func (c *counting) NeighSet(n *netlink.Neigh) error { c.neighWrites.Add(1); return c.nl.NeighSet(n) }
func (c *counting) NeighDel(n *netlink.Neigh) error { c.neighWrites.Add(1); return c.nl.NeighDel(n) }
func (c *counting) NeighList(idx, family int) ([]netlink.Neigh, error) {
	c.neighDumps.Add(1)
	return c.nl.NeighList(idx, family)
}

// ErrNoIPIP is the problem reported when the kernel cannot create an IP-in-IP device. Its
// text is what readiness and status print (SPEC §9).
var ErrNoIPIP = errors.New("kernel has no ipip support")

// ErrNoVXLAN is the problem reported when the kernel cannot create a VXLAN device.
var ErrNoVXLAN = errors.New("kernel has no vxlan support")

// isUnsupportedKind reports whether a LinkAdd failed because the kernel has no driver for
// the link kind (the module is missing and cannot be loaded).
func isUnsupportedKind(err error) bool {
	return errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.ENOENT) ||
		strings.Contains(strings.ToLower(err.Error()), "operation not supported")
}

// isGone reports whether a delete failed only because the object was already gone.
func isGone(err error) bool {
	return errors.Is(err, unix.ESRCH) || errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENODEV)
}

// isNotFound reports whether a lookup failed because the link does not exist.
func isNotFound(err error) bool {
	var nf netlink.LinkNotFoundError
	return errors.As(err, &nf) || errors.Is(err, unix.ENODEV) || errors.Is(err, unix.ENOENT)
}
