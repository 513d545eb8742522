package ipam

import (
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strconv"
	"time"

	"github.com/tabby-net/tabby/datastore"
)

// Pure arithmetic on one allocation block. Nothing here talks to etcd: the functions take a
// block value, change a copy, and the callers write the copy back with compare-and-swap.

// Secondary attribute keys and values, Calico's own (libcalico-go model.IPAMBlockAttribute*).
const (
	AttrNode            = "node"
	AttrType            = "type"
	AttrTypeIPIPTunnel  = "ipipTunnelAddress"
	AttrTypeVXLANTunnel = "vxlanTunnelAddress"
)

// blockSizeOf is the number of addresses in a block CIDR.
func blockSizeOf(cidr netip.Prefix) int { return 1 << (32 - cidr.Bits()) }

// newBlock returns an empty block for cidr affine to host, as Calico creates it: every
// ordinal in unallocated in ascending order, every allocation null, and a sequence number
// seeded from the clock so that a block deleted and created again never repeats the
// sequence numbers of its previous life.
func newBlock(cidr netip.Prefix, host string, now time.Time) *datastore.AllocationBlock {
	n := blockSizeOf(cidr)
	b := &datastore.AllocationBlock{
		CIDR:                        cidr.String(),
		Allocations:                 make([]*int, n),
		Unallocated:                 make([]int, n),
		SequenceNumber:              uint64(now.UnixNano()),
		SequenceNumberForAllocation: map[string]uint64{},
	}
	if host != "" {
		aff := datastore.AffinityHostPrefix + host
		b.Affinity = &aff
	}
	for i := range n {
		b.Unallocated[i] = i
	}
	return b
}

// cloneBlock deep-copies a block so that a failed compare-and-swap leaves the value the
// caller read untouched.
func cloneBlock(b *datastore.AllocationBlock) *datastore.AllocationBlock {
	c := *b
	if b.Affinity != nil {
		a := *b.Affinity
		c.Affinity = &a
	}
	c.Allocations = make([]*int, len(b.Allocations))
	for i, p := range b.Allocations {
		if p != nil {
			v := *p
			c.Allocations[i] = &v
		}
	}
	c.Unallocated = slices.Clone(b.Unallocated)
	c.Attributes = make([]datastore.AllocationAttribute, len(b.Attributes))
	for i, at := range b.Attributes {
		c.Attributes[i] = datastore.AllocationAttribute{Secondary: maps.Clone(at.Secondary)}
		if at.HandleID != nil {
			h := *at.HandleID
			c.Attributes[i].HandleID = &h
		}
	}
	if b.Attributes == nil {
		c.Attributes = nil
	}
	c.SequenceNumberForAllocation = maps.Clone(b.SequenceNumberForAllocation)
	return &c
}

// checkBlock verifies that a stored block is internally consistent enough to work on: the
// arrays have the block's size, every index points inside them. A block that fails this was
// not written by tabby or Calico and is refused rather than "repaired".
func checkBlock(cidr netip.Prefix, b *datastore.AllocationBlock) error {
	n := blockSizeOf(cidr)
	if b.CIDR != cidr.String() {
		return fmt.Errorf("block %s: its cidr field says %q", cidr, b.CIDR)
	}
	if len(b.Allocations) != n {
		return fmt.Errorf("block %s: %d allocations, want %d", cidr, len(b.Allocations), n)
	}
	for i, p := range b.Allocations {
		if p != nil && (*p < 0 || *p >= len(b.Attributes)) {
			return fmt.Errorf("block %s: allocation %d points at attribute %d of %d", cidr, i, *p, len(b.Attributes))
		}
	}
	for _, o := range b.Unallocated {
		if o < 0 || o >= n {
			return fmt.Errorf("block %s: unallocated ordinal %d out of range", cidr, o)
		}
		if b.Allocations[o] != nil {
			return fmt.Errorf("block %s: ordinal %d is both allocated and unallocated", cidr, o)
		}
	}
	return nil
}

// ordinalAddr is the address at ordinal ord of the block. Blocks are not subnets: ordinal 0
// (the "network" address) and the last ordinal (the "broadcast" address) are handed out
// like any other, as Calico does.
func ordinalAddr(cidr netip.Prefix, ord int) netip.Addr {
	base := cidr.Masked().Addr().As4()
	v := uint32(base[0])<<24 | uint32(base[1])<<16 | uint32(base[2])<<8 | uint32(base[3])
	v += uint32(ord)
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

// addrOrdinal is the ordinal of ip in the block, or an error when ip is outside it.
func addrOrdinal(cidr netip.Prefix, ip netip.Addr) (int, error) {
	if !ip.Is4() || !cidr.Contains(ip) {
		return 0, fmt.Errorf("address %s is not in block %s", ip, cidr)
	}
	a, b := ip.As4(), cidr.Masked().Addr().As4()
	av := uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3])
	bv := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
	return int(av - bv), nil
}

// blockFor is the block of a pool that holds ip.
func blockFor(ip netip.Addr, blockSize int) netip.Prefix {
	return netip.PrefixFrom(ip, blockSize).Masked()
}

// freeCount is the number of free ordinals.
func freeCount(b *datastore.AllocationBlock) int { return len(b.Unallocated) }

// inUse is the number of allocated ordinals.
func inUse(b *datastore.AllocationBlock) int {
	n := 0
	for _, p := range b.Allocations {
		if p != nil {
			n++
		}
	}
	return n
}

// isEmpty reports whether no address of the block is allocated.
func isEmpty(b *datastore.AllocationBlock) bool { return inUse(b) == 0 }

// handleOf returns the handle of an attribute ("" when it has none).
func handleOf(at datastore.AllocationAttribute) string {
	if at.HandleID == nil {
		return ""
	}
	return *at.HandleID
}

// findOrAddAttribute returns the index of the attribute with exactly this handle and these
// secondary attributes, adding it when absent. Allocations with identical attributes share
// one entry, as in Calico.
func findOrAddAttribute(b *datastore.AllocationBlock, handle string, secondary map[string]string) int {
	for i, at := range b.Attributes {
		if handleOf(at) == handle && at.HandleID != nil && maps.Equal(at.Secondary, secondary) {
			return i
		}
	}
	h := handle
	b.Attributes = append(b.Attributes, datastore.AllocationAttribute{HandleID: &h, Secondary: maps.Clone(secondary)})
	return len(b.Attributes) - 1
}

// takeFirstFree allocates the ordinal at the front of the unallocated FIFO to handle and
// returns it; false when the block is full. Freed ordinals are appended to the back, so an
// address released a moment ago is the last to be handed out again.
func takeFirstFree(b *datastore.AllocationBlock, handle string, secondary map[string]string) (int, bool) {
	return takeFirstUnreserved(b, handle, secondary, func(int) bool { return false })
}

// takeFirstUnreserved is takeFirstFree skipping the ordinals reserved says are reserved
// (IPReservations). They stay in the FIFO, as Calico leaves them: free, never handed out.
func takeFirstUnreserved(b *datastore.AllocationBlock, handle string, secondary map[string]string, reserved func(ord int) bool) (int, bool) {
	i := slices.IndexFunc(b.Unallocated, func(ord int) bool { return !reserved(ord) })
	if i < 0 {
		return 0, false
	}
	ord := b.Unallocated[i]
	b.Unallocated = slices.Delete(b.Unallocated, i, i+1)
	idx := findOrAddAttribute(b, handle, secondary)
	b.Allocations[ord] = &idx
	if b.SequenceNumberForAllocation == nil {
		b.SequenceNumberForAllocation = map[string]uint64{}
	}
	b.SequenceNumberForAllocation[strconv.Itoa(ord)] = b.SequenceNumber
	return ord, true
}

// releaseOrdinals frees the given allocated ordinals: each goes to the back of the
// unallocated FIFO, and attributes no longer referenced are removed (the survivors are
// renumbered). It returns how many addresses each handle lost.
func releaseOrdinals(b *datastore.AllocationBlock, ords []int) map[string]int {
	lost := map[string]int{}
	for _, o := range ords {
		p := b.Allocations[o]
		if p == nil {
			continue
		}
		lost[handleOf(b.Attributes[*p])]++
		b.Allocations[o] = nil
		b.Unallocated = append(b.Unallocated, o)
		delete(b.SequenceNumberForAllocation, strconv.Itoa(o))
	}
	compactAttributes(b)
	return lost
}

// compactAttributes removes attributes that no allocation points at and renumbers the rest,
// keeping their order.
func compactAttributes(b *datastore.AllocationBlock) {
	used := make([]bool, len(b.Attributes))
	for _, p := range b.Allocations {
		if p != nil {
			used[*p] = true
		}
	}
	if !slices.Contains(used, false) {
		return
	}
	newIndex := make([]int, len(b.Attributes))
	kept := []datastore.AllocationAttribute{}
	for i, at := range b.Attributes {
		if used[i] {
			newIndex[i] = len(kept)
			kept = append(kept, at)
		}
	}
	b.Attributes = kept
	for i, p := range b.Allocations {
		if p != nil {
			v := newIndex[*p]
			b.Allocations[i] = &v
		}
	}
}

// ordinalsOfHandle lists the allocated ordinals held by handle, ascending.
func ordinalsOfHandle(b *datastore.AllocationBlock, handle string) []int {
	var ords []int
	for o, p := range b.Allocations {
		if p != nil && handleOf(b.Attributes[*p]) == handle {
			ords = append(ords, o)
		}
	}
	return ords
}

// countsByHandle counts the allocations of each handle in the block ("" = no handle).
func countsByHandle(b *datastore.AllocationBlock) map[string]int {
	c := map[string]int{}
	for _, p := range b.Allocations {
		if p != nil {
			c[handleOf(b.Attributes[*p])]++
		}
	}
	return c
}
