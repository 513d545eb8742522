package ipam

import (
	"fmt"
	"runtime"
	"sync/atomic"
	"testing"

	"github.com/tabby-net/tabby/datastore"
)

// BenchmarkAssignOne measures address assignments per second for one node against the
// in-process etcd: each iteration is one AssignOne with a new handle (a new workload),
// including the block claims every 64 addresses.
func BenchmarkAssignOne(b *testing.B) {
	f := newFixture(b)
	f.pool("p", "10.0.0.0/8", nil)
	f.config(false, 1<<20)
	a := f.alloc()
	b.ResetTimer()
	for i := range b.N {
		if _, err := a.AssignOne(f.ctx, AssignArgs{Handle: fmt.Sprintf("tabby.%d", i), Node: "bench", Use: datastore.UseWorkload}); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "assigns/s")
}

// BenchmarkAssignRelease measures a workload's whole life: AssignOne then ReleaseByHandle,
// on a node whose block stays in place.
func BenchmarkAssignRelease(b *testing.B) {
	f := newFixture(b)
	f.pool("p", "10.0.0.0/16", nil)
	a := f.alloc()
	f.assign(a, "keeps-the-block", "bench")
	b.ResetTimer()
	for i := range b.N {
		h := fmt.Sprintf("tabby.%d", i)
		if _, err := a.AssignOne(f.ctx, AssignArgs{Handle: h, Node: "bench", Use: datastore.UseWorkload}); err != nil {
			b.Fatal(err)
		}
		if err := a.ReleaseByHandle(f.ctx, h); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "cycles/s")
}

// BenchmarkAssignOneTenNodes measures the aggregate rate of 10 nodes assigning at once,
// each with its own Allocator and etcd connection (10 processes).
func BenchmarkAssignOneTenNodes(b *testing.B) {
	f := newFixture(b)
	f.pool("p", "10.0.0.0/8", nil)
	f.config(false, 1<<20)
	const nodes = 10
	allocs := make([]*Allocator, nodes)
	for i := range allocs {
		allocs[i] = New(f.newClient(), nil)
	}
	var next atomic.Int64
	b.SetParallelism((nodes + runtime.GOMAXPROCS(0) - 1) / runtime.GOMAXPROCS(0))
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		n := int(next.Add(1)-1) % nodes
		node := fmt.Sprintf("bench-%d", n)
		for i := 0; pb.Next(); i++ {
			if _, err := allocs[n].AssignOne(f.ctx, AssignArgs{Handle: fmt.Sprintf("tabby.%s.%d", node, i), Node: node, Use: datastore.UseWorkload}); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "assigns/s")
}
