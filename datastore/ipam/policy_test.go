package ipam

import (
	"errors"
	"net/netip"
	"testing"

	"github.com/tabby-net/tabby/datastore"
)

// As Calico's IPAM: a Manual pool is used only when a request names it; a LoadBalancer pool
// is never used for workloads or tunnels.
func TestManualAndLoadBalancerPoolsAreNotPickedAutomatically(t *testing.T) {
	f := newFixture(t)
	f.pool("manual", "10.10.0.0/24", map[string]any{"assignmentMode": "Manual"})
	f.pool("lb", "10.20.0.0/24", map[string]any{"allowedUses": []string{"LoadBalancer"}})
	a := f.alloc()
	_, err := a.AssignOne(f.ctx, AssignArgs{Handle: "w", Node: "n", Use: datastore.UseWorkload})
	if !errors.Is(err, ErrNoUsablePool) {
		t.Fatalf("only a Manual and a LoadBalancer pool: %v, want ErrNoUsablePool", err)
	}
	if _, err := a.AssignOne(f.ctx, AssignArgs{Handle: "t", Node: "n", Use: datastore.UseTunnel}); !errors.Is(err, ErrNoUsablePool) {
		t.Fatalf("tunnel address: %v, want ErrNoUsablePool", err)
	}
	manual := netip.MustParsePrefix("10.10.0.0/24")
	ip, err := a.AssignOne(f.ctx, AssignArgs{Handle: "w", Node: "n", Use: datastore.UseWorkload, Pools: []netip.Prefix{manual}})
	if err != nil || !manual.Contains(ip) {
		t.Fatalf("asked for the Manual pool by CIDR: %s, %v", ip, err)
	}
	lb := netip.MustParsePrefix("10.20.0.0/24")
	if _, err := a.AssignOne(f.ctx, AssignArgs{Handle: "w2", Node: "n", Use: datastore.UseWorkload, Pools: []netip.Prefix{lb}}); !errors.Is(err, ErrNoUsablePool) {
		t.Fatalf("asked for the LoadBalancer pool for a workload: %v, want ErrNoUsablePool", err)
	}
	f.pool("auto", "10.30.0.0/24", nil)
	ip, err = a.AssignOne(f.ctx, AssignArgs{Handle: "w3", Node: "n", Use: datastore.UseWorkload})
	if err != nil || !netip.MustParsePrefix("10.30.0.0/24").Contains(ip) {
		t.Fatalf("with an Automatic pool too: %s, %v; want an address of 10.30.0.0/24", ip, err)
	}
	f.mustCheckClean(a)
}

// Reserved addresses and ranges are never handed out; they stay free in their block.
func TestReservedAddressesAreNeverAssigned(t *testing.T) {
	f := newFixture(t)
	f.pool("p", "10.40.0.0/28", map[string]any{"blockSize": 28})
	f.put(f.c.Keys.Resource(datastore.KindIPReservation, "r"), map[string]any{
		"kind": "IPReservation", "apiVersion": datastore.APIVersion, "metadata": map[string]any{"name": "r"},
		"spec": map[string]any{"reservedCIDRs": []string{"10.40.0.0/30", "10.40.0.7", "fd00::/64"}},
	})
	reserved := []netip.Prefix{netip.MustParsePrefix("10.40.0.0/30"), netip.MustParsePrefix("10.40.0.7/32")}
	a := f.alloc()
	got := map[netip.Addr]bool{}
	for i := range 11 {
		ip := f.assign(a, "h"+string(rune('a'+i)), "n")
		for _, r := range reserved {
			if r.Contains(ip) {
				t.Fatalf("assigned the reserved address %s", ip)
			}
		}
		got[ip] = true
	}
	if len(got) != 11 {
		t.Fatalf("%d distinct addresses, want 11", len(got))
	}
	_, err := a.AssignOne(f.ctx, AssignArgs{Handle: "h-extra", Node: "n", Use: datastore.UseWorkload})
	if !errors.Is(err, ErrPoolExhausted) {
		t.Fatalf("12th address of a /28 with 5 reserved: %v, want ErrPoolExhausted", err)
	}
	if b := f.block("10.40.0.0/28"); len(b.Unallocated) != 5 {
		t.Fatalf("block keeps %d free ordinals, want the 5 reserved ones", len(b.Unallocated))
	}
	f.mustCheckClean(a)
}

// maxBlocksPerHost absent or 0 means no limit: a node claims a 21st block (the old,
// wrong limit was 20).
func TestNoBlockLimitByDefault(t *testing.T) {
	f := newFixture(t)
	f.pool("p", "10.50.0.0/24", map[string]any{"blockSize": 32})
	a := f.alloc()
	for i := range 21 {
		if _, err := a.ClaimBlock(f.ctx, "n", datastore.UseWorkload, nil); err != nil {
			t.Fatalf("claim block %d with no config stored: %v", i+1, err)
		}
	}
	f.config(false, 0)
	if _, err := a.ClaimBlock(f.ctx, "n", datastore.UseWorkload, nil); err != nil {
		t.Fatalf("claim block 22 with maxBlocksPerHost 0: %v", err)
	}
	f.config(true, 22)
	if _, err := a.ClaimBlock(f.ctx, "n", datastore.UseWorkload, nil); !errors.Is(err, ErrBlockLimit) {
		t.Fatalf("claim block 23 with maxBlocksPerHost 22: %v, want ErrBlockLimit", err)
	}
}
