package bgp

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/tabby-net/tabby/datastore"
)

// ipamSnap is a snapshot with pools, blocks and allocations for Advertisements.
type ipamSnap struct{ snap *datastore.Snapshot }

func newIPAMSnap() *ipamSnap { return &ipamSnap{snap: datastore.NewSnapshot()} }

func (s *ipamSnap) pool(name, cidr string, mod func(*datastore.IPPoolSpec)) *ipamSnap {
	p := datastore.NewIPPool(name)
	p.Spec.CIDR = cidr
	if mod != nil {
		mod(&p.Spec)
	}
	s.snap.Pools[name] = p
	return s
}

// block adds a block affine to host (state "" = no affinity record) with the given
// ordinals allocated to the given nodes ("" = node of the block, "tunnel:x" = tunnel
// address of node x).
func (s *ipamSnap) block(cidr, host string, state datastore.AffinityState, allocs map[int]string) *ipamSnap {
	prefix := netip.MustParsePrefix(cidr)
	size := 1 << (32 - prefix.Bits())
	b := &datastore.AllocationBlock{CIDR: cidr, Allocations: make([]*int, size)}
	if host != "" {
		aff := datastore.AffinityHostPrefix + host
		b.Affinity = &aff
		if state != "" {
			s.snap.Affinities[datastore.AffinityKey{Host: host, CIDR: prefix}] = datastore.BlockAffinity{State: state}
		}
	}
	for ordinal, node := range allocs {
		sec := map[string]string{"node": node}
		if len(node) > 7 && node[:7] == "tunnel:" {
			sec = map[string]string{"node": node[7:], "type": "ipipTunnelAddress"}
		}
		idx := len(b.Attributes)
		handle := fmt.Sprintf("h%d", ordinal)
		b.Attributes = append(b.Attributes, datastore.AllocationAttribute{HandleID: &handle, Secondary: sec})
		b.Allocations[ordinal] = &idx
	}
	s.snap.Blocks[prefix] = b
	return s
}

func TestAdvertisements(t *testing.T) {
	confirmed := datastore.AffinityConfirmed
	pending := datastore.AffinityPending
	tests := []struct {
		name string
		snap *datastore.Snapshot
		want string
	}{{
		name: "own confirmed blocks whole, never own workload /32s",
		snap: newIPAMSnap().pool("p", "10.244.0.0/16", nil).
			block("10.244.1.0/26", "a", confirmed, map[int]string{1: "a", 2: "a", 3: "tunnel:a"}).
			block("10.244.1.64/26", "a", confirmed, nil).
			block("10.244.2.0/26", "b", confirmed, map[int]string{1: "b"}).snap,
		want: "[10.244.1.0/26 10.244.1.64/26]",
	}, {
		name: "pending affinity counts as absent",
		snap: newIPAMSnap().pool("p", "10.244.0.0/16", nil).
			block("10.244.1.0/26", "a", pending, nil).snap,
		want: "[]",
	}, {
		name: "borrowed addresses from another node's block as /32s, tunnel addresses never",
		snap: newIPAMSnap().pool("p", "10.244.0.0/16", nil).
			block("10.244.2.0/26", "b", confirmed, map[int]string{1: "b", 5: "a", 9: "a", 10: "tunnel:a"}).snap,
		want: "[10.244.2.5/32 10.244.2.9/32]",
	}, {
		name: "addresses used from a block no node owns are borrowed too",
		snap: newIPAMSnap().pool("p", "10.244.0.0/16", nil).
			block("10.244.3.0/26", "", "", map[int]string{7: "a"}).snap,
		want: "[10.244.3.7/32]",
	}, {
		name: "disabled pools and disableBGPExport are not exported",
		snap: newIPAMSnap().
			pool("off", "10.1.0.0/16", func(s *datastore.IPPoolSpec) { s.Disabled = true }).
			pool("noexport", "10.2.0.0/16", func(s *datastore.IPPoolSpec) { s.DisableBGPExport = true }).
			pool("on", "10.3.0.0/16", nil).
			block("10.1.0.0/26", "a", confirmed, nil).
			block("10.2.0.0/26", "a", confirmed, nil).
			block("10.2.1.0/26", "b", confirmed, map[int]string{4: "a"}).
			block("10.3.0.0/26", "a", confirmed, nil).snap,
		want: "[10.3.0.0/26]",
	}, {
		name: "blocks outside every pool are not exported",
		snap: newIPAMSnap().pool("p", "10.244.0.0/16", nil).
			block("10.9.0.0/26", "a", confirmed, nil).snap,
		want: "[]",
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := fmt.Sprint(Advertisements(tt.snap, "a"))
			if got != tt.want {
				t.Errorf("Advertisements = %s, want %s", got, tt.want)
			}
		})
	}
}

func TestAdvertisementsDeletedBlock(t *testing.T) {
	s := newIPAMSnap().pool("p", "10.244.0.0/16", nil).
		block("10.244.1.0/26", "a", datastore.AffinityConfirmed, nil)
	s.snap.Blocks[netip.MustParsePrefix("10.244.1.0/26")].Deleted = true
	if got := Advertisements(s.snap, "a"); len(got) != 0 {
		t.Errorf("a deleted block is advertised: %v", got)
	}
}
