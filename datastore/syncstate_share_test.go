package datastore

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"net/netip"
	"reflect"
	"strings"
	"testing"
)

// blockValue renders a /26 block of node with the given ordinals allocated, in order.
func blockValue(cidr netip.Prefix, node string, used ...int) string {
	allocs := make([]string, 64)
	for i := range allocs {
		allocs[i] = "null"
	}
	var attrs []string
	for i, o := range used {
		allocs[o] = fmt.Sprint(i)
		attrs = append(attrs, fmt.Sprintf(`{"handle_id":"h.%s-%d","secondary":{"node":%q}}`, node, o, node))
	}
	var free []string
	for o := range 64 {
		isUsed := false
		for _, u := range used {
			isUsed = isUsed || u == o
		}
		if !isUsed {
			free = append(free, fmt.Sprint(o))
		}
	}
	return fmt.Sprintf(`{"cidr":%q,"affinity":"host:%s","allocations":[%s],"unallocated":[%s],"attributes":[%s],"deleted":false,"sequenceNumber":7}`,
		cidr, node, strings.Join(allocs, ","), strings.Join(free, ","), strings.Join(attrs, ","))
}

// TestBlocksShareEqualArrays: blocks with the same allocated ordinals share their
// Allocations and Unallocated arrays, clipped so that an append cannot reach another
// block; the decoded content is what encoding/json alone makes of the document.
func TestBlocksShareEqualArrays(t *testing.T) {
	st := newSyncState(NewKeys(""), slog.New(slog.DiscardHandler))
	cidrs := []netip.Prefix{
		netip.MustParsePrefix("10.0.0.0/26"),
		netip.MustParsePrefix("10.0.0.64/26"),
		netip.MustParsePrefix("10.0.0.128/26"),
	}
	values := []string{
		blockValue(cidrs[0], "a", 0, 1),
		blockValue(cidrs[1], "b", 0, 1),
		blockValue(cidrs[2], "c", 0, 5),
	}
	var kvs []rawKV
	for i, c := range cidrs {
		kvs = append(kvs, rawKV{key: st.keys.Block(c), value: []byte(values[i]), modRev: int64(i + 1), createRev: int64(i + 1)})
	}
	snap, _ := st.relist(kvs, 3)
	a, b, c := snap.Blocks[cidrs[0]], snap.Blocks[cidrs[1]], snap.Blocks[cidrs[2]]
	if &a.Allocations[0] != &b.Allocations[0] || &a.Unallocated[0] != &b.Unallocated[0] {
		t.Error("equal blocks do not share their arrays")
	}
	if &a.Allocations[0] == &c.Allocations[0] || &a.Unallocated[0] == &c.Unallocated[0] {
		t.Error("different blocks share their arrays")
	}
	for _, blk := range []*AllocationBlock{a, b, c} {
		if cap(blk.Allocations) != len(blk.Allocations) || cap(blk.Unallocated) != len(blk.Unallocated) {
			t.Errorf("block %s: shared arrays not clipped", blk.CIDR)
		}
	}
	for i, c := range cidrs {
		var want AllocationBlock
		if err := json.Unmarshal([]byte(values[i]), &want); err != nil {
			t.Fatal(err)
		}
		if got := snap.Blocks[c]; !reflect.DeepEqual(*got, want) {
			t.Errorf("block %s decoded as\n%+v\nwant\n%+v", c, *got, want)
		}
	}
	grown := append(a.Unallocated, 99)
	if b.Unallocated[len(b.Unallocated)-1] == 99 || &grown[0] == &b.Unallocated[0] {
		t.Error("an append to one block's array reached another block")
	}
}
