// Package keyed is the one diff of desired against installed state by key that tabby's
// reconcilers share: kernel routes, VXLAN neighbours and FDB entries today, ipset members
// or anything else a reconciler installs object by object tomorrow.
//
// A Table keeps, for one kind of object, the values wanted and the values installed (as
// far as the reconciler knows: what its own writes, the kernel's notifications and its
// dumps told it), and the keys where the two may differ. Felix's deltatracker keeps the
// exact sets of pending updates and deletions, comparing values on every change; a Table
// keeps a superset instead, the dirty keys, and compares only when a pass visits them. A
// new desired state, an event or a dump then costs a mark per key (or one flag for every
// key) rather than a comparison, and values whose equality depends on the reconciler's
// other state (a route's nexthop object) are compared when that state is current.
//
// A pass visits the keys of ToAdd, then those of ToDelete; a key it could not settle
// (a failed write, a delete that must wait) is handed to Again and becomes dirty for the
// next pass when Settle ends this one. Every other dirty key was visited, so after Settle
// the wanted and installed values of every clean key agree. Add and Delete are that pass
// for objects whose installed value is simply the wanted one; reconcilers with more to do
// per key (grouped writes, conflicts, adoption) write their own loop over ToAdd and
// ToDelete with Wanted, Installed, SetInstalled, DeleteInstalled and Again.
//
// A Table is not safe for concurrent use: it belongs to its reconciler's goroutine.
package keyed

import (
	"iter"
	"maps"
)

// Table is the desired and the installed values of one kind of object by key, and the keys
// where they may differ. The zero Table is empty and ready to use.
type Table[K, V comparable] struct {
	want, have map[K]V
	// dirty holds the keys that may differ, unless all is set: then every key may.
	dirty map[K]struct{}
	all   bool
	// again collects, during a pass, the keys to visit again in the next one.
	again map[K]struct{}
}

func (t *Table[K, V]) init() {
	if t.want == nil {
		t.want, t.have = map[K]V{}, map[K]V{}
		t.dirty, t.again = map[K]struct{}{}, map[K]struct{}{}
	}
}

// Want makes v the wanted value of k.
func (t *Table[K, V]) Want(k K, v V) {
	t.init()
	t.want[k] = v
	t.Mark(k)
}

// Unwant makes k unwanted: its installed value, if any, is to be deleted.
func (t *Table[K, V]) Unwant(k K) {
	t.init()
	delete(t.want, k)
	t.Mark(k)
}

// ClearWanted makes every key unwanted, before the whole desired state is given again:
// about n keys, which the first time get their room at once. Every key becomes dirty.
func (t *Table[K, V]) ClearWanted(n int) {
	t.init()
	if len(t.want) == 0 {
		t.want = make(map[K]V, n)
	} else {
		clear(t.want)
	}
	t.MarkAll()
}

// Wanted returns the wanted value of k.
func (t *Table[K, V]) Wanted(k K) (V, bool) {
	v, ok := t.want[k]
	return v, ok
}

// NumWanted is the number of wanted keys.
func (t *Table[K, V]) NumWanted() int { return len(t.want) }

// Installed returns the installed value of k.
func (t *Table[K, V]) Installed(k K) (V, bool) {
	v, ok := t.have[k]
	return v, ok
}

// SetInstalled records that v is installed under k: the reconciler wrote it, or was told
// of it (it then also marks k, unless it was the echo of its own write).
func (t *Table[K, V]) SetInstalled(k K, v V) {
	t.init()
	t.have[k] = v
}

// DeleteInstalled records that nothing is installed under k.
func (t *Table[K, V]) DeleteInstalled(k K) { delete(t.have, k) }

// ReplaceInstalled replaces the whole installed side by have, which the Table keeps (a
// fresh dump). Every key becomes dirty.
func (t *Table[K, V]) ReplaceInstalled(have map[K]V) {
	t.init()
	if have == nil {
		have = map[K]V{}
	}
	t.have = have
	t.MarkAll()
}

// ForgetInstalled records that nothing is installed any more (the device that held the
// objects is gone, and they with it). The keys that were installed become dirty.
func (t *Table[K, V]) ForgetInstalled() {
	for k := range t.have {
		t.Mark(k)
	}
	clear(t.have)
}

// GrowInstalled makes room for n installed values when none is installed yet, before a
// first pass installs them all: the map then does not grow step by step.
func (t *Table[K, V]) GrowInstalled(n int) {
	if len(t.have) == 0 {
		t.have = make(map[K]V, n)
	}
}

// AllInstalled yields every installed key and value. The caller may delete the key it is
// given (DeleteInstalled) while iterating.
func (t *Table[K, V]) AllInstalled() iter.Seq2[K, V] { return maps.All(t.have) }

// NumInstalled is the number of installed keys.
func (t *Table[K, V]) NumInstalled() int { return len(t.have) }

// Mark makes k dirty: its wanted and installed values may differ. While every key is
// dirty there is nothing to note (a cold sync sets 100,000 wanted routes without filling
// a set of them).
func (t *Table[K, V]) Mark(k K) {
	if t.all {
		return
	}
	t.init()
	t.dirty[k] = struct{}{}
}

// MarkAll makes every key dirty (a full resync).
func (t *Table[K, V]) MarkAll() { t.all = true }

// AllDirty reports whether every key is dirty.
func (t *Table[K, V]) AllDirty() bool { return t.all }

// ToAdd yields the keys whose wanted value may not be installed: the dirty keys, or every
// wanted key when all are dirty. A yielded key may be wanted or not; the caller looks.
func (t *Table[K, V]) ToAdd() iter.Seq[K] {
	if t.all {
		return maps.Keys(t.want)
	}
	return maps.Keys(t.dirty)
}

// ToDelete yields the keys whose installed value may not be wanted: the dirty keys, or
// every installed key when all are dirty. The caller may delete the key it is given
// (DeleteInstalled) while iterating.
func (t *Table[K, V]) ToDelete() iter.Seq[K] {
	if t.all {
		return maps.Keys(t.have)
	}
	return maps.Keys(t.dirty)
}

// StartPass begins a pass: nothing is to be visited again yet.
func (t *Table[K, V]) StartPass() {
	t.init()
	clear(t.again)
}

// Again hands k to the next pass: this one could not settle it.
func (t *Table[K, V]) Again(k K) { t.again[k] = struct{}{} }

// Settle ends a pass that visited every dirty key: the keys handed to Again are the dirty
// keys of the next pass, and no others. A pass that skipped the table (its device is not
// ready) does not call Settle, so that what was dirty stays dirty.
func (t *Table[K, V]) Settle() {
	t.init()
	t.all = false
	t.dirty, t.again = t.again, t.dirty // the old dirty set is cleared by StartPass
}

// Add installs every wanted value that is not installed as wanted: write is called for
// it, and on success the value is recorded as installed. A failed write is reported to
// fail and visited again by the next pass.
func (t *Table[K, V]) Add(write func(K, V) error, fail func(error)) {
	for k := range t.ToAdd() {
		v, ok := t.want[k]
		if !ok {
			continue
		}
		if have, ok := t.have[k]; ok && have == v {
			continue
		}
		if err := write(k, v); err != nil {
			fail(err)
			t.Again(k)
			continue
		}
		t.have[k] = v
	}
}

// Delete removes every installed value whose key is not wanted: remove is called with
// the installed value, and on success the key is forgotten. remove treats "already gone"
// as success. A failed remove is reported to fail and visited again by the next pass. A
// key wanted with another value is left to Add, which replaces it.
func (t *Table[K, V]) Delete(remove func(K, V) error, fail func(error)) {
	for k := range t.ToDelete() {
		have, ok := t.have[k]
		if !ok {
			continue
		}
		if _, wanted := t.want[k]; wanted {
			continue
		}
		if err := remove(k, have); err != nil {
			fail(err)
			t.Again(k)
			continue
		}
		delete(t.have, k)
	}
}
