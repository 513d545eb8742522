package routing

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"iter"
	"maps"
	"net"
	"net/netip"
	"slices"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/tabby-net/tabby/internal/ipprefix"
)

// passReport is what one reconciliation pass achieved.
type passReport struct {
	full     bool
	wanted   int
	failures int
	firstErr error
	problems []string
	// tunl0Wanted and vxlanWanted say which devices the applied state wants.
	tunl0Wanted, vxlanWanted bool
	// redoDevices: a device was recreated or found changed during the pass; look again.
	redoDevices bool
}

func (p *passReport) fail(err error) {
	p.failures++
	if p.firstErr == nil {
		p.firstErr = err
	}
}

func (p *passReport) problem(format string, args ...any) {
	p.problems = append(p.problems, fmt.Sprintf(format, args...))
}

// wantRoute is a desired route resolved to kernel terms.
type wantRoute struct {
	kr   kroute
	kind RouteKind
}

// linkSig captures every device index compiled routes depend on. When it changes, the
// desired routes are compiled again in full.
type linkSig struct {
	ipipOK, ipipUnsupported   bool
	ipipIndex                 int
	vxlanOK, vxlanUnsupported bool
	vxlanIndex                int
	linksGen                  uint64
}

func (k *Kernel) linkSig() linkSig {
	return linkSig{
		ipipOK: k.rec.ipip.ok, ipipUnsupported: k.rec.ipip.unsupported, ipipIndex: k.rec.ipip.index,
		vxlanOK: k.rec.vxlan.ok, vxlanUnsupported: k.rec.vxlan.unsupported, vxlanIndex: k.rec.vxlan.index,
		linksGen: k.rec.linksGen,
	}
}

// compiled is the desired state in kernel terms, kept from pass to pass so that a new
// desired state costs a merge of two sorted lists plus work for what changed, not a
// rebuild of every map.
type compiled struct {
	from   *State
	sorted bool // from is in Desired's sorted form, so it can be merged with the next
	sig    linkSig
	retry  bool // a device lookup failed: compile in full next time
	routes map[routeKey]wantRoute
	// keep holds desired routes that cannot be installed now (their device is missing or
	// unsupported), with the device: whatever the kernel has for them is not deleted.
	keep   map[routeKey]string
	neighs map[netip.Addr]string // tunnel address → MAC bytes
	fdb    map[string]netip.Addr // MAC bytes → underlay address
}

// dirty is the set of keys that may differ between the desired state and the record;
// all means every key.
type dirty[K comparable] struct {
	all  bool
	keys map[K]struct{}
}

func (d *dirty[K]) mark(k K) {
	if d.keys == nil {
		d.keys = map[K]struct{}{}
	}
	d.keys[k] = struct{}{}
}

// dirtyKeys are the keys a pass visits: every key of among when the whole set is dirty,
// else the marked ones.
func dirtyKeys[K comparable, V any](d *dirty[K], among map[K]V) iter.Seq[K] {
	if d.all {
		return maps.Keys(among)
	}
	return maps.Keys(d.keys)
}

// ctxCheckEvery is how many netlink requests a long loop makes between looks at its context.
const ctxCheckEvery = 1024

// pass makes one attempt to bring the kernel to want. The order is SPEC §5's: devices, then
// neighbours, FDB entries and routes are added, and only then is anything deleted (routes,
// then FDB entries, then neighbours, then devices). The record follows every successful
// operation, so after a partial failure it is the state really reached. Only keys that may
// differ are visited, unless the pass is full.
func (k *Kernel) pass(ctx context.Context, want *State, full bool) passReport {
	rep := passReport{full: full, wanted: len(want.Routes), tunl0Wanted: want.Tunl0 != nil, vxlanWanted: want.VXLAN != nil}
	k.pools = want.Pools
	k.pend.reset()
	k.installedWanted = 0
	if full {
		if err := k.resyncNexthops(); err != nil {
			rep.fail(err)
		}
		if err := k.resyncRoutes(want); err != nil {
			rep.fail(err)
		}
	}
	k.ensureDevices(&rep, want, full)
	if full {
		if err := k.resyncNeighbors(); err != nil {
			rep.fail(err)
		}
	}
	k.compile(&rep, want)
	k.addNeighbors(&rep, want)
	k.addRoutes(ctx, &rep)
	if ctx.Err() != nil {
		return rep
	}
	// Leftovers of a previous run are swept only once everything wanted is in place.
	sweep := k.isSynced || rep.failures == 0
	k.deleteRoutes(ctx, &rep, sweep)
	k.deleteNexthops(&rep, sweep)
	k.deleteNeighbors(&rep, want, sweep)
	k.removeDevices(&rep, want, full)
	k.settle()
	k.reportProblems(&rep)
	slices.Sort(rep.problems)
	return rep
}

// resyncRoutes replaces the record of routes by what the kernel really holds: one dump of
// the main table. Routes of tabby's protocol that the record did not know are adopted;
// routes of other protocols on a wanted prefix become conflicts.
func (k *Kernel) resyncRoutes(want *State) error {
	wantedDst := make(map[netip.Prefix]bool, len(want.Routes))
	for _, r := range want.Routes {
		wantedDst[r.Dst] = true
	}
	old := k.rec.routes
	routes := make(map[routeKey]installed, len(old))
	conflicts := map[routeKey]int{}
	err := k.nl.RouteDump(func(nr nlRoute) bool {
		kr, ok := k.fromKernel(nr)
		if !ok {
			return true
		}
		key := kr.key()
		if int(nr.Protocol) != k.proto {
			if key.metric == 0 && wantedDst[key.prefix()] {
				conflicts[key] = int(nr.Protocol)
			}
			return true
		}
		if prev, ok := old[key]; ok && prev.kr == kr {
			routes[key] = prev
		} else {
			routes[key] = installed{kr: kr, adopted: true}
		}
		return true
	})
	if err != nil {
		return fmt.Errorf("list the main routing table: %w", err)
	}
	k.rec.setRoutes(routes)
	k.rec.conflicts = conflicts
	k.routeDirty.all = true
	// Devices and link indexes are verified again by this pass.
	k.rec.ipip.ok, k.rec.ipip.unsupported = false, false
	k.rec.vxlan.ok, k.rec.vxlan.unsupported = false, false
	k.rec.dropLinks()
	return nil
}

// resyncNexthops replaces the record of nexthop objects by what the kernel holds: tabby's
// own (its protocol, a gateway on a device), and the ids of all others, which are never
// allocated. A kernel without nexthop objects (before Linux 5.3) makes routes name their
// gateway themselves from then on.
func (k *Kernel) resyncNexthops() error {
	if k.noNexthops {
		return nil
	}
	ours := map[uint32]nhKey{}
	foreign := map[uint32]struct{}{}
	err := k.nl.NexthopDump(func(nh nexthop) bool {
		if nh.Protocol == k.proto && !nh.Other {
			ours[nh.ID] = nhKey{gw: nh.Gw, link: nh.LinkIndex, onlink: nh.OnLink}
		} else {
			foreign[nh.ID] = struct{}{}
		}
		return true
	})
	switch {
	case err != nil && isNexthopUnsupported(err):
		k.noNexthops = true
		k.log.Info("the kernel has no nexthop objects: routes name their gateways themselves", "error", err)
		return nil
	case err != nil:
		return fmt.Errorf("list nexthop objects: %w", err)
	}
	k.rec.setNexthops(ours, foreign)
	return nil
}

// fromKernel reduces a route read from the kernel and, when it uses one of tabby's nexthop
// objects, takes its next hop from the record, which holds what the object really is
// (without the kernel's nexthop compatibility mode, the route carries only the id).
func (k *Kernel) fromKernel(nr nlRoute) (kroute, bool) {
	kr, ok := fromNetlink(nr)
	if ok && kr.nhid != 0 {
		if e, ours := k.rec.nexthops[kr.nhid]; ours {
			kr.gw, kr.link, kr.onlink = e.key.gw, e.key.link, e.key.onlink
		}
	}
	return kr, ok
}

// resyncNeighbors replaces the record of vxlan.tabby's neighbours and FDB entries by what
// the kernel holds.
func (k *Kernel) resyncNeighbors() error {
	neighs := map[netip.Addr]string{}
	fdb := map[string]netip.Addr{}
	if k.rec.vxlan.ok {
		idx := k.rec.vxlan.index
		list, err := k.nl.NeighList(idx, netlink.FAMILY_V4)
		if err != nil {
			return fmt.Errorf("list neighbours of %s: %w", DeviceVXLAN, err)
		}
		for _, n := range list {
			ip, ok := netip.AddrFromSlice(n.IP)
			if ok && n.State&netlink.NUD_PERMANENT != 0 && len(n.HardwareAddr) == 6 {
				neighs[ip.Unmap()] = string(n.HardwareAddr)
			}
		}
		list, err = k.nl.NeighList(idx, unix.AF_BRIDGE)
		if err != nil {
			return fmt.Errorf("list FDB entries of %s: %w", DeviceVXLAN, err)
		}
		for _, n := range list {
			ip, ok := netip.AddrFromSlice(n.IP)
			if ok && len(n.HardwareAddr) == 6 {
				fdb[string(n.HardwareAddr)] = ip.Unmap()
			}
		}
	}
	k.rec.neighs, k.rec.fdb = neighs, fdb
	k.neighDirty.all, k.fdbDirty.all = true, true
	return nil
}

// devIndex returns the interface index of a device routes go through. tunl0 and
// vxlan.tabby are the reconciler's own; any other name is looked up once and cached until
// a link event or a full resync says it changed.
func (k *Kernel) devIndex(name string) (int, error) {
	switch name {
	case DeviceIPIP:
		switch {
		case k.rec.ipip.ok:
			return k.rec.ipip.index, nil
		case k.rec.ipip.unsupported:
			return 0, ErrNoIPIP
		}
		return 0, fmt.Errorf("%s is not configured", DeviceIPIP)
	case DeviceVXLAN:
		switch {
		case k.rec.vxlan.ok:
			return k.rec.vxlan.index, nil
		case k.rec.vxlan.unsupported:
			return 0, ErrNoVXLAN
		}
		return 0, fmt.Errorf("%s is not configured", DeviceVXLAN)
	}
	if idx, ok := k.rec.links[name]; ok {
		return idx, nil
	}
	link, err := k.nl.LinkByName(name)
	if err != nil {
		return 0, fmt.Errorf("look up device %s: %w", name, err)
	}
	k.rec.links[name] = link.Attrs().Index
	return link.Attrs().Index, nil
}

// compile brings k.want to the desired state: in full when the devices routes depend on
// changed (or the state is not in Desired's sorted form), else by merging the previous
// desired lists with the new ones and marking what changed dirty.
func (k *Kernel) compile(rep *passReport, want *State) {
	w := &k.want
	sig := k.linkSig()
	if w.from == want && w.sig == sig && !w.retry {
		return
	}
	sorted := sortedState(want)
	if w.from != nil && w.sorted && sorted && w.sig == sig && !w.retry {
		k.compileDelta(rep, w.from, want)
	} else {
		k.compileAll(rep, want)
	}
	w.from, w.sig, w.sorted = want, sig, sorted
}

// sortedState reports whether a state's lists are sorted by key without duplicates, as
// Desired makes them; only such states can be merged.
func sortedState(s *State) bool {
	return sortedUnique(s.Routes, func(r Route) netip.Prefix { return r.Dst }, ipprefix.Compare) &&
		sortedUnique(s.Neighbors, func(n Neighbor) netip.Addr { return n.IP }, netip.Addr.Compare) &&
		sortedUnique(s.FDB, func(f FDBEntry) []byte { return f.MAC }, bytes.Compare)
}

func (k *Kernel) compileAll(rep *passReport, want *State) {
	w := &k.want
	if w.routes == nil {
		w.routes, w.keep = make(map[routeKey]wantRoute, len(want.Routes)), map[routeKey]string{}
		w.neighs, w.fdb = map[netip.Addr]string{}, map[string]netip.Addr{}
	}
	clear(w.routes)
	clear(w.keep)
	clear(w.neighs)
	clear(w.fdb)
	w.retry = false
	for _, r := range want.Routes {
		k.compileRoute(rep, r, false)
	}
	for _, n := range want.Neighbors {
		w.neighs[n.IP] = string(n.MAC)
	}
	for _, f := range want.FDB {
		w.fdb[string(f.MAC)] = f.Dst
	}
	k.routeDirty.all, k.neighDirty.all, k.fdbDirty.all = true, true, true
}

// compileRoute resolves one desired route into k.want; replace says a previous version of
// it may be there.
func (k *Kernel) compileRoute(rep *passReport, r Route, replace bool) {
	w := &k.want
	kr := kroute{dst: r.Dst, blackhole: r.Blackhole, gw: r.Gateway, onlink: r.OnLink, mtu: r.MTU}
	key := kr.key()
	if replace {
		delete(w.routes, key)
		delete(w.keep, key)
	}
	if !r.Blackhole && r.Dev != "" {
		idx, err := k.devIndex(r.Dev)
		if err != nil {
			w.keep[key] = r.Dev
			if !errors.Is(err, ErrNoIPIP) && !errors.Is(err, ErrNoVXLAN) {
				if !w.retry {
					rep.fail(fmt.Errorf("routes via %s: %w", r.Dev, err))
				}
				w.retry = true
			}
			return
		}
		kr.link = idx
	}
	w.routes[key] = wantRoute{kr: kr, kind: r.Kind}
}

// compileDelta merges the previous desired state into the new one, both sorted, marking
// what changed dirty.
func (k *Kernel) compileDelta(rep *passReport, old, want *State) {
	w := &k.want
	mergeDiff(old.Routes, want.Routes, func(a, b Route) int { return ipprefix.Compare(a.Dst, b.Dst) },
		func(a, b Route) bool { return a == b },
		func(r Route) { // gone
			key := keyOf(r.Dst, 0)
			delete(w.routes, key)
			delete(w.keep, key)
			k.routeDirty.mark(key)
		},
		func(r Route) { // new or changed
			k.compileRoute(rep, r, true)
			k.routeDirty.mark(keyOf(r.Dst, 0))
		})
	mergeDiff(old.Neighbors, want.Neighbors, func(a, b Neighbor) int { return a.IP.Compare(b.IP) },
		func(a, b Neighbor) bool { return bytes.Equal(a.MAC, b.MAC) },
		func(n Neighbor) { delete(w.neighs, n.IP); k.neighDirty.mark(n.IP) },
		func(n Neighbor) { w.neighs[n.IP] = string(n.MAC); k.neighDirty.mark(n.IP) })
	mergeDiff(old.FDB, want.FDB, func(a, b FDBEntry) int { return bytes.Compare(a.MAC, b.MAC) },
		func(a, b FDBEntry) bool { return a.Dst == b.Dst },
		func(f FDBEntry) { delete(w.fdb, string(f.MAC)); k.fdbDirty.mark(string(f.MAC)) },
		func(f FDBEntry) { w.fdb[string(f.MAC)] = f.Dst; k.fdbDirty.mark(string(f.MAC)) })
}

func sortedUnique[T, K any](s []T, key func(T) K, cmp func(K, K) int) bool {
	for i := 1; i < len(s); i++ {
		if cmp(key(s[i-1]), key(s[i])) >= 0 {
			return false
		}
	}
	return true
}

// mergeDiff walks two lists sorted by cmp and calls gone for each element of old whose key
// is not in new, and changed for each element of new that is not in old as it is.
func mergeDiff[T any](old, new []T, cmp func(a, b T) int, equal func(a, b T) bool, gone, changed func(T)) {
	i, j := 0, 0
	for i < len(old) || j < len(new) {
		switch {
		case j == len(new) || (i < len(old) && cmp(old[i], new[j]) < 0):
			gone(old[i])
			i++
		case i == len(old) || cmp(old[i], new[j]) > 0:
			changed(new[j])
			j++
		default:
			if !equal(old[i], new[j]) {
				changed(new[j])
			}
			i++
			j++
		}
	}
}

// addNeighbors writes the neighbour, then the FDB entry, of every remote VTEP that needs
// it, before any route through vxlan.tabby needs them.
func (k *Kernel) addNeighbors(rep *passReport, want *State) {
	if want.VXLAN == nil || !k.rec.vxlan.ok {
		k.pend.keepNeighbors = true
		return
	}
	idx := k.rec.vxlan.index
	w := &k.want
	addNeigh := func(ip netip.Addr) {
		mac, ok := w.neighs[ip]
		if !ok {
			return
		}
		if have, ok := k.rec.neighs[ip]; ok && have == mac {
			return
		}
		err := k.nl.NeighSet(&netlink.Neigh{
			LinkIndex: idx, Family: netlink.FAMILY_V4, State: netlink.NUD_PERMANENT, Type: unix.RTN_UNICAST,
			IP: ip.AsSlice(), HardwareAddr: []byte(mac),
		})
		if err != nil {
			rep.fail(fmt.Errorf("neighbour %s: %w", ip, err))
			k.pend.neighs[ip] = struct{}{}
			return
		}
		k.rec.neighs[ip] = mac
	}
	addFDB := func(mac string) {
		dst, ok := w.fdb[mac]
		if !ok {
			return
		}
		if have, ok := k.rec.fdb[mac]; ok && have == dst {
			return
		}
		if err := k.nl.NeighSet(fdbNeigh(idx, []byte(mac), dst)); err != nil {
			rep.fail(fmt.Errorf("fdb %s: %w", net.HardwareAddr(mac), err))
			k.pend.fdb[mac] = struct{}{}
			return
		}
		k.rec.fdb[mac] = dst
	}
	for ip := range dirtyKeys(&k.neighDirty, w.neighs) {
		addNeigh(ip)
	}
	for mac := range dirtyKeys(&k.fdbDirty, w.fdb) {
		addFDB(mac)
	}
}

func fdbNeigh(idx int, mac []byte, dst netip.Addr) *netlink.Neigh {
	return &netlink.Neigh{
		LinkIndex: idx, Family: unix.AF_BRIDGE, State: netlink.NUD_PERMANENT, Flags: netlink.NTF_SELF,
		IP: dst.AsSlice(), HardwareAddr: mac,
	}
}

// addRoutes installs the wanted routes the record does not have as wanted: RouteReplace
// over a route of ours, an exclusive RouteAdd where the record has none, so that a route of
// another protocol on the same prefix is never overwritten (the add fails with EEXIST and
// the prefix is checked with one dump).
func (k *Kernel) addRoutes(ctx context.Context, rep *passReport) {
	var exists []routeKey
	ops := 0
	if k.routeDirty.all && len(k.rec.routes) == 0 {
		k.rec.routes = make(map[routeKey]installed, len(k.want.routes))
	}
	written := func(key routeKey, w wantRoute, have installed, had bool, err error) {
		switch {
		case err == nil:
			k.installedWanted++
			k.rec.replaceRoute(key, installed{kr: w.kr, kind: w.kind}, have, had)
		case !had && errors.Is(err, unix.EEXIST):
			exists = append(exists, key)
		default:
			rep.fail(fmt.Errorf("route %s: %w", w.kr.dst, err))
			k.pend.routes[key] = struct{}{}
		}
	}
	var group []queuedWrite
	flush := func() {
		if len(group) == 0 {
			return
		}
		reqs := make([]routeWrite, len(group))
		for i, q := range group {
			reqs[i] = routeWrite{route: *k.req.fill(q.want.kr, k.proto), replace: q.had, nh: q.nh}
			// fill reuses its buffers: each request of the group needs its own addresses.
			reqs[i].route.Dst = &net.IPNet{IP: slices.Clone(reqs[i].route.Dst.IP), Mask: reqs[i].route.Dst.Mask}
			reqs[i].route.Gw = slices.Clone(reqs[i].route.Gw)
		}
		answers := k.nl.RouteWrites(reqs)
		for i, q := range group {
			a := answers[i]
			if q.nh != nil && a.nhErr != nil {
				// The object was not made (or the id was someone else's): forget it.
				if errors.Is(a.nhErr, unix.EEXIST) {
					k.rec.nhForeign[q.nh.ID] = struct{}{}
				}
				k.rec.delNexthop(q.nh.ID)
			}
			if _, ours := k.rec.nexthops[q.want.kr.nhid]; q.want.kr.nhid != 0 && !ours {
				// Its object is not tabby's after all: write the route again, alone.
				kr, create := k.nexthopFor(q.want.kr)
				q.want.kr, a.err = k.writeRoute(kr, create, q.had || a.err == nil)
			}
			written(q.key, q.want, q.have, q.had, a.err)
		}
		group = group[:0]
	}
	defer flush()
	visit := func(key routeKey) bool {
		w, ok := k.want.routes[key]
		if !ok {
			return true
		}
		if _, conflict := k.rec.conflicts[key]; conflict {
			return true
		}
		have, ok := k.rec.routes[key]
		var create *nexthop
		w.kr, create = k.nexthopFor(w.kr)
		if ok && have.kr == w.kr {
			k.installedWanted++
			if have.adopted || have.kind != w.kind {
				k.rec.replaceRoute(key, installed{kr: w.kr, kind: w.kind}, have, true)
			}
			return true
		}
		if ops++; ops%ctxCheckEvery == 0 && ctx.Err() != nil {
			return false
		}
		if ops == bulkWrites {
			k.pauseRouteEvents()
		}
		if k.routeDirty.all {
			// A bulk pass sends its writes in groups: one round trip per group.
			if create != nil {
				k.rec.putNexthop(create.ID, w.kr.nextHop(), false) // the next routes through it share it
			}
			group = append(group, queuedWrite{key: key, want: w, have: have, had: ok, nh: create})
			if len(group) == writeGroup {
				flush()
			}
			return true
		}
		var err error
		w.kr, err = k.writeRoute(w.kr, create, ok)
		written(key, w, have, ok, err)
		return true
	}
	switch {
	case k.routeDirty.all && k.want.sorted:
		// In the desired state's order (sorted by prefix, no duplicates): the kernel
		// inserts sorted prefixes into its trie faster than the random order of a map.
		for _, r := range k.want.from.Routes {
			if !visit(keyOf(r.Dst, 0)) {
				return
			}
		}
	default:
		for key := range dirtyKeys(&k.routeDirty, k.want.routes) {
			if !visit(key) {
				return
			}
		}
	}
	flush()
	if len(exists) > 0 {
		k.resolveExisting(rep, exists)
	}
}

// writeGroup is how many route writes a bulk pass sends in one request.
const writeGroup = 64

// queuedWrite is a route write of a bulk pass waiting for its group to be sent.
type queuedWrite struct {
	key  routeKey
	want wantRoute // with the nexthop id it is written with
	have installed
	had  bool
	nh   *nexthop // the object to create with it
}

// resolveExisting looks at the prefixes an exclusive add found taken: one of tabby's
// protocol (written by someone else, or missed by an event) is replaced, one of another
// protocol is left alone and recorded as a conflict.
func (k *Kernel) resolveExisting(rep *passReport, keys []routeKey) {
	owner := make(map[routeKey]int, len(keys))
	for _, key := range keys {
		owner[key] = -1
	}
	err := k.nl.RouteDump(func(nr nlRoute) bool {
		if kr, ok := fromNetlink(nr); ok {
			if p, asked := owner[kr.key()]; asked && p != k.proto {
				owner[kr.key()] = int(nr.Protocol)
			}
		}
		return true
	})
	if err != nil {
		rep.fail(fmt.Errorf("list the main routing table: %w", err))
		for _, key := range keys {
			k.pend.routes[key] = struct{}{}
		}
		return
	}
	for key, proto := range owner {
		w := k.want.routes[key]
		switch proto {
		case k.proto:
			kr, create := k.nexthopFor(w.kr)
			kr, err := k.writeRoute(kr, create, true)
			w.kr = kr
			if err != nil {
				rep.fail(fmt.Errorf("route %s: %w", key.prefix(), err))
				k.pend.routes[key] = struct{}{}
				continue
			}
			k.installedWanted++
			k.rec.putRoute(key, installed{kr: w.kr, kind: w.kind})
		case -1:
			// Gone between the add and the dump: the next pass adds it.
			rep.fail(fmt.Errorf("route %s: exists, then vanished", key.prefix()))
			k.pend.routes[key] = struct{}{}
		default:
			k.rec.conflicts[key] = proto
		}
	}
}

// deleteRoutes removes the routes of tabby's protocol that are no longer wanted. The
// request names only the prefix, metric, table and protocol, so it can only ever match a
// route of tabby's.
func (k *Kernel) deleteRoutes(ctx context.Context, rep *passReport, sweep bool) {
	ops := 0
	visit := func(key routeKey) bool {
		have, ok := k.rec.routes[key]
		if !ok {
			return true
		}
		if _, wanted := k.want.routes[key]; wanted {
			return true
		}
		if _, keep := k.want.keep[key]; keep {
			return true
		}
		if have.adopted && !sweep {
			k.pend.routes[key] = struct{}{}
			return true
		}
		if ops++; ops%ctxCheckEvery == 0 && ctx.Err() != nil {
			return false
		}
		if ops == bulkWrites {
			k.pauseRouteEvents()
		}
		// The last route through a nexthop object takes the object with it, in one request.
		var nhid uint32
		if e, ok := k.rec.nexthops[have.kr.nhid]; ok && e.refs == 1 && (!e.adopted || sweep) {
			nhid = have.kr.nhid
		}
		nhErr, err := k.nl.RouteDelete(k.req.fill(kroute{dst: have.kr.dst, metric: have.kr.metric}, k.proto), nhid)
		if err != nil && !isGone(err) {
			rep.fail(fmt.Errorf("delete route %s: %w", key.prefix(), err))
			k.pend.routes[key] = struct{}{}
			return true
		}
		k.rec.delRoute(key)
		switch {
		case nhid == 0:
		case nhErr == nil || isGone(nhErr):
			k.rec.delNexthop(nhid)
		default:
			rep.fail(fmt.Errorf("delete nexthop %d: %w", nhid, nhErr))
		}
		return true
	}
	if k.routeDirty.all && len(k.rec.routes) == k.installedWanted {
		return // every route in the record is a wanted one: nothing to delete
	}
	for key := range dirtyKeys(&k.routeDirty, k.rec.routes) {
		if !visit(key) {
			return
		}
	}
}

// nexthopFor points a route with a gateway at tabby's nexthop object for that next hop.
// When there is none yet, it picks a free id and returns the object to create, which
// writeRoute sends with the route. Blackholes, routes without a gateway and every route on
// a kernel without nexthop objects name their next hop themselves.
func (k *Kernel) nexthopFor(kr kroute) (kroute, *nexthop) {
	kr.nhid = 0
	if k.noNexthops || kr.blackhole || !kr.gw.IsValid() {
		return kr, nil
	}
	key := kr.nextHop()
	if id, ok := k.rec.nhByKey[key]; ok {
		kr.nhid = id
		return kr, nil
	}
	kr.nhid = k.rec.freeNexthopID()
	return kr, &nexthop{ID: kr.nhid, Gw: key.gw, LinkIndex: key.link, OnLink: key.onlink, Protocol: k.proto}
}

// writeRoute writes a route, with the nexthop object it needs if create is set, and
// returns the route as written. An id someone else took since the last dump fails with
// EEXIST while the route goes in through their object: the route is written again through
// a new one.
func (k *Kernel) writeRoute(kr kroute, create *nexthop, replace bool) (kroute, error) {
	const attempts = 8
	for attempt := 1; ; attempt++ {
		a := k.nl.RouteWrites([]routeWrite{{route: *k.req.fill(kr, k.proto), replace: replace, nh: create}})[0]
		nhErr, err := a.nhErr, a.err
		switch {
		case create == nil:
			return kr, err
		case nhErr == nil:
			k.rec.putNexthop(create.ID, kr.nextHop(), false)
			return kr, err
		case errors.Is(nhErr, unix.EEXIST) && attempt < attempts:
			k.rec.nhForeign[create.ID] = struct{}{}
			replace = replace || err == nil
			kr, create = k.nexthopFor(kr)
		default:
			return kr, fmt.Errorf("nexthop object via %s: %w", kr.gw, nhErr)
		}
	}
}

// deleteNexthops removes tabby's nexthop objects that no route uses any more. An object
// found in the kernel waits for the first full sync, like an adopted route.
func (k *Kernel) deleteNexthops(rep *passReport, sweep bool) {
	for id := range k.rec.nhIdle {
		e := k.rec.nexthops[id]
		if e == nil || e.refs != 0 || (e.adopted && !sweep) {
			continue
		}
		if err := k.nl.NexthopDel(id); err != nil && !isGone(err) {
			rep.fail(fmt.Errorf("delete nexthop %d: %w", id, err))
			continue
		}
		k.rec.delNexthop(id)
	}
}

// dropNexthop forgets a nexthop object the kernel no longer has, and the routes that used
// it: the kernel deletes them with it, without a notification of their own.
func (k *Kernel) dropNexthop(id uint32) {
	for key, r := range k.rec.routes {
		if r.kr.nhid == id {
			k.rec.delRoute(key)
			k.routeDirty.mark(key)
		}
	}
	k.rec.delNexthop(id)
}

// deleteNeighbors removes the FDB entries, then the neighbours, that are no longer wanted.
// When vxlan.tabby itself goes, its entries go with it.
func (k *Kernel) deleteNeighbors(rep *passReport, want *State, sweep bool) {
	if !sweep || !k.rec.vxlan.ok || want.VXLAN == nil {
		k.pend.keepNeighbors = true
		return
	}
	idx := k.rec.vxlan.index
	w := &k.want
	delFDB := func(mac string) {
		dst, ok := k.rec.fdb[mac]
		if !ok {
			return
		}
		if _, wanted := w.fdb[mac]; wanted {
			return // kept, or its new destination was written (or failed) in addNeighbors
		}
		if err := k.nl.NeighDel(fdbNeigh(idx, []byte(mac), dst)); err != nil && !isGone(err) {
			rep.fail(fmt.Errorf("delete fdb %s: %w", net.HardwareAddr(mac), err))
			k.pend.fdb[mac] = struct{}{}
			return
		}
		delete(k.rec.fdb, mac)
	}
	delNeigh := func(ip netip.Addr) {
		if _, ok := k.rec.neighs[ip]; !ok {
			return
		}
		if _, wanted := w.neighs[ip]; wanted {
			return
		}
		err := k.nl.NeighDel(&netlink.Neigh{LinkIndex: idx, Family: netlink.FAMILY_V4, IP: ip.AsSlice()})
		if err != nil && !isGone(err) {
			rep.fail(fmt.Errorf("delete neighbour %s: %w", ip, err))
			k.pend.neighs[ip] = struct{}{}
			return
		}
		delete(k.rec.neighs, ip)
	}
	for mac := range dirtyKeys(&k.fdbDirty, k.rec.fdb) {
		delFDB(mac)
	}
	for ip := range dirtyKeys(&k.neighDirty, k.rec.neighs) {
		delNeigh(ip)
	}
}

// pending collects, during a pass, the keys still to be done after it: failures, and
// leftovers not swept yet. They become the dirty sets of the next pass.
type pending struct {
	routes map[routeKey]struct{}
	neighs map[netip.Addr]struct{}
	fdb    map[string]struct{}
	// keepNeighbors: the neighbour and FDB phases were skipped (the device is not ready,
	// or deletes wait for the first sync): their dirty sets stay as they are.
	keepNeighbors bool
}

func (p *pending) reset() {
	if p.routes == nil {
		p.routes, p.neighs, p.fdb = map[routeKey]struct{}{}, map[netip.Addr]struct{}{}, map[string]struct{}{}
	}
	clear(p.routes)
	clear(p.neighs)
	clear(p.fdb)
	p.keepNeighbors = false
}

// settle makes what is still pending the dirty sets of the next pass. Every dirty key was
// visited by the pass, so the rest is in the kernel as wanted.
func (k *Kernel) settle() {
	k.routeDirty.all = false
	k.routeDirty.keys, k.pend.routes = k.pend.routes, k.routeDirty.keys
	if k.pend.keepNeighbors {
		return
	}
	k.neighDirty.all, k.fdbDirty.all = false, false
	k.neighDirty.keys, k.pend.neighs = k.pend.neighs, k.neighDirty.keys
	k.fdbDirty.keys, k.pend.fdb = k.pend.fdb, k.fdbDirty.keys
}

// reportProblems lists what the kernel side cannot do: routes waiting for a device the
// kernel has no driver for, and wanted routes left alone because another protocol holds
// them.
func (k *Kernel) reportProblems(rep *passReport) {
	waiting := map[string]int{}
	for _, dev := range k.want.keep {
		waiting[dev]++
	}
	if n := waiting[DeviceIPIP]; n > 0 && k.rec.ipip.unsupported {
		rep.problem("%v: %s via %s not installed", ErrNoIPIP, plural(n, "route"), DeviceIPIP)
	}
	if n := waiting[DeviceVXLAN]; n > 0 && k.rec.vxlan.unsupported {
		rep.problem("%v: %s via %s not installed", ErrNoVXLAN, plural(n, "route"), DeviceVXLAN)
	}
	var lines []string
	for key, proto := range k.rec.conflicts {
		if _, ok := k.want.routes[key]; ok {
			lines = append(lines, fmt.Sprintf("route %s left alone: the kernel holds it with protocol %d", key.prefix(), proto))
		}
	}
	slices.Sort(lines)
	const most = 10
	if len(lines) > most {
		lines = append(lines[:most], fmt.Sprintf("and %s more left alone for the same reason", plural(len(lines)-most, "route")))
	}
	rep.problems = append(rep.problems, lines...)
}

// forgetLink drops from the record what the kernel removed with a device: the routes
// through it, the nexthop objects on it and, for vxlan.tabby, its neighbours and FDB entries.
func (k *Kernel) forgetLink(index int) {
	if index == 0 {
		return
	}
	var gone map[uint32]bool
	for id, e := range k.rec.nexthops {
		if e.key.link == index {
			if gone == nil {
				gone = map[uint32]bool{}
			}
			gone[id] = true
		}
	}
	for key, r := range k.rec.routes {
		if r.kr.link == index || gone[r.kr.nhid] {
			k.rec.delRoute(key)
			k.routeDirty.mark(key)
		}
	}
	for id := range gone {
		k.rec.delNexthop(id)
	}
	if index == k.rec.vxlan.index {
		for ip := range k.rec.neighs {
			k.neighDirty.mark(ip)
		}
		for mac := range k.rec.fdb {
			k.fdbDirty.mark(mac)
		}
		clear(k.rec.neighs)
		clear(k.rec.fdb)
	}
}

// plural writes "1 route", "2 routes".
func plural(n int, noun string) string {
	if n == 1 {
		return fmt.Sprintf("%d %s", n, noun)
	}
	return fmt.Sprintf("%d %ss", n, noun)
}
