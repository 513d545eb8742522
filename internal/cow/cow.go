// Package cow helps keep results computed from copy-on-write data up to date at the cost
// of what changed. It finds what changed between two versions of a map shared the way
// datastore snapshots share theirs (a map that did not change is the previous snapshot's
// map itself, and a changed entry is a new value, a new pointer for objects, never an old
// one modified in place), and updates sorted lists that others may still hold by copying.
package cow

import (
	"reflect"
	"slices"
)

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

// Patch returns sorted (a list sorted by key, without duplicates) with the entries of the
// given keys (sorted, unique) replaced by what get returns for them now, or removed where
// it returns none: the copy-on-write update of a sorted list that others may hold, which
// is left as it was. Without keys it returns sorted itself; otherwise it costs one copy of
// the list and a binary search per key, far less than sorting again.
func Patch[T, K any](sorted []T, keys []K, keyOf func(T) K, compare func(a, b K) int, get func(K) (T, bool)) []T {
	if len(keys) == 0 {
		return sorted
	}
	out := make([]T, 0, len(sorted)+len(keys))
	i := 0
	for _, k := range keys {
		j, found := slices.BinarySearchFunc(sorted[i:], k, func(t T, k K) int { return compare(keyOf(t), k) })
		out = append(out, sorted[i:i+j]...)
		i += j
		if found {
			i++
		}
		if t, ok := get(k); ok {
			out = append(out, t)
		}
	}
	return append(out, sorted[i:]...)
}
