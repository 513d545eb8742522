package datastore_test

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"math/rand/v2"
	"net"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tabby-net/tabby/datastore"
	"github.com/tabby-net/tabby/datastore/etcdtest"
)

// fastSyncer options: quick to notice a dead watch and quick to retry, so tests stay short.
var fastSyncer = datastore.SyncerOptions{
	ProgressInterval: 300 * time.Millisecond,
	RequestTimeout:   time.Second,
	MinBackoff:       20 * time.Millisecond,
	MaxBackoff:       200 * time.Millisecond,
	PageSize:         7, // several pages even for small tests
}

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

// runSyncer starts a syncer on c and stops it when the test ends.
func runSyncer(t *testing.T, c *datastore.Client) (*datastore.Syncer, <-chan *datastore.Snapshot) {
	t.Helper()
	return runSyncerWith(t, c, fastSyncer)
}

func runSyncerWith(t *testing.T, c *datastore.Client, opts datastore.SyncerOptions) (*datastore.Syncer, <-chan *datastore.Snapshot) {
	t.Helper()
	s := datastore.NewSyncerWithOptions(c, testLogger(t), opts)
	ch, _ := s.Subscribe()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return s, ch
}

// waitFor reads snapshots until one satisfies ok.
func waitFor(t *testing.T, ch <-chan *datastore.Snapshot, what string, ok func(*datastore.Snapshot) bool) *datastore.Snapshot {
	t.Helper()
	timeout := time.After(20 * time.Second)
	var last *datastore.Snapshot
	for {
		select {
		case s, open := <-ch:
			if !open {
				t.Fatalf("subscription closed while waiting for %s", what)
			}
			last = s
			if ok(s) {
				return s
			}
		case <-timeout:
			t.Fatalf("timed out waiting for %s; last snapshot: %+v", what, last)
		}
	}
}

func put(t *testing.T, e *etcdtest.Etcd, key, value string) int64 {
	t.Helper()
	resp, err := e.Raw().Put(context.Background(), key, value)
	if err != nil {
		t.Fatalf("put %s: %v", key, err)
	}
	return resp.Header.Revision
}

func poolKey(name string) string { return "/calico/resources/v3/projectcalico.org/ippools/" + name }
func nodeKey(name string) string { return "/calico/resources/v3/projectcalico.org/nodes/" + name }

func rawPool(name, cidr, extra string) string {
	return fmt.Sprintf(`{"kind":"IPPool","apiVersion":"projectcalico.org/v3","metadata":{"name":%q},"spec":{"cidr":%q%s}}`, name, cidr, extra)
}

func problemFor(s *datastore.Snapshot, key string) string {
	for _, p := range s.Problems {
		if p.Key == key {
			return p.Err
		}
	}
	return ""
}

func TestSyncerSeesEveryKind(t *testing.T) {
	t.Parallel()
	e := etcdtest.Start(t)
	ctx := context.Background()
	c := e.Client
	if _, err := c.CreateIPPool(ctx, pool("default-ipv4-ippool", "192.168.0.0/16", func(s *datastore.IPPoolSpec) { s.IPIPMode = "Always" })); err != nil {
		t.Fatal(err)
	}
	if _, err := c.CreateNode(ctx, &datastore.Node{Metadata: datastore.ObjectMeta{Name: "worker-1"}, Spec: datastore.NodeSpec{BGP: &datastore.NodeBGPSpec{IPv4Address: "10.30.0.206/24"}}}); err != nil {
		t.Fatal(err)
	}
	block := netip.MustParsePrefix("192.168.1.0/26")
	allocs := make([]string, 64)
	for i := range allocs {
		allocs[i] = "null"
	}
	allocs[0] = "0"
	put(t, e, c.Keys.Block(block), `{"cidr":"192.168.1.0/26","affinity":"host:worker-1","allocations":[`+strings.Join(allocs, ",")+`],"unallocated":[1,2,3],"attributes":[{"handle_id":"ipip-tunnel-addr-worker-1","secondary":{"node":"worker-1","type":"ipipTunnelAddress"}}],"deleted":false}`)
	put(t, e, c.Keys.Affinity("worker-1", block), `{"state":"confirmed","deleted":false}`)
	put(t, e, c.Keys.Handle("ipip-tunnel-addr-worker-1"), `{"block":{"192.168.1.0/26":1}}`)
	put(t, e, c.Keys.IPAMConfig(), `{"strict_affinity":true}`)
	put(t, e, "/calico/felix/v2/whatever", "not ours")

	s, ch := runSyncer(t, c)
	snap := waitFor(t, ch, "the first snapshot", func(*datastore.Snapshot) bool { return true })
	if snap.Pools["default-ipv4-ippool"] == nil || snap.Nodes["worker-1"] == nil {
		t.Fatalf("resources missing: %+v", snap)
	}
	if owner, ok := snap.BlockOwner(block); !ok || owner != "worker-1" {
		t.Errorf("BlockOwner = %q %v", owner, ok)
	}
	if h := snap.Handles["ipip-tunnel-addr-worker-1"]; h == nil || h.Block["192.168.1.0/26"] != 1 {
		t.Errorf("handle = %+v", h)
	}
	if cfg := snap.IPAMConfig; !cfg.StrictAffinity || cfg.AutoAllocateBlocks || cfg.MaxBlocksPerHost != 0 {
		t.Errorf("IPAM config %+v, want strict affinity and, as Calico reads a stored config, false and 0 for the fields it leaves out", cfg)
	}
	if len(snap.Problems) != 0 {
		t.Errorf("problems: %+v", snap.Problems)
	}

	// A pending affinity counts as absent; a deleted block disappears.
	put(t, e, c.Keys.Affinity("worker-1", block), `{"state":"pending"}`)
	waitFor(t, ch, "the pending affinity", func(s *datastore.Snapshot) bool { _, ok := s.BlockOwner(block); return !ok })
	if _, err := e.Raw().Delete(ctx, c.Keys.Block(block)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, ch, "the block deletion", func(s *datastore.Snapshot) bool { return s.Blocks[block] == nil })

	st := s.Stats()
	if !st.Connected || st.Lists != 1 || st.Relists != 0 || st.InvalidDocuments != 0 || st.SnapshotRevision == 0 {
		t.Errorf("stats %+v", st)
	}
}

func TestSyncerRefusesInvalidDocumentsAndKeepsTheLastValid(t *testing.T) {
	t.Parallel()
	e := etcdtest.Start(t)
	s, ch := runSyncer(t, e.Client)
	waitFor(t, ch, "the first snapshot", func(*datastore.Snapshot) bool { return true })

	put(t, e, poolKey("p1"), rawPool("p1", "10.1.0.0/16", `,"ipipMode":"Always"`))
	waitFor(t, ch, "p1", func(s *datastore.Snapshot) bool { return s.Pools["p1"] != nil })

	// A pool overlapping p1, written with etcdctl: the newer one is refused.
	put(t, e, poolKey("p2"), rawPool("p2", "10.1.128.0/17", ""))
	snap := waitFor(t, ch, "p2 refused", func(s *datastore.Snapshot) bool { return problemFor(s, poolKey("p2")) != "" })
	if snap.Pools["p2"] != nil || snap.Pools["p1"] == nil || !strings.Contains(problemFor(snap, poolKey("p2")), `overlaps IPPool "p1"`) {
		t.Errorf("pools %v, problem %q", snap.Pools, problemFor(snap, poolKey("p2")))
	}
	// p1 broken by hand: its last valid version stays in force.
	for _, bad := range []struct{ value, want string }{
		{`{"spec":`, "not valid"},
		{rawPool("p1", "10.1.0.0/16", `,"ipipMode":"Always","vxlanMode":"Always"`), "cannot both be enabled"},
		{rawPool("p1", "10.1.0.0/16", `,"blockSize":24`), "spec.blockSize: cannot change from 26 to 24"},
		{rawPool("p1", "10.9.0.0/16", ""), "spec.cidr: cannot change"},
	} {
		put(t, e, poolKey("p1"), bad.value)
		snap = waitFor(t, ch, "p1 refused: "+bad.want, func(s *datastore.Snapshot) bool {
			return strings.Contains(problemFor(s, poolKey("p1")), bad.want)
		})
		if p := snap.Pools["p1"]; p == nil || p.Spec.IPIPMode != "Always" || p.Spec.CIDR != "10.1.0.0/16" {
			t.Errorf("after %s: p1 in force is %+v", bad.want, p)
		}
		if snap.Pools["p2"] != nil {
			t.Errorf("after %s: p2 came into force", bad.want)
		}
	}
	// A valid version clears the problem.
	put(t, e, poolKey("p1"), rawPool("p1", "10.1.0.0/16", `,"ipipMode":"CrossSubnet"`))
	snap = waitFor(t, ch, "p1 valid again", func(s *datastore.Snapshot) bool {
		return s.Pools["p1"] != nil && s.Pools["p1"].Spec.IPIPMode == "CrossSubnet"
	})
	if problemFor(snap, poolKey("p1")) != "" {
		t.Errorf("problem not cleared: %+v", snap.Problems)
	}
	// Deleting p1 lets p2, which no longer overlaps anything, come into force.
	if _, err := e.Raw().Delete(context.Background(), poolKey("p1")); err != nil {
		t.Fatal(err)
	}
	snap = waitFor(t, ch, "p2 in force", func(s *datastore.Snapshot) bool { return s.Pools["p2"] != nil })
	if len(snap.Problems) != 0 {
		t.Errorf("problems after the overlap went away: %+v", snap.Problems)
	}

	// Other kinds: a bad node never comes into force; a bad block keeps the good one.
	put(t, e, nodeKey("n1"), `{"kind":"Node","apiVersion":"projectcalico.org/v3","metadata":{"name":"n1"},"spec":{"bgp":{"ipv4Address":"10.0.0.1"}}}`)
	snap = waitFor(t, ch, "n1 refused", func(s *datastore.Snapshot) bool { return problemFor(s, nodeKey("n1")) != "" })
	if snap.Nodes["n1"] != nil || !strings.Contains(problemFor(snap, nodeKey("n1")), "spec.bgp.ipv4Address") {
		t.Errorf("node n1: %+v, problem %q", snap.Nodes["n1"], problemFor(snap, nodeKey("n1")))
	}
	blockKey := e.Client.Keys.Block(netip.MustParsePrefix("10.1.128.0/30"))
	put(t, e, blockKey, `{"cidr":"10.1.128.0/30","affinity":"host:n1","allocations":[null,null,null,null],"unallocated":[0,1,2,3],"attributes":[]}`)
	waitFor(t, ch, "the block", func(s *datastore.Snapshot) bool { return len(s.Blocks) == 1 })
	put(t, e, blockKey, `{"cidr":"10.1.128.0/30","allocations":[7,null,null,null],"unallocated":[],"attributes":[]}`)
	snap = waitFor(t, ch, "the bad block", func(s *datastore.Snapshot) bool { return problemFor(s, blockKey) != "" })
	if b := snap.Blocks[netip.MustParsePrefix("10.1.128.0/30")]; b == nil || b.AffinityHost() != "n1" {
		t.Errorf("the last good block is not in force: %+v", b)
	}
	if st := s.Stats(); st.InvalidDocuments != 7 || st.Problems != 2 {
		t.Errorf("stats %+v, want 7 invalid documents seen and 2 problems now", st)
	}
}

// A slow subscriber never blocks the syncer and, when it reads, gets the newest snapshot.
func TestSyncerSlowSubscriberGetsLatest(t *testing.T) {
	t.Parallel()
	e := etcdtest.Start(t)
	s, fast := runSyncer(t, e.Client)
	slow, unsubscribe := s.Subscribe()
	defer unsubscribe()
	waitFor(t, fast, "the first snapshot", func(*datastore.Snapshot) bool { return true })
	var last int64
	for i := range 100 {
		last = put(t, e, nodeKey(fmt.Sprintf("n%d", i)), fmt.Sprintf(`{"metadata":{"name":"n%d"}}`, i))
	}
	waitFor(t, fast, "the last write", func(s *datastore.Snapshot) bool { return s.Revision == last })
	select {
	case snap := <-slow:
		if snap.Revision != last || len(snap.Nodes) != 100 {
			t.Errorf("the slow subscriber got revision %d with %d nodes, want %d with 100", snap.Revision, len(snap.Nodes), last)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the slow subscriber got nothing")
	}
	select {
	case snap := <-slow:
		t.Errorf("a second snapshot was queued: revision %d", snap.Revision)
	default:
	}
	unsubscribe()
	if _, open := <-slow; open {
		t.Error("the channel is open after unsubscribe")
	}
}

// Snapshots are never modified once published: a later change makes a new snapshot.
func TestSnapshotsAreImmutable(t *testing.T) {
	t.Parallel()
	e := etcdtest.Start(t)
	_, ch := runSyncer(t, e.Client)
	put(t, e, nodeKey("a"), `{"metadata":{"name":"a"}}`)
	first := waitFor(t, ch, "node a", func(s *datastore.Snapshot) bool { return s.Nodes["a"] != nil })
	put(t, e, nodeKey("b"), `{"metadata":{"name":"b"}}`)
	put(t, e, poolKey("p"), rawPool("p", "10.1.0.0/16", ""))
	waitFor(t, ch, "node b and pool p", func(s *datastore.Snapshot) bool { return s.Nodes["b"] != nil && s.Pools["p"] != nil })
	if len(first.Nodes) != 1 || len(first.Pools) != 0 {
		t.Errorf("an old snapshot changed: %d nodes, %d pools", len(first.Nodes), len(first.Pools))
	}
}

// proxy stands between a client and etcd so that a test can cut the network or make it
// silent.
type proxy struct {
	ln      net.Listener
	backend string
	mu      sync.Mutex
	down    bool
	conns   []net.Conn
	gate    chan struct{} // closed while traffic flows
}

func startProxy(t *testing.T, backend string) *proxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{ln: ln, backend: strings.TrimPrefix(backend, "http://"), gate: make(chan struct{})}
	close(p.gate)
	go p.serve()
	t.Cleanup(func() { ln.Close(); p.resume(); p.cut() })
	return p
}

func (p *proxy) endpoint() string { return "http://" + p.ln.Addr().String() }

func (p *proxy) serve() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		if p.down {
			p.mu.Unlock()
			c.Close()
			continue
		}
		b, err := net.Dial("tcp", p.backend)
		if err != nil {
			p.mu.Unlock()
			c.Close()
			continue
		}
		p.conns = append(p.conns, c, b)
		p.mu.Unlock()
		go p.pipe(b, c)
		go p.pipe(c, b)
	}
}

// pipe copies src to dst, holding each chunk while the proxy is paused.
func (p *proxy) pipe(dst, src net.Conn) {
	defer dst.Close()
	buf := make([]byte, 32*1024)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			p.mu.Lock()
			gate := p.gate
			p.mu.Unlock()
			<-gate
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// cut closes every connection and refuses new ones until restore.
func (p *proxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.down = true
	for _, c := range p.conns {
		c.Close()
	}
	p.conns = nil
}

func (p *proxy) restore() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.down = false
}

// pause stops all traffic without closing anything: to the client, etcd falls silent.
func (p *proxy) pause() {
	p.mu.Lock()
	defer p.mu.Unlock()
	select {
	case <-p.gate:
		p.gate = make(chan struct{})
	default:
	}
}

func (p *proxy) resume() {
	p.mu.Lock()
	defer p.mu.Unlock()
	select {
	case <-p.gate:
	default:
		close(p.gate)
	}
}

func clientVia(t *testing.T, endpoint string) *datastore.Client {
	c, err := datastore.New(datastore.Config{Endpoints: []string{endpoint}, DialTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// freshSnapshot is what a syncer started now sees: a fresh list.
func freshSnapshot(t *testing.T, c *datastore.Client) *datastore.Snapshot {
	t.Helper()
	s := datastore.NewSyncerWithOptions(c, slog.New(slog.DiscardHandler), fastSyncer)
	ch, _ := s.Subscribe()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { s.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	return waitFor(t, ch, "a fresh list", func(*datastore.Snapshot) bool { return true })
}

// randomWriter makes random valid writes and deletes of every kind under a few keys.
type randomWriter struct {
	t   *testing.T
	e   *etcdtest.Etcd
	rnd *rand.Rand
	n   int
}

func (w *randomWriter) step() int64 {
	ctx := context.Background()
	keys := w.e.Client.Keys
	w.n++
	i := w.rnd.IntN(4)
	block := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 200, byte(i), 0}), 30)
	var (
		key, value string
	)
	switch w.rnd.IntN(7) {
	case 0:
		// Pools: a fixed cidr per name (cidrs are immutable); pools 0 and 1 overlap, so
		// which is in force depends on their creation order.
		cidrs := []string{"10.100.0.0/16", "10.100.0.0/17", "10.101.0.0/16", "10.102.0.0/16"}
		key, value = poolKey(fmt.Sprintf("pool-%d", i)), rawPool(fmt.Sprintf("pool-%d", i), cidrs[i], fmt.Sprintf(`,"natOutgoing":%v`, w.n%2 == 0))
	case 1, 2:
		key, value = nodeKey(fmt.Sprintf("node-%d", i)), fmt.Sprintf(`{"metadata":{"name":"node-%d","labels":{"step":"%d"}},"spec":{"bgp":{"ipv4Address":"10.0.0.%d/24"}}}`, i, w.n, i+1)
	case 3:
		key, value = keys.Block(block), fmt.Sprintf(`{"cidr":%q,"affinity":"host:node-%d","allocations":[null,null,null,null],"unallocated":[0,1,2,3],"attributes":[],"sequenceNumber":%d}`, block, i, w.n)
	case 4:
		key, value = keys.Affinity(fmt.Sprintf("node-%d", i), block), []string{`{"state":"confirmed"}`, `{"state":"pending"}`, ""}[w.rnd.IntN(3)]
	case 5:
		key, value = keys.Handle(fmt.Sprintf("h-%d", i)), fmt.Sprintf(`{"block":{%q:%d}}`, block, w.n)
	case 6:
		// Documents that are refused by every syncer alike: never valid.
		key, value = nodeKey(fmt.Sprintf("broken-%d", i)), fmt.Sprintf(`{"spec":{"vxlanTunnelMACAddr":"nope-%d"}}`, w.n)
	}
	if w.rnd.IntN(4) == 0 {
		resp, err := w.e.Raw().Delete(ctx, key)
		if err != nil {
			w.t.Fatalf("delete %s: %v", key, err)
		}
		return resp.Header.Revision
	}
	return put(w.t, w.e, key, value)
}

// After a random sequence of writes and deletes, interrupted by a network cut with a
// compaction behind it, the syncer's snapshot equals a fresh list: no update missed, none
// applied twice.
func TestSyncerConvergesThroughCompaction(t *testing.T) {
	t.Parallel()
	e := etcdtest.Start(t)
	px := startProxy(t, e.Endpoint)
	c := clientVia(t, px.endpoint())
	s, ch := runSyncer(t, c)
	w := &randomWriter{t: t, e: e, rnd: rand.New(rand.NewPCG(1, uint64(time.Now().UnixNano())))}

	var rev int64
	for range 150 {
		rev = w.step()
	}
	waitFor(t, ch, "the first writes", func(s *datastore.Snapshot) bool { return s.Revision == rev })

	// Cut the syncer off, write behind its back, compact away the history it would need to
	// resume its watch, and reconnect it: it must notice and list again.
	px.cut()
	for range 150 {
		rev = w.step()
	}
	if _, err := e.Raw().Compact(context.Background(), rev, clientv3.WithCompactPhysical()); err != nil {
		t.Fatalf("compact: %v", err)
	}
	px.restore()
	for range 50 {
		rev = w.step()
	}
	waitFor(t, ch, "the writes made behind a compaction", func(s *datastore.Snapshot) bool { return s.Revision == rev })
	if st := s.Stats(); st.Relists == 0 || st.WatchErrors == 0 {
		t.Errorf("stats %+v: the cut and the compaction went unnoticed", st)
	}
	if got, want := datastore.Content(s.Latest()), datastore.Content(freshSnapshot(t, e.Client)); !reflect.DeepEqual(got, want) {
		t.Fatalf("the cache differs from a fresh list:\n got %s\nwant %s", describe(got), describe(want))
	}
}

// The syncer survives etcd stopping and starting again under it (etcd takes a few seconds
// to close while a watch is open, so this test runs beside the others).
func TestSyncerSurvivesEtcdRestart(t *testing.T) {
	t.Parallel()
	e := etcdtest.Start(t)
	s, ch := runSyncer(t, clientVia(t, e.Endpoint))
	w := &randomWriter{t: t, e: e, rnd: rand.New(rand.NewPCG(2, uint64(time.Now().UnixNano())))}
	var rev int64
	for range 100 {
		rev = w.step()
	}
	waitFor(t, ch, "the writes before the restart", func(s *datastore.Snapshot) bool { return s.Revision == rev })

	e.Close()
	deadline := time.Now().Add(10 * time.Second)
	for s.Stats().Connected {
		if time.Now().After(deadline) {
			t.Fatal("the syncer still says it is connected to a stopped etcd")
		}
		time.Sleep(20 * time.Millisecond)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := e.Restart(ctx); err != nil {
		t.Fatalf("restart etcd: %v", err)
	}
	for range 100 {
		rev = w.step()
	}
	waitFor(t, ch, "the writes after the restart", func(s *datastore.Snapshot) bool { return s.Revision == rev })
	if got, want := datastore.Content(s.Latest()), datastore.Content(freshSnapshot(t, e.Client)); !reflect.DeepEqual(got, want) {
		t.Fatalf("after the restart the cache differs from a fresh list:\n got %s\nwant %s", describe(got), describe(want))
	}
	if st := s.Stats(); !st.Connected || st.ListErrors+st.WatchErrors == 0 {
		t.Errorf("stats %+v", st)
	}
}

// On a quiet cluster (nothing written since the list, so etcd ignores progress requests)
// a stopped etcd is noticed by the revision check within a few progress intervals, however
// long a list may take (RequestTimeout). tabbyd's readiness says "datastore unreachable"
// only once the syncer has noticed.
func TestSyncerNoticesAStoppedEtcdOnAQuietCluster(t *testing.T) {
	t.Parallel()
	e := etcdtest.Start(t)
	put(t, e, nodeKey("quiet"), `{"metadata":{"name":"quiet"}}`)
	opts := fastSyncer
	opts.RequestTimeout = time.Minute
	s, ch := runSyncerWith(t, clientVia(t, e.Endpoint), opts)
	waitFor(t, ch, "the first snapshot", func(*datastore.Snapshot) bool { return true })
	for !s.Stats().Connected {
		time.Sleep(10 * time.Millisecond)
	}
	e.Close()
	t.Cleanup(func() { // the harness closes it again: give it a running server to close
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := e.Restart(ctx); err != nil {
			t.Errorf("restart etcd: %v", err)
		}
	})
	stopped := time.Now()
	for s.Stats().Connected {
		if time.Since(stopped) > 10*time.Second {
			t.Fatalf("the syncer still says it is connected %s after etcd stopped (progress interval %s)", time.Since(stopped), opts.ProgressInterval)
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Logf("a stopped etcd noticed after %s (progress interval %s)", time.Since(stopped).Round(time.Millisecond), opts.ProgressInterval)
}

// A watch that goes silent (no bytes either way, connections open) is noticed by its
// unanswered progress request and replaced.
func TestSyncerNoticesASilentWatch(t *testing.T) {
	t.Parallel()
	e := etcdtest.Start(t)
	px := startProxy(t, e.Endpoint)
	c := clientVia(t, px.endpoint())
	s, ch := runSyncer(t, c)
	// A write delivered by the watch (not by a list) proves the watch is established
	// before the network falls silent.
	waitFor(t, ch, "the first snapshot", func(*datastore.Snapshot) bool { return true })
	for i := 0; ; i++ {
		lists := s.Stats().Lists
		before := put(t, e, nodeKey("before"), fmt.Sprintf(`{"metadata":{"name":"before","labels":{"i":"%d"}}}`, i))
		waitFor(t, ch, "the write before the silence", func(s *datastore.Snapshot) bool { return s.Revision == before })
		if s.Stats().Lists == lists {
			break
		}
	}
	errorsBefore := s.Stats().WatchErrors
	px.pause()
	deadline := time.Now().Add(10 * time.Second)
	for s.Stats().WatchErrors == errorsBefore {
		if time.Now().After(deadline) {
			t.Fatal("a silent watch went unnoticed")
		}
		time.Sleep(20 * time.Millisecond)
	}
	// Noticed either by the unanswered progress request or, when nothing had been written
	// since the watch started (etcd then ignores progress requests), by the revision check.
	if st := s.Stats(); st.Connected || !strings.Contains(st.LastError, "silent") && !strings.Contains(st.LastError, "liveness") {
		t.Errorf("stats %+v, want disconnected by a silent watch", st)
	}
	px.resume()
	rev := put(t, e, nodeKey("after"), `{"metadata":{"name":"after"}}`)
	waitFor(t, ch, "the write after the silence", func(s *datastore.Snapshot) bool { return s.Revision == rev })
}

func describe(s *datastore.Snapshot) string {
	if s == nil {
		return "<nil>"
	}
	var b strings.Builder
	fmt.Fprintf(&b, "rev %d pools %d nodes %d blocks %d affinities %d handles %d problems %d", s.Revision, len(s.Pools), len(s.Nodes), len(s.Blocks), len(s.Affinities), len(s.Handles), len(s.Problems))
	for name, p := range s.Pools {
		fmt.Fprintf(&b, "\n pool %s %s rv %s", name, p.Spec.CIDR, p.Metadata.ResourceVersion)
	}
	for _, p := range s.Problems {
		fmt.Fprintf(&b, "\n problem %s@%d %s", p.Key, p.ModRevision, p.Err)
	}
	return b.String()
}

func TestSyncerRunTwice(t *testing.T) {
	t.Parallel()
	e := etcdtest.Start(t)
	s := datastore.NewSyncer(e.Client, nil)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := s.Run(ctx); err != nil {
		t.Fatalf("Run with a cancelled context: %v", err)
	}
	if err := s.Run(context.Background()); err == nil || !strings.Contains(err.Error(), "twice") {
		t.Errorf("second Run: %v", err)
	}
	ch, _ := s.Subscribe()
	if _, open := <-ch; open {
		t.Error("Subscribe after Run ended returned an open channel")
	}
}

func TestSnapshotBGPConfig(t *testing.T) {
	s := datastore.NewSnapshot()
	if c := s.BGPConfig(); *c.Spec.ASNumber != 64512 || !*c.Spec.NodeToNodeMeshEnabled || s.BGPListenPort("w1") != 179 {
		t.Errorf("defaults: %+v", c.Spec)
	}
	def, _ := datastore.DecodeStored(datastore.KindBGPConfiguration, "default", []byte(`{"spec":{"listenPort":1179,"asNumber":65000}}`), 1)
	node, _ := datastore.DecodeStored(datastore.KindBGPConfiguration, "node.w2", []byte(`{"spec":{"listenPort":2179}}`), 1)
	s.BGPConfigs["default"] = def.(*datastore.BGPConfiguration)
	s.BGPConfigs["node.w2"] = node.(*datastore.BGPConfiguration)
	if *s.BGPConfig().Spec.ASNumber != 65000 || s.BGPListenPort("w1") != 1179 || s.BGPListenPort("w2") != 2179 {
		t.Errorf("AS %d, ports %d %d", *s.BGPConfig().Spec.ASNumber, s.BGPListenPort("w1"), s.BGPListenPort("w2"))
	}
}

// TestSyncerOnlyHandles: with OnlyHandles, snapshots carry those IPAM handles and no
// other, from the list (several pages on each side of the handle prefix) and from the
// watch, while every other kind arrives as usual.
func TestSyncerOnlyHandles(t *testing.T) {
	t.Parallel()
	e := etcdtest.Start(t)
	ctx := context.Background()
	c := e.Client
	if _, err := c.CreateIPPool(ctx, pool("default-ipv4-ippool", "192.168.0.0/16", nil)); err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		node := &datastore.Node{Metadata: datastore.ObjectMeta{Name: fmt.Sprintf("worker-%d", i)}, Spec: datastore.NodeSpec{BGP: &datastore.NodeBGPSpec{IPv4Address: fmt.Sprintf("10.30.0.%d/24", i+1)}}}
		if _, err := c.CreateNode(ctx, node); err != nil {
			t.Fatal(err)
		}
	}
	block := netip.MustParsePrefix("192.168.1.0/26")
	put(t, e, c.Keys.Affinity("worker-1", block), `{"state":"confirmed","deleted":false}`)
	put(t, e, c.Keys.IPAMConfig(), `{"strict_affinity":true}`)
	handle := `{"block":{"192.168.1.0/26":1}}`
	for _, id := range []string{"ipip-tunnel-addr-worker-1", "ipip-tunnel-addr-worker-10", "tabby.c1", "tabby.c2", "tabby.c3", "aaa", "zzz"} {
		put(t, e, c.Keys.Handle(id), handle)
	}

	opts := fastSyncer
	opts.PageSize = 2
	opts.OnlyHandles = []string{"vxlan-tunnel-addr-worker-1", "ipip-tunnel-addr-worker-1"}
	s := datastore.NewSyncerWithOptions(c, testLogger(t), opts)
	ch, _ := s.Subscribe()
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- s.Run(runCtx) }()
	t.Cleanup(func() { cancel(); <-done })

	handles := func(s *datastore.Snapshot) string { return strings.Join(slices.Sorted(maps.Keys(s.Handles)), ",") }
	snap := waitFor(t, ch, "the first snapshot", func(*datastore.Snapshot) bool { return true })
	if got := handles(snap); got != "ipip-tunnel-addr-worker-1" {
		t.Errorf("first snapshot's handles %q, want only ipip-tunnel-addr-worker-1", got)
	}
	if len(snap.Pools) != 1 || len(snap.Nodes) != 5 || !snap.IPAMConfig.StrictAffinity {
		t.Errorf("first snapshot: %s, strict affinity %v", describe(snap), snap.IPAMConfig.StrictAffinity)
	}
	if _, ok := snap.Affinities[datastore.AffinityKey{Host: "worker-1", CIDR: block}]; !ok {
		t.Errorf("the affinity (after the handle prefix) is missing: %s", describe(snap))
	}

	put(t, e, c.Keys.Handle("tabby.c4"), handle)
	put(t, e, c.Keys.Handle("vxlan-tunnel-addr-worker-1"), handle)
	snap = waitFor(t, ch, "the VXLAN tunnel handle", func(s *datastore.Snapshot) bool { return s.Handles["vxlan-tunnel-addr-worker-1"] != nil })
	if got := handles(snap); got != "ipip-tunnel-addr-worker-1,vxlan-tunnel-addr-worker-1" {
		t.Errorf("handles after the watch %q, want the two tunnel handles", got)
	}
	if _, err := e.Raw().Delete(ctx, c.Keys.Handle("ipip-tunnel-addr-worker-1")); err != nil {
		t.Fatal(err)
	}
	snap = waitFor(t, ch, "the IPIP handle's deletion", func(s *datastore.Snapshot) bool { return s.Handles["ipip-tunnel-addr-worker-1"] == nil })
	if got := handles(snap); got != "vxlan-tunnel-addr-worker-1" {
		t.Errorf("handles after the deletion %q", got)
	}
}
