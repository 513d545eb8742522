package ipam

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tabby-net/tabby/datastore"
)

// nodeScene is two nodes that borrow from each other: n1 owns block A (its IPIP tunnel
// address and a workload) and block C (two addresses of one workload, and one n2
// borrowed), and holds one address borrowed from n2's block B. Each pool is one block, so
// a node asking for an address in a pool whose block is taken borrows from it.
type nodeScene struct {
	blockA, blockB, blockC netip.Prefix
	// n1Addrs are every address of n1 (its tunnel address, workloads, and the one it
	// borrowed from B); n1Handles their handles.
	n1Addrs   []netip.Addr
	n1Handles []string
	// x1 is n2's address in its own block B; borrowedFromC the one it borrowed from C.
	x1, borrowedFromC netip.Addr
}

func newNodeScene(f *fixture, a *Allocator) *nodeScene {
	f.t.Helper()
	poolA, poolB, poolC := netip.MustParsePrefix("10.1.0.0/29"), netip.MustParsePrefix("10.2.0.0/29"), netip.MustParsePrefix("10.3.0.0/29")
	s := &nodeScene{blockA: poolA, blockB: poolB, blockC: poolC}
	f.pool("a", poolA.String(), map[string]any{"blockSize": 29, "ipipMode": "Always"})
	f.pool("b", poolB.String(), map[string]any{"blockSize": 29})
	f.pool("c", poolC.String(), map[string]any{"blockSize": 29})
	assignIn := func(handle, node string, pool netip.Prefix) netip.Addr {
		f.t.Helper()
		ip, err := a.AssignOne(f.ctx, AssignArgs{Handle: handle, Node: node, Use: datastore.UseWorkload, Pools: []netip.Prefix{pool}})
		if err != nil {
			f.t.Fatalf("assign %s on %s in %s: %v", handle, node, pool, err)
		}
		if !pool.Contains(ip) {
			f.t.Fatalf("assign %s on %s: %s is not in %s", handle, node, ip, pool)
		}
		return ip
	}
	tunnel, err := a.EnsureTunnelAddr(f.ctx, "n1", TunnelIPIP, []netip.Prefix{poolA})
	if err != nil {
		f.t.Fatal(err)
	}
	s.n1Addrs = []netip.Addr{
		tunnel,
		assignIn("tabby.w1", "n1", poolA),
		assignIn("tabby.w2", "n1", poolC),
		assignIn("tabby.w2", "n1", poolC),
	}
	s.x1 = assignIn("tabby.x1", "n2", poolB)
	borrowedFromB := assignIn("tabby.w3", "n1", poolB)
	s.n1Addrs = append(s.n1Addrs, borrowedFromB)
	s.borrowedFromC = assignIn("tabby.x2", "n2", poolC)
	s.n1Handles = []string{"ipip-tunnel-addr-n1", "tabby.w1", "tabby.w2", "tabby.w3"}

	// The scene is what it claims to be.
	for _, tc := range []struct {
		block netip.Prefix
		host  string
		inUse int
	}{{s.blockA, "n1", 2}, {s.blockB, "n2", 2}, {s.blockC, "n1", 3}} {
		if b := f.block(tc.block.String()); b.AffinityHost() != tc.host || inUse(b) != tc.inUse {
			f.t.Fatalf("block %s: affine to %q with %d in use, want %s with %d", tc.block, b.AffinityHost(), inUse(b), tc.host, tc.inUse)
		}
	}
	for ip, node := range map[netip.Addr]string{borrowedFromB: "n1", s.borrowedFromC: "n2"} {
		if al, err := a.AllocationOf(f.ctx, ip); err != nil || al.Attrs[AttrNode] != node || al.BlockHost == node {
			f.t.Fatalf("%s is not borrowed by %s: %+v, %v", ip, node, al, err)
		}
	}
	f.mustCheckClean(a)
	return s
}

// revision is etcd's current revision: unchanged means nothing was written.
func (f *fixture) revision() int64 {
	f.t.Helper()
	resp, err := f.e.Raw().Get(f.ctx, "/nothing-here")
	if err != nil {
		f.t.Fatal(err)
	}
	return resp.Header.Revision
}

// mustBeReleased checks that n1's IPAM data is gone and n2's is whole.
func (s *nodeScene) mustBeReleased(t *testing.T, f *fixture, a *Allocator) {
	t.Helper()
	for _, ip := range s.n1Addrs {
		if al, err := a.AllocationOf(f.ctx, ip); !errors.Is(err, ErrNotAssigned) {
			t.Errorf("n1's address %s still allocated: %+v, %v", ip, al, err)
		}
	}
	for _, h := range s.n1Handles {
		if f.exists(f.c.Keys.Handle(h)) {
			t.Errorf("n1's handle %s left", h)
		}
	}
	if f.exists(f.c.Keys.Block(s.blockA)) || f.exists(f.c.Keys.Affinity("n1", s.blockA)) {
		t.Errorf("n1's emptied block %s or its affinity left", s.blockA)
	}
	if f.exists(f.c.Keys.Affinity("n1", s.blockC)) {
		t.Errorf("n1's affinity to %s left", s.blockC)
	}
	if b := f.block(s.blockC.String()); b.Affinity != nil || inUse(b) != 1 {
		t.Errorf("block %s: affinity %s, %d in use; want none and n2's borrowed address", s.blockC, affinityText(b), inUse(b))
	}
	if b := f.block(s.blockB.String()); b.AffinityHost() != "n2" || inUse(b) != 1 || !f.exists(f.c.Keys.Affinity("n2", s.blockB)) {
		t.Errorf("n2's block %s: affine to %s, %d in use", s.blockB, affinityText(b), inUse(b))
	}
	for ip, h := range map[netip.Addr]string{s.x1: "tabby.x1", s.borrowedFromC: "tabby.x2"} {
		if al, err := a.AllocationOf(f.ctx, ip); err != nil || al.Handle != h || al.Attrs[AttrNode] != "n2" {
			t.Errorf("n2's address %s: %+v, %v", ip, al, err)
		}
		if ips, err := a.IPsByHandle(f.ctx, h); err != nil || len(ips) != 1 || ips[0] != ip {
			t.Errorf("n2's handle %s holds %v, %v; want %s", h, ips, err, ip)
		}
	}
	f.mustCheckClean(a)
}

func TestReleaseNodeReleasesItsAddressesAndBlocks(t *testing.T) {
	f := newFixture(t)
	a := f.alloc()
	s := newNodeScene(f, a)

	r, err := a.ReleaseNode(f.ctx, "n1")
	if err != nil {
		t.Fatal(err)
	}
	if want := (NodeRelease{Addresses: 5, BlocksDeleted: 1, BlocksKept: 1}); r != want {
		t.Errorf("ReleaseNode = %+v, want %+v", r, want)
	}
	s.mustBeReleased(t, f, a)

	// Again: nothing to do, and nothing written.
	before := f.revision()
	r, err = a.ReleaseNode(f.ctx, "n1")
	if err != nil || r != (NodeRelease{}) {
		t.Fatalf("second ReleaseNode = %+v, %v; want nothing released", r, err)
	}
	if after := f.revision(); after != before {
		t.Errorf("second ReleaseNode wrote to etcd (revision %d -> %d)", before, after)
	}
	s.mustBeReleased(t, f, a)
}

// A release interrupted anywhere (the context ends, the process dies) leaves a consistent
// IPAM, and running it again finishes the job.
func TestReleaseNodeIsRetrySafe(t *testing.T) {
	f := newFixture(t)
	a := f.alloc()
	s := newNodeScene(f, a)

	// The process dies right after its first write.
	crashAt(f, "node-addresses-released", func(v *Allocator) error {
		_, err := v.ReleaseNode(f.ctx, "n1")
		return err
	})
	f.mustCheckClean(a)

	// The context ends after the next write: the error says what was not done.
	ctx, cancel := context.WithCancel(f.ctx)
	defer cancel()
	b := New(f.c, testLogger())
	b.afterStep = func(_ context.Context, step string) {
		if step == "node-addresses-released" {
			cancel()
		}
	}
	r, err := b.ReleaseNode(ctx, "n1")
	if err == nil || !errors.Is(err, context.Canceled) || !strings.Contains(err.Error(), "release node n1: ") ||
		!strings.Contains(err.Error(), "in block 10.") {
		t.Fatalf("interrupted ReleaseNode = %+v, %v; want an error naming the node and the block", r, err)
	}
	if r.Addresses == 0 || r.Blocks() != 0 {
		t.Errorf("interrupted ReleaseNode counted %+v: want the addresses it released and no blocks", r)
	}
	f.mustCheckClean(a)

	if _, err := a.ReleaseNode(f.ctx, "n1"); err != nil {
		t.Fatalf("rerun: %v", err)
	}
	s.mustBeReleased(t, f, a)
}

func TestReleaseNodeWithoutIPAMDataAndStrayBlocks(t *testing.T) {
	f := newFixture(t)
	f.pool("p", "10.0.0.0/24", map[string]any{"blockSize": 28})
	a := f.alloc()
	kept := f.assign(a, "tabby.other", "n2")

	r, err := a.ReleaseNode(f.ctx, "never-had-any")
	if err != nil || r != (NodeRelease{}) {
		t.Fatalf("ReleaseNode of a node without IPAM data = %+v, %v", r, err)
	}
	if _, err := a.ReleaseNode(f.ctx, "a/b"); err == nil || !strings.Contains(err.Error(), "node name") {
		t.Fatalf("ReleaseNode of a bad name: %v", err)
	}

	// A block naming n3 as its host without an affinity key (written by hand): only
	// ReleaseNode would ever take it back; a pending affinity to a block never created goes too.
	stray := netip.MustParsePrefix("10.0.0.240/28")
	f.put(f.c.Keys.Block(stray), newBlock(stray, "n3", time.Now()))
	pending := netip.MustParsePrefix("10.0.0.224/28")
	f.put(f.c.Keys.Affinity("n3", pending), datastore.BlockAffinity{State: datastore.AffinityPending})
	if r, err = a.ReleaseNode(f.ctx, "n3"); err != nil || r != (NodeRelease{BlocksDeleted: 1}) {
		t.Fatalf("ReleaseNode(n3) = %+v, %v; want its stray block deleted", r, err)
	}
	if f.exists(f.c.Keys.Block(stray)) || f.exists(f.c.Keys.Affinity("n3", pending)) {
		t.Fatal("n3's stray block or pending affinity left")
	}
	if al, err := a.AllocationOf(f.ctx, kept); err != nil || al.BlockHost != "n2" {
		t.Fatalf("n2's address: %+v, %v", al, err)
	}
	f.mustCheckClean(a)
}

func TestLimitHandlesKeepsWholeHandles(t *testing.T) {
	cidr := netip.MustParsePrefix("10.0.0.0/29")
	b := newBlock(cidr, "n1", time.Now())
	for _, h := range []string{"h1", "h2", "h1", "h3", "h2"} {
		if _, ok := takeFirstFree(b, h, map[string]string{AttrNode: "n1"}); !ok {
			t.Fatal("block full")
		}
	}
	ords := ordinalsOfNode(b, "n1")
	if got := limitHandles(b, ords, 2); !slices.Equal(got, []int{0, 1, 2, 4}) {
		t.Errorf("limitHandles(2) = %v, want the ordinals of h1 and h2", got)
	}
	if got := limitHandles(b, ords, maxHandlesPerTxn); !slices.Equal(got, ords) {
		t.Errorf("limitHandles(%d) = %v, want all of %v", maxHandlesPerTxn, got, ords)
	}
}
