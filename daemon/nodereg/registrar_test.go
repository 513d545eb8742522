package nodereg

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/netip"
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
