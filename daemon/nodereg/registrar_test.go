package nodereg

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/tabby-net/tabby/datastore"
	"github.com/tabby-net/tabby/datastore/etcdtest"
	"github.com/tabby-net/tabby/datastore/ipam"
)

// snapshotOf reads what the registrar looks at from etcd: pools and handles.
func snapshotOf(t *testing.T, c *datastore.Client) *datastore.Snapshot {
	t.Helper()
	ctx := context.Background()
	snap := datastore.NewSnapshot()
	pools, err := c.ListIPPools(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range pools {
		snap.Pools[p.Metadata.Name] = p
	}
	kvs, rev, err := c.List(ctx, c.Keys.HandlePrefix())
	if err != nil {
		t.Fatal(err)
	}
	for _, kv := range kvs {
		info, _ := c.Keys.Parse(kv.Key)
		snap.Handles[info.Name] = &datastore.IPAMHandle{}
	}
	snap.Revision = rev
	return snap
}

func TestRegistrarWithEtcd(t *testing.T) {
	t.Parallel()
	e := etcdtest.Start(t)
	c := e.Client
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))

	pool := datastore.NewIPPool("default-ipv4-ippool")
	pool.Spec = datastore.IPPoolSpec{CIDR: "192.168.0.0/16", VXLANMode: datastore.EncapAlways, NATOutgoing: true}
	if _, err := c.CreateIPPool(ctx, pool); err != nil {
		t.Fatal(err)
	}
	// The operator's fields on a Node that exists before tabbyd first runs.
	pre := datastore.NewNode("worker-1")
	as := datastore.ASNumber(65010)
	pre.Metadata.Labels = map[string]string{"role": "edge"}
	pre.Spec.BGP = &datastore.NodeBGPSpec{ASNumber: &as, IPv4Address: "10.9.9.9/24"}
	if _, err := c.CreateNode(ctx, pre); err != nil {
		t.Fatal(err)
	}

	id := Identity{Name: "worker-1", Address: netip.MustParsePrefix("10.30.0.206/24"), Labels: map[string]string{"rack": "a"}}
	r := New(c, ipam.New(c, log), id, log)

	synced, node, err := r.reconcile(ctx, snapshotOf(t, c))
	if err != nil || synced {
		t.Fatalf("first pass: synced=%v err=%v", synced, err)
	}
	vx, ok := TunnelAddr(node, ipam.TunnelVXLAN)
	if !ok || !netip.MustParsePrefix("192.168.0.0/16").Contains(vx) {
		t.Fatalf("no VXLAN tunnel address: %s", describe(node))
	}
	stored, err := c.GetNode(ctx, "worker-1")
	if err != nil {
		t.Fatal(err)
	}
	if stored.Spec.BGP.IPv4Address != "10.30.0.206/24" || stored.Spec.VXLANTunnelMACAddr != VTEPMAC("worker-1").String() ||
		stored.Spec.BGP.ASNumber == nil || *stored.Spec.BGP.ASNumber != 65010 ||
		stored.Metadata.Labels["role"] != "edge" || stored.Metadata.Labels["rack"] != "a" {
		t.Errorf("stored node: %s as=%v", describe(stored), stored.Spec.BGP.ASNumber)
	}

	// Nothing changed: nothing is written.
	synced, _, err = r.reconcile(ctx, snapshotOf(t, c))
	if err != nil || !synced {
		t.Fatalf("second pass: synced=%v err=%v", synced, err)
	}
	again, _ := c.GetNode(ctx, "worker-1")
	if again.Metadata.ResourceVersion != stored.Metadata.ResourceVersion {
		t.Error("a pass with nothing to do wrote the Node")
	}

	// The pool goes Direct: the tunnel address is cleared and released.
	p, _ := c.GetIPPool(ctx, "default-ipv4-ippool")
	p.Spec.VXLANMode = datastore.EncapNever
	if _, err := c.UpdateIPPool(ctx, p); err != nil {
		t.Fatal(err)
	}
	if _, _, err := r.reconcile(ctx, snapshotOf(t, c)); err != nil {
		t.Fatal(err)
	}
	stored, _ = c.GetNode(ctx, "worker-1")
	if stored.Spec.IPv4VXLANTunnelAddr != "" {
		t.Errorf("tunnel address kept with no pool needing it: %s", describe(stored))
	}
	if _, err := c.Get(ctx, c.Keys.Handle(ipam.TunnelVXLAN.Handle("worker-1"))); !errors.Is(err, datastore.ErrNotFound) {
		t.Errorf("tunnel handle not released: %v", err)
	}
	if synced, _, err := r.reconcile(ctx, snapshotOf(t, c)); err != nil || !synced {
		t.Errorf("after release: synced=%v err=%v", synced, err)
	}

	// Someone deletes the Node: Run puts it back on the next snapshot.
	if _, err := c.DeleteNode(ctx, "worker-1", ""); err != nil {
		t.Fatal(err)
	}
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- r.Run(runCtx) }()
	r.Set(snapshotOf(t, c))
	deadline := time.Now().Add(20 * time.Second)
	for {
		if n, err := c.GetNode(ctx, "worker-1"); err == nil && n.Spec.BGP != nil && n.Spec.BGP.IPv4Address == "10.30.0.206/24" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the deleted Node was not recreated; status %+v", r.Status())
		}
		time.Sleep(20 * time.Millisecond)
	}
	stop()
	if err := <-done; err != nil {
		t.Errorf("Run: %v", err)
	}
}

// countingStore holds one Node in memory and counts the reads.
type countingStore struct {
	mu    sync.Mutex
	node  *datastore.Node
	rev   int
	reads int
}

func (s *countingStore) GetNode(_ context.Context, name string) (*datastore.Node, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.reads++
	if s.node == nil {
		return nil, fmt.Errorf("node %s: %w", name, datastore.ErrNotFound)
	}
	return datastore.Clone(s.node), nil
}

func (s *countingStore) CreateNode(_ context.Context, n *datastore.Node) (*datastore.Node, error) {
	return s.UpdateNode(context.Background(), n)
}

func (s *countingStore) UpdateNode(_ context.Context, n *datastore.Node) (*datastore.Node, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.rev++
	s.node = datastore.Clone(n)
	s.node.Metadata.ResourceVersion = fmt.Sprint(s.rev)
	return datastore.Clone(s.node), nil
}

// peek returns the stored Node without counting a read.
func (s *countingStore) peek() *datastore.Node {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.node == nil {
		return nil
	}
	return datastore.Clone(s.node)
}

func (s *countingStore) counts() (reads, writes int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.reads, s.rev
}

// fixedIPAM gives every node the same tunnel address.
type fixedIPAM struct{}

func (fixedIPAM) EnsureTunnelAddr(context.Context, string, ipam.TunnelKind, []netip.Prefix) (netip.Addr, error) {
	return netip.MustParseAddr("192.168.0.1"), nil
}
func (fixedIPAM) ReleaseTunnelAddr(context.Context, string, ipam.TunnelKind) error { return nil }

// TestRegistrarSkipsUnchangedSnapshots: once a snapshot needed no write, later snapshots
// in which this host's Node, the pools and its tunnel handles are the same are not
// reconciled (no read of etcd); a change of any of them is.
func TestRegistrarSkipsUnchangedSnapshots(t *testing.T) {
	store := &countingStore{}
	id := Identity{Name: "worker-1", Address: netip.MustParsePrefix("10.30.0.206/24")}
	r := New(store, fixedIPAM{}, id, slog.New(slog.DiscardHandler))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	defer func() { cancel(); <-done }()

	pool := datastore.NewIPPool("p")
	pool.Spec = datastore.IPPoolSpec{CIDR: "192.168.0.0/16", VXLANMode: datastore.EncapAlways}
	rev := int64(0)
	// next makes the snapshot after prev: the stored Node, and what change makes.
	next := func(prev *datastore.Snapshot, change func(*datastore.Snapshot)) *datastore.Snapshot {
		s := *prev
		s.Nodes = maps.Clone(prev.Nodes)
		if n := store.peek(); n != nil {
			if old, ok := prev.Nodes[id.Name]; !ok || old.Metadata.ResourceVersion != n.Metadata.ResourceVersion {
				s.Nodes[id.Name] = n
			}
		}
		if change != nil {
			change(&s)
		}
		rev++
		s.Revision = rev
		return &s
	}
	settle := func(s *datastore.Snapshot) Status {
		t.Helper()
		r.Set(s)
		deadline := time.Now().Add(10 * time.Second)
		for st := r.Status(); ; st = r.Status() {
			if st.Revision == s.Revision {
				return st
			}
			if time.Now().After(deadline) {
				t.Fatalf("snapshot %d not looked at; status %+v", s.Revision, st)
			}
			time.Sleep(time.Millisecond)
		}
	}
	first := datastore.NewSnapshot()
	first.Pools["p"] = pool
	snap := next(first, nil)
	settle(snap) // creates the Node
	snap = next(snap, func(s *datastore.Snapshot) {
		s.Handles = map[string]*datastore.IPAMHandle{ipam.TunnelVXLAN.Handle(id.Name): {}}
	})
	if st := settle(snap); !st.Synced {
		t.Fatalf("the Node and its tunnel address are in place, yet status %+v", st)
	}
	readsBefore, writesBefore := store.counts()

	// Another node joins, a block changes: nothing this host looks at.
	for i := range 5 {
		snap = next(snap, func(s *datastore.Snapshot) { s.Nodes[fmt.Sprint("other-", i)] = datastore.NewNode("other") })
		if st := settle(snap); !st.Synced || st.Err != nil {
			t.Fatalf("status %+v", st)
		}
	}
	if reads, writes := store.counts(); reads != readsBefore || writes != writesBefore {
		t.Errorf("unchanged inputs: %d reads and %d writes of etcd, want none", reads-readsBefore, writes-writesBefore)
	}

	for what, change := range map[string]func(*datastore.Snapshot){
		"this host's Node": func(s *datastore.Snapshot) { s.Nodes[id.Name] = datastore.Clone(s.Nodes[id.Name]) },
		"the pools":        func(s *datastore.Snapshot) { s.Pools = maps.Clone(s.Pools) },
		"a tunnel handle": func(s *datastore.Snapshot) {
			s.Handles = maps.Clone(s.Handles)
			delete(s.Handles, ipam.TunnelVXLAN.Handle(id.Name))
		},
	} {
		readsBefore, _ = store.counts()
		snap = next(snap, change)
		settle(snap)
		if reads, _ := store.counts(); reads == readsBefore {
			t.Errorf("a change of %s: not reconciled", what)
		}
		// Back to a settled state for the next case.
		snap = next(snap, func(s *datastore.Snapshot) {
			s.Handles = map[string]*datastore.IPAMHandle{ipam.TunnelVXLAN.Handle(id.Name): {}}
		})
		if st := settle(snap); !st.Synced {
			t.Fatalf("after a change of %s: status %+v", what, st)
		}
	}
}
