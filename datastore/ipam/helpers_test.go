package ipam

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/tabby-net/tabby/datastore"
	"github.com/tabby-net/tabby/datastore/etcdtest"
)

// fixture is a real etcd with helpers to write pools, nodes and config the way an
// operator (or etcdctl) would.
type fixture struct {
	t   testing.TB
	e   *etcdtest.Etcd
	c   *datastore.Client
	ctx context.Context
}

func newFixture(t testing.TB) *fixture {
	t.Helper()
	e := etcdtest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return &fixture{t: t, e: e, c: e.Client, ctx: ctx}
}

// testLogger logs to stderr when TABBY_TEST_LOG is set, else nowhere.
func testLogger() *slog.Logger {
	if os.Getenv("TABBY_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return nil
}

// alloc returns a new Allocator on the fixture's client.
func (f *fixture) alloc() *Allocator { return New(f.c, testLogger()) }

// newClient opens a separate etcd connection, as another process would.
func (f *fixture) newClient() *datastore.Client {
	f.t.Helper()
	c, err := datastore.New(datastore.Config{Endpoints: []string{f.e.Endpoint}})
	if err != nil {
		f.t.Fatalf("second client: %v", err)
	}
	f.t.Cleanup(func() { c.Close() })
	return c
}

func (f *fixture) put(key string, v any) {
	f.t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		f.t.Fatal(err)
	}
	if _, err := f.e.Raw().Put(f.ctx, key, string(b)); err != nil {
		f.t.Fatalf("put %s: %v", key, err)
	}
}

// pool writes an IPPool with the given spec fields (cidr is always set).
func (f *fixture) pool(name, cidr string, spec map[string]any) {
	f.t.Helper()
	s := map[string]any{"cidr": cidr}
	for k, v := range spec {
		s[k] = v
	}
	f.put(f.c.Keys.Resource(datastore.KindIPPool, name), map[string]any{
		"kind": "IPPool", "apiVersion": datastore.APIVersion,
		"metadata": map[string]any{"name": name}, "spec": s,
	})
}

// node writes a Node with labels.
func (f *fixture) node(name string, labels map[string]string) {
	f.t.Helper()
	f.put(f.c.Keys.Resource(datastore.KindNode, name), map[string]any{
		"kind": "Node", "apiVersion": datastore.APIVersion,
		"metadata": map[string]any{"name": name, "labels": labels}, "spec": map[string]any{},
	})
}

// config writes the IPAM config.
func (f *fixture) config(strict bool, maxBlocks int) {
	f.t.Helper()
	f.put(f.c.Keys.IPAMConfig(), datastore.IPAMConfig{StrictAffinity: strict, AutoAllocateBlocks: true, MaxBlocksPerHost: maxBlocks})
}

// block reads a block straight from etcd.
func (f *fixture) block(cidr string) *datastore.AllocationBlock {
	f.t.Helper()
	kv, err := f.c.Get(f.ctx, f.c.Keys.Block(netip.MustParsePrefix(cidr)))
	if err != nil {
		f.t.Fatalf("read block %s: %v", cidr, err)
	}
	var b datastore.AllocationBlock
	if err := json.Unmarshal(kv.Value, &b); err != nil {
		f.t.Fatal(err)
	}
	return &b
}

// exists reports whether a key exists.
func (f *fixture) exists(key string) bool {
	f.t.Helper()
	_, err := f.c.Get(f.ctx, key)
	if errors.Is(err, datastore.ErrNotFound) {
		return false
	}
	if err != nil {
		f.t.Fatal(err)
	}
	return true
}

// mustCheckClean fails the test when Check finds anything.
func (f *fixture) mustCheckClean(a *Allocator) Report {
	f.t.Helper()
	r, err := a.Check(f.ctx)
	if err != nil {
		f.t.Fatalf("check: %v", err)
	}
	if !r.OK() {
		f.t.Fatalf("check found problems: %s", describeReport(r))
	}
	return r
}

func describeReport(r Report) string {
	return fmt.Sprintf("leaks=%+v orphanHandles=%+v affinitiesWithoutBlock=%+v doubleClaims=%+v pending=%+v unreadable=%+v",
		r.Leaks, r.OrphanHandles, r.AffinitiesWithoutBlock, r.DoubleClaims, r.Pending, r.Unreadable)
}

// assign is AssignOne for a workload that must succeed.
func (f *fixture) assign(a *Allocator, handle, node string) netip.Addr {
	f.t.Helper()
	ip, err := a.AssignOne(f.ctx, AssignArgs{Handle: handle, Node: node, Use: datastore.UseWorkload})
	if err != nil {
		f.t.Fatalf("assign %s on %s: %v", handle, node, err)
	}
	return ip
}
