package ipam

import (
	"errors"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tabby-net/tabby/datastore"
)

func TestAssignClaimsABlockInCalicosLayout(t *testing.T) {
	f := newFixture(t)
	f.pool("default-ipv4-ippool", "10.244.0.0/16", map[string]any{"ipipMode": "Always"})
	a := f.alloc()

	ip := f.assign(a, "tabby.c1", "worker-1")
	cidr := blockFor(ip, 26)
	if !netip.MustParsePrefix("10.244.0.0/16").Contains(ip) {
		t.Fatalf("address %s outside the pool", ip)
	}
	b := f.block(cidr.String())
	if b.AffinityHost() != "worker-1" || b.CIDR != cidr.String() {
		t.Fatalf("block %s: affinity %v cidr %s", cidr, affinityText(b), b.CIDR)
	}
	if ip != cidr.Addr() {
		t.Fatalf("first address %s, want the block's first ordinal %s", ip, cidr.Addr())
	}
	at := b.Attributes[*b.Allocations[0]]
	if handleOf(at) != "tabby.c1" || at.Secondary["node"] != "worker-1" {
		t.Fatalf("attribute %+v, want handle tabby.c1 and node worker-1", at)
	}
	if len(b.Unallocated) != 63 || b.Unallocated[0] != 1 {
		t.Fatalf("unallocated %v", b.Unallocated)
	}
	aff, err := f.c.Get(f.ctx, f.c.Keys.Affinity("worker-1", cidr))
	if err != nil || !strings.Contains(string(aff.Value), `"state":"confirmed"`) {
		t.Fatalf("affinity %s: %q %v", cidr, aff.Value, err)
	}
	h, err := f.c.Get(f.ctx, f.c.Keys.Handle("tabby.c1"))
	if err != nil || !strings.Contains(string(h.Value), `"block":{"`+cidr.String()+`":1}`) {
		t.Fatalf("handle: %q %v", h.Value, err)
	}

	// The second address of the node comes from the same block.
	ip2 := f.assign(a, "tabby.c2", "worker-1")
	if ip2 != ordinalAddr(cidr, 1) {
		t.Fatalf("second address %s, want %s", ip2, ordinalAddr(cidr, 1))
	}
	f.mustCheckClean(a)
}

func TestAssignRejectsBadArguments(t *testing.T) {
	f := newFixture(t)
	f.pool("p", "10.0.0.0/24", nil)
	a := f.alloc()
	for _, tc := range []struct {
		args AssignArgs
		want string
	}{
		{AssignArgs{Node: "n", Use: datastore.UseWorkload}, "handle is empty"},
		{AssignArgs{Handle: "a/b", Node: "n", Use: datastore.UseWorkload}, `handle "a/b"`},
		{AssignArgs{Handle: "h", Use: datastore.UseWorkload}, "node name is empty"},
		{AssignArgs{Handle: "h", Node: "n"}, `use ""`},
		{AssignArgs{Handle: "h", Node: "n", Use: "Storage"}, `use "Storage"`},
		{AssignArgs{Handle: "h", Node: "n", Use: datastore.UseWorkload, Pools: []netip.Prefix{netip.MustParsePrefix("10.0.0.1/24")}}, "host bits"},
		{AssignArgs{Handle: "h", Node: "n", Use: datastore.UseWorkload, Pools: []netip.Prefix{netip.MustParsePrefix("10.9.0.0/24")}}, "requested pool 10.9.0.0/24 does not exist"},
	} {
		_, err := a.AssignOne(f.ctx, tc.args)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("AssignOne(%+v) = %v, want an error containing %q", tc.args, err, tc.want)
		}
	}
}

func TestFIFOReuseOfFreedOrdinals(t *testing.T) {
	f := newFixture(t)
	f.pool("p", "10.0.0.0/28", map[string]any{"blockSize": 29})
	a := f.alloc()
	var ips []netip.Addr
	for i := range 3 {
		ips = append(ips, f.assign(a, "h"+string(rune('0'+i)), "n1"))
	}
	cidr := blockFor(ips[0], 29)
	if err := a.ReleaseIP(f.ctx, ips[1]); err != nil {
		t.Fatal(err)
	}
	if got := f.block(cidr.String()).Unallocated; !slices.Equal(got, []int{3, 4, 5, 6, 7, 1}) {
		t.Fatalf("unallocated after release %v, want [3 4 5 6 7 1]", got)
	}
	var next []netip.Addr
	for i := range 6 {
		next = append(next, f.assign(a, "x"+string(rune('0'+i)), "n1"))
	}
	want := []netip.Addr{ordinalAddr(cidr, 3), ordinalAddr(cidr, 4), ordinalAddr(cidr, 5), ordinalAddr(cidr, 6), ordinalAddr(cidr, 7), ips[1]}
	if !slices.Equal(next, want) {
		t.Fatalf("assignments after release %v, want %v (freed address last)", next, want)
	}
	// Ordinal 7 is the block's "broadcast" address: handed out like any other.
	if next[4].String() != "10.0.0.7" && next[4].String() != "10.0.0.15" {
		t.Fatalf("last ordinal %s", next[4])
	}
	f.mustCheckClean(a)
}

func TestReleaseByHandleAndByIP(t *testing.T) {
	f := newFixture(t)
	f.pool("p", "10.0.0.0/24", map[string]any{"blockSize": 28})
	a := f.alloc()
	ip1 := f.assign(a, "tabby.multi", "n1")
	ip2 := f.assign(a, "tabby.multi", "n1")
	other := f.assign(a, "tabby.other", "n1")

	got, err := a.IPsByHandle(f.ctx, "tabby.multi")
	if err != nil || !slices.Equal(got, []netip.Addr{ip1, ip2}) {
		t.Fatalf("IPsByHandle = %v, %v; want %v %v", got, err, ip1, ip2)
	}
	if got, err := a.IPsByHandle(f.ctx, "tabby.unknown"); err != nil || len(got) != 0 {
		t.Fatalf("IPsByHandle(unknown) = %v, %v; want nothing", got, err)
	}
	if err := a.ReleaseByHandle(f.ctx, "tabby.multi"); err != nil {
		t.Fatal(err)
	}
	if f.exists(f.c.Keys.Handle("tabby.multi")) {
		t.Fatal("handle document left after releasing all its addresses")
	}
	if got, _ := a.IPsByHandle(f.ctx, "tabby.multi"); len(got) != 0 {
		t.Fatalf("addresses left: %v", got)
	}
	if err := a.ReleaseByHandle(f.ctx, "tabby.multi"); err != nil {
		t.Fatalf("second release by handle: %v (must be idempotent)", err)
	}
	if err := a.ReleaseByHandle(f.ctx, "never-existed"); err != nil {
		t.Fatalf("release of unknown handle: %v", err)
	}

	if err := a.ReleaseIP(f.ctx, ip1); !errors.Is(err, ErrNotAssigned) {
		t.Fatalf("ReleaseIP of a free address = %v, want ErrNotAssigned", err)
	}
	if err := a.ReleaseIP(f.ctx, netip.MustParseAddr("192.0.2.1")); !errors.Is(err, ErrNotAssigned) {
		t.Fatalf("ReleaseIP outside every pool = %v, want ErrNotAssigned", err)
	}
	al, err := a.AllocationOf(f.ctx, other)
	if err != nil || al.Handle != "tabby.other" || al.Attrs["node"] != "n1" || al.BlockHost != "n1" {
		t.Fatalf("AllocationOf(%s) = %+v, %v", other, al, err)
	}
	if err := a.ReleaseIP(f.ctx, other); err != nil {
		t.Fatal(err)
	}
	if f.exists(f.c.Keys.Handle("tabby.other")) {
		t.Fatal("ReleaseIP left the handle counting the released address")
	}
	if _, err := a.AllocationOf(f.ctx, other); !errors.Is(err, ErrNotAssigned) {
		t.Fatalf("AllocationOf released address = %v, want ErrNotAssigned", err)
	}
	f.mustCheckClean(a)
}

func TestStrictAffinityExhaustsWithoutBorrowing(t *testing.T) {
	f := newFixture(t)
	// Two blocks of 16.
	f.pool("small", "10.9.0.0/27", map[string]any{"blockSize": 28})
	f.config(true, 0)
	a := f.alloc()
	bIP := f.assign(a, "b0", "node-b")
	for i := range 16 {
		f.assign(a, "a"+string(rune('A'+i)), "node-a")
	}
	_, err := a.AssignOne(f.ctx, AssignArgs{Handle: "a-extra", Node: "node-a", Use: datastore.UseWorkload})
	if !errors.Is(err, ErrPoolExhausted) || !errors.Is(err, ErrNoFreeBlock) {
		t.Fatalf("17th address with strict affinity: %v, want ErrPoolExhausted (no free block)", err)
	}
	if !strings.Contains(err.Error(), "pool exhausted") || !strings.Contains(err.Error(), "strict_affinity") {
		t.Fatalf("error does not say why: %v", err)
	}
	if n := inUse(f.block(blockFor(bIP, 28).String())); n != 1 {
		t.Fatalf("node-b's block has %d addresses in use: strict affinity must not borrow", n)
	}
	if f.exists(f.c.Keys.Handle("a-extra")) {
		t.Fatal("failed assignment left a handle")
	}

	// strict_affinity false: node-a borrows from node-b's block.
	f.config(false, 0)
	ip, err := a.AssignOne(f.ctx, AssignArgs{Handle: "a-extra", Node: "node-a", Use: datastore.UseWorkload})
	if err != nil {
		t.Fatalf("borrowing: %v", err)
	}
	if blockFor(ip, 28) != blockFor(bIP, 28) {
		t.Fatalf("borrowed %s, not from node-b's block %s", ip, blockFor(bIP, 28))
	}
	al, err := a.AllocationOf(f.ctx, ip)
	if err != nil || al.Attrs["node"] != "node-a" || al.BlockHost != "node-b" {
		t.Fatalf("borrowed allocation %+v, %v: want node=node-a in node-b's block", al, err)
	}
	f.mustCheckClean(a)

	// Everything used: pool exhausted even with borrowing allowed.
	for i := range 14 {
		f.assign(a, "fill"+string(rune('A'+i)), "node-c")
	}
	if _, err := a.AssignOne(f.ctx, AssignArgs{Handle: "one-too-many", Node: "node-c", Use: datastore.UseWorkload}); !errors.Is(err, ErrPoolExhausted) {
		t.Fatalf("full pool: %v, want ErrPoolExhausted", err)
	}
}

func TestBlockLimitPerHost(t *testing.T) {
	f := newFixture(t)
	f.pool("p", "10.0.0.0/24", map[string]any{"blockSize": 30})
	f.config(true, 2)
	a := f.alloc()
	for i := range 8 {
		f.assign(a, "h"+string(rune('a'+i)), "n1")
	}
	_, err := a.AssignOne(f.ctx, AssignArgs{Handle: "h9", Node: "n1", Use: datastore.UseWorkload})
	if !errors.Is(err, ErrBlockLimit) || !strings.Contains(err.Error(), "maxBlocksPerHost 2") {
		t.Fatalf("9th address with 2 blocks of 4: %v, want ErrBlockLimit naming the limit", err)
	}
}

func TestDisabledPoolGivesNoAddresses(t *testing.T) {
	f := newFixture(t)
	f.pool("a-off", "10.1.0.0/24", map[string]any{"disabled": true})
	a := f.alloc()
	_, err := a.AssignOne(f.ctx, AssignArgs{Handle: "h", Node: "n", Use: datastore.UseWorkload})
	if !errors.Is(err, ErrNoUsablePool) || !strings.Contains(err.Error(), "disabled=true") {
		t.Fatalf("only a disabled pool: %v, want ErrNoUsablePool describing the pool", err)
	}
	f.pool("b-on", "10.2.0.0/24", nil)
	for i := range 5 {
		ip := f.assign(a, "h"+string(rune('0'+i)), "n")
		if !netip.MustParsePrefix("10.2.0.0/24").Contains(ip) {
			t.Fatalf("address %s from the disabled pool", ip)
		}
	}
	_, err = a.AssignOne(f.ctx, AssignArgs{Handle: "h", Node: "n", Use: datastore.UseWorkload,
		Pools: []netip.Prefix{netip.MustParsePrefix("10.1.0.0/24")}})
	if err == nil || !strings.Contains(err.Error(), "disabled") {
		t.Fatalf("requesting the disabled pool: %v", err)
	}
}

func TestNodeSelectorExcludesNode(t *testing.T) {
	f := newFixture(t)
	f.pool("a-rack1", "10.1.0.0/24", map[string]any{"nodeSelector": "rack == 'r1'"})
	f.pool("b-all", "10.2.0.0/24", nil)
	f.node("in-r1", map[string]string{"rack": "r1"})
	f.node("in-r2", map[string]string{"rack": "r2"})
	a := f.alloc()
	r1, r2 := netip.MustParsePrefix("10.1.0.0/24"), netip.MustParsePrefix("10.2.0.0/24")
	if ip := f.assign(a, "x", "in-r1"); !r1.Contains(ip) {
		t.Fatalf("node in r1 got %s, want from the r1 pool (first by name)", ip)
	}
	for i := range 3 {
		if ip := f.assign(a, "y"+string(rune('0'+i)), "in-r2"); !r2.Contains(ip) {
			t.Fatalf("node in r2 got %s from a pool that does not select it", ip)
		}
	}
	// A node without a Node resource has no labels: only all() pools select it.
	if ip := f.assign(a, "z", "no-node-resource"); !r2.Contains(ip) {
		t.Fatalf("unlabelled node got %s", ip)
	}
	// A pool with an unparsable selector is not used at all.
	f.pool("c-bad", "10.3.0.0/24", map[string]any{"nodeSelector": "rack == "})
	f.pool("b-all", "10.2.0.0/24", map[string]any{"disabled": true})
	_, err := a.AssignOne(f.ctx, AssignArgs{Handle: "w", Node: "in-r2", Use: datastore.UseWorkload})
	if !errors.Is(err, ErrNoUsablePool) {
		t.Fatalf("only a non-selecting and a broken pool: %v, want ErrNoUsablePool", err)
	}
	f.mustCheckClean(a)
}

func TestAllowedUsesSeparateTunnelAndWorkloadPools(t *testing.T) {
	f := newFixture(t)
	f.pool("tunnels", "10.50.0.0/24", map[string]any{"allowedUses": []string{"Tunnel"}})
	a := f.alloc()
	_, err := a.AssignOne(f.ctx, AssignArgs{Handle: "w", Node: "n", Use: datastore.UseWorkload})
	if !errors.Is(err, ErrNoUsablePool) {
		t.Fatalf("workload from a tunnel-only pool: %v, want ErrNoUsablePool", err)
	}
	f.pool("workloads", "10.60.0.0/24", map[string]any{"allowedUses": []string{"Workload"}})
	if ip := f.assign(a, "w", "n"); !netip.MustParsePrefix("10.60.0.0/24").Contains(ip) {
		t.Fatalf("workload got %s", ip)
	}
	tip, err := a.AssignOne(f.ctx, AssignArgs{Handle: "t", Node: "n", Use: datastore.UseTunnel})
	if err != nil || !netip.MustParsePrefix("10.50.0.0/24").Contains(tip) {
		t.Fatalf("tunnel got %s, %v", tip, err)
	}
}

func TestClaimSkipsBlockOwnedByAnotherHost(t *testing.T) {
	f := newFixture(t)
	pool := netip.MustParsePrefix("10.0.0.0/24")
	f.pool("p", pool.String(), nil)
	var first netip.Prefix
	for c := range blockCandidates(pool, 26, "late") {
		first = c
		break
	}
	// "early" owns late's favourite block, and late has a stale pending affinity to it, as
	// if late had lost the race and crashed before withdrawing.
	f.put(f.c.Keys.Block(first), newBlock(first, "early", time.Now()))
	f.put(f.c.Keys.Affinity("early", first), datastore.BlockAffinity{State: datastore.AffinityConfirmed})
	f.put(f.c.Keys.Affinity("late", first), datastore.BlockAffinity{State: datastore.AffinityPending})
	a := f.alloc()
	ip := f.assign(a, "h", "late")
	if first.Contains(ip) {
		t.Fatalf("late got %s from early's block", ip)
	}
	if f.exists(f.c.Keys.Affinity("late", first)) {
		t.Fatal("late's stale affinity to early's block was not removed")
	}
	if f.block(first.String()).AffinityHost() != "early" {
		t.Fatal("early's block changed hands")
	}
	f.mustCheckClean(a)
}

func TestEmptyBlockAffinityRelease(t *testing.T) {
	f := newFixture(t)
	f.pool("p", "10.0.0.0/24", map[string]any{"blockSize": 30, "nodeSelector": "zone == 'a'"})
	f.node("n1", map[string]string{"zone": "a"})
	a := f.alloc()
	var ips []netip.Addr
	for i := range 5 {
		ips = append(ips, f.assign(a, "h"+string(rune('0'+i)), "n1"))
	}
	b1, b2 := blockFor(ips[0], 30), blockFor(ips[4], 30)
	if b1 == b2 {
		t.Fatal("5 addresses fit one block of 4?")
	}
	// Emptying b2 while b1 is full: b2 is the node's only room, it stays.
	if err := a.ReleaseIP(f.ctx, ips[4]); err != nil {
		t.Fatal(err)
	}
	if !f.exists(f.c.Keys.Block(b2)) || !f.exists(f.c.Keys.Affinity("n1", b2)) {
		t.Fatal("the node's last block with room was released: that churns")
	}
	// Fill b2 again, free one address of b1, then empty b2: b1 has room, b2 is surplus.
	ips[4] = f.assign(a, "h4", "n1")
	if err := a.ReleaseIP(f.ctx, ips[0]); err != nil {
		t.Fatal(err)
	}
	if err := a.ReleaseByHandle(f.ctx, "h4"); err != nil {
		t.Fatal(err)
	}
	if f.exists(f.c.Keys.Block(b2)) || f.exists(f.c.Keys.Affinity("n1", b2)) {
		t.Fatal("a surplus empty block kept its affinity")
	}
	f.mustCheckClean(a)

	// The pool stops selecting the node: its block goes when it becomes empty.
	f.node("n1", map[string]string{"zone": "b"})
	for _, ip := range ips[1:4] {
		if err := a.ReleaseIP(f.ctx, ip); err != nil {
			t.Fatal(err)
		}
	}
	if f.exists(f.c.Keys.Block(b1)) || f.exists(f.c.Keys.Affinity("n1", b1)) {
		t.Fatal("empty block of a pool that no longer selects the node kept its affinity")
	}
	f.mustCheckClean(a)

	// ReleaseAffinity of a block in use keeps the addresses but drops the host.
	f.node("n1", map[string]string{"zone": "a"})
	ip := f.assign(a, "keep", "n1")
	bk := blockFor(ip, 30)
	if err := a.ReleaseAffinity(f.ctx, "n1", bk, true); !errors.Is(err, errBlockNotEmpty) {
		t.Fatalf("must-be-empty release of a block in use: %v", err)
	}
	if err := a.ReleaseHostAffinities(f.ctx, "n1", false); err != nil {
		t.Fatal(err)
	}
	if b := f.block(bk.String()); b.Affinity != nil || inUse(b) != 1 {
		t.Fatalf("after releasing the host's affinities: affinity %s, %d in use", affinityText(b), inUse(b))
	}
	if f.exists(f.c.Keys.Affinity("n1", bk)) {
		t.Fatal("affinity key left")
	}
	f.mustCheckClean(a)
	// The last address of a block with no host deletes the block.
	if err := a.ReleaseByHandle(f.ctx, "keep"); err != nil {
		t.Fatal(err)
	}
	if f.exists(f.c.Keys.Block(bk)) {
		t.Fatal("empty block without affinity left behind")
	}
	f.mustCheckClean(a)
}

func TestShowCountsPoolsAndBlocks(t *testing.T) {
	f := newFixture(t)
	f.pool("default-ipv4-ippool", "172.16.0.0/16", map[string]any{"blockSize": 24})
	f.pool("z-off", "10.99.0.0/24", map[string]any{"disabled": true})
	a := f.alloc()
	for i := range 4 {
		f.assign(a, "a"+string(rune('0'+i)), "k8s-m")
	}
	f.assign(a, "b", "k8s-w1")
	u, err := a.Show(f.ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(u.Pools) != 2 || u.Pools[0].Name != "default-ipv4-ippool" || !u.Pools[1].Disabled {
		t.Fatalf("pools %+v", u.Pools)
	}
	p := u.Pools[0]
	if p.Total != 65536 || p.InUse != 5 || p.Free != 65531 || len(p.Blocks) != 2 {
		t.Fatalf("pool usage %+v", p)
	}
	for _, b := range p.Blocks {
		want := map[string]int{"k8s-m": 4, "k8s-w1": 1}[b.Host]
		if b.Total != 256 || b.InUse != want || b.Free != 256-want || b.HostState != datastore.AffinityConfirmed {
			t.Fatalf("block usage %+v", b)
		}
	}
	if u.Pools[1].Total != 256 || u.Pools[1].InUse != 0 {
		t.Fatalf("empty pool %+v", u.Pools[1])
	}
	// A block whose pool was deleted is listed on its own.
	orphan := netip.MustParsePrefix("10.200.0.0/26")
	ob := newBlock(orphan, "gone", time.Now())
	takeFirstFree(ob, "h", nil)
	f.put(f.c.Keys.Block(orphan), ob)
	if u, err = a.Show(f.ctx); err != nil {
		t.Fatal(err)
	}
	if len(u.Orphans) != 1 || u.Orphans[0].CIDR != orphan || u.Orphans[0].InUse != 1 || u.Orphans[0].Host != "gone" {
		t.Fatalf("orphans %+v", u.Orphans)
	}
}
