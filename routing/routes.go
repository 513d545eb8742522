package routing

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"

	"golang.org/x/sys/unix"
)

// Routes of tabby's protocol in the main table: the table's wanted side is the compiled
// desired routes, its installed side what the kernel holds under tabby's protocol. Routes
// are added with RouteReplace over one of ours and an exclusive RouteAdd elsewhere, so a
// route of another protocol is never overwritten; deletes name tabby's protocol, so they
// can only ever match a route of tabby's. A bulk pass sends its writes in groups of
// writeGroup, one round trip each.

// resyncRoutes replaces the record of routes by what the kernel really holds: one dump of
// the main table. Routes of tabby's protocol that the record did not know are adopted;
// routes of other protocols on a wanted prefix become conflicts.
func (k *Kernel) resyncRoutes(want *State) error {
	wantedDst := make(map[netip.Prefix]bool, len(want.Routes))
	for _, r := range want.Routes {
		wantedDst[r.Dst] = true
	}
	routes := make(map[routeKey]routeEntry, k.routes.NumInstalled())
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
		if prev, ok := k.routes.Installed(key); ok && prev.kr == kr {
			routes[key] = prev
		} else {
			routes[key] = routeEntry{kr: kr, adopted: true}
		}
		return true
	})
	if err != nil {
		return fmt.Errorf("list the main routing table: %w", err)
	}
	k.setRoutes(routes)
	k.rec.conflicts = conflicts
	// Devices and link indexes are verified again by this pass.
	k.rec.ipip.ok, k.rec.ipip.unsupported = false, false
	k.rec.vxlan.ok, k.rec.vxlan.unsupported = false, false
	k.rec.dropLinks()
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

// addRoutes installs the wanted routes the record does not have as wanted: RouteReplace
// over a route of ours, an exclusive RouteAdd where the record has none, so that a route of
// another protocol on the same prefix is never overwritten (the add fails with EEXIST and
// the prefix is checked with one dump).
func (k *Kernel) addRoutes(ctx context.Context, rep *passReport) {
	var exists []routeKey
	ops := 0
	if k.routes.AllDirty() {
		k.routes.GrowInstalled(k.routes.NumWanted())
	}
	written := func(key routeKey, w routeEntry, have routeEntry, had bool, err error) {
		switch {
		case err == nil:
			k.installedWanted++
			k.replaceRoute(key, routeEntry{kr: w.kr, kind: w.kind}, have, had)
		case !had && errors.Is(err, unix.EEXIST):
			exists = append(exists, key)
		default:
			rep.fail(fmt.Errorf("route %s: %w", w.kr.dst, err))
			k.routes.Again(key)
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
		w, ok := k.routes.Wanted(key)
		if !ok {
			return true
		}
		if _, conflict := k.rec.conflicts[key]; conflict {
			return true
		}
		have, ok := k.routes.Installed(key)
		var create *nexthop
		w.kr, create = k.nexthopFor(w.kr)
		if ok && have.kr == w.kr {
			k.installedWanted++
			if have.adopted || have.kind != w.kind {
				k.replaceRoute(key, routeEntry{kr: w.kr, kind: w.kind}, have, true)
			}
			return true
		}
		if ops++; ops%ctxCheckEvery == 0 && ctx.Err() != nil {
			return false
		}
		if ops == bulkWrites {
			k.pauseRouteEvents()
		}
		if k.routes.AllDirty() {
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
	case k.routes.AllDirty() && k.want.sorted:
		// In the desired state's order (sorted by prefix, no duplicates): the kernel
		// inserts sorted prefixes into its trie faster than the random order of a map.
		for _, r := range k.want.from.Routes {
			if !visit(keyOf(r.Dst, 0)) {
				return
			}
		}
	default:
		for key := range k.routes.ToAdd() {
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
	want routeEntry // with the nexthop id it is written with
	have routeEntry
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
			k.routes.Again(key)
		}
		return
	}
	for key, proto := range owner {
		w, _ := k.routes.Wanted(key)
		switch proto {
		case k.proto:
			kr, create := k.nexthopFor(w.kr)
			kr, err := k.writeRoute(kr, create, true)
			w.kr = kr
			if err != nil {
				rep.fail(fmt.Errorf("route %s: %w", key.prefix(), err))
				k.routes.Again(key)
				continue
			}
			k.installedWanted++
			k.putRoute(key, routeEntry{kr: w.kr, kind: w.kind})
		case -1:
			// Gone between the add and the dump: the next pass adds it.
			rep.fail(fmt.Errorf("route %s: exists, then vanished", key.prefix()))
			k.routes.Again(key)
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
		have, ok := k.routes.Installed(key)
		if !ok {
			return true
		}
		if _, wanted := k.routes.Wanted(key); wanted {
			return true
		}
		if _, keep := k.want.keep[key]; keep {
			return true
		}
		if have.adopted && !sweep {
			k.routes.Again(key)
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
			k.routes.Again(key)
			return true
		}
		k.delRoute(key)
		switch {
		case nhid == 0:
		case nhErr == nil || isGone(nhErr):
			k.rec.delNexthop(nhid)
		default:
			rep.fail(fmt.Errorf("delete nexthop %d: %w", nhid, nhErr))
		}
		return true
	}
	if k.routes.AllDirty() && k.routes.NumInstalled() == k.installedWanted {
		return // every route in the record is a wanted one: nothing to delete
	}
	for key := range k.routes.ToDelete() {
		if !visit(key) {
			return
		}
	}
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

// putRoute records that the kernel holds in under key, keeping the record's counts of
// routes by kind and of each nexthop object's users.
func (k *Kernel) putRoute(key routeKey, in routeEntry) {
	old, had := k.routes.Installed(key)
	k.replaceRoute(key, in, old, had)
}

// replaceRoute is putRoute for a caller that has just looked the key up.
func (k *Kernel) replaceRoute(key routeKey, in, old routeEntry, had bool) {
	if had {
		k.rec.count(old, -1)
	}
	k.routes.SetInstalled(key, in)
	k.rec.count(in, 1)
}

// delRoute records that the kernel no longer holds a route under key.
func (k *Kernel) delRoute(key routeKey) {
	if old, ok := k.routes.Installed(key); ok {
		k.rec.count(old, -1)
		k.routes.DeleteInstalled(key)
	}
}

// setRoutes replaces the whole installed side by a dump's routes, and the counts with it.
// Every key becomes dirty.
func (k *Kernel) setRoutes(routes map[routeKey]routeEntry) {
	k.routes.ReplaceInstalled(routes)
	k.rec.recount(routes)
}
