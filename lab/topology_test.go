package lab

import (
	"crypto/rand"
	"encoding/hex"
	"os"
	"strings"
	"testing"

	"github.com/tabby-net/tabby/internal/namedns"
)

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to create network namespaces")
	}
}

// testTopology builds the articles' topology under a unique prefix and removes it when
// the test ends, whatever the outcome.
func testTopology(t *testing.T) *Topology {
	t.Helper()
	requireRoot(t)
	b := make([]byte, 3)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	topo := Articles("tabby-lab-" + hex.EncodeToString(b))
	t.Cleanup(func() {
		if err := topo.Destroy(); err != nil {
			t.Errorf("destroy: %v", err)
		}
		if left, _ := namedns.List(topo.Prefix + "-"); len(left) > 0 {
			t.Errorf("namespaces left behind: %v", left)
		}
	})
	if err := topo.Build(); err != nil {
		t.Fatalf("build: %v", err)
	}
	return topo
}

func ping(t *testing.T, ns, dst string, extra ...string) bool {
	t.Helper()
	args := append([]string{"-c", "1", "-W", "1"}, extra...)
	args = append(args, dst)
	return namedns.Command(ns, "ping", args...).Run() == nil
}

func TestArticlesTopologyConnectivity(t *testing.T) {
	topo := testTopology(t)
	w1 := topo.HostNS("worker-1")
	for _, dst := range []string{"10.30.0.56", "10.30.0.136", "10.30.1.66", "10.30.0.1", "198.51.100.10"} {
		if !ping(t, w1, dst) {
			t.Errorf("worker-1 cannot reach %s", dst)
		}
	}
	// The router has no route for workload addresses: it forwards only what it knows.
	out, err := namedns.Command(topo.RouterNS(), "ip", "route", "get", "192.168.1.1").CombinedOutput()
	if err == nil {
		t.Errorf("router has a route for a workload address: %s", out)
	}
	if err := topo.Build(); err == nil || !strings.Contains(err.Error(), "exists already") {
		t.Errorf("second build over a live lab: got %v, want an 'exists already' error", err)
	}
}

func TestFaultsAreInjectedAndRemoved(t *testing.T) {
	topo := testTopology(t)
	w1 := topo.HostNS("worker-1")

	if err := topo.SetFault(FaultMTU, true); err != nil {
		t.Fatal(err)
	}
	if ping(t, w1, "10.30.0.56", "-M", "do", "-s", "1472") {
		t.Error("a 1500-byte packet crossed a fabric with MTU 1400")
	}
	if !ping(t, w1, "10.30.0.56", "-M", "do", "-s", "1372") {
		t.Error("a 1400-byte packet did not cross a fabric with MTU 1400")
	}
	if err := topo.SetFault(FaultSrcDstCheck, true); err != nil {
		t.Fatal(err)
	}
	active, err := topo.ActiveFaults()
	if err != nil {
		t.Fatal(err)
	}
	if got := faultNames(active); got != "mtu,srcdst-check" {
		t.Errorf("active faults = %s, want mtu,srcdst-check", got)
	}
	// Host to host still works under the source/destination check.
	if !ping(t, w1, "10.30.1.66") {
		t.Error("host-to-host traffic dropped by the source/destination check")
	}
	if err := topo.SetFault(FaultMTU, false); err != nil {
		t.Fatal(err)
	}
	if err := topo.SetFault(FaultSrcDstCheck, false); err != nil {
		t.Fatal(err)
	}
	if active, _ := topo.ActiveFaults(); len(active) != 0 {
		t.Errorf("faults still on after turning them off: %v", active)
	}
	if !ping(t, w1, "10.30.0.56", "-M", "do", "-s", "1472") {
		t.Error("a 1500-byte packet does not cross after the MTU fault is off")
	}
	if _, err := ParseFault("nope"); err == nil || !strings.Contains(err.Error(), "bgp-port") {
		t.Errorf("ParseFault(nope) = %v, want an error listing the faults", err)
	}
}

func faultNames(fs []Fault) string {
	var s []string
	for _, f := range fs {
		s = append(s, string(f))
	}
	return strings.Join(s, ",")
}
