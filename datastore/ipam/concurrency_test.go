package ipam

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tabby-net/tabby/datastore"
)

// 50 nodes race for the 64 blocks of a /20 pool. Every block must end up claimed exactly
// once, by the node that was told it won it, and then every further claim must fail with a
// clear "no free block".
func TestConcurrentClaimersNeverShareABlock(t *testing.T) {
	f := newFixture(t)
	f.pool("p", "10.20.0.0/20", nil)
	f.config(true, 10) // 50 nodes × 10 blocks > 64: every block is wanted by someone
	const nodes = 50

	type claim struct {
		node string
		cidr netip.Prefix
	}
	var (
		mu     sync.Mutex
		claims []claim
		fails  []error
		wg     sync.WaitGroup
	)
	start := make(chan struct{})
	for i := range nodes {
		node := fmt.Sprintf("node-%02d", i)
		a := New(f.newClient(), testLogger()) // one process per node
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			for {
				cidr, err := a.ClaimBlock(f.ctx, node, datastore.UseWorkload, nil)
				mu.Lock()
				if err != nil {
					fails = append(fails, err)
					mu.Unlock()
					return
				}
				claims = append(claims, claim{node, cidr})
				mu.Unlock()
			}
		}()
	}
	close(start)
	wg.Wait()

	if len(claims) != 64 {
		t.Fatalf("%d successful claims, want exactly the 64 blocks", len(claims))
	}
	owner := map[netip.Prefix]string{}
	for _, c := range claims {
		if prev, dup := owner[c.cidr]; dup {
			t.Fatalf("block %s claimed by both %s and %s", c.cidr, prev, c.node)
		}
		owner[c.cidr] = c.node
		if got := f.block(c.cidr.String()).AffinityHost(); got != c.node {
			t.Fatalf("block %s is affine to %q, but %s was told it won it", c.cidr, got, c.node)
		}
	}
	for _, err := range fails {
		if !errors.Is(err, ErrNoFreeBlock) {
			t.Fatalf("a claimer stopped with %v, want ErrNoFreeBlock", err)
		}
	}
	// The 65th claim, from a fresh node.
	_, err := f.alloc().ClaimBlock(f.ctx, "node-late", datastore.UseWorkload, nil)
	if !errors.Is(err, ErrNoFreeBlock) || !strings.Contains(err.Error(), "no free block") ||
		!strings.Contains(err.Error(), "10.20.0.0/20") {
		t.Fatalf("65th claim: %v, want a \"no free block\" error naming the pool", err)
	}
	r := f.mustCheckClean(f.alloc())
	if r.Blocks != 64 || r.Affinities != 64 {
		t.Fatalf("check saw %d blocks and %d affinities, want 64 and 64", r.Blocks, r.Affinities)
	}
}

// 2,000 workloads start at once on 10 nodes, each node running two IPAM processes (two
// Allocators with their own etcd connections) that race on the node's blocks.
func TestConcurrentAssignmentsAreDistinctAndConsistent(t *testing.T) {
	f := newFixture(t)
	f.pool("p", "10.128.0.0/16", nil)
	const nodes, perNode, procs = 10, 200, 2

	type result struct {
		handle, node string
		ip           netip.Addr
		err          error
	}
	results := make(chan result, nodes*perNode)
	var wg sync.WaitGroup
	start := make(chan struct{})
	began := time.Now()
	for n := range nodes {
		node := fmt.Sprintf("node-%d", n)
		var allocs [procs]*Allocator
		for p := range allocs {
			allocs[p] = New(f.newClient(), testLogger())
		}
		for w := range perNode {
			handle := fmt.Sprintf("tabby.%s-%03d", node, w)
			a := allocs[w%procs]
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				ip, err := a.AssignOne(f.ctx, AssignArgs{Handle: handle, Node: node, Use: datastore.UseWorkload,
					Attrs: map[string]string{"container": handle}})
				results <- result{handle, node, ip, err}
			}()
		}
	}
	close(start)
	wg.Wait()
	close(results)
	t.Logf("%d concurrent assignments on %d nodes × %d processes took %v", nodes*perNode, nodes, procs, time.Since(began))

	byIP := map[netip.Addr]string{}
	byHandle := map[string]result{}
	for r := range results {
		if r.err != nil {
			t.Fatalf("assign %s: %v", r.handle, r.err)
		}
		if prev, dup := byIP[r.ip]; dup {
			t.Fatalf("address %s given to both %s and %s", r.ip, prev, r.handle)
		}
		byIP[r.ip] = r.handle
		byHandle[r.handle] = r
	}
	if len(byIP) != nodes*perNode {
		t.Fatalf("%d distinct addresses, want %d", len(byIP), nodes*perNode)
	}

	a := f.alloc()
	rep := f.mustCheckClean(a)
	if rep.Allocations != nodes*perNode || rep.Handles != nodes*perNode {
		t.Fatalf("check counted %d allocations and %d handles, want %d each", rep.Allocations, rep.Handles, nodes*perNode)
	}
	// Every address is in a block of its own node (no borrowing was needed) and is what
	// its handle says.
	u, err := a.Show(f.ctx)
	if err != nil {
		t.Fatal(err)
	}
	hostOf := map[netip.Prefix]string{}
	for _, b := range u.Pools[0].Blocks {
		hostOf[b.CIDR] = b.Host
	}
	for h, r := range byHandle {
		if got := hostOf[blockFor(r.ip, 26)]; got != r.node {
			t.Fatalf("%s on %s got %s from a block of %q", h, r.node, r.ip, got)
		}
	}
	for _, h := range []string{"tabby.node-0-000", "tabby.node-9-199"} {
		ips, err := a.IPsByHandle(f.ctx, h)
		if err != nil || len(ips) != 1 || ips[0] != byHandle[h].ip {
			t.Fatalf("IPsByHandle(%s) = %v, %v; want [%s]", h, ips, err, byHandle[h].ip)
		}
	}
	// 200 addresses need 4 blocks of 64 per node; racing processes may claim one more.
	if len(hostOf) < nodes*4 || len(hostOf) > nodes*5 {
		t.Fatalf("%d blocks for %d nodes of %d workloads", len(hostOf), nodes, perNode)
	}
	// Handles in Calico's form.
	kv, err := f.c.Get(f.ctx, f.c.Keys.Handle("tabby.node-3-042"))
	if err != nil {
		t.Fatal(err)
	}
	var h datastore.IPAMHandle
	if err := json.Unmarshal(kv.Value, &h); err != nil || h.Block[blockFor(byHandle["tabby.node-3-042"].ip, 26).String()] != 1 || len(h.Block) != 1 {
		t.Fatalf("handle document %s", kv.Value)
	}
}
