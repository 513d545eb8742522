package diagnose

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/tabby-net/tabby/internal/namedns"
	"github.com/tabby-net/tabby/lab"
)

// TestKernelProberOnTheLabFabric runs the real probes from worker-1 of the articles'
// topology, with and without the fabric faults they must detect.
func TestKernelProberOnTheLabFabric(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to build the lab's network namespaces")
	}
	b := make([]byte, 3)
	rand.Read(b)
	topo := lab.Articles("tabby-diag-" + hex.EncodeToString(b))
	t.Cleanup(func() {
		if err := topo.Destroy(); err != nil {
			t.Errorf("destroy lab: %v", err)
		}
	})
	if err := topo.Build(); err != nil {
		t.Fatal(err)
	}
	w1, w2 := topo.HostNS("worker-1"), topo.HostNS("worker-2")
	// worker-2 routes worker-1's block back to worker-1, as Direct mode does.
	if out, err := namedns.Command(w2, "ip", "route", "add", "192.168.226.64/26", "via", "10.30.0.206").CombinedOutput(); err != nil {
		t.Fatalf("route on worker-2: %v: %s", err, out)
	}
	src := netip.MustParseAddr("192.168.226.64")
	w2addr := netip.MustParseAddr("10.30.0.56")
	p := KernelProber{Timeout: 1500 * time.Millisecond}
	ctx := context.Background()
	inW1 := func(fn func() error) error { return namedns.Do(w1, fn) }

	// worker-1 masquerades pool traffic leaving the pools, as tabby's NAT outgoing does:
	// the probe must not be rewritten by it, or it would test nothing.
	if out, err := namedns.Command(w1, "iptables", "-t", "nat", "-A", "POSTROUTING", "-s", "192.168.0.0/16", "!", "-d", "192.168.0.0/16", "-j", "MASQUERADE").CombinedOutput(); err != nil {
		t.Fatalf("MASQUERADE rule on worker-1: %v: %s", err, out)
	}
	if err := inW1(func() error { return p.SpoofedEcho(ctx, lab.NIC, src, w2addr) }); err != nil {
		t.Fatalf("pool-address echo on a clean fabric, with NAT outgoing on: %v", err)
	}
	if err := inW1(func() error { return p.TCP(ctx, netip.AddrPortFrom(w2addr, 179)) }); err == nil {
		t.Error("TCP 179 to a host where nothing listens succeeded")
	}
	if err := inW1(func() error { return p.Ping(ctx, w2addr, 1472, true) }); err != nil {
		t.Errorf("full-size ping on a clean fabric: %v", err)
	}

	if err := topo.SetFault(lab.FaultSrcDstCheck, true); err != nil {
		t.Fatal(err)
	}
	if err := inW1(func() error { return p.SpoofedEcho(ctx, lab.NIC, src, w2addr) }); err == nil {
		t.Error("pool-address echo crossed a fabric with the source/destination check on")
	}
	if err := inW1(func() error { return p.Ping(ctx, w2addr, 56, false) }); err != nil {
		t.Errorf("host ping under the source/destination check: %v", err)
	}
	if err := topo.SetFault(lab.FaultSrcDstCheck, false); err != nil {
		t.Fatal(err)
	}
	if err := topo.SetFault(lab.FaultMTU, true); err != nil {
		t.Fatal(err)
	}
	if err := inW1(func() error { return p.Ping(ctx, w2addr, 1472, true) }); err == nil {
		t.Error("a full-size DF ping crossed a 1400-byte fabric")
	}
}
