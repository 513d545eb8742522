package bench

import (
	"context"
	"log/slog"
	"runtime"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tabby-net/tabby/datastore"
)

// BenchmarkFirstSnapshot5000 isolates the datastore part of a start-up at scale: the
// syncer's first full snapshot of a 5,000-node cluster (etcd in its own process, in the
// router namespace), next to etcd's own cost of delivering the same keys: the same paged
// list (1,000 keys a page, the syncer's default) with no decoding. The difference is
// tabby's decoding and validation. Also printed: the heap the syncer allocated for it.
func BenchmarkFirstSnapshot5000(b *testing.B) {
	ctx := context.Background()
	e := newEnv(b)
	c := e.startEtcd(ctx)
	perBlock := perBlockFromEnv()
	populate(ctx, b, c, clusterSpec{nodes: startupNodes, perBlock: perBlock})
	var syncer, raw, allocMB, cpu, retained samples
	var keys int
	for b.Loop() {
		t0 := time.Now()
		keys = rawPagedList(b, c, 1000)
		raw = append(raw, ms(time.Since(t0)))

		var m0, m1 runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&m0)
		c0 := selfCPU()
		t0 = time.Now()
		s := datastore.NewSyncer(c, slog.New(slog.DiscardHandler))
		ch, _ := s.Subscribe()
		sctx, cancel := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() { s.Run(sctx); close(done) }()
		snap := <-ch
		syncer = append(syncer, ms(time.Since(t0)))
		cpu = append(cpu, ms(selfCPU()-c0))
		runtime.ReadMemStats(&m1)
		allocMB = append(allocMB, float64(m1.TotalAlloc-m0.TotalAlloc)/(1<<20))
		runtime.GC()
		runtime.ReadMemStats(&m1)
		retained = append(retained, float64(int64(m1.HeapAlloc)-int64(m0.HeapAlloc))/(1<<20))
		cancel()
		<-done
		if len(snap.Nodes) != startupNodes || len(snap.Blocks) != startupNodes {
			b.Fatalf("first snapshot: %d nodes, %d blocks", len(snap.Nodes), len(snap.Blocks))
		}
	}
	reportMedian(b, syncer, "syncer-ms")
	reportMedian(b, raw, "etcd-list-ms")
	figure(b, "first-snapshot", "%d keys (%d nodes, %d addresses a block): syncer's first snapshot %s ms, CPU %s ms | reference: the same paged list without decoding %s ms | allocated %s MB, heap held by the syncer %s MB",
		keys, startupNodes, perBlock, syncer, cpu, raw, allocMB, retained)
}

// selfCPU is this process's user and system CPU time.
func selfCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// rawPagedList reads the whole key root page by page at one revision, as the syncer does,
// and returns the number of keys.
func rawPagedList(tb testing.TB, c *datastore.Client, page int64) int {
	tb.Helper()
	prefix := c.Keys.Root + "/"
	end := clientv3.GetPrefixRangeEnd(prefix)
	key := prefix
	var rev int64
	n := 0
	for {
		opts := []clientv3.OpOption{clientv3.WithRange(end), clientv3.WithLimit(page)}
		if rev != 0 {
			opts = append(opts, clientv3.WithRev(rev))
		}
		resp, err := c.Etcd().Get(context.Background(), key, opts...)
		if err != nil {
			tb.Fatal(err)
		}
		rev = resp.Header.Revision
		n += len(resp.Kvs)
		if !resp.More || len(resp.Kvs) == 0 {
			return n
		}
		key = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
	}
}
