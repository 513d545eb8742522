package routing

import (
	"maps"
	"net"
	"net/netip"
	"slices"
	"strings"

	"github.com/tabby-net/tabby/datastore"
	"github.com/tabby-net/tabby/internal/cow"
)

// Planner computes the same State as Desired, but at the cost of what changed since its
// previous call rather than of the whole cluster: at 5,000 nodes Desired takes several
// milliseconds for every change, most of the daemon's CPU per node join or leave.
//
// It keeps each block's share of the State (its routes, VXLAN entries, problems and the
// nodes it read), and redoes a block only when the block, an affinity to it or one of
// those nodes changed. The syncer's change list says which (Snapshot.ChangesSince); for
// other snapshots the maps are compared, which relies on their copy-on-write discipline:
// a map that did not change is the previous snapshot's map itself, and a changed object
// is a new pointer. When the host's facts, the local node or the pools change, every block is
// redone. Desired's result depends on the order of blocks only where two of them want
// different things for one key (one destination, VTEP MAC or tunnel address); while that
// is so, the Planner returns Desired's result itself.
//
// A Planner is not safe for concurrent use. The States it returns share their slices with
// each other: treat them as read-only, as Kernel.Set does.
type Planner struct {
	// rules of the last call; nil when nothing is kept.
	rules *rules
	// snap is the snapshot the plans were made from.
	snap *datastore.Snapshot
	// changes says what changed from one snapshot (old) to another; nil means
	// Snapshot.ChangesSince. Tests give change lists to snapshots made by hand with it.
	changes func(snap, old *datastore.Snapshot) (*datastore.Changes, bool)

	plans map[netip.Prefix]*blockPlan // blocks that emitted something
	users map[string][]netip.Prefix   // node name → the blocks whose plan read that node

	// Every plan's emissions, counted by key and value.
	routes    tally[netip.Prefix, Route]
	neighbors tally[netip.Addr, string] // tunnel address → VTEP MAC
	fdb       tally[string, netip.Addr] // VTEP MAC → node address
	problems  map[string]int            // problem line → blocks that report it
	skipped   map[string]int            // reason → routes left out

	// The sorted lists of block routes, neighbours and FDB entries the last State had; only
	// valid while sorted is set.
	sorted       bool
	outRoutes    []Route
	outNeighbors []Neighbor
	outFDB       []FDBEntry
}

// Desired returns what Desired(snap, local, learned) returns.
func (p *Planner) Desired(snap *datastore.Snapshot, local Local, learned []LearnedRoute) State {
	if hold, ok := holdReason(snap, local); !ok {
		p.reset()
		return State{Hold: hold}
	}
	r := newRules(snap.Nodes[local.NodeName], snap.Pools, local)
	if p.rules == nil || !p.rules.equal(r) {
		p.reset()
		for cidr, blk := range snap.Blocks {
			p.plan(r, snap, cidr, blk)
		}
	} else {
		p.update(r, snap)
	}
	p.rules, p.snap = r, snap
	if p.routes.conflicts+p.neighbors.conflicts+p.fdb.conflicts > 0 {
		// The result depends on the order of the blocks: let Desired decide, and rebuild
		// the sorted lists once the conflict is gone.
		p.sorted = false
		return Desired(snap, local, learned)
	}
	return p.assemble(r, learned)
}

// reset forgets everything.
func (p *Planner) reset() {
	*p = Planner{
		changes:  p.changes,
		plans:    map[netip.Prefix]*blockPlan{},
		users:    map[string][]netip.Prefix{},
		problems: map[string]int{},
		skipped:  map[string]int{},
	}
}

// update redoes the blocks that changed, whose affinities changed, or that read a node
// that changed since the plans were made.
func (p *Planner) update(r *rules, snap *datastore.Snapshot) {
	changesSince := (*datastore.Snapshot).ChangesSince
	if p.changes != nil {
		changesSince = p.changes
	}
	var c datastore.Changes
	ch, known := changesSince(snap, p.snap)
	if known {
		c = *ch
	}
	dirty := map[netip.Prefix]struct{}{}
	cow.Each(known, c.Blocks, p.snap.Blocks, snap.Blocks, func(cidr netip.Prefix) { dirty[cidr] = struct{}{} })
	cow.Each(known, c.Affinities, p.snap.Affinities, snap.Affinities, func(k datastore.AffinityKey) { dirty[k.CIDR] = struct{}{} })
	cow.Each(known, c.Nodes, p.snap.Nodes, snap.Nodes, func(name string) {
		for _, cidr := range p.users[name] {
			dirty[cidr] = struct{}{}
		}
	})
	for cidr := range dirty {
		p.withdraw(cidr)
		if blk, ok := snap.Blocks[cidr]; ok {
			p.plan(r, snap, cidr, blk)
		}
	}
}

// plan computes a block's share and adds it to the tallies.
func (p *Planner) plan(r *rules, snap *datastore.Snapshot, cidr netip.Prefix, blk *datastore.AllocationBlock) {
	pl := &blockPlan{}
	r.block(pl, snap, cidr, blk)
	if len(pl.routes)+len(pl.problems)+len(pl.skipped) == 0 {
		return // nothing to add, nothing read: nothing to withdraw later
	}
	p.plans[cidr] = pl
	for _, rt := range pl.routes {
		p.routes.add(rt.Dst, rt.Route)
		if rt.mac != "" {
			p.neighbors.add(rt.Gateway, rt.mac)
			p.fdb.add(rt.mac, rt.nodeIP)
		}
	}
	for _, msg := range pl.problems {
		p.problems[msg]++
	}
	for _, reason := range pl.skipped {
		p.skipped[reason]++
	}
	for _, name := range pl.nodes {
		p.users[name] = append(p.users[name], cidr)
	}
}

// withdraw takes a block's share out of the tallies.
func (p *Planner) withdraw(cidr netip.Prefix) {
	pl, ok := p.plans[cidr]
	if !ok {
		return
	}
	delete(p.plans, cidr)
	for _, rt := range pl.routes {
		p.routes.remove(rt.Dst, rt.Route)
		if rt.mac != "" {
			p.neighbors.remove(rt.Gateway, rt.mac)
			p.fdb.remove(rt.mac, rt.nodeIP)
		}
	}
	for _, msg := range pl.problems {
		decrement(p.problems, msg)
	}
	for _, reason := range pl.skipped {
		decrement(p.skipped, reason)
	}
	for _, name := range pl.nodes {
		users := slices.DeleteFunc(p.users[name], func(c netip.Prefix) bool { return c == cidr })
		if len(users) == 0 {
			delete(p.users, name)
		} else {
			p.users[name] = users
		}
	}
}

func decrement(m map[string]int, k string) {
	if m[k] <= 1 {
		delete(m, k)
	} else {
		m[k]--
	}
}

// assemble builds the State from the tallies, which have one value per key: the sorted
// lists of the previous State are patched where keys changed, not sorted again.
func (p *Planner) assemble(r *rules, learned []LearnedRoute) State {
	routeOf := func(k netip.Prefix) (Route, bool) {
		c, ok := p.routes.m[k]
		return c.v, ok
	}
	neighborOf := func(k netip.Addr) (Neighbor, bool) {
		c, ok := p.neighbors.m[k]
		return Neighbor{IP: k, MAC: net.HardwareAddr(c.v)}, ok
	}
	fdbOf := func(k string) (FDBEntry, bool) {
		c, ok := p.fdb.m[k]
		return FDBEntry{MAC: net.HardwareAddr(k), Dst: c.v}, ok
	}
	if !p.sorted {
		p.outRoutes = rebuild(&p.routes, comparePrefix, routeOf)
		p.outNeighbors = rebuild(&p.neighbors, netip.Addr.Compare, neighborOf)
		p.outFDB = rebuild(&p.fdb, strings.Compare, fdbOf)
		p.sorted = true
	} else {
		p.outRoutes = cow.Patch(p.outRoutes, p.routes.takeChanged(comparePrefix), func(r Route) netip.Prefix { return r.Dst }, comparePrefix, routeOf)
		p.outNeighbors = cow.Patch(p.outNeighbors, p.neighbors.takeChanged(netip.Addr.Compare), func(n Neighbor) netip.Addr { return n.IP }, netip.Addr.Compare, neighborOf)
		p.outFDB = cow.Patch(p.outFDB, p.fdb.takeChanged(strings.Compare), func(f FDBEntry) string { return string(f.MAC) }, strings.Compare, fdbOf)
	}

	s := r.globalState()
	slices.SortFunc(s.Pools, comparePrefix)
	s.Routes, s.Neighbors, s.FDB = p.outRoutes, p.outNeighbors, p.outFDB
	skipped := p.skipped
	if len(learned) > 0 {
		// Learned routes are few and cheap: they are computed again on every call.
		a := newAssembler(len(learned))
		r.learned(a, learned, func(dst netip.Prefix) bool {
			_, ok := p.routes.m[dst]
			return ok || a.has(dst)
		})
		if len(a.routes) > 0 {
			extra := slices.SortedFunc(maps.Values(a.routes), func(x, y Route) int { return comparePrefix(x.Dst, y.Dst) })
			s.Routes = mergeSorted(p.outRoutes, extra, func(x, y Route) int { return comparePrefix(x.Dst, y.Dst) })
		}
		if len(a.skipped) > 0 {
			skipped = maps.Clone(p.skipped)
			for reason, n := range a.skipped {
				skipped[reason] += n
			}
		}
	}
	problems := make(map[string]bool, len(r.problems)+len(p.problems))
	for _, msg := range r.problems {
		problems[msg] = true
	}
	for msg := range p.problems {
		problems[msg] = true
	}
	s.Problems = appendSkipped(slices.Collect(maps.Keys(problems)), skipped)
	slices.Sort(s.Problems)
	return s
}

// rebuild lists the value of every key of t, sorted by key, and forgets t's changes.
func rebuild[K comparable, V comparable, T any](t *tally[K, V], compare func(a, b K) int, get func(K) (T, bool)) []T {
	t.changed = t.changed[:0]
	keys := slices.SortedFunc(maps.Keys(t.m), compare)
	out := make([]T, 0, len(keys))
	for _, k := range keys {
		v, _ := get(k)
		out = append(out, v)
	}
	return out
}

// mergeSorted merges two sorted lists without common keys into a new one.
func mergeSorted[T any](a, b []T, compare func(x, y T) int) []T {
	out := make([]T, 0, len(a)+len(b))
	for len(a) > 0 && len(b) > 0 {
		// Copy the run of a that comes before b[0] at once.
		j, _ := slices.BinarySearchFunc(a, b[0], compare)
		out = append(out, a[:j]...)
		a = a[j:]
		out = append(out, b[0])
		b = b[1:]
	}
	out = append(out, a...)
	return append(out, b...)
}

// blockPlan is one block's share of the State, as the rules emitted it, and the nodes it
// read. It is the emitter of the block's computation.
type blockPlan struct {
	routes   []plannedRoute
	problems []string
	skipped  []string
	nodes    []string
}

// plannedRoute is a route a block wants; a VXLAN route carries the neighbour and FDB entry
// it needs.
type plannedRoute struct {
	Route
	mac    string     // VXLAN routes: the remote VTEP MAC (bytes); "" for others
	nodeIP netip.Addr // VXLAN routes: the underlay address the MAC lives at
}

func (b *blockPlan) route(r Route) { b.routes = append(b.routes, plannedRoute{Route: r}) }

func (b *blockPlan) vxlanRoute(r Route, mac net.HardwareAddr, nodeIP netip.Addr, _ string) {
	b.routes = append(b.routes, plannedRoute{Route: r, mac: string(mac), nodeIP: nodeIP})
}

func (b *blockPlan) skip(reason string) { b.skipped = append(b.skipped, reason) }
func (b *blockPlan) problem(msg string) { b.problems = append(b.problems, msg) }

func (b *blockPlan) usesNode(node string) {
	if !slices.Contains(b.nodes, node) {
		b.nodes = append(b.nodes, node)
	}
}

// tally counts, for every key, how many emissions want each value for it. A key wanted
// with two different values is a conflict: which one wins depends on the order.
type tally[K, V comparable] struct {
	m         map[K]wants[V]
	conflicts int // keys with more than one value
	changed   []K // keys added, removed or changed since takeChanged; may repeat
}

// wants is a key's values: v (n emissions) and, in a conflict, others.
type wants[V comparable] struct {
	v      V
	n      int
	others []counted[V]
}

type counted[V comparable] struct {
	v V
	n int
}

func (t *tally[K, V]) add(k K, v V) {
	if t.m == nil {
		t.m = map[K]wants[V]{}
	}
	w, ok := t.m[k]
	conflicted := len(w.others) > 0
	switch i := slices.IndexFunc(w.others, func(c counted[V]) bool { return c.v == v }); {
	case !ok:
		w = wants[V]{v: v, n: 1}
	case w.v == v:
		w.n++
	case i >= 0:
		w.others[i].n++
	default:
		w.others = append(w.others, counted[V]{v: v, n: 1})
	}
	t.m[k] = w
	t.note(k, conflicted, len(w.others) > 0)
}

func (t *tally[K, V]) remove(k K, v V) {
	w, ok := t.m[k]
	if !ok {
		return
	}
	conflicted := len(w.others) > 0
	if w.v == v {
		w.n--
	} else if i := slices.IndexFunc(w.others, func(c counted[V]) bool { return c.v == v }); i >= 0 {
		w.others[i].n--
		if w.others[i].n == 0 {
			w.others = slices.Delete(w.others, i, i+1)
		}
	}
	if w.n == 0 && len(w.others) > 0 {
		w.v, w.n = w.others[0].v, w.others[0].n
		w.others = slices.Delete(w.others, 0, 1)
	}
	if w.n == 0 {
		delete(t.m, k)
	} else {
		t.m[k] = w
	}
	t.note(k, conflicted, len(w.others) > 0)
}

func (t *tally[K, V]) note(k K, wasConflicted, isConflicted bool) {
	switch {
	case isConflicted && !wasConflicted:
		t.conflicts++
	case wasConflicted && !isConflicted:
		t.conflicts--
	}
	t.changed = append(t.changed, k)
}

// takeChanged returns the keys changed since the last call, sorted and unique.
func (t *tally[K, V]) takeChanged(compare func(a, b K) int) []K {
	keys := slices.Clone(t.changed)
	t.changed = t.changed[:0]
	slices.SortFunc(keys, compare)
	return slices.CompactFunc(keys, func(a, b K) bool { return compare(a, b) == 0 })
}
