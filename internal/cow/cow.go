// Package cow finds what changed between two versions of a copy-on-write map, the way
// datastore snapshots share theirs: a snapshot's map that did not change is the previous
// snapshot's map itself, and a changed entry is a new value (a new pointer for objects),
// never an old one modified in place. Consumers that keep results per entry use it to
// redo only the entries that changed instead of everything.
package cow

import "reflect"

// Same reports whether a and b are the same map (not merely equal ones). Under the
// copy-on-write discipline the same map means the same content.
func Same[M ~map[K]V, K comparable, V any](a, b M) bool {
	return reflect.ValueOf(a).UnsafePointer() == reflect.ValueOf(b).UnsafePointer()
}

// Changed calls f once for every key that is in only one of old and new, or whose value
// differs between them (compared with ==, so pointers by identity). It costs nothing when
// old and new are the same map and one lookup per entry of new otherwise, plus one per
// entry of old when keys were deleted.
func Changed[M ~map[K]V, K, V comparable](old, new M, f func(K)) {
	if Same(old, new) {
		return
	}
	common := 0
	for k, v := range new {
		ov, ok := old[k]
		if ok {
			common++
		}
		if !ok || ov != v {
			f(k)
		}
	}
	if common == len(old) {
		return // every key of old is in new: nothing was deleted
	}
	for k := range old {
		if _, ok := new[k]; !ok {
			f(k)
		}
	}
}

// Each calls f for every key that changed between old and new. When known is set, listed
// holds every such key (perhaps more, perhaps repeated: a change log) and f gets each of
// them without a look at the maps; otherwise f gets what Changed finds.
func Each[M ~map[K]V, K, V comparable](known bool, listed []K, old, new M, f func(K)) {
	if !known {
		Changed(old, new, f)
		return
	}
	for _, k := range listed {
		f(k)
	}
}
