package ipam

import (
	"fmt"
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
