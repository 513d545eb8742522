package routing

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
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

// ctxCheckEvery is how many netlink requests a long loop makes between looks at its context.
const ctxCheckEvery = 1024

// pass makes one attempt to bring the kernel to want. The order is SPEC §5's: devices, then
// neighbours, FDB entries and routes are added, and only then is anything deleted (routes,
// then FDB entries, then neighbours, then devices). The record follows every successful
// operation, so after a partial failure it is the state really reached.
func (k *Kernel) pass(ctx context.Context, want *State, full bool) passReport {
	rep := passReport{full: full, wanted: len(want.Routes), tunl0Wanted: want.Tunl0 != nil, vxlanWanted: want.VXLAN != nil}
	k.pools = want.Pools
	if full {
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
	wanted, keep := k.compile(&rep, want)
	k.addNeighbors(&rep, want)
	k.addRoutes(ctx, &rep, wanted)
	if ctx.Err() != nil {
		return rep
	}
	// Leftovers of a previous run are swept only once everything wanted is in place.
	sweep := k.isSynced || rep.failures == 0
	k.deleteRoutes(ctx, &rep, wanted, keep, sweep)
	k.deleteNeighbors(&rep, want, sweep)
	k.removeDevices(&rep, want, full)
	k.reportConflicts(&rep, wanted)
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
	filter := &netlink.Route{Table: unix.RT_TABLE_MAIN}
	err := k.nl.RouteListFilteredIter(netlink.FAMILY_V4, filter, netlink.RT_FILTER_TABLE, func(nr netlink.Route) bool {
		kr, ok := fromNetlink(nr)
		if !ok {
			return true
		}
		key := kr.key()
		if int(nr.Protocol) != k.proto {
			if key.metric == 0 && wantedDst[key.dst] {
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
	k.rec.routes = routes
	k.rec.conflicts = conflicts
	// Devices and link indexes are verified again by this pass.
	k.rec.ipip.ok, k.rec.ipip.unsupported = false, false
	k.rec.vxlan.ok, k.rec.vxlan.unsupported = false, false
	clear(k.rec.links)
	return nil
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
				neighs[ip.Unmap()] = n.HardwareAddr.String()
			}
		}
		list, err = k.nl.NeighList(idx, unix.AF_BRIDGE)
		if err != nil {
			return fmt.Errorf("list FDB entries of %s: %w", DeviceVXLAN, err)
		}
		for _, n := range list {
			ip, ok := netip.AddrFromSlice(n.IP)
			if ok && len(n.HardwareAddr) == 6 {
				fdb[n.HardwareAddr.String()] = ip.Unmap()
			}
		}
	}
	k.rec.neighs, k.rec.fdb = neighs, fdb
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

// compile resolves the desired routes to kernel terms. keep holds the keys of desired
// routes that cannot be installed now (their device is missing or unsupported): whatever
// the kernel holds for them is not deleted.
func (k *Kernel) compile(rep *passReport, want *State) (map[routeKey]wantRoute, map[routeKey]bool) {
	wanted := make(map[routeKey]wantRoute, len(want.Routes))
	keep := map[routeKey]bool{}
	unsupported := map[error]int{}
	var devErrs []string
	for _, r := range want.Routes {
		kr := kroute{dst: r.Dst, blackhole: r.Blackhole, gw: r.Gateway, onlink: r.OnLink, mtu: r.MTU}
		if !r.Blackhole && r.Dev != "" {
			idx, err := k.devIndex(r.Dev)
			if err != nil {
				keep[kr.key()] = true
				switch {
				case errors.Is(err, ErrNoIPIP) || errors.Is(err, ErrNoVXLAN):
					unsupported[err]++
				case !slices.Contains(devErrs, r.Dev):
					devErrs = append(devErrs, r.Dev)
					rep.fail(fmt.Errorf("routes via %s: %w", r.Dev, err))
				}
				continue
			}
			kr.link = idx
		}
		wanted[kr.key()] = wantRoute{kr: kr, kind: r.Kind}
	}
	for err, n := range unsupported {
		dev := DeviceIPIP
		if errors.Is(err, ErrNoVXLAN) {
			dev = DeviceVXLAN
		}
		rep.problem("%v: %s via %s not installed", err, plural(n, "route"), dev)
	}
	return wanted, keep
}

// addNeighbors writes the neighbour, then the FDB entry, of every remote VTEP, before any
// route through vxlan.tabby needs them.
func (k *Kernel) addNeighbors(rep *passReport, want *State) {
	if want.VXLAN == nil || !k.rec.vxlan.ok {
		return
	}
	idx := k.rec.vxlan.index
	for _, n := range want.Neighbors {
		mac := n.MAC.String()
		if k.rec.neighs[n.IP] == mac {
			continue
		}
		err := k.nl.NeighSet(&netlink.Neigh{
			LinkIndex: idx, Family: netlink.FAMILY_V4, State: netlink.NUD_PERMANENT, Type: unix.RTN_UNICAST,
			IP: n.IP.AsSlice(), HardwareAddr: n.MAC,
		})
		if err != nil {
			rep.fail(fmt.Errorf("neighbour %s: %w", n, err))
			continue
		}
		k.rec.neighs[n.IP] = mac
	}
	for _, f := range want.FDB {
		mac := f.MAC.String()
		if dst, ok := k.rec.fdb[mac]; ok && dst == f.Dst {
			continue
		}
		err := k.nl.NeighSet(fdbNeigh(idx, f.MAC, f.Dst))
		if err != nil {
			rep.fail(fmt.Errorf("fdb %s: %w", f, err))
			continue
		}
		k.rec.fdb[mac] = f.Dst
	}
}

func fdbNeigh(idx int, mac []byte, dst netip.Addr) *netlink.Neigh {
	return &netlink.Neigh{
		LinkIndex: idx, Family: unix.AF_BRIDGE, State: netlink.NUD_PERMANENT, Flags: netlink.NTF_SELF,
		IP: dst.AsSlice(), HardwareAddr: mac,
	}
}

// addRoutes installs every wanted route the record does not have as wanted: RouteReplace
// over a route of ours, an exclusive RouteAdd where the record has none, so that a route of
// another protocol on the same prefix is never overwritten (the add fails with EEXIST and
// the prefix is checked with one dump).
func (k *Kernel) addRoutes(ctx context.Context, rep *passReport, wanted map[routeKey]wantRoute) {
	var exists []routeKey
	ops := 0
	for key, w := range wanted {
		if _, conflict := k.rec.conflicts[key]; conflict {
			continue
		}
		have, ok := k.rec.routes[key]
		if ok && have.kr == w.kr {
			if have.adopted || have.kind != w.kind {
				k.rec.routes[key] = installed{kr: w.kr, kind: w.kind}
			}
			continue
		}
		if ops++; ops%ctxCheckEvery == 0 && ctx.Err() != nil {
			return
		}
		var err error
		if ok {
			err = k.nl.RouteReplace(w.kr.netlink(k.proto))
		} else {
			err = k.nl.RouteAdd(w.kr.netlink(k.proto))
		}
		switch {
		case err == nil:
			k.rec.routes[key] = installed{kr: w.kr, kind: w.kind}
		case !ok && errors.Is(err, unix.EEXIST):
			exists = append(exists, key)
		default:
			rep.fail(fmt.Errorf("route %s: %w", w.kr.dst, err))
		}
	}
	if len(exists) > 0 {
		k.resolveExisting(rep, exists, wanted)
	}
}

// resolveExisting looks at the prefixes an exclusive add found taken: one of tabby's
// protocol (written by someone else, or missed by an event) is replaced, one of another
// protocol is left alone and recorded as a conflict.
func (k *Kernel) resolveExisting(rep *passReport, keys []routeKey, wanted map[routeKey]wantRoute) {
	owner := make(map[routeKey]int, len(keys))
	for _, key := range keys {
		owner[key] = -1
	}
	filter := &netlink.Route{Table: unix.RT_TABLE_MAIN}
	err := k.nl.RouteListFilteredIter(netlink.FAMILY_V4, filter, netlink.RT_FILTER_TABLE, func(nr netlink.Route) bool {
		if kr, ok := fromNetlink(nr); ok {
			if p, asked := owner[kr.key()]; asked && p != k.proto {
				owner[kr.key()] = int(nr.Protocol)
			}
		}
		return true
	})
	if err != nil {
		rep.fail(fmt.Errorf("list the main routing table: %w", err))
		return
	}
	for key, proto := range owner {
		w := wanted[key]
		switch proto {
		case k.proto:
			if err := k.nl.RouteReplace(w.kr.netlink(k.proto)); err != nil {
				rep.fail(fmt.Errorf("route %s: %w", key.dst, err))
				continue
			}
			k.rec.routes[key] = installed{kr: w.kr, kind: w.kind}
		case -1:
			// Gone between the add and the dump: the next pass adds it.
			rep.fail(fmt.Errorf("route %s: exists, then vanished", key.dst))
		default:
			k.rec.conflicts[key] = proto
		}
	}
}

// deleteRoutes removes the routes of tabby's protocol that are no longer wanted. The
// request names only the prefix, metric, table and protocol, so it can only ever match a
// route of tabby's.
func (k *Kernel) deleteRoutes(ctx context.Context, rep *passReport, wanted map[routeKey]wantRoute, keep map[routeKey]bool, sweep bool) {
	ops := 0
	for key, have := range k.rec.routes {
		if _, ok := wanted[key]; ok || keep[key] || (have.adopted && !sweep) {
			continue
		}
		if ops++; ops%ctxCheckEvery == 0 && ctx.Err() != nil {
			return
		}
		err := k.nl.RouteDel(&netlink.Route{
			Dst:      have.kr.netlink(k.proto).Dst,
			Priority: key.metric,
			Table:    unix.RT_TABLE_MAIN,
			Protocol: netlink.RouteProtocol(k.proto),
		})
		if err != nil && !isGone(err) {
			rep.fail(fmt.Errorf("delete route %s: %w", key.dst, err))
			continue
		}
		delete(k.rec.routes, key)
	}
}

// deleteNeighbors removes the FDB entries, then the neighbours, that are no longer wanted.
// When vxlan.tabby itself goes, its entries go with it.
func (k *Kernel) deleteNeighbors(rep *passReport, want *State, sweep bool) {
	if !sweep || !k.rec.vxlan.ok || want.VXLAN == nil {
		return
	}
	idx := k.rec.vxlan.index
	wantFDB := make(map[string]netip.Addr, len(want.FDB))
	for _, f := range want.FDB {
		wantFDB[f.MAC.String()] = f.Dst
	}
	for mac, dst := range k.rec.fdb {
		if d, ok := wantFDB[mac]; ok && d == dst {
			continue
		}
		hw, _ := parseMAC(mac)
		if err := k.nl.NeighDel(fdbNeigh(idx, hw, dst)); err != nil && !isGone(err) {
			rep.fail(fmt.Errorf("delete fdb %s: %w", mac, err))
			continue
		}
		delete(k.rec.fdb, mac)
	}
	wantNeigh := make(map[netip.Addr]string, len(want.Neighbors))
	for _, n := range want.Neighbors {
		wantNeigh[n.IP] = n.MAC.String()
	}
	for ip, mac := range k.rec.neighs {
		if m, ok := wantNeigh[ip]; ok && m == mac {
			continue
		}
		err := k.nl.NeighDel(&netlink.Neigh{LinkIndex: idx, Family: netlink.FAMILY_V4, IP: ip.AsSlice()})
		if err != nil && !isGone(err) {
			rep.fail(fmt.Errorf("delete neighbour %s: %w", ip, err))
			continue
		}
		delete(k.rec.neighs, ip)
	}
}

// reportConflicts lists the wanted routes left alone because another protocol holds them.
func (k *Kernel) reportConflicts(rep *passReport, wanted map[routeKey]wantRoute) {
	var lines []string
	for key, proto := range k.rec.conflicts {
		if _, ok := wanted[key]; ok {
			lines = append(lines, fmt.Sprintf("route %s left alone: the kernel holds it with protocol %d", key.dst, proto))
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
// through it and, for vxlan.tabby, its neighbours and FDB entries.
func (k *Kernel) forgetLink(index int) {
	if index == 0 {
		return
	}
	for key, r := range k.rec.routes {
		if r.kr.link == index {
			delete(k.rec.routes, key)
		}
	}
	if index == k.rec.vxlan.index {
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
