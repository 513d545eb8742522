package keyed

import (
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"testing"
)

// kernel is a fake of what a Table's reconciler installs into: a map, with writes and
// removes that fail for the keys in broken.
type kernel struct {
	m      map[string]int
	broken map[string]bool
	writes []string // "k=v" or "-k", in order
}

func newKernel() *kernel { return &kernel{m: map[string]int{}, broken: map[string]bool{}} }

func (k *kernel) write(key string, v int) error {
	if k.broken[key] {
		return fmt.Errorf("write %s: broken", key)
	}
	k.m[key] = v
	k.writes = append(k.writes, fmt.Sprintf("%s=%d", key, v))
	return nil
}

func (k *kernel) remove(key string, _ int) error {
	if k.broken[key] {
		return fmt.Errorf("remove %s: broken", key)
	}
	delete(k.m, key) // removing what is already gone succeeds
	k.writes = append(k.writes, "-"+key)
	return nil
}

// pass is what a reconciler does with a Table: adds, then deletes, then settles.
func pass(t *Table[string, int], k *kernel) []error {
	var errs []error
	fail := func(err error) { errs = append(errs, err) }
	t.StartPass()
	t.Add(k.write, fail)
	t.Delete(k.remove, fail)
	t.Settle()
	return errs
}

func installed(t *Table[string, int]) map[string]int {
	m := map[string]int{}
	for k, v := range t.AllInstalled() {
		m[k] = v
	}
	return m
}

func wanted(t *Table[string, int], keys ...string) map[string]int {
	m := map[string]int{}
	for _, k := range keys {
		if v, ok := t.Wanted(k); ok {
			m[k] = v
		}
	}
	return m
}

// syncedAB returns a Table that wants a=1 and b=2 after a pass that installed them.
func syncedAB(t *testing.T) (*Table[string, int], *kernel) {
	t.Helper()
	tb := &Table[string, int]{}
	k := newKernel()
	tb.Want("a", 1)
	tb.Want("b", 2)
	if errs := pass(tb, k); errs != nil {
		t.Fatal(errs)
	}
	return tb, k
}

func TestAddThenDeleteOnlyWhatDiffers(t *testing.T) {
	tb := &Table[string, int]{}
	k := newKernel()
	tb.Want("a", 1)
	tb.Want("b", 2)
	if errs := pass(tb, k); errs != nil {
		t.Fatal(errs)
	}
	if want := map[string]int{"a": 1, "b": 2}; !maps.Equal(k.m, want) || !maps.Equal(installed(tb), want) {
		t.Fatalf("kernel %v, installed %v, want both %v", k.m, installed(tb), want)
	}

	// Nothing changed: nothing is written, nothing is even visited.
	k.writes = nil
	pass(tb, k)
	if k.writes != nil {
		t.Errorf("a pass with nothing dirty wrote %v", k.writes)
	}
	if dirty := slices.Collect(tb.ToAdd()); len(dirty) != 0 {
		t.Errorf("dirty keys after a clean pass: %v", dirty)
	}

	// One changed value, one gone, one new: the new value replaces the old one (no
	// delete), and the add comes before the delete.
	tb.Want("a", 10)
	tb.Unwant("b")
	tb.Want("c", 3)
	k.writes = nil
	pass(tb, k)
	slices.Sort(k.writes[:2]) // the adds' order among themselves is a map's
	if want := []string{"a=10", "c=3", "-b"}; !slices.Equal(k.writes, want) {
		t.Errorf("writes %v, want %v", k.writes, want)
	}
	if want := map[string]int{"a": 10, "c": 3}; !maps.Equal(installed(tb), want) {
		t.Errorf("installed %v, want %v", installed(tb), want)
	}
}

func TestFailuresAreRetriedAndTheRecordIsWhatWasReached(t *testing.T) {
	tb := &Table[string, int]{}
	k := newKernel()
	k.m["old"] = 7
	tb.ReplaceInstalled(map[string]int{"old": 7})
	tb.Want("a", 1)
	tb.Want("b", 2)
	k.broken["b"], k.broken["old"] = true, true

	errs := pass(tb, k)
	if len(errs) != 2 {
		t.Fatalf("errors %v, want one for b and one for old", errs)
	}
	// Partial failure: the record holds what really happened.
	if want := map[string]int{"a": 1, "old": 7}; !maps.Equal(installed(tb), want) {
		t.Fatalf("installed %v, want %v", installed(tb), want)
	}
	// Only the failed keys are dirty for the next pass.
	dirty := slices.Sorted(tb.ToAdd())
	if want := []string{"b", "old"}; !slices.Equal(dirty, want) {
		t.Fatalf("dirty after the failed pass %v, want %v", dirty, want)
	}

	delete(k.broken, "b")
	delete(k.broken, "old")
	k.writes = nil
	if errs := pass(tb, k); errs != nil {
		t.Fatal(errs)
	}
	if want := []string{"b=2", "-old"}; !slices.Equal(k.writes, want) {
		t.Errorf("retry wrote %v, want %v", k.writes, want)
	}
	if want := map[string]int{"a": 1, "b": 2}; !maps.Equal(installed(tb), want) || !maps.Equal(k.m, want) {
		t.Errorf("installed %v, kernel %v, want both %v", installed(tb), k.m, want)
	}
}

func TestReplaceInstalledComparesEveryKey(t *testing.T) {
	tb, k := syncedAB(t)

	// Someone changed a, removed b and added x behind the reconciler's back; a dump
	// tells it.
	k.m = map[string]int{"a": 5, "x": 9}
	tb.ReplaceInstalled(map[string]int{"a": 5, "x": 9})
	if !tb.AllDirty() {
		t.Fatal("a replaced installed side left keys clean")
	}
	k.writes = nil
	pass(tb, k)
	if want := map[string]int{"a": 1, "b": 2}; !maps.Equal(k.m, want) {
		t.Errorf("kernel after the resync pass %v, want %v", k.m, want)
	}
	if tb.AllDirty() {
		t.Error("every key still dirty after a pass without failures")
	}
}

func TestForgetInstalledRewritesWhatWasThere(t *testing.T) {
	tb, k := syncedAB(t)

	clear(k.m) // the device holding them went away, and they with it
	tb.ForgetInstalled()
	if tb.NumInstalled() != 0 {
		t.Fatalf("%d installed after ForgetInstalled", tb.NumInstalled())
	}
	pass(tb, k)
	if want := map[string]int{"a": 1, "b": 2}; !maps.Equal(k.m, want) {
		t.Errorf("kernel %v, want %v", k.m, want)
	}
}

func TestWithoutSettleDirtyKeysStay(t *testing.T) {
	tb := &Table[string, int]{}
	k := newKernel()
	tb.Want("a", 1)
	tb.StartPass()
	// A pass that could not visit the table (its device is not there) does not settle.
	if dirty := slices.Collect(tb.ToAdd()); !slices.Equal(dirty, []string{"a"}) {
		t.Fatalf("dirty %v, want [a]", dirty)
	}
	pass(tb, k)
	if want := map[string]int{"a": 1}; !maps.Equal(k.m, want) {
		t.Errorf("kernel %v, want %v", k.m, want)
	}
}

func TestClearWantedMakesEveryKeyDirty(t *testing.T) {
	tb, k := syncedAB(t)

	tb.ClearWanted(1)
	tb.Want("b", 2)
	k.writes = nil
	pass(tb, k)
	if want := []string{"-a"}; !slices.Equal(k.writes, want) {
		t.Errorf("writes %v, want %v (b is installed as wanted)", k.writes, want)
	}
}

// TestRandomTransitionsConverge drives a Table through random changes of the wanted side,
// the installed side (someone else's writes, dumps) and failures, and checks after every
// pass the invariant the reconcilers rely on: a key that is not dirty has its wanted value
// installed (or is neither wanted nor installed), and the record is the kernel. After a
// pass without failures the kernel is the desired state.
func TestRandomTransitionsConverge(t *testing.T) {
	keys := []string{"a", "b", "c", "d", "e", "f"}
	for seed := range uint64(200) {
		rng := rand.New(rand.NewPCG(seed, 1))
		tb := &Table[string, int]{}
		k := newKernel()
		for step := range 30 {
			for range rng.IntN(4) {
				key := keys[rng.IntN(len(keys))]
				switch rng.IntN(6) {
				case 0, 1:
					tb.Want(key, rng.IntN(3))
				case 2:
					tb.Unwant(key)
				case 3: // someone else writes, and the reconciler hears of it
					v := rng.IntN(3)
					k.m[key] = v
					tb.SetInstalled(key, v)
					tb.Mark(key)
				case 4: // a dump
					tb.ReplaceInstalled(maps.Clone(k.m))
				case 5:
					k.broken[key] = !k.broken[key]
				}
			}
			errs := pass(tb, k)
			if !maps.Equal(installed(tb), k.m) {
				t.Fatalf("seed %d step %d: installed %v, kernel %v", seed, step, installed(tb), k.m)
			}
			dirty := map[string]bool{}
			if !tb.AllDirty() {
				for key := range tb.ToAdd() {
					dirty[key] = true
				}
			}
			for _, key := range keys {
				w, wok := tb.Wanted(key)
				h, hok := tb.Installed(key)
				if !tb.AllDirty() && !dirty[key] && (wok != hok || w != h) {
					t.Fatalf("seed %d step %d: clean key %s wanted (%d, %v), installed (%d, %v)", seed, step, key, w, wok, h, hok)
				}
			}
			if errs == nil && !maps.Equal(k.m, wanted(tb, keys...)) {
				t.Fatalf("seed %d step %d: a pass without failures left the kernel %v, want %v", seed, step, k.m, wanted(tb, keys...))
			}
		}
		clear(k.broken)
		if errs := pass(tb, k); errs != nil {
			t.Fatalf("seed %d: %v", seed, errors.Join(errs...))
		}
		if !maps.Equal(k.m, wanted(tb, keys...)) {
			t.Fatalf("seed %d: after the last pass the kernel is %v, want %v", seed, k.m, wanted(tb, keys...))
		}
	}
}
