package ipam

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/tabby-net/tabby/datastore"
)

func TestCheckFindsEveryKindOfInconsistency(t *testing.T) {
	f := newFixture(t)
	f.pool("p", "10.5.0.0/24", map[string]any{"blockSize": 28})
	a := f.alloc()
	ok := f.assign(a, "fine", "n1")

	// A block with an allocation whose handle does not exist, one with no handle, and one
	// whose handle counts less than it holds.
	leaky := netip.MustParsePrefix("10.5.0.128/28")
	b := newBlock(leaky, "n2", time.Now())
	takeFirstFree(b, "ghost", map[string]string{"node": "n2"})
	takeFirstFree(b, "under", map[string]string{"node": "n2"})
	takeFirstFree(b, "under", map[string]string{"node": "n2"})
	o, _ := takeFirstFree(b, "x", nil)
	b.Attributes[*b.Allocations[o]].HandleID = nil
	f.put(f.c.Keys.Block(leaky), b)
	f.put(f.c.Keys.Affinity("n2", leaky), datastore.BlockAffinity{State: datastore.AffinityConfirmed})
	f.put(f.c.Keys.Handle("under"), datastore.IPAMHandle{Block: map[string]int{leaky.String(): 1}})
	// A handle counting addresses in a block that does not exist.
	f.put(f.c.Keys.Handle("orphan"), datastore.IPAMHandle{Block: map[string]int{"10.5.0.240/28": 2}})
	// An affinity to nothing, and a block claimed by a second host.
	f.put(f.c.Keys.Affinity("n3", netip.MustParsePrefix("10.5.0.224/28")), datastore.BlockAffinity{State: datastore.AffinityConfirmed})
	f.put(f.c.Keys.Affinity("intruder", blockFor(ok, 28)), datastore.BlockAffinity{State: datastore.AffinityConfirmed})
	// An unreadable handle.
	if _, err := f.e.Raw().Put(f.ctx, f.c.Keys.Handle("garbage"), "{not json"); err != nil {
		t.Fatal(err)
	}

	r, err := a.Check(f.ctx)
	if err != nil {
		t.Fatal(err)
	}
	reasons := map[string]int{}
	for _, l := range r.Leaks {
		reasons[l.Handle]++
		if l.Block != leaky {
			t.Errorf("leak %+v outside the leaky block", l)
		}
	}
	if len(r.Leaks) != 4 || reasons["ghost"] != 1 || reasons["under"] != 2 || reasons[""] != 1 {
		t.Errorf("leaks %+v", r.Leaks)
	}
	if len(r.OrphanHandles) != 1 || r.OrphanHandles[0].Handle != "orphan" || r.OrphanHandles[0].Counted != 2 {
		t.Errorf("orphan handles %+v", r.OrphanHandles)
	}
	if len(r.AffinitiesWithoutBlock) != 1 || r.AffinitiesWithoutBlock[0].Host != "n3" {
		t.Errorf("affinities without block %+v", r.AffinitiesWithoutBlock)
	}
	if len(r.DoubleClaims) != 1 || r.DoubleClaims[0].BlockHost != "n1" || !strings.Contains(r.DoubleClaims[0].Reason, "intruder") {
		t.Errorf("double claims %+v", r.DoubleClaims)
	}
	if len(r.Unreadable) != 1 || !strings.HasSuffix(r.Unreadable[0].Key, "/garbage") {
		t.Errorf("unreadable %+v", r.Unreadable)
	}
	if len(r.Pending) != 0 || r.OK() || r.Problems() != 4+1+1+1+1 {
		t.Errorf("pending %+v, problems %d", r.Pending, r.Problems())
	}
}
