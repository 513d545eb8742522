package datastore_test

import (
	"encoding/json"
	"fmt"
	"testing"

	"github.com/tabby-net/tabby/datastore"
)

// fullBlock is a /26 block with every address allocated, as a busy host has them.
func fullBlock() *datastore.AllocationBlock {
	host := "host:node-1"
	b := &datastore.AllocationBlock{CIDR: "10.65.0.0/26", Affinity: &host, SequenceNumberForAllocation: map[string]uint64{}}
	for i := range 64 {
		idx := i
		h := fmt.Sprintf("k8s-pod-network.%064d", i)
		b.Allocations = append(b.Allocations, &idx)
		b.Attributes = append(b.Attributes, datastore.AllocationAttribute{HandleID: &h,
			Secondary: map[string]string{"node": "node-1", "namespace": "default", "pod": fmt.Sprintf("pod-%d", i)}})
		b.SequenceNumberForAllocation[fmt.Sprint(i)] = uint64(i)
	}
	return b
}

// BenchmarkBlockWrite compares the encoding of a block write: Overlay on the stored block
// (what every IPAM write does) against plain json.Marshal (the reference: what a write
// that dropped unknown fields cost).
func BenchmarkBlockWrite(b *testing.B) {
	blk := fullBlock()
	stored, err := json.Marshal(blk)
	if err != nil {
		b.Fatal(err)
	}
	blk.Allocations[5] = nil // the change: one address released
	blk.Unallocated = append(blk.Unallocated, 5)
	benchmarkWrite(b, stored, blk)
}

// BenchmarkBlockWriteAssign is BenchmarkBlockWrite for an assignment: one attribute more.
func BenchmarkBlockWriteAssign(b *testing.B) {
	blk := fullBlock()
	blk.Allocations, blk.Attributes = blk.Allocations[:63], blk.Attributes[:63]
	stored, err := json.Marshal(blk)
	if err != nil {
		b.Fatal(err)
	}
	blk = fullBlock()
	benchmarkWrite(b, stored, blk)
}

// BenchmarkBlockWriteRelease is BenchmarkBlockWrite for a release that renumbers the
// attributes: the first one goes.
func BenchmarkBlockWriteRelease(b *testing.B) {
	blk := fullBlock()
	stored, err := json.Marshal(blk)
	if err != nil {
		b.Fatal(err)
	}
	blk.Allocations[0] = nil
	blk.Attributes = blk.Attributes[1:]
	for i := 1; i < 64; i++ {
		idx := i - 1
		blk.Allocations[i] = &idx
	}
	benchmarkWrite(b, stored, blk)
}

func benchmarkWrite(b *testing.B, stored []byte, blk *datastore.AllocationBlock) {
	b.Run("json.Marshal", func(b *testing.B) {
		for b.Loop() {
			if _, err := json.Marshal(blk); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("Overlay", func(b *testing.B) {
		for b.Loop() {
			if _, err := datastore.Overlay(stored, blk); err != nil {
				b.Fatal(err)
			}
		}
	})
}
