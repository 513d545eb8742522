package cow

import (
	"maps"
	"slices"
	"strings"
	"testing"
)

func TestSame(t *testing.T) {
	a := map[string]int{"x": 1}
	b := maps.Clone(a)
	var none map[string]int
	if !Same(a, a) || Same(a, b) || Same(a, none) || !Same(none, none) {
		t.Fatal("Same compares identity: a is a, a clone or nil is not")
	}
}

func TestChanged(t *testing.T) {
	one, two := new(int), new(int)
	tests := []struct {
		name     string
		old, new map[string]*int
		want     []string
	}{
		{"same map", nil, nil, nil},
		{"from nothing", nil, map[string]*int{"a": one}, []string{"a"}},
		{"to nothing", map[string]*int{"a": one}, map[string]*int{}, []string{"a"}},
		{"equal content, other map", map[string]*int{"a": one}, map[string]*int{"a": one}, nil},
		{"new pointer", map[string]*int{"a": one, "b": one}, map[string]*int{"a": one, "b": two}, []string{"b"}},
		{"added and deleted, same size", map[string]*int{"a": one, "b": one}, map[string]*int{"a": one, "c": one}, []string{"b", "c"}},
		{"deleted", map[string]*int{"a": one, "b": one, "c": two}, map[string]*int{"c": two}, []string{"a", "b"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got []string
			Changed(tt.old, tt.new, func(k string) { got = append(got, k) })
			slices.Sort(got)
			if !slices.Equal(got, tt.want) {
				t.Errorf("Changed = %v, want %v", got, tt.want)
			}
		})
	}
	// The same map changes nothing, even if (against the rules) it was modified.
	m := map[string]*int{"a": one}
	Changed(m, m, func(k string) { t.Errorf("same map: %q reported", k) })
}

func TestPatch(t *testing.T) {
	type kv struct {
		k string
		v int
	}
	key := func(e kv) string { return e.k }
	now := map[string]int{"a": 1, "c": 30, "e": 5, "f": 6}
	get := func(k string) (kv, bool) {
		v, ok := now[k]
		return kv{k, v}, ok
	}
	old := []kv{{"b", 2}, {"c", 3}, {"d", 4}, {"e", 5}}
	kept := slices.Clone(old)
	got := Patch(old, []string{"a", "b", "c", "d", "f"}, key, strings.Compare, get)
	want := []kv{{"a", 1}, {"c", 30}, {"e", 5}, {"f", 6}}
	if !slices.Equal(got, want) {
		t.Errorf("Patch = %v, want %v", got, want)
	}
	if !slices.Equal(old, kept) {
		t.Errorf("Patch modified its input: %v", old)
	}
	if same := Patch(old, nil, key, strings.Compare, get); &same[0] != &old[0] {
		t.Error("Patch without keys copied the list")
	}
}
