package ipam

import (
	"net/netip"
	"slices"
	"testing"
	"time"
)

func TestNewBlockLayout(t *testing.T) {
	cidr := netip.MustParsePrefix("10.1.2.64/29")
	b := newBlock(cidr, "worker-1", time.Unix(0, 42))
	if got, want := *b.Affinity, "host:worker-1"; got != want {
		t.Fatalf("affinity %q, want %q", got, want)
	}
	if !slices.Equal(b.Unallocated, []int{0, 1, 2, 3, 4, 5, 6, 7}) {
		t.Fatalf("unallocated %v, want every ordinal in order", b.Unallocated)
	}
	if len(b.Allocations) != 8 || slices.ContainsFunc(b.Allocations, func(p *int) bool { return p != nil }) {
		t.Fatalf("allocations %v, want 8 nulls", b.Allocations)
	}
	if b.SequenceNumber != 42 {
		t.Fatalf("sequence number %d, want the clock's 42", b.SequenceNumber)
	}
	if err := checkBlock(cidr, b); err != nil {
		t.Fatalf("new block fails its own check: %v", err)
	}
}

func TestOrdinalAddressRoundTrip(t *testing.T) {
	cidr := netip.MustParsePrefix("192.168.255.192/26")
	for _, tc := range []struct {
		ord  int
		addr string
	}{
		{0, "192.168.255.192"},  // the "network" address is usable: blocks are not subnets
		{63, "192.168.255.255"}, // and so is the "broadcast" address
		{17, "192.168.255.209"},
	} {
		if got := ordinalAddr(cidr, tc.ord); got.String() != tc.addr {
			t.Errorf("ordinalAddr(%d) = %s, want %s", tc.ord, got, tc.addr)
		}
		o, err := addrOrdinal(cidr, netip.MustParseAddr(tc.addr))
		if err != nil || o != tc.ord {
			t.Errorf("addrOrdinal(%s) = %d, %v; want %d", tc.addr, o, err, tc.ord)
		}
	}
	if _, err := addrOrdinal(cidr, netip.MustParseAddr("192.168.255.191")); err == nil {
		t.Error("addrOrdinal accepted an address outside the block")
	}
	// Carry across octets.
	if got := ordinalAddr(netip.MustParsePrefix("10.0.0.0/20"), 300); got.String() != "10.0.1.44" {
		t.Errorf("ordinalAddr(300) in 10.0.0.0/20 = %s, want 10.0.1.44", got)
	}
}

func TestTakeAndReleaseFIFO(t *testing.T) {
	cidr := netip.MustParsePrefix("10.0.0.0/29")
	b := newBlock(cidr, "n1", time.Unix(0, 1))
	attrs := map[string]string{"node": "n1"}
	for want := range 3 {
		o, ok := takeFirstFree(b, "h"+string(rune('a'+want)), attrs)
		if !ok || o != want {
			t.Fatalf("take %d: got %d %v", want, o, ok)
		}
	}
	if len(b.Attributes) != 3 {
		t.Fatalf("%d attributes, want one per distinct handle", len(b.Attributes))
	}
	lost := releaseOrdinals(b, []int{1})
	if lost["hb"] != 1 || len(lost) != 1 {
		t.Fatalf("release lost %v, want hb:1", lost)
	}
	if !slices.Equal(b.Unallocated, []int{3, 4, 5, 6, 7, 1}) {
		t.Fatalf("unallocated %v: a freed ordinal must go to the back", b.Unallocated)
	}
	// The attribute of hb is gone and hc's index was renumbered.
	if len(b.Attributes) != 2 || handleOf(b.Attributes[*b.Allocations[2]]) != "hc" {
		t.Fatalf("attributes not compacted: %+v, allocations %v", b.Attributes, b.Allocations)
	}
	if err := checkBlock(cidr, b); err != nil {
		t.Fatal(err)
	}
	var order []int
	for {
		o, ok := takeFirstFree(b, "hd", attrs)
		if !ok {
			break
		}
		order = append(order, o)
	}
	if !slices.Equal(order, []int{3, 4, 5, 6, 7, 1}) {
		t.Fatalf("reuse order %v, want FIFO 3..7 then 1", order)
	}
	if len(b.Attributes) != 3 {
		t.Fatalf("identical attributes must share one entry: %d entries", len(b.Attributes))
	}
	if got := ordinalsOfHandle(b, "hd"); len(got) != 6 {
		t.Fatalf("hd holds %v", got)
	}
}

func TestCloneBlockIsDeep(t *testing.T) {
	b := newBlock(netip.MustParsePrefix("10.0.0.0/30"), "n1", time.Unix(0, 1))
	takeFirstFree(b, "h", map[string]string{"node": "n1"})
	c := cloneBlock(b)
	takeFirstFree(c, "h2", map[string]string{"node": "n2"})
	releaseOrdinals(c, []int{0})
	*c.Affinity = "host:other"
	if *b.Affinity != "host:n1" || b.Allocations[0] == nil || len(b.Unallocated) != 3 || len(b.Attributes) != 1 {
		t.Fatalf("changing the clone changed the original: %+v", b)
	}
}

func TestCheckBlockRefusesInconsistentBlocks(t *testing.T) {
	cidr := netip.MustParsePrefix("10.0.0.0/30")
	bad := newBlock(cidr, "n", time.Unix(0, 1))
	bad.Allocations = bad.Allocations[:3]
	if err := checkBlock(cidr, bad); err == nil {
		t.Error("short allocations accepted")
	}
	bad = newBlock(cidr, "n", time.Unix(0, 1))
	takeFirstFree(bad, "h", nil)
	bad.Unallocated = append(bad.Unallocated, 0)
	if err := checkBlock(cidr, bad); err == nil {
		t.Error("ordinal both allocated and free accepted")
	}
	bad = newBlock(cidr, "n", time.Unix(0, 1))
	if err := checkBlock(netip.MustParsePrefix("10.0.0.4/30"), bad); err == nil {
		t.Error("block stored under another CIDR accepted")
	}
}

func TestBlockCandidatesVisitEveryBlockOnce(t *testing.T) {
	pool := netip.MustParsePrefix("10.0.0.0/20")
	for _, host := range []string{"a", "b", "worker-17"} {
		seen := map[netip.Prefix]bool{}
		var first netip.Prefix
		for c := range blockCandidates(pool, 26, host) {
			if !first.IsValid() {
				first = c
			}
			if seen[c] || !pool.Contains(c.Addr()) || c.Bits() != 26 || c.Masked() != c {
				t.Fatalf("%s: bad or repeated candidate %s", host, c)
			}
			seen[c] = true
		}
		if len(seen) != 64 {
			t.Fatalf("%s: %d candidates, want 64", host, len(seen))
		}
		for c := range blockCandidates(pool, 26, host) {
			if c != first {
				t.Fatalf("%s: order is not deterministic: first %s then %s", host, first, c)
			}
			break
		}
	}
	firsts := map[netip.Prefix]bool{}
	for i := range 20 {
		for c := range blockCandidates(pool, 26, "node-"+string(rune('a'+i))) {
			firsts[c] = true
			break
		}
	}
	if len(firsts) < 8 {
		t.Fatalf("20 hosts start at only %d distinct blocks: the order does not spread hosts", len(firsts))
	}
	n := 0
	for range blockCandidates(netip.MustParsePrefix("10.0.0.0/26"), 26, "x") {
		n++
	}
	if n != 1 {
		t.Fatalf("a pool of one block yields %d candidates", n)
	}
}
