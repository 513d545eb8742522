package ipam

import (
	"net/netip"
	"strings"
	"testing"
)

func TestEnsureTunnelAddrIsIdempotentAndFollowsPools(t *testing.T) {
	f := newFixture(t)
	p1, p2 := netip.MustParsePrefix("10.10.0.0/24"), netip.MustParsePrefix("10.20.0.0/24")
	f.pool("p1", p1.String(), map[string]any{"ipipMode": "Always"})
	f.pool("p2", p2.String(), map[string]any{"vxlanMode": "Always"})
	a := f.alloc()

	ip, err := a.EnsureTunnelAddr(f.ctx, "n1", TunnelIPIP, []netip.Prefix{p1})
	if err != nil || !p1.Contains(ip) {
		t.Fatalf("first IPIP tunnel address: %s, %v", ip, err)
	}
	// It claimed the node's first block and is its first address.
	if blk := blockFor(ip, 26); ip != blk.Addr() || f.block(blk.String()).AffinityHost() != "n1" {
		t.Fatalf("tunnel address %s is not the first of a block of n1", ip)
	}
	al, err := a.AllocationOf(f.ctx, ip)
	if err != nil || al.Handle != "ipip-tunnel-addr-n1" || al.Attrs["type"] != "ipipTunnelAddress" || al.Attrs["node"] != "n1" {
		t.Fatalf("allocation %+v, %v: want Calico's handle and attributes", al, err)
	}
	again, err := a.EnsureTunnelAddr(f.ctx, "n1", TunnelIPIP, []netip.Prefix{p1, p2})
	if err != nil || again != ip {
		t.Fatalf("second call gave %s, %v; want the same %s", again, err, ip)
	}

	vx, err := a.EnsureTunnelAddr(f.ctx, "n1", TunnelVXLAN, []netip.Prefix{p2})
	if err != nil || !p2.Contains(vx) {
		t.Fatalf("VXLAN tunnel address %s, %v", vx, err)
	}
	if al, _ := a.AllocationOf(f.ctx, vx); al.Handle != "vxlan-tunnel-addr-n1" || al.Attrs["type"] != "vxlanTunnelAddress" {
		t.Fatalf("VXLAN allocation %+v", al)
	}

	// The pool that needs IPIP changes: the address outside it is released, a new one assigned.
	moved, err := a.EnsureTunnelAddr(f.ctx, "n1", TunnelIPIP, []netip.Prefix{p2})
	if err != nil || !p2.Contains(moved) || moved == vx {
		t.Fatalf("moved IPIP address %s, %v", moved, err)
	}
	if ips, _ := a.IPsByHandle(f.ctx, "ipip-tunnel-addr-n1"); len(ips) != 1 || ips[0] != moved {
		t.Fatalf("handle holds %v after the move, want only %s", ips, moved)
	}

	if err := a.ReleaseTunnelAddr(f.ctx, "n1", TunnelIPIP); err != nil {
		t.Fatal(err)
	}
	if err := a.ReleaseTunnelAddr(f.ctx, "n1", TunnelIPIP); err != nil {
		t.Fatalf("second release: %v", err)
	}
	if ips, _ := a.IPsByHandle(f.ctx, "ipip-tunnel-addr-n1"); len(ips) != 0 {
		t.Fatalf("released tunnel address still held: %v", ips)
	}
	f.mustCheckClean(a)

	for _, tc := range []struct {
		kind  TunnelKind
		pools []netip.Prefix
		want  string
	}{
		{TunnelKind(7), []netip.Prefix{p1}, "neither IPIP nor VXLAN"},
		{TunnelIPIP, nil, "no pools given"},
		{TunnelIPIP, []netip.Prefix{netip.MustParsePrefix("10.30.0.0/24")}, "does not exist"},
	} {
		if _, err := a.EnsureTunnelAddr(f.ctx, "n1", tc.kind, tc.pools); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("EnsureTunnelAddr(%v, %v) = %v, want %q", tc.kind, tc.pools, err, tc.want)
		}
	}
}

func TestTunnelOnlyPoolServesTunnels(t *testing.T) {
	f := newFixture(t)
	tp := netip.MustParsePrefix("10.50.0.0/24")
	f.pool("tunnels", tp.String(), map[string]any{"allowedUses": []string{"Tunnel"}})
	f.pool("workloads", "10.60.0.0/24", map[string]any{"allowedUses": []string{"Workload"}})
	a := f.alloc()
	ip, err := a.EnsureTunnelAddr(f.ctx, "n1", TunnelVXLAN, []netip.Prefix{tp})
	if err != nil || !tp.Contains(ip) {
		t.Fatalf("%s, %v", ip, err)
	}
	if _, err := a.EnsureTunnelAddr(f.ctx, "n1", TunnelIPIP, []netip.Prefix{netip.MustParsePrefix("10.60.0.0/24")}); err == nil {
		t.Fatal("tunnel address from a workload-only pool")
	}
}
