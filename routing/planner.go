package routing

import (
	"maps"
	"net"
	"net/netip"
	"slices"
	"strings"

	"github.com/tabby-net/tabby/datastore"
	"github.com/tabby-net/tabby/internal/cow"
	"github.com/tabby-net/tabby/internal/ipprefix"
)

// Planner computes the same State as Desired, but at the cost of what changed since its
// previous call rather than of the whole cluster: at 5,000 nodes Desired takes several
// milliseconds for every change, most of the daemon's CPU per node join or leave.
//
// It counts what every block emits (routes, VXLAN entries, problems) and which nodes each
// block read, and redoes a block only when the block, an affinity to it or one of those
// nodes changed: it takes the block's old emissions back, computed again from the previous
// snapshot, and adds the new ones. The syncer's change list says which blocks
// (Snapshot.ChangesSince); for other snapshots the maps are compared, which relies on
// their copy-on-write discipline: a map that did not change is the previous snapshot's
// map itself, and a changed object is a new pointer. When the host's facts, the local node
// or the pools change, every block is redone.
//
// Desired's result depends on the order of blocks only where two of them emit for one
// key (one destination, or one VTEP MAC or tunnel address with different values); while
// that is so, the Planner returns Desired's result itself. Otherwise it patches the sorted
// lists of its previous State where keys changed; it takes them from Desired whenever it
// has none to patch.
//
// A Planner is not safe for concurrent use. The States it returns share their slices with
// each other: treat them as read-only, as Kernel.Set does.
type Planner struct {
	// rules of the last call; nil when nothing is kept.
	rules *rules
	// snap is the snapshot the counts were made from.
	snap *datastore.Snapshot
	// changes says what changed from one snapshot (old) to another; nil means
	// Snapshot.ChangesSince. Tests give change lists to snapshots made by hand with it.
	changes func(snap, old *datastore.Snapshot) (*datastore.Changes, bool)

	users map[string][]netip.Prefix // node name → the blocks that read that node

	// Every block's emissions, counted.
	routes    map[netip.Prefix]int32    // destination → routes emitted for it
	collided  int                       // destinations with more than one route
	neighbors tally[netip.Addr, string] // tunnel address → VTEP MAC
	fdb       tally[string, netip.Addr] // VTEP MAC → node address
	problems  map[string]int            // problem line → blocks that report it
	skipped   map[string]int            // reason → routes left out

	// The destinations whose routes changed since the last State, and the route last
	// emitted for each (absent when only taken back).
	changedDst []netip.Prefix
	emitted    map[netip.Prefix]Route

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
			r.block(&counter{p: p, cidr: cidr, sign: 1}, snap, cidr, blk)
		}
	} else {
		p.update(snap)
	}
	p.rules, p.snap = r, snap
	if p.collided+p.neighbors.conflicts+p.fdb.conflicts > 0 {
		// The result depends on the order of the blocks: let Desired decide, and take
		// the sorted lists from it again once the conflict is gone.
		p.sorted = false
		return Desired(snap, local, learned)
	}
	return p.assemble(r, snap, learned)
}

// reset forgets everything.
func (p *Planner) reset() {
	*p = Planner{
		changes:  p.changes,
		users:    map[string][]netip.Prefix{},
		routes:   map[netip.Prefix]int32{},
		problems: map[string]int{},
		skipped:  map[string]int{},
		emitted:  map[netip.Prefix]Route{},
	}
}

// update redoes the blocks that changed, whose affinities changed, or that read a node
// that changed since p.snap. The rules are those of p.snap.
func (p *Planner) update(snap *datastore.Snapshot) {
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
	// Every block's old emissions are taken back before any new one is added: the count
	// of a key then never passes through a value that is neither the old nor the new.
	for cidr := range dirty {
		if blk, ok := p.snap.Blocks[cidr]; ok {
			p.rules.block(&counter{p: p, cidr: cidr, sign: -1}, p.snap, cidr, blk)
		}
	}
	for cidr := range dirty {
		if blk, ok := snap.Blocks[cidr]; ok {
			p.rules.block(&counter{p: p, cidr: cidr, sign: 1}, snap, cidr, blk)
		}
	}
}

// counter is the emitter that adds a block's emissions to the Planner's counts (sign 1)
// or takes them back (sign -1). What a block emits depends only on the block, its
// affinity, the nodes it reads and the rules, so taking back means emitting again from
// the snapshot the emissions were added from.
type counter struct {
	p    *Planner
	cidr netip.Prefix
	sign int
}

func (c *counter) route(r Route) {
	p := c.p
	n := p.routes[r.Dst]
	switch {
	case c.sign > 0 && n == 1:
		p.collided++
	case c.sign < 0 && n == 2:
		p.collided--
	}
	if n += int32(c.sign); n > 0 {
		p.routes[r.Dst] = n
	} else {
		delete(p.routes, r.Dst)
	}
	if p.sorted { // else the lists are taken from Desired: no need to know what changed
		if c.sign > 0 {
			p.emitted[r.Dst] = r
		}
		p.changedDst = append(p.changedDst, r.Dst)
	}
}

func (c *counter) vxlanRoute(r Route, mac net.HardwareAddr, nodeIP netip.Addr, _ string) {
	c.route(r)
	if c.sign > 0 {
		c.p.neighbors.add(r.Gateway, string(mac))
		c.p.fdb.add(string(mac), nodeIP)
	} else {
		c.p.neighbors.remove(r.Gateway, string(mac))
		c.p.fdb.remove(string(mac), nodeIP)
	}
}

func (c *counter) skip(reason string) { count(c.p.skipped, reason, c.sign) }
func (c *counter) problem(msg string) { count(c.p.problems, msg, c.sign) }

func (c *counter) usesNode(node string) {
	users := c.p.users[node]
	if c.sign > 0 {
		if !slices.Contains(users, c.cidr) {
			c.p.users[node] = append(users, c.cidr)
		}
		return
	}
	if users = slices.DeleteFunc(users, func(cidr netip.Prefix) bool { return cidr == c.cidr }); len(users) == 0 {
		delete(c.p.users, node)
	} else {
		c.p.users[node] = users
	}
}

func count(m map[string]int, k string, delta int) {
	if n := m[k] + delta; n > 0 {
		m[k] = n
	} else {
		delete(m, k)
	}
}

// assemble builds the State from the counts, which have one value per key: the sorted
// lists of the previous State are patched where keys changed, not sorted again.
func (p *Planner) assemble(r *rules, snap *datastore.Snapshot, learned []LearnedRoute) State {
	if !p.sorted {
		// Nothing to patch: take Desired's lists (without learned routes, which are
		// added below), equal to the counts' since no key has two values.
		ref := Desired(snap, r.local, nil)
		p.outRoutes, p.outNeighbors, p.outFDB = ref.Routes, ref.Neighbors, ref.FDB
		p.neighbors.changed, p.fdb.changed = nil, nil // may have grown to every key
		p.sorted = true
	} else {
		dsts := slices.SortedFunc(slices.Values(p.changedDst), ipprefix.Compare)
		p.outRoutes = cow.Patch(p.outRoutes, slices.Compact(dsts), func(r Route) netip.Prefix { return r.Dst }, ipprefix.Compare,
			func(k netip.Prefix) (Route, bool) {
				// A destination still counted has one route, emitted in this update:
				// had another block kept an older one, the count would be two.
				r, ok := p.emitted[k]
				return r, ok && p.routes[k] > 0
			})
		p.outNeighbors = cow.Patch(p.outNeighbors, p.neighbors.takeChanged(netip.Addr.Compare), func(n Neighbor) netip.Addr { return n.IP }, netip.Addr.Compare,
			func(k netip.Addr) (Neighbor, bool) {
				c, ok := p.neighbors.m[k]
				return Neighbor{IP: k, MAC: net.HardwareAddr(c.v)}, ok
			})
		p.outFDB = cow.Patch(p.outFDB, p.fdb.takeChanged(strings.Compare), func(f FDBEntry) string { return string(f.MAC) }, strings.Compare,
			func(k string) (FDBEntry, bool) {
				c, ok := p.fdb.m[k]
				return FDBEntry{MAC: net.HardwareAddr(k), Dst: c.v}, ok
			})
	}
	p.changedDst = p.changedDst[:0]
	clear(p.emitted)

	s := r.globalState()
	slices.SortFunc(s.Pools, ipprefix.Compare)
	s.Routes, s.Neighbors, s.FDB = p.outRoutes, p.outNeighbors, p.outFDB
	skipped := p.skipped
	if len(learned) > 0 {
		// Learned routes are few and cheap: they are computed again on every call.
		a := newAssembler(len(learned))
		r.learned(a, learned, func(dst netip.Prefix) bool {
			_, ok := p.routes[dst]
			return ok || a.has(dst)
		})
		if len(a.routes) > 0 {
			extra := slices.SortedFunc(maps.Values(a.routes), func(x, y Route) int { return ipprefix.Compare(x.Dst, y.Dst) })
			s.Routes = mergeSorted(p.outRoutes, extra, func(x, y Route) int { return ipprefix.Compare(x.Dst, y.Dst) })
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
