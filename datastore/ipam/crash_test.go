package ipam

import (
	"context"
	"errors"
	"net/netip"
	"runtime"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/tabby-net/tabby/datastore"
)

// The steps of an assignment that claims a new block, in order.
var assignSteps = []string{"affinity-pending", "block-created", "affinity-confirmed", "handle-incremented", "block-written"}

// An assignment is interrupted after each of its steps, two ways: its context is cancelled
// (the process lives on and may undo what it can), or the process dies (its goroutine ends
// on the spot, so nothing more reaches etcd). Whatever is left, no address is
// ever given twice, Check reports the leftovers, and the leftovers are repaired by the
// node's next assignment, by ReleaseByHandle and by CleanupPending.
func TestInterruptedAssignmentNeverDuplicates(t *testing.T) {
	for _, crash := range []bool{false, true} {
		for _, step := range assignSteps {
			name := step + "/cancel"
			if crash {
				name = step + "/crash"
			}
			t.Run(name, func(t *testing.T) { testInterrupted(t, step, crash) })
		}
	}
}

func testInterrupted(t *testing.T, step string, crash bool) {
	f := newFixture(t)
	f.pool("p", "10.7.0.0/24", map[string]any{"blockSize": 28})
	healthy := f.alloc()

	// Another node already holds some addresses.
	var before []netip.Addr
	for i := range 3 {
		before = append(before, f.assign(healthy, "other-"+string(rune('0'+i)), "other"))
	}

	victim := New(f.newClient(), testLogger())
	ctx, cancel := context.WithCancel(f.ctx)
	defer cancel()
	var once sync.Once
	victim.afterStep = func(_ context.Context, s string) {
		if s != step {
			return
		}
		once.Do(func() {
			cancel()
			if crash {
				runtime.Goexit()
			}
		})
	}
	var ip netip.Addr
	err := errors.New("the process died")
	done := make(chan struct{})
	go func() {
		defer close(done)
		ip, err = victim.AssignOne(ctx, AssignArgs{Handle: "victim", Node: "n1", Use: datastore.UseWorkload})
	}()
	<-done
	t.Logf("interrupted assignment returned %v, %v", ip, err)
	if err == nil && slices.Contains(before, ip) {
		t.Fatalf("interrupted assignment returned %s, already held by another handle", ip)
	}

	rep, cerr := healthy.Check(f.ctx)
	if cerr != nil {
		t.Fatal(cerr)
	}
	t.Logf("check after interruption: %s", describeReport(rep))
	if len(rep.Leaks) != 0 || len(rep.DoubleClaims) != 0 || len(rep.Unreadable) != 0 {
		t.Fatalf("an interruption left an allocation no handle accounts for, or a double claim: %s", describeReport(rep))
	}
	switch {
	case step == "affinity-pending" || (step == "block-created" && !crash):
		// The pending affinity stays whether or not the block create landed.
		if len(rep.Pending) != 1 || rep.Pending[0].Host != "n1" {
			t.Fatalf("want the pending affinity reported: %s", describeReport(rep))
		}
	case step == "block-created" && crash:
		if len(rep.Pending) != 1 || len(rep.AffinitiesWithoutBlock) != 0 {
			t.Fatalf("want a pending affinity to an existing block: %s", describeReport(rep))
		}
	case step == "handle-incremented" && crash:
		if len(rep.OrphanHandles) != 1 || rep.OrphanHandles[0].Handle != "victim" || rep.OrphanHandles[0].Found != 0 {
			t.Fatalf("want the handle without allocation reported: %s", describeReport(rep))
		}
	case step == "block-written":
		if (err != nil) != crash || !rep.OK() {
			t.Fatalf("interrupted after the last write: %v, %s", err, describeReport(rep))
		}
	default:
		// Cancelled between handle and block: the undo ran. After confirming: nothing
		// half-done, just a claimed empty block.
		if !rep.OK() {
			t.Fatalf("want nothing left: %s", describeReport(rep))
		}
	}

	// The node comes back: its next assignment completes or removes its pending affinity,
	// the handle's release drops the stale count, and nothing collides.
	got := map[netip.Addr]string{}
	for _, ip := range before {
		got[ip] = "before"
	}
	if err == nil {
		got[ip] = "victim"
	}
	for i := range 12 {
		h := "after-" + string(rune('a'+i))
		node := []string{"n1", "other"}[i%2]
		nip := f.assign(healthy, h, node)
		if prev, dup := got[nip]; dup {
			t.Fatalf("address %s given to %s and %s", nip, prev, h)
		}
		got[nip] = h
	}
	if err := healthy.ReleaseByHandle(f.ctx, "victim"); err != nil {
		t.Fatal(err)
	}
	if res, err := healthy.CleanupPending(f.ctx, 0); err != nil {
		t.Fatalf("cleanup: %v (%+v)", err, res)
	}
	f.mustCheckClean(healthy)
}

// A pending affinity whose claimer died is left alone until it has been seen unchanged for
// minAge, then completed (block is the host's) or removed (block missing).
func TestCleanupPendingWaitsThenRepairs(t *testing.T) {
	f := newFixture(t)
	f.pool("p", "10.8.0.0/24", map[string]any{"blockSize": 28})
	a := f.alloc()
	clock := time.Unix(1_000_000, 0)
	a.now = func() time.Time { return clock }

	missing := netip.MustParsePrefix("10.8.0.0/28")
	mine := netip.MustParsePrefix("10.8.0.16/28")
	taken := netip.MustParsePrefix("10.8.0.32/28")
	dying := netip.MustParsePrefix("10.8.0.48/28")
	f.put(f.c.Keys.Affinity("dead", missing), datastore.BlockAffinity{State: datastore.AffinityPending})
	f.put(f.c.Keys.Affinity("dead", mine), datastore.BlockAffinity{State: datastore.AffinityPending})
	f.put(f.c.Keys.Block(mine), newBlock(mine, "dead", clock))
	f.put(f.c.Keys.Affinity("dead", taken), datastore.BlockAffinity{State: datastore.AffinityPending})
	f.put(f.c.Keys.Block(taken), newBlock(taken, "alive", clock))
	f.put(f.c.Keys.Affinity("alive", taken), datastore.BlockAffinity{State: datastore.AffinityConfirmed})
	f.put(f.c.Keys.Affinity("dead", dying), datastore.BlockAffinity{State: datastore.AffinityPendingDeletion})
	f.put(f.c.Keys.Block(dying), newBlock(dying, "dead", clock))

	rep, err := a.Check(f.ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Pending) != 4 || len(rep.AffinitiesWithoutBlock) != 1 || len(rep.DoubleClaims) != 1 {
		t.Fatalf("check before cleanup: %s", describeReport(rep))
	}

	res, err := a.CleanupPending(f.ctx, time.Minute)
	if err != nil || res.Waiting != 4 || len(res.Confirmed)+len(res.Removed)+len(res.Released) != 0 {
		t.Fatalf("first sighting must only start the clock: %+v, %v", res, err)
	}
	clock = clock.Add(30 * time.Second)
	if res, _ := a.CleanupPending(f.ctx, time.Minute); res.Waiting != 4 {
		t.Fatalf("30 s later: %+v", res)
	}
	clock = clock.Add(31 * time.Second)
	res, err = a.CleanupPending(f.ctx, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Confirmed) != 1 || res.Confirmed[0].Block != mine ||
		len(res.Removed) != 2 || len(res.Released) != 1 || res.Released[0].Block != dying {
		t.Fatalf("cleanup result %+v", res)
	}
	if f.exists(f.c.Keys.Block(dying)) {
		t.Fatal("the empty block of a pendingDeletion affinity is still there")
	}
	f.mustCheckClean(a)
}

// A pending affinity that changes while being watched restarts its clock.
func TestCleanupPendingRestartsClockOnChange(t *testing.T) {
	f := newFixture(t)
	f.pool("p", "10.8.0.0/24", map[string]any{"blockSize": 28})
	a := f.alloc()
	clock := time.Unix(1_000_000, 0)
	a.now = func() time.Time { return clock }
	cidr := netip.MustParsePrefix("10.8.0.0/28")
	f.put(f.c.Keys.Affinity("slow", cidr), datastore.BlockAffinity{State: datastore.AffinityPending})
	if res, _ := a.CleanupPending(f.ctx, time.Minute); res.Waiting != 1 {
		t.Fatalf("%+v", res)
	}
	clock = clock.Add(50 * time.Second)
	f.put(f.c.Keys.Affinity("slow", cidr), datastore.BlockAffinity{State: datastore.AffinityPending}) // the claimer is alive
	clock = clock.Add(50 * time.Second)
	if res, _ := a.CleanupPending(f.ctx, time.Minute); res.Waiting != 1 || len(res.Removed) != 0 {
		t.Fatalf("an affinity rewritten 50 s ago was cleaned: %+v", res)
	}
}

// crashAt runs op with an Allocator whose goroutine dies right after step.
func crashAt(f *fixture, step string, op func(a *Allocator) error) {
	f.t.Helper()
	a := New(f.newClient(), testLogger())
	a.afterStep = func(_ context.Context, s string) {
		if s == step {
			runtime.Goexit()
		}
	}
	done := make(chan error, 1)
	go func() {
		defer close(done)
		done <- op(a)
	}()
	if err, finished := <-done; finished {
		f.t.Fatalf("operation finished (%v) instead of dying at step %s", err, step)
	}
}

func TestInterruptedReleaseLeavesOnlyAnOvercountingHandle(t *testing.T) {
	f := newFixture(t)
	f.pool("p", "10.7.0.0/24", map[string]any{"blockSize": 28})
	a := f.alloc()
	ip1 := f.assign(a, "h", "n1")
	ip2 := f.assign(a, "h", "n1")
	f.assign(a, "keeps-block-busy", "n1")
	crashAt(f, "block-released", func(v *Allocator) error { return v.ReleaseIP(f.ctx, ip1) })
	rep, err := a.Check(f.ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Leaks) != 0 || len(rep.OrphanHandles) != 1 || rep.OrphanHandles[0].Counted != 2 || rep.OrphanHandles[0].Found != 1 {
		t.Fatalf("after a crash between block and handle writes: %s", describeReport(rep))
	}
	if _, err := a.AllocationOf(f.ctx, ip1); !errors.Is(err, ErrNotAssigned) {
		t.Fatalf("released address still allocated: %v", err)
	}
	if err := a.ReleaseByHandle(f.ctx, "h"); err != nil {
		t.Fatal(err)
	}
	if _, err := a.AllocationOf(f.ctx, ip2); !errors.Is(err, ErrNotAssigned) {
		t.Fatalf("second address not released: %v", err)
	}
	if f.exists(f.c.Keys.Handle("h")) {
		t.Fatal("the overcounting handle survived its release")
	}
	f.mustCheckClean(a)
}

func TestInterruptedBlockReleaseIsCompleted(t *testing.T) {
	f := newFixture(t)
	f.pool("p", "10.7.0.0/24", map[string]any{"blockSize": 28})
	a := f.alloc()
	ip := f.assign(a, "h", "n1")
	b := blockFor(ip, 28)
	if err := a.ReleaseByHandle(f.ctx, "h"); err != nil {
		t.Fatal(err)
	}

	// Dies after marking the affinity pendingDeletion: the block is still there, and the
	// node's next assignment takes it back.
	crashAt(f, "affinity-pending-deletion", func(v *Allocator) error { return v.ReleaseAffinity(f.ctx, "n1", b, true) })
	rep, _ := a.Check(f.ctx)
	if len(rep.Pending) != 1 || rep.Pending[0].State != datastore.AffinityPendingDeletion {
		t.Fatalf("want a pendingDeletion affinity: %s", describeReport(rep))
	}
	if got := f.assign(a, "h2", "n1"); blockFor(got, 28) != b {
		t.Fatalf("node did not take its half-released block back: got %s", got)
	}
	f.mustCheckClean(a)
	if err := a.ReleaseByHandle(f.ctx, "h2"); err != nil {
		t.Fatal(err)
	}

	// Dies after deleting the block: an affinity to nothing, removed by CleanupPending.
	crashAt(f, "block-released", func(v *Allocator) error { return v.ReleaseAffinity(f.ctx, "n1", b, true) })
	rep, _ = a.Check(f.ctx)
	if len(rep.AffinitiesWithoutBlock) != 1 || len(rep.Pending) != 1 {
		t.Fatalf("want a pendingDeletion affinity without block: %s", describeReport(rep))
	}
	res, err := a.CleanupPending(f.ctx, 0)
	if err != nil || len(res.Removed) != 1 {
		t.Fatalf("cleanup: %+v %v", res, err)
	}
	f.mustCheckClean(a)
}
