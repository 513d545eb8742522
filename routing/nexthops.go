package routing

import (
	"fmt"
	"net/netip"
)

// Nexthop objects (Linux 5.3+): tabby keeps one per distinct next hop (a gateway on a
// device) and points every route through that gateway at it, so that 100,000 routes via
// 5,000 gateways cost the kernel 5,000 next hops, not 100,000. They are not a keyed
// table of their own: nobody wants an object for itself, only the routes that use it, so
// an object is created with the first route that needs it (in the same request) and
// deleted with the last (also in one request), its users counted as the record's routes
// come and go. tabby picks their ids itself, never one another protocol's object holds.

// nhKey is what a nexthop object of tabby's holds: a gateway on a device. tabby keeps one
// object per distinct next hop and shares it between every route through that gateway.
type nhKey struct {
	gw     netip.Addr
	link   int
	onlink bool
}

// nhEntry is a nexthop object of tabby's protocol that the kernel has.
type nhEntry struct {
	key nhKey
	// refs counts the routes of the record that use it; at 0 it is deleted.
	refs int
	// adopted marks an object found in the kernel (a previous run's): unused, it is
	// deleted only once the first full sync is done, like an adopted route.
	adopted bool
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
	for key, r := range k.routes.AllInstalled() {
		if r.kr.nhid == id {
			k.delRoute(key)
			k.routes.Mark(key)
		}
	}
	k.rec.delNexthop(id)
}

// nhRef counts a route's use of a nexthop object; ids that are not tabby's are ignored.
func (r *record) nhRef(id uint32, d int) {
	e, ok := r.nexthops[id]
	if !ok {
		return
	}
	e.refs += d
	if e.refs == 0 {
		r.nhIdle[id] = struct{}{}
	} else {
		delete(r.nhIdle, id)
	}
}

// putNexthop records a nexthop object of tabby's (created, or found in a dump).
func (r *record) putNexthop(id uint32, key nhKey, adopted bool) {
	r.nexthops[id] = &nhEntry{key: key, adopted: adopted}
	r.nhIdle[id] = struct{}{}
	r.putNexthopKey(id, key)
	delete(r.nhForeign, id)
	if id == r.nhNext {
		r.nhNext++
	}
}

// delNexthop forgets a nexthop object of tabby's. The routes that used it are gone with it
// in the kernel: the caller forgets them first.
func (r *record) delNexthop(id uint32) {
	e, ok := r.nexthops[id]
	if !ok {
		return
	}
	delete(r.nexthops, id)
	delete(r.nhIdle, id)
	r.nhNext = min(r.nhNext, id)
	if r.nhByKey[e.key] == id {
		delete(r.nhByKey, e.key)
		if len(r.nhByKey) == len(r.nexthops) {
			return // every object holds its own next hop: no other can take over
		}
		// Another object with the same next hop (two found in a dump) takes over.
		for other, o := range r.nexthops {
			if o.key == e.key {
				r.putNexthopKey(other, e.key)
			}
		}
	}
}

// putNexthopKey makes id the object routes through key get, unless a lower id has it.
func (r *record) putNexthopKey(id uint32, key nhKey) {
	if have, ok := r.nhByKey[key]; !ok || id < have {
		r.nhByKey[key] = id
	}
}

// freeNexthopID returns the lowest id no nexthop object of the namespace has, as far as
// the record knows, from nhNext on (every id below nhNext is taken).
func (r *record) freeNexthopID() uint32 {
	for id := max(r.nhNext, 1); ; id++ {
		_, ours := r.nexthops[id]
		_, theirs := r.nhForeign[id]
		if !ours && !theirs {
			r.nhNext = id
			return id
		}
	}
}

// setNexthops replaces the record of nexthop objects by a dump's; setRoutes must follow
// to count their uses.
func (r *record) setNexthops(ours map[uint32]nhKey, foreign map[uint32]struct{}) {
	clear(r.nexthops)
	clear(r.nhByKey)
	clear(r.nhIdle)
	r.nhForeign = foreign
	for id, key := range ours {
		r.putNexthop(id, key, true)
	}
	r.nhNext = 1
}
