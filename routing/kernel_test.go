package routing

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tabby-net/tabby/datastore"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden from the fake kernel's state")

func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// runKernel starts a reconciler over fk and stops it when the test ends.
func runKernel(t testing.TB, fk *fakeKernel, opts KernelOptions) *Kernel {
	t.Helper()
	if opts.Logger == nil {
		opts.Logger = quietLogger()
	}
	if opts.RepairInterval == 0 {
		opts.RepairInterval = time.Millisecond
	}
	k := newKernel(fk, fk, opts)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- k.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return k
}

// waitFor polls cond until it holds; the timeout is generous because the machine is shared
// and slow: it bounds a hang, it does not measure anything.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// settle waits until the reconciler has applied everything it was given and has stopped
// making passes (no repair or retry pending).
func settle(t testing.TB, k *Kernel) {
	t.Helper()
	waitFor(t, "the first sync", func() bool {
		select {
		case <-k.Synced():
			return true
		default:
			return false
		}
	})
	stable := 0
	waitFor(t, "the reconciler to go idle", func() bool {
		if k.idle.Load() && k.Status().Failures == 0 {
			stable++
		} else {
			stable = 0
		}
		return stable >= 5
	})
}

// converge waits until the fake kernel renders as want.
func converge(t testing.TB, fk *fakeKernel, want string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		got := fk.String()
		if got == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the kernel did not converge:\n got:\n%s\nwant:\n%s", got, want)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// fakeLocal is worker-1 as the daemon would describe it from the fake namespace.
func fakeLocal(t testing.TB, fk *fakeKernel) Local {
	t.Helper()
	underlay, err := readUnderlay(fk, DefaultProtocol)
	if err != nil {
		t.Fatal(err)
	}
	mtu, nic, err := hostMTU(fk, netip.MustParseAddr("10.30.0.206"))
	if err != nil {
		t.Fatal(err)
	}
	return Local{NodeName: "worker-1", NIC: nic, HostMTU: mtu, Underlay: underlay}
}

// poolMode is one way a pool carries traffic between hosts: its ipipMode and vxlanMode.
type poolMode struct {
	name        string
	ipip, vxlan datastore.EncapMode
}

// scaleModes are the modes whose routes differ in kind at scale: through vxlan.tabby,
// IP-in-IP across subnets (every node of bigCluster shares one subnet: direct routes
// from the CrossSubnet code path), and direct.
var scaleModes = []poolMode{
	{"vxlan", datastore.EncapNever, datastore.EncapAlways},
	{"ipip-crosssubnet", datastore.EncapCrossSubnet, datastore.EncapNever},
	{"direct", datastore.EncapNever, datastore.EncapNever},
}

var articleModes = []poolMode{
	{"ipip", datastore.EncapAlways, datastore.EncapNever},
	{"crosssubnet", datastore.EncapCrossSubnet, datastore.EncapNever},
	{"direct", datastore.EncapNever, datastore.EncapNever},
	{"vxlan", datastore.EncapNever, datastore.EncapAlways},
	{"vxlan-crosssubnet", datastore.EncapNever, datastore.EncapCrossSubnet},
}

func checkGolden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name+".golden")
	if *update {
		if err := os.MkdirAll("testdata", 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run with -update to create it)", err)
	}
	if got != string(want) {
		t.Errorf("kernel state differs from %s:\n got:\n%s\nwant:\n%s", path, got, want)
	}
}

// TestKernelGolden applies the articles' topology, seen from worker-1, in every mode to a
// fake kernel that has the ipip module, and compares the whole namespace with a golden file.
func TestKernelGolden(t *testing.T) {
	for _, m := range articleModes {
		t.Run(m.name, func(t *testing.T) {
			fk := newFakeKernel().withIPIPFallback()
			k := runKernel(t, fk, KernelOptions{})
			k.Set(Desired(article(m.ipip, m.vxlan).s, fakeLocal(t, fk), nil))
			settle(t, k)
			checkGolden(t, m.name, fk.String())
			st := k.Status()
			if !st.Synced || st.Failures != 0 || len(st.Problems) != 0 || st.Adopted != 0 {
				t.Errorf("status after sync: %+v", st)
			}
		})
	}
}

// TestKernelStatusSyncedWhenSyncedCloses: whoever wakes on Synced() reads a Status that
// says Synced (the daemon's readiness reads it at that moment). Repeated, because the
// order of two goroutines is what is checked.
func TestKernelStatusSyncedWhenSyncedCloses(t *testing.T) {
	for i := range 20 {
		fk := newFakeKernel()
		k := runKernel(t, fk, KernelOptions{})
		k.Set(Desired(article(datastore.EncapNever, datastore.EncapNever).s, fakeLocal(t, fk), nil))
		select {
		case <-k.Synced():
		case <-time.After(20 * time.Second):
			t.Fatal("no first sync")
		}
		if st := k.Status(); !st.Synced {
			t.Fatalf("run %d: Synced() is closed but Status().Synced is false: %+v", i, st)
		}
	}
}

// TestKernelNoIPIP: on a kernel without the ipip module the problem is reported in exactly
// the words readiness uses, and the rest of the state is programmed.
func TestKernelNoIPIP(t *testing.T) {
	fk := newFakeKernel()
	fk.noIPIP = true
	k := runKernel(t, fk, KernelOptions{})
	snap := article(datastore.EncapCrossSubnet, datastore.EncapNever)
	k.Set(Desired(snap.s, fakeLocal(t, fk), nil))
	settle(t, k)
	checkGolden(t, "noipip", fk.String())
	st := k.Status()
	want := []string{"kernel has no ipip support", "kernel has no ipip support: 1 route via tunl0 not installed"}
	if !slices.Equal(st.Problems, want) {
		t.Errorf("problems = %q, want %q", st.Problems, want)
	}
	if st.Tunl0 != DeviceUnsupported || !st.Synced {
		t.Errorf("status = %+v, want tunl0 unsupported and synced", st)
	}
}

// states are the desired states the transition tests move between.
func transitionStates(t testing.TB, fk *fakeKernel) map[string]State {
	local := fakeLocal(t, fk)
	states := map[string]State{}
	for _, m := range articleModes {
		states[m.name] = Desired(article(m.ipip, m.vxlan).s, local, nil)
	}
	grown := article(datastore.EncapNever, datastore.EncapAlways).
		node("worker-4", "10.30.0.77/24", "192.168.5.0", "66:00:00:00:00:05").
		block("192.168.5.0/26", "worker-4", datastore.AffinityConfirmed, nil).
		block("192.168.226.128/26", "worker-1", datastore.AffinityConfirmed, map[int]string{3: "worker-3"})
	states["vxlan-grown"] = Desired(grown.s, local, []LearnedRoute{{Prefix: netip.MustParsePrefix("10.99.0.0/16"), NextHop: netip.MustParseAddr("10.30.0.1")}})
	states["empty"] = Desired(newSnap().node("worker-1", "10.30.0.206/24", "", "").s, local, nil)
	return states
}

// reference renders the namespace a fresh reconciler reaches for one state.
func reference(t *testing.T, s State) string {
	fk := newFakeKernel().withIPIPFallback()
	k := runKernel(t, fk, KernelOptions{})
	k.Set(s)
	settle(t, k)
	return fk.String()
}

// TestKernelRandomTransitions applies random sequences of desired states, with random
// interference (routes deleted by hand, vxlan.tabby deleted or set down, neighbours
// flushed, stray routes with tabby's protocol), and checks that every run converges to the
// text a fresh reconciler reaches for the final state.
func TestKernelRandomTransitions(t *testing.T) {
	names := []string{"ipip", "crosssubnet", "direct", "vxlan", "vxlan-crosssubnet", "vxlan-grown", "empty"}
	refs := map[string]string{}
	for _, n := range names {
		refs[n] = reference(t, transitionStates(t, newFakeKernel())[n])
	}
	runs := 24
	if testing.Short() {
		runs = 6
	}
	for run := range runs {
		seed := uint64(run + 1)
		t.Run(fmt.Sprintf("seed=%d", seed), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(seed, 0x7abb7))
			fk := newFakeKernel().withIPIPFallback()
			fk.subBuffer = 8 + rng.IntN(64) // small: overflows happen and must be survived
			states := transitionStates(t, fk)
			k := runKernel(t, fk, KernelOptions{RefreshInterval: 200 * time.Millisecond})
			var final string
			for range 4 + rng.IntN(8) {
				final = names[rng.IntN(len(names))]
				k.Set(states[final])
				for range rng.IntN(3) {
					interfere(rng, fk)
				}
				time.Sleep(time.Duration(rng.IntN(4000)) * time.Microsecond)
			}
			converge(t, fk, refs[final])
			settle(t, k)
			if got := fk.String(); got != refs[final] {
				t.Fatalf("state drifted after converging to %s:\n%s", final, got)
			}
		})
	}
}

// interfere does one random thing someone else might do to the namespace.
func interfere(rng *rand.Rand, fk *fakeKernel) {
	switch rng.IntN(6) {
	case 0, 1:
		fk.mu.Lock()
		var ours []string
		for key, r := range fk.routes {
			if int(r.Protocol) == DefaultProtocol {
				ours = append(ours, key.prefix().String())
			}
		}
		fk.mu.Unlock()
		if len(ours) > 0 {
			slices.Sort(ours)
			fk.externalRouteDel(ours[rng.IntN(len(ours))])
		}
	case 2:
		fk.externalLinkDel(DeviceVXLAN)
	case 3:
		fk.externalLinkDown(DeviceVXLAN)
	case 4:
		fk.externalNeighFlush(DeviceVXLAN)
	case 5:
		_ = fk.externalRouteAdd(netlink.Route{Dst: mustIPNet(fmt.Sprintf("10.77.%d.0/24", rng.IntN(4))), Gw: net.ParseIP("10.30.0.1").To4(), Protocol: DefaultProtocol})
	}
}

// TestKernelRestoresDeletedRoute: a route of tabby's deleted by someone else is restored
// from the route notification alone (the periodic resync is an hour away).
func TestKernelRestoresDeletedRoute(t *testing.T) {
	fk := newFakeKernel().withIPIPFallback()
	k := runKernel(t, fk, KernelOptions{RefreshInterval: time.Hour})
	k.Set(Desired(article(datastore.EncapNever, datastore.EncapAlways).s, fakeLocal(t, fk), nil))
	settle(t, k)
	want := fk.String()
	if !fk.externalRouteDel("192.168.97.192/26") {
		t.Fatal("the route to worker-3's block is not installed")
	}
	converge(t, fk, want)

	// A deleted vxlan.tabby takes its routes, neighbours and FDB entries with it, silently.
	fk.externalLinkDel(DeviceVXLAN)
	converge(t, fk, want)
}

// TestKernelAdoptsPreviousRun: a restarted reconciler finds its routes in the kernel,
// rewrites none of them and sweeps only the one no longer wanted, after the first sync.
func TestKernelAdoptsPreviousRun(t *testing.T) {
	fk := newFakeKernel()
	state := Desired(article(datastore.EncapNever, datastore.EncapNever).s, fakeLocal(t, fk), nil)
	func() {
		k := newKernel(fk, fk, KernelOptions{Logger: quietLogger(), RepairInterval: time.Millisecond})
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- k.Run(ctx) }()
		k.Set(state)
		settle(t, k)
		cancel()
		<-done
	}()
	stale := netlink.Route{Dst: mustIPNet("192.168.50.0/26"), Gw: net.ParseIP("10.30.0.99").To4(), LinkIndex: 2, Protocol: DefaultProtocol}
	if err := fk.externalRouteAdd(stale); err != nil {
		t.Fatal(err)
	}
	before := len(fk.opLog())
	k := runKernel(t, fk, KernelOptions{})
	k.Set(state)
	settle(t, k)
	if got, want := fk.opLog()[before:], []string{"RouteDel 192.168.50.0/26"}; !slices.Equal(got, want) {
		t.Errorf("the restarted reconciler made requests %q, want only %q", got, want)
	}
	if st := k.Status(); st.Adopted != 0 || st.Routes[KindDirect] != 3 || st.Routes[KindBlackhole] != 1 {
		t.Errorf("status after adoption: %+v", st)
	}
}

// TestKernelLeavesOtherProtocolsAlone: a route of another protocol on a prefix tabby wants
// is left in place and reported; when it goes, tabby's goes in. Routes of other protocols
// inside the pool (workload routes) are never touched.
func TestKernelLeavesOtherProtocolsAlone(t *testing.T) {
	fk := newFakeKernel()
	foreign := netlink.Route{Dst: mustIPNet("192.168.133.192/26"), Gw: net.ParseIP("10.30.0.5").To4(), Protocol: unix.RTPROT_STATIC}
	workload := netlink.Route{Dst: mustIPNet("192.168.226.70/32"), LinkIndex: 2, Scope: netlink.SCOPE_LINK, Protocol: unix.RTPROT_BOOT}
	for _, r := range []netlink.Route{foreign, workload} {
		if err := fk.externalRouteAdd(r); err != nil {
			t.Fatal(err)
		}
	}
	k := runKernel(t, fk, KernelOptions{RefreshInterval: 50 * time.Millisecond})
	state := Desired(article(datastore.EncapNever, datastore.EncapNever).s, fakeLocal(t, fk), nil)
	k.Set(state)
	settle(t, k)
	// Let a few full resyncs go by: none may touch the foreign routes.
	before := k.Status().FullSyncs
	waitFor(t, "three full resyncs", func() bool { return k.Status().FullSyncs >= before+3 })
	text := fk.String()
	for _, line := range []string{
		"192.168.133.192/26 via 10.30.0.5 dev eth0 proto static",
		"192.168.226.70/32 dev eth0 proto boot scope link",
	} {
		if !strings.Contains(text, line+"\n") {
			t.Errorf("missing %q in\n%s", line, text)
		}
	}
	wantProblem := "route 192.168.133.192/26 left alone: the kernel holds it with protocol 4"
	if st := k.Status(); !slices.Contains(st.Problems, wantProblem) {
		t.Errorf("problems = %q, want %q", st.Problems, wantProblem)
	}
	fk.externalRouteDel("192.168.133.192/26")
	waitFor(t, "tabby's route to replace the foreign one", func() bool {
		return regexp.MustCompile(`\n192\.168\.133\.192/26 nhid \d+ via 10\.30\.0\.56 dev eth0 proto tabby\n`).MatchString(fk.String())
	})
	if !strings.Contains(fk.String(), "192.168.226.70/32 dev eth0 proto boot scope link\n") {
		t.Error("the workload route was touched")
	}
}

// TestKernelPartialFailure: failed requests leave the record at the state really reached
// (status counts what the kernel has), are retried with backoff, and converge.
func TestKernelPartialFailure(t *testing.T) {
	fk := newFakeKernel().withIPIPFallback()
	failures := 3
	fk.fail = func(op string, arg any) error {
		if op == "RouteAdd" && fmt.Sprint(arg) == "192.168.97.192/26" && failures > 0 {
			failures--
			return unix.ENOBUFS
		}
		return nil
	}
	k := runKernel(t, fk, KernelOptions{})
	k.Set(Desired(article(datastore.EncapAlways, datastore.EncapNever).s, fakeLocal(t, fk), nil))
	waitFor(t, "a failed pass", func() bool { return k.Status().Failures > 0 })
	st := k.Status()
	if st.Synced {
		t.Error("synced while a route is missing")
	}
	if !strings.Contains(st.LastError, "192.168.97.192/26") {
		t.Errorf("last error %q does not name the route", st.LastError)
	}
	settle(t, k)
	checkGolden(t, "ipip", fk.String())

	// A route that keeps failing: the record (and status) count exactly what is installed.
	fk.fail = func(op string, arg any) error {
		if op == "RouteAdd" && fmt.Sprint(arg) == "192.168.5.0/26" {
			return unix.ENOBUFS
		}
		return nil
	}
	grown := article(datastore.EncapAlways, datastore.EncapNever).
		node("worker-4", "10.30.0.77/24", "192.168.5.0", "").
		block("192.168.5.0/26", "worker-4", datastore.AffinityConfirmed, nil).
		node("worker-5", "10.30.0.78/24", "192.168.6.0", "").
		block("192.168.6.0/26", "worker-5", datastore.AffinityConfirmed, nil)
	k.Set(Desired(grown.s, fakeLocal(t, fk), nil))
	waitFor(t, "worker-5's route", func() bool { return strings.Contains(fk.String(), "\n192.168.6.0/26 nhid") })
	waitFor(t, "a failed pass", func() bool { return k.Status().Failures > 0 })
	st = k.Status()
	if got := st.Routes[KindIPIP] + st.Routes[KindBlackhole]; got != countProto(fk) || got != 5 {
		t.Errorf("status counts %d routes, the kernel has %d of tabby's, want 5", got, countProto(fk))
	}
}

func countProto(fk *fakeKernel) int {
	fk.mu.Lock()
	defer fk.mu.Unlock()
	n := 0
	for _, r := range fk.routes {
		if int(r.Protocol) == DefaultProtocol {
			n++
		}
	}
	return n
}

// TestKernelHold: a held desired state (the local node vanished from the datastore) tears
// nothing down and is reported.
func TestKernelHold(t *testing.T) {
	fk := newFakeKernel()
	k := runKernel(t, fk, KernelOptions{})
	local := fakeLocal(t, fk)
	k.Set(Desired(article(datastore.EncapNever, datastore.EncapNever).s, local, nil))
	settle(t, k)
	before := fk.String()
	snap := article(datastore.EncapNever, datastore.EncapNever)
	delete(snap.s.Nodes, "worker-1")
	held := Desired(snap.s, local, nil)
	if held.Hold == "" {
		t.Fatal("Desired without the local node did not hold")
	}
	k.Set(held)
	waitFor(t, "the hold to be reported", func() bool {
		return slices.Contains(k.Status().Problems, `desired state held: local node "worker-1" is not in the datastore`)
	})
	settle(t, k)
	if got := fk.String(); got != before {
		t.Errorf("a held state changed the kernel:\n%s\nwas:\n%s", got, before)
	}
}

// TestKernelReleasesDevices: when no pool needs a tunnel any more, vxlan.tabby is deleted
// and the undeletable fallback tunl0 loses its tunnel address and goes down.
func TestKernelReleasesDevices(t *testing.T) {
	fk := newFakeKernel().withIPIPFallback()
	k := runKernel(t, fk, KernelOptions{})
	states := transitionStates(t, fk)
	k.Set(states["ipip"])
	settle(t, k)
	k.Set(states["vxlan"])
	settle(t, k)
	if !strings.Contains(fk.String(), "link tunl0 ipip mtu 1480 down\n") {
		t.Errorf("tunl0 was not released:\n%s\n%q\n%+v", fk.String(), fk.opLog(), k.Status())
	}
	k.Set(states["direct"])
	settle(t, k)
	checkGolden(t, "released", fk.String())
}

// TestKernelJoinCost: one node joining a cluster of 5,000 costs one netlink request per
// kernel object it adds: 3 in VXLAN mode (neighbour, FDB entry, route), 1 in Direct mode.
func TestKernelJoinCost(t *testing.T) {
	for _, tc := range []struct {
		name  string
		vxlan datastore.EncapMode
		ops   uint64
	}{
		{"vxlan", datastore.EncapAlways, 3},
		{"direct", datastore.EncapNever, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fk := newFakeKernel()
			fk.subBuffer = 1 << 16
			k := runKernel(t, fk, KernelOptions{RefreshInterval: time.Hour})
			local := fakeLocal(t, fk)
			k.Set(Desired(bigCluster(5000, tc.vxlan).s, local, nil))
			settle(t, k)
			before := k.Status().Ops
			k.Set(Desired(bigCluster(5001, tc.vxlan).s, local, nil))
			waitFor(t, "the new node's route", func() bool { return k.Status().Wanted == 5001 })
			settle(t, k)
			delta := k.Status().Ops.Total() - before.Total()
			if delta != tc.ops {
				t.Errorf("one node joining cost %d netlink requests, want %d (ops log tail %q)", delta, tc.ops, tail(fk.opLog(), 5))
			}
		})
	}
}

func tail(s []string, n int) []string { return s[max(0, len(s)-n):] }

// bigCluster is worker-1 plus n-1 remote nodes in 10.30.0.0/16, each owning one /26 of
// 10.128.0.0/9.
// bigClusterIn is bigCluster with its pool in mode m.
func bigClusterIn(n int, m poolMode) *snapBuilder {
	b := bigCluster(n, m.vxlan)
	b.s.Pools["big"].Spec.IPIPMode = m.ipip
	return b
}

func bigCluster(n int, vxlan datastore.EncapMode) *snapBuilder {
	b := newSnap().pool("big", "10.128.0.0/9", datastore.EncapNever, vxlan)
	for i := range n {
		name := fmt.Sprintf("node-%d", i)
		if i == 0 {
			name = "worker-1"
		}
		addr := fmt.Sprintf("10.30.%d.%d/16", (i+1000)/250, (i+1000)%250+1)
		if i == 0 {
			addr = "10.30.0.206/16"
		}
		base := netip.AddrFrom4([4]byte{10, 128, 0, 0})
		blk := netip.PrefixFrom(addAddr(base, i*64), 26)
		mac := fmt.Sprintf("66:00:00:%02x:%02x:%02x", i>>16&0xff, i>>8&0xff, i&0xff)
		b.node(name, addr, blk.Addr().String(), mac)
		b.block(blk.String(), name, datastore.AffinityConfirmed, nil)
	}
	return b
}

func addAddr(a netip.Addr, n int) netip.Addr {
	v := a.As4()
	x := uint32(v[0])<<24 | uint32(v[1])<<16 | uint32(v[2])<<8 | uint32(v[3])
	x += uint32(n)
	return netip.AddrFrom4([4]byte{byte(x >> 24), byte(x >> 16), byte(x >> 8), byte(x)})
}

// TestCleanup removes every route of tabby's, vxlan.tabby, and strips the fallback tunl0;
// other protocols' routes stay.
func TestCleanup(t *testing.T) {
	fk := newFakeKernel().withIPIPFallback()
	k := newKernel(fk, fk, KernelOptions{Logger: quietLogger(), RepairInterval: time.Millisecond})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- k.Run(ctx) }()
	states := transitionStates(t, fk)
	// Both devices at once: a pool of each kind.
	two := states["ipip"]
	two.VXLAN = states["vxlan"].VXLAN
	two.Neighbors, two.FDB = states["vxlan"].Neighbors, states["vxlan"].FDB
	k.Set(two)
	settle(t, k)
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	rep, err := cleanup(context.Background(), fk, DefaultProtocol)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Routes != 4 || !rep.VXLANDeleted || rep.Tunl0 != "stripped" {
		t.Errorf("cleanup report = %+v", rep)
	}
	checkGolden(t, "cleanup", fk.String())
}

func TestReadUnderlayAndHostMTU(t *testing.T) {
	fk := newFakeKernel()
	if err := fk.externalRouteAdd(netlink.Route{Dst: mustIPNet("10.50.0.0/16"), Gw: net.ParseIP("10.30.0.9").To4(), Protocol: unix.RTPROT_STATIC, Priority: 20}); err != nil {
		t.Fatal(err)
	}
	if err := fk.externalRouteAdd(netlink.Route{Dst: mustIPNet("10.66.0.0/24"), Type: unix.RTN_BLACKHOLE, Protocol: unix.RTPROT_STATIC}); err != nil {
		t.Fatal(err)
	}
	if err := fk.externalRouteAdd(netlink.Route{Dst: mustIPNet("10.60.0.0/16"), Gw: net.ParseIP("10.30.0.1").To4(), Protocol: DefaultProtocol}); err != nil {
		t.Fatal(err)
	}
	got, err := readUnderlay(fk, DefaultProtocol)
	if err != nil {
		t.Fatal(err)
	}
	var lines []string
	for _, u := range got {
		lines = append(lines, fmt.Sprintf("%s gw=%v dev=%s metric=%d unreachable=%v", u.Dst, u.Gateway, u.Dev, u.Metric, u.Unreachable))
	}
	want := []string{
		"0.0.0.0/0 gw=10.30.0.1 dev=eth0 metric=0 unreachable=false",
		"10.30.0.0/24 gw=invalid IP dev=eth0 metric=0 unreachable=false",
		"10.50.0.0/16 gw=10.30.0.9 dev=eth0 metric=20 unreachable=false",
		"10.66.0.0/24 gw=invalid IP dev= metric=0 unreachable=true",
	}
	if !slices.Equal(lines, want) {
		t.Errorf("underlay:\n%s\nwant:\n%s", strings.Join(lines, "\n"), strings.Join(want, "\n"))
	}

	mtu, nic, err := hostMTU(fk, netip.MustParseAddr("10.30.0.206"))
	if err != nil || mtu != 9001 || nic != "eth0" {
		t.Errorf("hostMTU = %d, %q, %v; want 9001, eth0", mtu, nic, err)
	}
	// A default route through a second, smaller NIC lowers the host MTU.
	fk.mu.Lock()
	idx := fk.addLink(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth1", MTU: 1500, Flags: net.FlagUp}})
	fk.mu.Unlock()
	if err := fk.externalRouteAdd(netlink.Route{Dst: mustIPNet("0.0.0.0/0"), Gw: net.ParseIP("10.31.0.1").To4(), LinkIndex: idx, Flags: int(netlink.FLAG_ONLINK), Priority: 200, Protocol: unix.RTPROT_BOOT}); err != nil {
		t.Fatal(err)
	}
	if mtu, _, err := hostMTU(fk, netip.MustParseAddr("10.30.0.206")); err != nil || mtu != 1500 {
		t.Errorf("hostMTU with a 1500-byte default route = %d, %v; want 1500", mtu, err)
	}
	if _, _, err := hostMTU(fk, netip.MustParseAddr("10.9.9.9")); err == nil {
		t.Error("hostMTU found a device for an address no device holds")
	}
}

func TestPublishPodMTUAndRegisterProtocol(t *testing.T) {
	dir := t.TempDir()
	if err := PublishPodMTU(dir, 8951); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(dir, "mtu")); err != nil || string(b) != "8951\n" {
		t.Errorf("mtu file = %q, %v", b, err)
	}
	if err := PublishPodMTU(dir, 0); err == nil {
		t.Error("a zero pod MTU was published")
	}
	path := filepath.Join(dir, "iproute2", "rt_protos.d", "tabby.conf")
	if err := RegisterProtocol(path, 95, "tabby"); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(path); err != nil || string(b) != "95\ttabby\n" {
		t.Errorf("rt_protos file = %q, %v", b, err)
	}
	if err := RegisterProtocol(path, 300, "tabby"); err == nil {
		t.Error("protocol 300 was accepted")
	}
	entries, _ := os.ReadDir(filepath.Dir(path))
	if len(entries) != 1 {
		t.Errorf("temporary files left behind: %v", entries)
	}
}

func TestErrNoIPIPText(t *testing.T) {
	if ErrNoIPIP.Error() != "kernel has no ipip support" {
		t.Errorf("ErrNoIPIP = %q", ErrNoIPIP)
	}
	if !isUnsupportedKind(unix.EOPNOTSUPP) || !isUnsupportedKind(errors.New("operation not supported")) || isUnsupportedKind(unix.EEXIST) {
		t.Error("isUnsupportedKind misclassifies")
	}
}

// TestKernelUnsortedState: a state not in Desired's sorted form (reversed, with a duplicate)
// is compiled in full rather than merged, and still converges, deleting what the previous
// state had; so does the sorted state after it.
func TestKernelUnsortedState(t *testing.T) {
	fk := newFakeKernel().withIPIPFallback()
	k := runKernel(t, fk, KernelOptions{})
	states := transitionStates(t, fk)
	vx := states["vxlan"]
	reversed := vx
	reversed.Routes = slices.Clone(vx.Routes)
	slices.Reverse(reversed.Routes)
	reversed.Routes = append(reversed.Routes, reversed.Routes[1])
	reversed.Neighbors = slices.Clone(vx.Neighbors)
	slices.Reverse(reversed.Neighbors)
	k.Set(states["vxlan-grown"])
	settle(t, k)
	k.Set(reversed)
	settle(t, k)
	checkGolden(t, "vxlan", fk.String())
	k.Set(states["vxlan-crosssubnet"])
	settle(t, k)
	checkGolden(t, "vxlan-crosssubnet", fk.String())
}

// TestKernelBulkPassResyncs: a pass with many writes stops listening to route events; a
// route someone deletes meanwhile is noticed by the resync that follows the pass, not by
// the periodic one (an hour away here).
func TestKernelBulkPassResyncs(t *testing.T) {
	fk := newFakeKernel()
	fk.subBuffer = 1 << 16
	victim := "10.128.0.0/26"
	writes := 0
	fk.fail = func(op string, arg any) error {
		// Called with the fake's lock held: act on its maps directly, as the kernel would
		// for someone else's request, and tell the subscribers.
		if op == "RouteAdd" {
			writes++
			if writes == bulkWrites+100 {
				for key, r := range fk.routes {
					if key.prefix().String() == victim {
						delete(fk.routes, key)
						fk.notifyRoute(unix.RTM_DELROUTE, 0, r)
					}
				}
			}
		}
		return nil
	}
	k := runKernel(t, fk, KernelOptions{RefreshInterval: time.Hour})
	state := syntheticRoutes(2 * bulkWrites)
	for i := range state.Routes {
		state.Routes[i].Gateway = netip.MustParseAddr("10.30.0.1")
	}
	k.Set(state)
	settle(t, k)
	if got := countProto(fk); got != len(state.Routes) {
		t.Fatalf("%d routes after the bulk pass settled, want %d (the one deleted during the pass was not restored)", got, len(state.Routes))
	}
	if st := k.Status(); st.FullSyncs < 2 {
		t.Errorf("%d full resyncs, want the first and the one after the bulk pass", st.FullSyncs)
	}
}
