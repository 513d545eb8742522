package routing

import (
	"cmp"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/tabby-net/tabby/internal/ipprefix"
)

// fakeKernel is an in-memory network namespace that answers the reconciler's netlink
// requests the way Linux does where it matters: exclusive adds fail with EEXIST, deletes of
// what is not there with ESRCH/ENOENT, routes through a device that is down fail with
// ENETDOWN, a device that goes down or away takes its routes and nexthop objects with it
// without a route notification, deleting a nexthop object deletes the routes that use it
// (silently too), a route dump reports a nexthop's gateway beside its id (the kernel's
// compatibility mode), the ipip fallback device cannot be deleted, a kernel without ipip answers
// "operation not supported". It publishes route and link notifications, including the
// echo of the caller's own changes, and drops (closes) a subscription that overflows.
// String renders the whole state as sorted text.
type fakeKernel struct {
	mu        sync.Mutex
	links     map[int]*fakeLink
	nextIndex int
	routes    map[routeKey]nlRoute
	nexthops  map[uint32]nexthop
	neighs    map[string]netlink.Neigh

	noNexthops   bool // the kernel predates nexthop objects (Linux < 5.3)
	noIPIP       bool // the kernel has no ipip module
	ipipFallback int  // index of the fallback tunl0, 0 if none

	// fail, when set, is asked before each mutating request; an error it returns is the
	// request's answer.
	fail func(op string, arg any) error

	routeSubs map[chan routeUpdate]bool
	linkSubs  map[chan netlink.LinkUpdate]bool
	subBuffer int

	ops []string // mutating requests, in order: "RouteAdd 10.0.0.0/26", …
}

type fakeLink struct {
	link  netlink.Link
	addrs []netlink.Addr
}

// newFakeKernel returns a namespace with lo and eth0 (10.30.0.206/24, MTU 9001, up), the
// connected route and a default route via 10.30.0.1: worker-1 of the articles.
func newFakeKernel() *fakeKernel {
	fk := &fakeKernel{
		links:     map[int]*fakeLink{},
		nextIndex: 1,
		routes:    map[routeKey]nlRoute{},
		nexthops:  map[uint32]nexthop{},
		neighs:    map[string]netlink.Neigh{},
		routeSubs: map[chan routeUpdate]bool{},
		linkSubs:  map[chan netlink.LinkUpdate]bool{},
		subBuffer: 1024,
	}
	fk.addLink(&netlink.Device{LinkAttrs: netlink.LinkAttrs{Name: "lo", MTU: 65536, Flags: net.FlagUp | net.FlagLoopback}})
	eth := fk.addLink(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0", MTU: 9001, Flags: net.FlagUp}})
	fk.links[eth].addrs = []netlink.Addr{{IPNet: mustIPNet("10.30.0.206/24"), LinkIndex: eth}}
	fk.putRoute(nlRoute{Route: netlink.Route{Dst: mustIPNet("10.30.0.0/24"), LinkIndex: eth, Protocol: unix.RTPROT_KERNEL, Scope: netlink.SCOPE_LINK, Table: unix.RT_TABLE_MAIN, Type: unix.RTN_UNICAST}})
	fk.putRoute(nlRoute{Route: netlink.Route{Dst: mustIPNet("0.0.0.0/0"), Gw: net.ParseIP("10.30.0.1").To4(), LinkIndex: eth, Protocol: unix.RTPROT_BOOT, Table: unix.RT_TABLE_MAIN, Type: unix.RTN_UNICAST}})
	return fk
}

func mustIPNet(s string) *net.IPNet {
	p := netip.MustParsePrefix(s)
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), 32)}
}

// withIPIPFallback makes the namespace look like one where the ipip module is loaded: a
// tunl0 fallback device exists, down, and cannot be deleted.
func (fk *fakeKernel) withIPIPFallback() *fakeKernel {
	fk.ipipFallback = fk.addLink(&netlink.Iptun{LinkAttrs: netlink.LinkAttrs{Name: DeviceIPIP, MTU: 1480}})
	return fk
}

func (fk *fakeKernel) addLink(l netlink.Link) int {
	idx := fk.nextIndex
	fk.nextIndex++
	l.Attrs().Index = idx
	fk.links[idx] = &fakeLink{link: l}
	return idx
}

func (fk *fakeKernel) byName(name string) (int, *fakeLink) {
	for idx, l := range fk.links {
		if l.link.Attrs().Name == name {
			return idx, l
		}
	}
	return 0, nil
}

// copyLink returns an independent copy, as a netlink answer is.
func copyLink(l netlink.Link) netlink.Link {
	switch v := l.(type) {
	case *netlink.Device:
		c := *v
		return &c
	case *netlink.Veth:
		c := *v
		return &c
	case *netlink.Iptun:
		c := *v
		return &c
	case *netlink.Vxlan:
		c := *v
		c.HardwareAddr = slices.Clone(v.HardwareAddr)
		return &c
	}
	panic(fmt.Sprintf("fake kernel: unexpected link type %T", l))
}

func (fk *fakeKernel) check(op string, arg any) error {
	fk.ops = append(fk.ops, fmt.Sprintf("%s %v", op, arg))
	if fk.fail != nil {
		return fk.fail(op, arg)
	}
	return nil
}

func fakeKey(r *netlink.Route) routeKey {
	kr, _ := fromNetlink(nlRoute{Route: *r})
	return kr.key()
}

func (fk *fakeKernel) putRoute(r nlRoute) {
	if r.Table == 0 {
		r.Table = unix.RT_TABLE_MAIN
	}
	fk.routes[fakeKey(&r.Route)] = r
}

// compat is a route as a dump or notification reports it: a route that uses a nexthop
// object also carries the object's gateway, device and onlink flag.
func (fk *fakeKernel) compat(r nlRoute) nlRoute {
	c := fk.stored(&r)
	if nh, ok := fk.nexthops[r.NHID]; ok && r.NHID != 0 {
		c.LinkIndex = nh.LinkIndex
		if nh.Gw.IsValid() {
			c.Gw = nh.Gw.AsSlice()
		}
		if nh.OnLink {
			c.Flags |= int(netlink.FLAG_ONLINK)
		}
	}
	return c
}

// checkNextHop checks a gateway on a device as fib_check_nh does, and finds the device of a
// gateway that is reached through a connected route (link 0).
func (fk *fakeKernel) checkNextHop(gw net.IP, link int, onlink bool) (int, error) {
	if link != 0 {
		l, ok := fk.links[link]
		if !ok {
			return 0, unix.ENODEV
		}
		if l.link.Attrs().Flags&net.FlagUp == 0 {
			return 0, unix.ENETDOWN
		}
	}
	if gw == nil || onlink {
		if link == 0 {
			return 0, unix.EINVAL
		}
		return link, nil
	}
	addr, _ := netip.AddrFromSlice(gw)
	for _, c := range fk.routes {
		if c.Gw != nil || c.NHID != 0 || c.Type != unix.RTN_UNICAST || (link != 0 && c.LinkIndex != link) {
			continue
		}
		if kr, ok := fromNetlink(c); ok && kr.dst.Contains(addr.Unmap()) {
			return c.LinkIndex, nil
		}
	}
	return 0, unix.ENETUNREACH
}

// validate checks a route's next hop as fib_check_nh does, and fills in the device of a
// gateway that is reached through a connected route.
func (fk *fakeKernel) validate(r *nlRoute) error {
	if r.Dst == nil {
		return unix.EINVAL
	}
	if r.Type == unix.RTN_BLACKHOLE {
		r.LinkIndex, r.Gw, r.Flags, r.NHID = 0, nil, 0, 0
		return nil
	}
	if r.NHID != 0 {
		// "Nexthop specification and nexthop id are mutually exclusive"
		if r.Gw != nil || r.LinkIndex != 0 {
			return unix.EINVAL
		}
		if _, ok := fk.nexthops[r.NHID]; !ok {
			return unix.EINVAL
		}
		return nil
	}
	link, err := fk.checkNextHop(r.Gw, r.LinkIndex, r.Flags&int(netlink.FLAG_ONLINK) != 0)
	r.LinkIndex = link
	return err
}

func (fk *fakeKernel) stored(r *nlRoute) nlRoute {
	c := *r
	c.Dst = &net.IPNet{IP: slices.Clone(r.Dst.IP), Mask: slices.Clone(r.Dst.Mask)}
	c.Gw = slices.Clone(r.Gw)
	if c.Table == 0 {
		c.Table = unix.RT_TABLE_MAIN
	}
	if c.Type == 0 {
		c.Type = unix.RTN_UNICAST
	}
	c.Family = netlink.FAMILY_V4
	return c
}

// RouteWrites logs each write as "RouteAdd <dst>" or "RouteReplace <dst>", after
// "NexthopAdd <id>" for a nexthop object that comes with it. As the kernel does with a
// batch, it handles the messages in order and answers each.
func (fk *fakeKernel) RouteWrites(ws []routeWrite) []writeAnswer {
	fk.mu.Lock()
	defer fk.mu.Unlock()
	out := make([]writeAnswer, len(ws))
	for i, w := range ws {
		if w.nh != nil {
			out[i].nhErr = fk.addNexthop(w.nh)
		}
		out[i].err = fk.writeRoute(&w.route, w.replace)
	}
	return out
}

func (fk *fakeKernel) writeRoute(r *nlRoute, replace bool) error {
	op, flags := "RouteAdd", uint16(unix.NLM_F_CREATE|unix.NLM_F_EXCL)
	if replace {
		op, flags = "RouteReplace", unix.NLM_F_CREATE|unix.NLM_F_REPLACE
	}
	if err := fk.check(op, r.Dst); err != nil {
		return err
	}
	c := fk.stored(r)
	if _, ok := fk.routes[fakeKey(&c.Route)]; ok && !replace {
		return unix.EEXIST
	}
	if err := fk.validate(&c); err != nil {
		return err
	}
	fk.putRoute(c)
	fk.notifyRoute(unix.RTM_NEWROUTE, flags, c)
	return nil
}

func (fk *fakeKernel) RouteDump(f func(nlRoute) bool) error {
	fk.mu.Lock()
	var list []nlRoute
	for _, r := range fk.sortedRoutes() {
		if r.Table == unix.RT_TABLE_MAIN {
			list = append(list, fk.compat(r))
		}
	}
	fk.mu.Unlock()
	for _, r := range list {
		if !f(r) {
			break
		}
	}
	return nil
}

// externalNexthopAdd creates a nexthop object as `ip nexthop add` would.
func (fk *fakeKernel) externalNexthopAdd(nh nexthop) error {
	fk.mu.Lock()
	defer fk.mu.Unlock()
	return fk.addNexthop(&nh)
}

func (fk *fakeKernel) addNexthop(nh *nexthop) error {
	if err := fk.check("NexthopAdd", nh.ID); err != nil {
		return err
	}
	if fk.noNexthops {
		return unix.EOPNOTSUPP
	}
	if _, ok := fk.nexthops[nh.ID]; ok {
		return unix.EEXIST
	}
	var gw net.IP
	if nh.Gw.IsValid() {
		gw = nh.Gw.AsSlice()
	}
	if nh.LinkIndex == 0 {
		return unix.EINVAL
	}
	if _, err := fk.checkNextHop(gw, nh.LinkIndex, nh.OnLink); err != nil {
		return err
	}
	fk.nexthops[nh.ID] = *nh
	fk.notifyNexthop(unix.RTM_NEWNEXTHOP, *nh)
	return nil
}

func (fk *fakeKernel) NexthopDel(id uint32) error {
	fk.mu.Lock()
	defer fk.mu.Unlock()
	if err := fk.check("NexthopDel", id); err != nil {
		return err
	}
	return fk.delNexthop(id)
}

func (fk *fakeKernel) delNexthop(id uint32) error {
	if fk.noNexthops {
		return unix.EOPNOTSUPP
	}
	nh, ok := fk.nexthops[id]
	if !ok {
		return unix.ENOENT
	}
	fk.dropNexthop(id)
	fk.notifyNexthop(unix.RTM_DELNEXTHOP, nh)
	return nil
}

// dropNexthop removes a nexthop object and, silently, the routes that use it.
func (fk *fakeKernel) dropNexthop(id uint32) {
	delete(fk.nexthops, id)
	for k, r := range fk.routes {
		if r.NHID == id {
			delete(fk.routes, k)
		}
	}
}

func (fk *fakeKernel) NexthopDump(f func(nexthop) bool) error {
	fk.mu.Lock()
	if fk.noNexthops {
		fk.mu.Unlock()
		return unix.EOPNOTSUPP
	}
	list := slices.SortedFunc(maps.Values(fk.nexthops), func(a, b nexthop) int { return cmp.Compare(a.ID, b.ID) })
	fk.mu.Unlock()
	for _, nh := range list {
		if !f(nh) {
			break
		}
	}
	return nil
}

// RouteDelete logs its request as "RouteDel <dst>", then "NexthopDel <id>" for the object
// that goes with it.
func (fk *fakeKernel) RouteDelete(r *nlRoute, nhid uint32) (nhErr, err error) {
	fk.mu.Lock()
	defer fk.mu.Unlock()
	err = fk.delRoute(&r.Route)
	if nhid != 0 {
		if nhErr = fk.check("NexthopDel", nhid); nhErr == nil {
			nhErr = fk.delNexthop(nhid)
		}
	}
	return nhErr, err
}

func (fk *fakeKernel) RouteDel(r *netlink.Route) error {
	fk.mu.Lock()
	defer fk.mu.Unlock()
	return fk.delRoute(r)
}

func (fk *fakeKernel) delRoute(r *netlink.Route) error {
	if err := fk.check("RouteDel", r.Dst); err != nil {
		return err
	}
	key := fakeKey(r)
	have, ok := fk.routes[key]
	if !ok || (r.Protocol != 0 && have.Protocol != r.Protocol) {
		return unix.ESRCH
	}
	delete(fk.routes, key)
	fk.notifyRoute(unix.RTM_DELROUTE, 0, have)
	return nil
}

func (fk *fakeKernel) RouteListFilteredIter(family int, filter *netlink.Route, mask uint64, f func(netlink.Route) bool) error {
	fk.mu.Lock()
	var list []netlink.Route
	for _, r := range fk.sortedRoutes() {
		if mask&netlink.RT_FILTER_PROTOCOL != 0 && r.Protocol != filter.Protocol {
			continue
		}
		list = append(list, fk.compat(r).Route)
	}
	fk.mu.Unlock()
	for _, r := range list {
		if !f(r) {
			break
		}
	}
	return nil
}

func (fk *fakeKernel) sortedRoutes() []nlRoute {
	keys := make([]routeKey, 0, len(fk.routes))
	for k := range fk.routes {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b routeKey) int {
		if c := ipprefix.Compare(a.prefix(), b.prefix()); c != 0 {
			return c
		}
		return cmp.Compare(a.metric, b.metric)
	})
	out := make([]nlRoute, len(keys))
	for i, k := range keys {
		out[i] = fk.routes[k]
	}
	return out
}

// flushLink drops what goes with a device that goes down or away: its routes and nexthop
// objects (silently, as IPv4 does), and when it is deleted its neighbours.
func (fk *fakeKernel) flushLink(idx int, deleted bool) {
	for k, r := range fk.routes {
		if r.LinkIndex == idx {
			delete(fk.routes, k)
		}
	}
	for id, nh := range fk.nexthops {
		if nh.LinkIndex == idx {
			fk.dropNexthop(id)
		}
	}
	if deleted {
		for k, n := range fk.neighs {
			if n.LinkIndex == idx {
				delete(fk.neighs, k)
			}
		}
	}
}

func (fk *fakeKernel) LinkByName(name string) (netlink.Link, error) {
	fk.mu.Lock()
	defer fk.mu.Unlock()
	if _, l := fk.byName(name); l != nil {
		return copyLink(l.link), nil
	}
	return nil, netlink.LinkNotFoundError{}
}

func (fk *fakeKernel) LinkList() ([]netlink.Link, error) {
	fk.mu.Lock()
	defer fk.mu.Unlock()
	var out []netlink.Link
	for _, l := range fk.links {
		out = append(out, copyLink(l.link))
	}
	return out, nil
}

func (fk *fakeKernel) LinkAdd(l netlink.Link) error {
	fk.mu.Lock()
	defer fk.mu.Unlock()
	if err := fk.check("LinkAdd", l.Attrs().Name); err != nil {
		return err
	}
	if _, ok := l.(*netlink.Iptun); ok && fk.noIPIP {
		return unix.EOPNOTSUPP
	}
	if _, have := fk.byName(l.Attrs().Name); have != nil {
		return unix.EEXIST
	}
	c := copyLink(l)
	a := c.Attrs()
	a.Flags &^= net.FlagUp
	if a.MTU == 0 {
		a.MTU = 1500
	}
	if v, ok := c.(*netlink.Vxlan); ok {
		if _, ok := fk.links[v.VtepDevIndex]; !ok {
			return unix.ENODEV
		}
		if len(a.HardwareAddr) == 0 {
			a.HardwareAddr = net.HardwareAddr{0xaa, 0, 0, 0, 0, byte(fk.nextIndex)}
		}
	}
	idx := fk.addLink(c)
	fk.notifyLink(unix.RTM_NEWLINK, fk.links[idx].link)
	return nil
}

func (fk *fakeKernel) LinkDel(l netlink.Link) error {
	fk.mu.Lock()
	defer fk.mu.Unlock()
	if err := fk.check("LinkDel", l.Attrs().Name); err != nil {
		return err
	}
	idx := l.Attrs().Index
	have, ok := fk.links[idx]
	if !ok {
		return unix.ENODEV
	}
	if idx == fk.ipipFallback {
		return nil // the kernel ignores deleting the fallback device
	}
	delete(fk.links, idx)
	fk.flushLink(idx, true)
	fk.notifyLink(unix.RTM_DELLINK, have.link)
	return nil
}

func (fk *fakeKernel) setLink(op string, l netlink.Link, change func(a *netlink.LinkAttrs)) error {
	fk.mu.Lock()
	defer fk.mu.Unlock()
	if err := fk.check(op, l.Attrs().Name); err != nil {
		return err
	}
	have, ok := fk.links[l.Attrs().Index]
	if !ok {
		return unix.ENODEV
	}
	wasUp := have.link.Attrs().Flags&net.FlagUp != 0
	change(have.link.Attrs())
	if wasUp && have.link.Attrs().Flags&net.FlagUp == 0 {
		fk.flushLink(l.Attrs().Index, false)
	}
	fk.notifyLink(unix.RTM_NEWLINK, have.link)
	return nil
}

func (fk *fakeKernel) LinkSetUp(l netlink.Link) error {
	return fk.setLink("LinkSetUp", l, func(a *netlink.LinkAttrs) { a.Flags |= net.FlagUp })
}

func (fk *fakeKernel) LinkSetDown(l netlink.Link) error {
	return fk.setLink("LinkSetDown", l, func(a *netlink.LinkAttrs) { a.Flags &^= net.FlagUp })
}

func (fk *fakeKernel) LinkSetMTU(l netlink.Link, mtu int) error {
	return fk.setLink("LinkSetMTU", l, func(a *netlink.LinkAttrs) { a.MTU = mtu })
}

func (fk *fakeKernel) LinkSetHardwareAddr(l netlink.Link, mac net.HardwareAddr) error {
	return fk.setLink("LinkSetHardwareAddr", l, func(a *netlink.LinkAttrs) { a.HardwareAddr = slices.Clone(mac) })
}

func (fk *fakeKernel) AddrList(l netlink.Link, family int) ([]netlink.Addr, error) {
	fk.mu.Lock()
	defer fk.mu.Unlock()
	var out []netlink.Addr
	for idx, fl := range fk.links {
		if l != nil && idx != l.Attrs().Index {
			continue
		}
		for _, a := range fl.addrs {
			a.LinkIndex = idx
			out = append(out, a)
		}
	}
	return out, nil
}

func (fk *fakeKernel) AddrReplace(l netlink.Link, a *netlink.Addr) error {
	fk.mu.Lock()
	defer fk.mu.Unlock()
	if err := fk.check("AddrReplace", a.IPNet); err != nil {
		return err
	}
	fl, ok := fk.links[l.Attrs().Index]
	if !ok {
		return unix.ENODEV
	}
	fl.addrs = slices.DeleteFunc(fl.addrs, func(x netlink.Addr) bool { return x.IPNet.String() == a.IPNet.String() })
	fl.addrs = append(fl.addrs, netlink.Addr{IPNet: a.IPNet})
	return nil
}

func (fk *fakeKernel) AddrDel(l netlink.Link, a *netlink.Addr) error {
	fk.mu.Lock()
	defer fk.mu.Unlock()
	if err := fk.check("AddrDel", a.IPNet); err != nil {
		return err
	}
	fl, ok := fk.links[l.Attrs().Index]
	if !ok {
		return unix.ENODEV
	}
	n := len(fl.addrs)
	fl.addrs = slices.DeleteFunc(fl.addrs, func(x netlink.Addr) bool { return x.IPNet.String() == a.IPNet.String() })
	if len(fl.addrs) == n {
		return unix.EADDRNOTAVAIL
	}
	return nil
}

func neighKey(n *netlink.Neigh) string {
	if n.Family == unix.AF_BRIDGE {
		return fmt.Sprintf("%d/fdb/%s", n.LinkIndex, n.HardwareAddr)
	}
	return fmt.Sprintf("%d/neigh/%s", n.LinkIndex, net.IP(n.IP))
}

func (fk *fakeKernel) NeighSet(n *netlink.Neigh) error {
	fk.mu.Lock()
	defer fk.mu.Unlock()
	if err := fk.check("NeighSet", neighKey(n)); err != nil {
		return err
	}
	if _, ok := fk.links[n.LinkIndex]; !ok {
		return unix.ENODEV
	}
	c := *n
	c.IP = slices.Clone(n.IP)
	c.HardwareAddr = slices.Clone(n.HardwareAddr)
	fk.neighs[neighKey(n)] = c
	return nil
}

func (fk *fakeKernel) NeighDel(n *netlink.Neigh) error {
	fk.mu.Lock()
	defer fk.mu.Unlock()
	if err := fk.check("NeighDel", neighKey(n)); err != nil {
		return err
	}
	k := neighKey(n)
	if _, ok := fk.neighs[k]; !ok {
		return unix.ENOENT
	}
	delete(fk.neighs, k)
	return nil
}

func (fk *fakeKernel) NeighList(idx, family int) ([]netlink.Neigh, error) {
	fk.mu.Lock()
	defer fk.mu.Unlock()
	var out []netlink.Neigh
	for _, n := range fk.neighs {
		if (idx == 0 || n.LinkIndex == idx) && (family == 0 || n.Family == family) {
			out = append(out, n)
		}
	}
	return out, nil
}

// Subscriptions. A full channel is closed, as the netlink library does when the socket
// overflows (ENOBUFS).

func (fk *fakeKernel) subscribeRoutes(done <-chan struct{}) (<-chan routeUpdate, error) {
	fk.mu.Lock()
	defer fk.mu.Unlock()
	ch := make(chan routeUpdate, fk.subBuffer)
	fk.routeSubs[ch] = true
	go func() {
		<-done
		fk.mu.Lock()
		defer fk.mu.Unlock()
		if fk.routeSubs[ch] {
			delete(fk.routeSubs, ch)
			close(ch)
		}
	}()
	return ch, nil
}

func (fk *fakeKernel) subscribeLinks(done <-chan struct{}) (<-chan netlink.LinkUpdate, error) {
	fk.mu.Lock()
	defer fk.mu.Unlock()
	ch := make(chan netlink.LinkUpdate, fk.subBuffer)
	fk.linkSubs[ch] = true
	go func() {
		<-done
		fk.mu.Lock()
		defer fk.mu.Unlock()
		if fk.linkSubs[ch] {
			delete(fk.linkSubs, ch)
			close(ch)
		}
	}()
	return ch, nil
}

func (fk *fakeKernel) notifyRoute(typ uint16, flags uint16, r nlRoute) {
	fk.notify(routeUpdate{Type: typ, NlFlags: int(flags), Route: fk.compat(r)})
}

func (fk *fakeKernel) notifyNexthop(typ uint16, nh nexthop) {
	fk.notify(routeUpdate{Type: typ, Nexthop: nh})
}

func (fk *fakeKernel) notify(u routeUpdate) {
	for ch := range fk.routeSubs {
		select {
		case ch <- u:
		default:
			delete(fk.routeSubs, ch)
			close(ch)
		}
	}
}

func (fk *fakeKernel) notifyLink(typ uint16, l netlink.Link) {
	for ch := range fk.linkSubs {
		u := netlink.LinkUpdate{Link: copyLink(l)}
		u.Header.Type = typ
		select {
		case ch <- u:
		default:
			delete(fk.linkSubs, ch)
			close(ch)
		}
	}
}

// Someone else's hand.

// externalRouteDel deletes a route whatever its protocol, as `ip route del` would.
func (fk *fakeKernel) externalRouteDel(dst string) bool {
	fk.mu.Lock()
	defer fk.mu.Unlock()
	for k, r := range fk.routes {
		if k.prefix().String() == dst {
			delete(fk.routes, k)
			fk.notifyRoute(unix.RTM_DELROUTE, 0, r)
			return true
		}
	}
	return false
}

// externalNexthopDel deletes a nexthop object as `ip nexthop del id N` would.
func (fk *fakeKernel) externalNexthopDel(id uint32) bool {
	fk.mu.Lock()
	defer fk.mu.Unlock()
	return fk.delNexthop(id) == nil
}

// externalRouteAdd adds a route as `ip route add` would, with the given protocol.
func (fk *fakeKernel) externalRouteAdd(r netlink.Route) error {
	fk.mu.Lock()
	defer fk.mu.Unlock()
	c := fk.stored(&nlRoute{Route: r})
	if _, ok := fk.routes[fakeKey(&c.Route)]; ok {
		return unix.EEXIST
	}
	if err := fk.validate(&c); err != nil {
		return err
	}
	fk.putRoute(c)
	fk.notifyRoute(unix.RTM_NEWROUTE, unix.NLM_F_CREATE|unix.NLM_F_EXCL, c)
	return nil
}

// externalLinkDel deletes a device as `ip link del` would.
func (fk *fakeKernel) externalLinkDel(name string) bool {
	fk.mu.Lock()
	defer fk.mu.Unlock()
	idx, l := fk.byName(name)
	if l == nil || idx == fk.ipipFallback {
		return false
	}
	delete(fk.links, idx)
	fk.flushLink(idx, true)
	fk.notifyLink(unix.RTM_DELLINK, l.link)
	return true
}

// externalLinkDown sets a device down as `ip link set dev X down` would.
func (fk *fakeKernel) externalLinkDown(name string) bool {
	fk.mu.Lock()
	defer fk.mu.Unlock()
	idx, l := fk.byName(name)
	if l == nil || l.link.Attrs().Flags&net.FlagUp == 0 {
		return false
	}
	l.link.Attrs().Flags &^= net.FlagUp
	fk.flushLink(idx, false)
	fk.notifyLink(unix.RTM_NEWLINK, l.link)
	return true
}

// externalNeighDel deletes every neighbour and FDB entry of a device.
func (fk *fakeKernel) externalNeighFlush(name string) {
	fk.mu.Lock()
	defer fk.mu.Unlock()
	idx, _ := fk.byName(name)
	for k, n := range fk.neighs {
		if n.LinkIndex == idx {
			delete(fk.neighs, k)
		}
	}
}

func (fk *fakeKernel) opLog() []string {
	fk.mu.Lock()
	defer fk.mu.Unlock()
	return slices.Clone(fk.ops)
}

// String renders the namespace as sorted text: links (no indexes: they depend on the order
// of creation), neighbours, FDB entries, nexthop objects in `ip nexthop` form, routes in
// `ip route` form.
func (fk *fakeKernel) String() string {
	fk.mu.Lock()
	defer fk.mu.Unlock()
	name := func(idx int) string {
		if l, ok := fk.links[idx]; ok {
			return l.link.Attrs().Name
		}
		return fmt.Sprintf("if%d", idx)
	}
	var linkLines, neighLines []string
	for _, l := range fk.links {
		a := l.link.Attrs()
		var b strings.Builder
		fmt.Fprintf(&b, "link %s %s", a.Name, l.link.Type())
		if v, ok := l.link.(*netlink.Vxlan); ok {
			fmt.Fprintf(&b, " id %d local %s dev %s dstport %d", v.VxlanId, v.SrcAddr, name(v.VtepDevIndex), v.Port)
			if !v.Learning {
				b.WriteString(" nolearning")
			}
			fmt.Fprintf(&b, " lladdr %s", a.HardwareAddr)
		}
		fmt.Fprintf(&b, " mtu %d", a.MTU)
		if a.Flags&net.FlagUp != 0 {
			b.WriteString(" up")
		} else {
			b.WriteString(" down")
		}
		addrs := make([]string, 0, len(l.addrs))
		for _, ad := range l.addrs {
			addrs = append(addrs, ad.IPNet.String())
		}
		slices.Sort(addrs)
		for _, ad := range addrs {
			b.WriteString(" addr " + ad)
		}
		linkLines = append(linkLines, b.String())
	}
	slices.Sort(linkLines)
	for _, n := range fk.neighs {
		if n.Family == unix.AF_BRIDGE {
			neighLines = append(neighLines, fmt.Sprintf("fdb %s dev %s dst %s self permanent", n.HardwareAddr, name(n.LinkIndex), net.IP(n.IP)))
		} else {
			neighLines = append(neighLines, fmt.Sprintf("neigh %s dev %s lladdr %s PERMANENT", net.IP(n.IP), name(n.LinkIndex), n.HardwareAddr))
		}
	}
	slices.SortFunc(neighLines, func(a, b string) int {
		// neighbours before FDB entries, each sorted by address
		if ka, kb := strings.HasPrefix(a, "fdb"), strings.HasPrefix(b, "fdb"); ka != kb {
			if ka {
				return 1
			}
			return -1
		}
		return cmp.Compare(a, b)
	})
	var b strings.Builder
	for _, l := range linkLines {
		b.WriteString(l + "\n")
	}
	for _, l := range neighLines {
		b.WriteString(l + "\n")
	}
	// Nexthop ids are renumbered in the order of what the objects hold, so that namespaces
	// with the same forwarding state render the same whatever order their ids were
	// allocated in.
	nhs := slices.SortedFunc(maps.Values(fk.nexthops), func(a, b nexthop) int {
		return cmp.Or(a.Gw.Compare(b.Gw), strings.Compare(name(a.LinkIndex), name(b.LinkIndex)), cmp.Compare(a.ID, b.ID))
	})
	shown := make(map[uint32]uint32, len(nhs))
	for i, nh := range nhs {
		shown[nh.ID] = uint32(i + 1)
		fmt.Fprintf(&b, "nexthop id %d via %s dev %s proto %s", i+1, nh.Gw, name(nh.LinkIndex), protoName(netlink.RouteProtocol(nh.Protocol)))
		if nh.OnLink {
			b.WriteString(" onlink")
		}
		b.WriteString("\n")
	}
	for _, r := range fk.sortedRoutes() {
		c := fk.compat(r)
		c.NHID = shown[c.NHID]
		b.WriteString(renderRoute(c, name) + "\n")
	}
	return b.String()
}

func protoName(p netlink.RouteProtocol) string {
	switch int(p) {
	case DefaultProtocol:
		return ProtocolName
	case unix.RTPROT_KERNEL:
		return "kernel"
	case unix.RTPROT_BOOT:
		return "boot"
	case unix.RTPROT_STATIC:
		return "static"
	}
	return fmt.Sprint(int(p))
}

// renderRoute prints a route as `ip route` does.
func renderRoute(r nlRoute, name func(int) string) string {
	var b strings.Builder
	if r.Type == unix.RTN_BLACKHOLE {
		b.WriteString("blackhole ")
	}
	if ones, _ := r.Dst.Mask.Size(); ones == 0 {
		b.WriteString("default")
	} else {
		b.WriteString(r.Dst.String())
	}
	if r.NHID != 0 {
		fmt.Fprintf(&b, " nhid %d", r.NHID)
	}
	if r.Gw != nil {
		b.WriteString(" via " + r.Gw.String())
	}
	if r.LinkIndex != 0 {
		b.WriteString(" dev " + name(r.LinkIndex))
	}
	b.WriteString(" proto " + protoName(r.Protocol))
	if r.Scope == netlink.SCOPE_LINK {
		b.WriteString(" scope link")
	}
	if r.Priority != 0 {
		fmt.Fprintf(&b, " metric %d", r.Priority)
	}
	if r.Flags&int(netlink.FLAG_ONLINK) != 0 {
		b.WriteString(" onlink")
	}
	if r.MTU != 0 {
		fmt.Fprintf(&b, " mtu %d", r.MTU)
	}
	return b.String()
}
