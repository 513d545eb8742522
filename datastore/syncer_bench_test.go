package datastore_test

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"runtime/debug"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tabby-net/tabby/datastore"
	"github.com/tabby-net/tabby/datastore/etcdtest"
)

// loadCluster writes the datastore of a large cluster: nodes nodes, each with one /26
// block holding perNode addresses, its confirmed affinity and the handles of those
// addresses.
func loadCluster(b *testing.B, e *etcdtest.Etcd, nodes, perNode int) {
	b.Helper()
	ctx := context.Background()
	keys := e.Client.Keys
	var ops []clientv3.Op
	flush := func() {
		if len(ops) == 0 {
			return
		}
		if _, err := e.Raw().Txn(ctx).Then(ops...).Commit(); err != nil {
			b.Fatalf("load: %v", err)
		}
		ops = ops[:0]
	}
	add := func(key, value string) {
		ops = append(ops, clientv3.OpPut(key, value))
		if len(ops) == 120 {
			flush()
		}
	}
	add(keys.Resource(datastore.KindIPPool, "default-ipv4-ippool"), rawPool("default-ipv4-ippool", "10.0.0.0/8", `,"blockSize":26,"ipipMode":"Always","natOutgoing":true`))
	for i := range nodes {
		name := fmt.Sprintf("worker-%05d", i)
		block := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i >> 10), byte(i >> 2), byte(i&3) << 6}), 26)
		add(keys.Resource(datastore.KindNode, name), fmt.Sprintf(
			`{"kind":"Node","apiVersion":"projectcalico.org/v3","metadata":{"name":%q,"uid":"8d2f6a3e-0000-4000-8000-%012d","creationTimestamp":"2026-01-01T00:00:00Z","labels":{"kubernetes.io/hostname":%q,"zone":"z%d"}},"spec":{"bgp":{"ipv4Address":"172.16.%d.%d/16","ipv4IPIPTunnelAddr":%q}}}`,
			name, i, name, i%4, i>>8, i&255, block.Addr()))
		allocs := make([]string, 64)
		var attrs, unalloc []string
		for o := range allocs {
			if o < perNode {
				allocs[o] = fmt.Sprint(o)
				attrs = append(attrs, fmt.Sprintf(`{"handle_id":"tabby.%s-%d","secondary":{"node":%q}}`, name, o, name))
				add(keys.Handle(fmt.Sprintf("tabby.%s-%d", name, o)), fmt.Sprintf(`{"block":{%q:1}}`, block))
			} else {
				allocs[o] = "null"
				unalloc = append(unalloc, fmt.Sprint(o))
			}
		}
		add(keys.Block(block), fmt.Sprintf(`{"cidr":%q,"affinity":"host:%s","allocations":[%s],"unallocated":[%s],"attributes":[%s],"deleted":false,"sequenceNumber":1}`,
			block, name, strings.Join(allocs, ","), strings.Join(unalloc, ","), strings.Join(attrs, ",")))
		add(keys.Affinity(name, block), `{"state":"confirmed","deleted":false}`)
	}
	flush()
}

func heapInUse() uint64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

// BenchmarkSyncer5000Nodes measures the syncer on a cluster of 5,000 nodes with 5,000
// blocks: with one address per node (its tunnel address) and with ten (workloads). It
// reports the first list, the memory of a process that runs nothing but the syncer, and
// per operation the time from a block write to the snapshot that carries it.
func BenchmarkSyncer5000Nodes(b *testing.B) {
	for _, perNode := range []int{1, 10} {
		b.Run(fmt.Sprintf("addresses-per-node=%d", perNode), func(b *testing.B) { benchmarkSyncer(b, 5000, perNode) })
	}
}

func benchmarkSyncer(b *testing.B, nodes, perNode int) {
	e := etcdtest.Start(b)
	loadCluster(b, e, nodes, perNode)
	c := e.Client

	s := datastore.NewSyncer(c, slog.New(slog.DiscardHandler))
	ch, _ := s.Subscribe()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { s.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	start := time.Now()
	snap := <-ch
	initial := time.Since(start)
	if len(snap.Nodes) != nodes || len(snap.Blocks) != nodes || len(snap.Handles) != nodes*perNode || len(snap.Problems) != 0 {
		b.Fatalf("first snapshot: %d nodes, %d blocks, %d handles, problems %v", len(snap.Nodes), len(snap.Blocks), len(snap.Handles), snap.Problems)
	}

	blockKey := c.Keys.Block(netip.MustParsePrefix("10.0.0.0/26"))
	resp, err := e.Raw().Get(ctx, blockKey)
	if err != nil || len(resp.Kvs) != 1 {
		b.Fatalf("get block: %v", err)
	}
	value := string(resp.Kvs[0].Value)
	i := 0
	for b.Loop() {
		i++
		v := strings.Replace(value, `"sequenceNumber":1`, fmt.Sprintf(`"sequenceNumber":%d`, i+1), 1)
		w, err := e.Raw().Put(ctx, blockKey, v)
		if err != nil {
			b.Fatal(err)
		}
		for snap := range ch {
			if snap.Revision >= w.Header.Revision {
				break
			}
		}
	}
	// Reported after the loop: b.Loop resets the metrics when it starts.
	b.ReportMetric(float64(initial.Milliseconds()), "ms-first-snapshot")
	// The embedded etcd shares this process, so memory is measured in a process that holds
	// nothing but a syncer: this test binary, started again as a child (see TestMain).
	m := measureSyncerProcess(b, e.Endpoint, nodes, nodes*perNode)
	b.ReportMetric(m.heapMB, "MB-heap-syncer")
	b.ReportMetric(m.baselineMB, "MB-rss-before-syncer")
	b.ReportMetric(m.settledMB, "MB-rss-settled")
	b.ReportMetric(m.peakMB, "MB-rss-peak")
}

// syncerMemoryEnv makes the test binary measure a syncer's memory instead of running tests.
const syncerMemoryEnv = "TABBY_SYNCER_MEMORY_CHILD"

func TestMain(m *testing.M) {
	if spec := os.Getenv(syncerMemoryEnv); spec != "" {
		os.Exit(syncerMemoryChild(spec))
	}
	os.Exit(m.Run())
}

// syncerMemoryChild runs a syncer against "<endpoint> <nodes> <handles>", waits for the
// first full snapshot, and prints the live heap the syncer added and the process's resident
// memory: before the syncer, at its peak, and settled (once freed pages are returned to the
// system, which the Go runtime otherwise does gradually over minutes).
func syncerMemoryChild(spec string) int {
	var (
		endpoint       string
		nodes, handles int
	)
	if _, err := fmt.Sscan(spec, &endpoint, &nodes, &handles); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	baseline, _, err := residentKB()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	heapBefore := heapInUse()
	c, err := datastore.New(datastore.Config{Endpoints: []string{endpoint}})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	s := datastore.NewSyncer(c, slog.New(slog.DiscardHandler))
	ch, _ := s.Subscribe()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go s.Run(ctx)
	for snap := range ch {
		if len(snap.Nodes) == nodes && len(snap.Blocks) == nodes && len(snap.Handles) == handles {
			break
		}
	}
	heap := heapInUse() - heapBefore
	debug.FreeOSMemory()
	settled, peak, err := residentKB()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Println(heap, baseline, settled, peak)
	return 0
}

// residentKB reads the process's resident memory now and at its peak.
func residentKB() (now, peak float64, err error) {
	status, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0, 0, err
	}
	for line := range strings.Lines(string(status)) {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			fmt.Sscan(rest, &now)
		}
		if rest, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			fmt.Sscan(rest, &peak)
		}
	}
	return now, peak, nil
}

type processMemory struct{ heapMB, baselineMB, settledMB, peakMB float64 }

func measureSyncerProcess(b *testing.B, endpoint string, nodes, handles int) processMemory {
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), fmt.Sprintf("%s=%s %d %d", syncerMemoryEnv, endpoint, nodes, handles))
	out, err := cmd.Output()
	if err != nil {
		b.Fatalf("syncer child: %v", err)
	}
	var heap, baseline, settled, peak float64
	if _, err := fmt.Sscan(string(out), &heap, &baseline, &settled, &peak); err != nil {
		b.Fatalf("syncer child said %q: %v", out, err)
	}
	return processMemory{heapMB: heap / (1 << 20), baselineMB: baseline / 1024, settledMB: settled / 1024, peakMB: peak / 1024}
}
