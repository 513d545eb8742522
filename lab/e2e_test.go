package lab

// The end-to-end suite: the articles' cluster built by the lab (four hosts in two subnets,
// a router, an outside host), with a real etcd, the real tabbyd, tabbyctl, tabby-cni and
// tabbylab binaries, real pings and real BIRD. One lab serves the whole suite; each part
// switches the pool to the mode it needs, the way the articles do (a patch), so that a -run
// pattern can pick any subset:
//
//	go test ./lab -run 'TestE2E/ipip'       the IP-in-IP parts (what the VM runs)
//	go test ./lab -run 'TestE2E/fault'      the fabric faults
//
// Set TABBY_E2E_BIN_DIR to a directory holding the four binaries to use them instead of
// building them (the VM has no Go toolchain).

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tabby-net/tabby/internal/namedns"
)

// e2eBinaries returns a directory with tabbyd, tabbyctl, tabby-cni and tabbylab: the one
// TABBY_E2E_BIN_DIR names, or a fresh build of the module's commands.
func e2eBinaries(t *testing.T) string {
	t.Helper()
	names := []string{"tabbyd", "tabbyctl", "tabby-cni", "tabbylab"}
	if dir := os.Getenv("TABBY_E2E_BIN_DIR"); dir != "" {
		for _, n := range names {
			if _, err := os.Stat(filepath.Join(dir, n)); err != nil {
				t.Fatalf("TABBY_E2E_BIN_DIR=%s: %v", dir, err)
			}
		}
		return dir
	}
	dir := t.TempDir()
	args := []string{"build", "-o", dir + "/"}
	for _, n := range names {
		args = append(args, "github.com/tabby-net/tabby/cmd/"+n)
	}
	start := time.Now()
	if out, err := exec.Command("go", args...).CombinedOutput(); err != nil {
		t.Fatalf("go %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	t.Logf("built %s in %.1fs", strings.Join(names, ", "), time.Since(start).Seconds())
	return dir
}

// logWriter turns the lab's progress lines into test log lines.
type logWriter struct{ t *testing.T }

func (w logWriter) Write(p []byte) (int, error) {
	sc := bufio.NewScanner(strings.NewReader(string(p)))
	for sc.Scan() {
		w.t.Log(sc.Text())
	}
	return len(p), nil
}

// e2eLab brings the articles' lab up under a unique prefix and tears it down when the test
// ends, whatever happened, checking that no namespace and no process of it is left.
type e2eLab struct {
	*Cluster
	ctx     context.Context
	hasIPIP bool
	mode    Mode
	// pids are every process seen in the lab's namespaces while it ran.
	pids map[int]bool
}

func newE2ELab(t *testing.T) *e2eLab {
	t.Helper()
	requireRoot(t)
	if testing.Short() {
		t.Skip("end-to-end suite (builds the binaries, runs etcd and a tabbyd per host of the " +
			"articles' lab, about a minute): not run with -short (make test-unit); make test runs it")
	}
	bin := e2eBinaries(t)
	b := make([]byte, 3)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	prefix := "tabby-e2e-" + hex.EncodeToString(b)
	c := NewArticlesCluster(prefix, filepath.Join(t.TempDir(), "state"), bin, logWriter{t})
	ctx, cancel := context.WithTimeout(context.Background(), 12*time.Minute)
	l := &e2eLab{Cluster: c, ctx: ctx, pids: map[int]bool{}}
	t.Cleanup(func() {
		defer cancel()
		if t.Failed() {
			c.Out = logWriter{t}
			c.sayLogTails(40)
		}
		l.recordPIDs(t)
		if err := c.Down(); err != nil {
			t.Errorf("down: %v", err)
		}
		l.checkGone(t)
	})
	has, err := c.Topo.HasIPIP()
	if err != nil {
		t.Fatal(err)
	}
	l.hasIPIP = has
	start := time.Now()
	if err := c.Up(ctx, ModeVXLAN); err != nil {
		t.Fatalf("up: %v", err)
	}
	l.mode = ModeVXLAN
	t.Logf("lab %s up in %.1fs (kernel ipip support: %t)", prefix, time.Since(start).Seconds(), has)
	l.recordPIDs(t)
	return l
}

// recordPIDs remembers the processes running in the lab's namespaces now.
func (l *e2eLab) recordPIDs(t *testing.T) {
	pids, err := l.Topo.ProcessesInLab()
	if err != nil {
		t.Errorf("list the lab's processes: %v", err)
	}
	for _, p := range pids {
		l.pids[p] = true
	}
}

// checkGone fails the test if a namespace or a process of the lab survived Down.
func (l *e2eLab) checkGone(t *testing.T) {
	if left, err := namedns.List(l.Topo.Prefix + "-"); err != nil || len(left) > 0 {
		t.Errorf("namespaces left behind: %v (%v)", left, err)
	}
	for pid := range l.pids {
		if PIDRuns(pid) {
			cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
			t.Errorf("process %d (%s) of the lab still runs", pid, strings.ReplaceAll(string(cmdline), "\x00", " "))
		}
	}
}

// setMode switches the pool's mode (if it is not in it already) and waits until every
// host's routes are the ones the datastore calls for.
func (l *e2eLab) setMode(t *testing.T, m Mode) {
	t.Helper()
	if m.UsesIPIP() && !l.hasIPIP {
		t.Skipf("mode %s not run end to end: this %s. Tested instead: the routes and tunl0 of "+
			"IPIP and CrossSubnet in routing's fake-kernel tests (TestKernelGolden), and, in the "+
			"Debian VM of `make test-vm`, real IP-in-IP packets between namespaces programmed "+
			"as tabbyd programs them and routing's tunl0 root test", m, NoIPIPMessage)
	}
	if l.mode == m {
		return
	}
	start := time.Now()
	l.mode = "" // unknown until the switch is complete
	if err := l.SetMode(l.ctx, m); err != nil {
		t.Fatalf("mode %s: %v", m, err)
	}
	if err := l.WaitRoutes(l.ctx, 90*time.Second); err != nil {
		t.Fatalf("mode %s: %v", m, err)
	}
	l.mode = m
	t.Logf("mode %s: every host's routes converged in %.1fs", m, time.Since(start).Seconds())
}

func (l *e2eLab) state(t *testing.T) *ClusterState {
	t.Helper()
	ds, err := l.Datastore()
	if err != nil {
		t.Fatal(err)
	}
	defer ds.Close()
	st, err := ReadState(l.ctx, ds)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// checkRoutes compares worker-1's tabby routes with the datastore's, and checks the routes
// to worker-2's and worker-3's blocks against the articles' tables literally: the block
// addresses come from etcd, the shape of each route from the mode.
func (l *e2eLab) checkRoutes(t *testing.T, m Mode) {
	t.Helper()
	st := l.state(t)
	rh, err := l.Topo.RouteHost("worker-1")
	if err != nil {
		t.Fatal(err)
	}
	want, err := ExpectedRoutes(st, rh)
	if err != nil {
		t.Fatal(err)
	}
	got, err := l.Topo.TabbyRoutes("worker-1")
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(want, got) {
		t.Errorf("worker-1's tabby routes differ from the datastore's:\n%s", RouteDiff(want, got))
	}
	t.Logf("worker-1 in mode %s:\n  %s", m, strings.Join(got, "\n  "))

	w2, w3 := l.peerRoute(t, st, "worker-2"), l.peerRoute(t, st, "worker-3")
	var literal []string
	switch m {
	case ModeVXLAN:
		literal = []string{
			w2.block + " via " + w2.vxlan + " dev vxlan.tabby proto 95 onlink mtu 1450",
			w3.block + " via " + w3.vxlan + " dev vxlan.tabby proto 95 onlink mtu 1450",
		}
	case ModeVXLANCrossSubnet:
		literal = []string{
			w2.block + " via 10.30.0.56 dev eth0 proto 95",
			w3.block + " via " + w3.vxlan + " dev vxlan.tabby proto 95 onlink mtu 1450",
		}
	case ModeDirect:
		literal = []string{
			w2.block + " via 10.30.0.56 dev eth0 proto 95",
			w3.block + " via 10.30.0.1 dev eth0 proto 95",
		}
	case ModeIPIP:
		literal = []string{
			w2.block + " via 10.30.0.56 dev tunl0 proto 95 onlink mtu 1480",
			w3.block + " via 10.30.1.66 dev tunl0 proto 95 onlink mtu 1480",
		}
	case ModeCrossSubnet:
		literal = []string{
			w2.block + " via 10.30.0.56 dev eth0 proto 95 onlink",
			w3.block + " via 10.30.1.66 dev tunl0 proto 95 onlink mtu 1480",
		}
	}
	for _, line := range literal {
		if !slices.Contains(got, line) {
			t.Errorf("worker-1 lacks the route %q", line)
		}
	}
	for _, b := range st.BlocksOf("worker-1") {
		if line := "blackhole " + b.String() + " proto 95"; !slices.Contains(got, line) {
			t.Errorf("worker-1 lacks the route %q", line)
		}
	}
}

type peerRoute struct{ block, vxlan string }

// peerRoute returns the block a worker's pod lives in and the worker's VXLAN tunnel address.
func (l *e2eLab) peerRoute(t *testing.T, st *ClusterState, host string) peerRoute {
	t.Helper()
	var pod string
	for _, w := range l.Workloads {
		if w.Host == host {
			pod = w.Name
		}
	}
	ip, err := l.WorkloadIP(pod)
	if err != nil {
		t.Fatal(err)
	}
	var pr peerRoute
	for _, b := range st.BlocksOf(host) {
		if b.Contains(ip) {
			pr.block = b.String()
		}
	}
	if pr.block == "" {
		t.Fatalf("no block of %s holds %s's address %s", host, pod, ip)
	}
	if n := st.node(host); n != nil {
		pr.vxlan = strings.TrimSuffix(n.Spec.IPv4VXLANTunnelAddr, "/32")
	}
	return pr
}

// checkPings pings every pod from every pod and wants exactly the pings from or to the
// pods in failing to fail.
func (l *e2eLab) checkPings(t *testing.T, failing ...string) {
	t.Helper()
	res, err := l.PingMatrix(l.ctx, false)
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	PrintMatrix(&b, res)
	bad := false
	for _, r := range res {
		want := !(slices.Contains(failing, r.From) || slices.Contains(failing, r.To))
		if r.OK != want {
			bad = true
			t.Errorf("ping %s → %s: ok=%t, want %t", r.From, r.To, r.OK, want)
		}
	}
	if bad {
		t.Logf("ping matrix:\n%s", b.String())
	}
}

// diagnose runs `tabbyctl node diagnose` on a host and returns its output and whether it
// reported problems (exit 1). Any other failure ends the test.
func (l *e2eLab) diagnose(t *testing.T, host string) (string, bool) {
	t.Helper()
	out, err := l.NodeCtl(l.ctx, host, "node", "diagnose", "--probe-timeout", "1s")
	var exit *exec.ExitError
	switch {
	case err == nil:
		return out, false
	case errors.As(err, &exit) && exit.ExitCode() == 1:
		return out, true
	}
	t.Fatalf("node diagnose on %s: %v\n%s", host, err, out)
	return "", false
}

// wantDiagnosis runs node diagnose on worker-1 and wants a problem whose text has every
// one of wants in it (a finding and its fix).
func (l *e2eLab) wantDiagnosis(t *testing.T, wants ...string) string {
	t.Helper()
	out, problems := l.diagnose(t, "worker-1")
	if !problems {
		t.Errorf("node diagnose found no problem, want one about %q:\n%s", wants, out)
		return out
	}
	for _, w := range wants {
		if !strings.Contains(out, w) {
			t.Errorf("node diagnose does not say %q:\n%s", w, out)
		}
	}
	return out
}

// peerStates runs `tabbyctl node status` on a host and returns each peer's STATE column
// ("up", "idle", "active"...), and the whole output.
func (l *e2eLab) peerStates(t *testing.T, host string) (map[string]string, string) {
	t.Helper()
	out, err := l.NodeCtl(l.ctx, host, "node", "status")
	if err != nil {
		t.Fatalf("node status on %s: %v\n%s", host, err, out)
	}
	states := map[string]string{}
	for _, line := range strings.Split(out, "\n") {
		cols := strings.Split(line, "|")
		if len(cols) < 6 {
			continue
		}
		addr := strings.TrimSpace(cols[1])
		if _, err := netip.ParseAddr(addr); err != nil {
			continue // the header and rules
		}
		states[addr] = strings.TrimSpace(cols[3])
	}
	return states, out
}

// withFault turns a fault on for the duration of fn, and off again even when fn fails.
func (l *e2eLab) withFault(t *testing.T, f Fault, fn func()) {
	t.Helper()
	if err := l.Topo.SetFault(f, true); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := l.Topo.SetFault(f, false); err != nil {
			t.Errorf("turn %s off: %v", f, err)
		}
	}()
	fn()
}

// waitFor polls cond until it returns "" or timeout passes; the last answer is the error.
func waitFor(t *testing.T, ctx context.Context, timeout time.Duration, what string, cond func() string) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		last := cond()
		if last == "" {
			return
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			t.Fatalf("%s: not after %s: %s", what, timeout, last)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

func TestE2E(t *testing.T) {
	l := newE2ELab(t)

	t.Run("vxlan", func(t *testing.T) {
		l.setMode(t, ModeVXLAN)
		l.checkRoutes(t, ModeVXLAN)
		l.checkPings(t)
	})

	t.Run("fault-vxlan-port", func(t *testing.T) {
		l.setMode(t, ModeVXLAN)
		l.withFault(t, FaultVXLANPort, func() {
			l.checkPings(t, "pod-1", "pod-2", "pod-3")
			l.wantDiagnosis(t, "VXLAN packets (UDP 4789) to 10.30.0.56 are dropped",
				"allow UDP 4789 (VXLAN) between the hosts in the security group")
		})
		l.checkPings(t)
	})

	t.Run("fault-mtu", func(t *testing.T) {
		l.setMode(t, ModeVXLAN)
		pod2, err := l.WorkloadIP("pod-2")
		if err != nil {
			t.Fatal(err)
		}
		// A full-size pod packet (pod MTU 1450: 1422 bytes of ICMP payload) with DF set.
		big := func() bool {
			return namedns.Command(l.PodNS("pod-1"), "ping", "-c", "2", "-W", "1", "-M", "do", "-s", "1422", pod2.String()).Run() == nil
		}
		if !big() {
			t.Fatal("a full-size pod packet does not cross before the fault")
		}
		l.withFault(t, FaultMTU, func() {
			if big() {
				t.Error("a full-size pod packet crossed a fabric whose MTU is 1400")
			}
			l.wantDiagnosis(t, "the path to 10.30.0.56 carries about", "fix the MTU: set dataplane.mtu to")
		})
		if !big() {
			t.Error("a full-size pod packet does not cross after the fault")
		}
	})

	t.Run("nat", func(t *testing.T) {
		defer func() {
			if err := l.SetNATOutgoing(l.ctx, true); err != nil {
				t.Errorf("natOutgoing back on: %v", err)
			}
		}()
		for _, on := range []bool{true, false} {
			if err := l.SetNATOutgoing(l.ctx, on); err != nil {
				t.Fatal(err)
			}
			if err := l.WaitNAT(l.ctx, on, 30*time.Second); err != nil {
				t.Fatal(err)
			}
			views, err := l.ObserveOutside(l.ctx)
			if err != nil {
				t.Fatal(err)
			}
			for _, v := range views {
				w := l.workload(v.Pod)
				h, _ := l.Topo.Host(w.Host)
				podIP, err := l.WorkloadIP(v.Pod)
				if err != nil {
					t.Fatal(err)
				}
				wantSrc, wantReply := podIP, false
				if on {
					// Masqueraded to the host's address, which the outside host routes back.
					wantSrc, wantReply = h.Addr.Addr(), true
				}
				if v.Source != wantSrc || v.Reply != wantReply {
					t.Errorf("natOutgoing %t: the outside host saw %s from %v (reply %t), want from %s (reply %t)",
						on, v.Pod, v.Source, v.Reply, wantSrc, wantReply)
				}
			}
		}
	})

	t.Run("fault-bgp-port", func(t *testing.T) {
		l.withFault(t, FaultBGPPort, func() {
			// Once the hold time (9s in the lab) has passed without a keepalive, every
			// session is down and readiness names the peers, as calico-node's did.
			waitFor(t, l.ctx, 90*time.Second, "worker-1 not ready for BGP", func() string {
				ok, body, err := l.Readiness(l.ctx, "worker-1")
				if err != nil {
					return err.Error()
				}
				if ok || !strings.Contains(body, "BGP not established with") {
					return fmt.Sprintf("ready=%t %q", ok, body)
				}
				for _, peer := range []string{"10.30.0.136", "10.30.0.56", "10.30.1.66"} {
					if !strings.Contains(body, peer) {
						return fmt.Sprintf("readiness %q does not name %s", body, peer)
					}
				}
				return ""
			})
			states, status := l.peerStates(t, "worker-1")
			for peer, state := range states {
				if state == "up" {
					t.Errorf("node status shows the session with %s up while TCP 179 is closed:\n%s", peer, status)
				}
			}
			if len(states) != 3 {
				t.Errorf("node status lists %d peers, want 3:\n%s", len(states), status)
			}
			l.wantDiagnosis(t, "TCP 179 to 10.30.0.56 fails", "open TCP 179 between the hosts in the security group")
		})
		// Readiness needs only one session after the first 30 s; wait for all three.
		waitFor(t, l.ctx, 60*time.Second, "every session of worker-1 up again", func() string {
			states, status := l.peerStates(t, "worker-1")
			up := 0
			for _, state := range states {
				if state == "up" {
					up++
				}
			}
			if up != 3 {
				return status
			}
			return ""
		})
		if err := l.WaitReady(l.ctx, 60*time.Second); err != nil {
			t.Fatalf("after TCP 179 reopened: %v", err)
		}
	})

	t.Run("vxlan-crosssubnet", func(t *testing.T) {
		l.setMode(t, ModeVXLANCrossSubnet)
		l.checkRoutes(t, ModeVXLANCrossSubnet)
		l.checkPings(t)
	})

	t.Run("direct", func(t *testing.T) {
		l.setMode(t, ModeDirect)
		l.checkRoutes(t, ModeDirect)
		// worker-3's block is routed to the router, which knows nothing of it: Direct fails
		// across subnets, and works inside one.
		l.checkPings(t, "pod-3")
		out := l.wantDiagnosis(t, "do not reach 10.30.1.66 in another subnet", "use CrossSubnet")
		// Inside the subnet the fabric carries pool addresses: nothing to report there.
		if strings.Contains(out, "although the hosts share a subnet") {
			t.Errorf("node diagnose reports a source/destination check that is not there:\n%s", out)
		}
	})

	t.Run("fault-srcdst-check", func(t *testing.T) {
		l.setMode(t, ModeDirect)
		l.withFault(t, FaultSrcDstCheck, func() {
			l.checkPings(t, "pod-1", "pod-2", "pod-3")
			l.wantDiagnosis(t, "although the hosts share a subnet: the fabric checks source and destination addresses",
				"disable the source/destination check on the instances")
		})
		out, _ := l.diagnose(t, "worker-1")
		if strings.Contains(out, "although the hosts share a subnet") {
			t.Errorf("the source/destination check is still reported after the fault is off:\n%s", out)
		}
	})

	t.Run("direct-bird", func(t *testing.T) {
		l.setMode(t, ModeDirect)
		if err := l.SetBird(l.ctx, true); err != nil {
			t.Fatal(err)
		}
		birdOn := true
		defer func() {
			if birdOn {
				if err := l.SetBird(l.ctx, false); err != nil {
					t.Errorf("bird off: %v", err)
				}
			}
		}()
		if err := l.WaitBirdRoutes(l.ctx, 60*time.Second); err != nil {
			t.Fatal(err)
		}
		routes, err := l.BirdRoutes(l.ctx)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("birdc show route:\n%s", routes)
		// The router learned the blocks: Direct now works across subnets too.
		l.checkPings(t)
		// The hosts' routes are still the datastore's (BGP-learned pool routes are ignored).
		l.checkRoutes(t, ModeDirect)
		if err := l.SetBird(l.ctx, false); err != nil {
			t.Fatal(err)
		}
		birdOn = false
		pod3, _ := l.WorkloadIP("pod-3")
		waitFor(t, l.ctx, 30*time.Second, "router forgets the blocks", func() string {
			out, err := namedns.Command(l.Topo.RouterNS(), "ip", "route", "get", pod3.String()).CombinedOutput()
			if err == nil {
				return "router still routes " + pod3.String() + ": " + string(out)
			}
			return ""
		})
	})

	t.Run("ipip-always", func(t *testing.T) {
		l.setMode(t, ModeIPIP)
		l.checkRoutes(t, ModeIPIP)
		l.checkPings(t)
		l.checkTunl0(t)
		l.checkTunnelPings(t, ModeIPIP)
	})

	t.Run("ipip-proto-fault", func(t *testing.T) {
		l.setMode(t, ModeIPIP)
		l.withFault(t, FaultIPIPProto, func() {
			l.checkPings(t, "pod-1", "pod-2", "pod-3")
			l.wantDiagnosis(t, "IP-in-IP packets (IP protocol 4) to 10.30.0.56 are dropped",
				"allow IP protocol 4 (IP-in-IP) between the hosts in the security group")
		})
		l.checkPings(t)
	})

	t.Run("ipip-crosssubnet", func(t *testing.T) {
		l.setMode(t, ModeCrossSubnet)
		l.checkRoutes(t, ModeCrossSubnet)
		l.checkPings(t)
		l.checkTunl0(t)
		l.checkTunnelPings(t, ModeCrossSubnet)
	})

	t.Run("down-after-crash", func(t *testing.T) {
		// A crash of everything: etcd and a tabbyd killed hard, the state directory lost.
		// `tabbylab down` must still leave no namespace and no process behind.
		l.recordPIDs(t)
		for _, name := range []string{"etcd", "tabbyd-worker-1"} {
			pid, err := readPID(l.pidFile(name))
			if err != nil || pid == 0 {
				t.Fatalf("%s: no PID (%v)", name, err)
			}
			if err := killHard(pid); err != nil {
				t.Fatal(err)
			}
		}
		if err := os.RemoveAll(l.StateDir); err != nil {
			t.Fatal(err)
		}
		tabbylab := filepath.Join(l.BinDir, "tabbylab")
		out, err := exec.Command(tabbylab, "--prefix", l.Topo.Prefix, "--state-dir", l.StateDir, "down").CombinedOutput()
		if err != nil {
			t.Fatalf("tabbylab down: %v\n%s", err, out)
		}
		l.checkGone(t)
	})
}

// workload returns the pod of that name.
func (l *e2eLab) workload(name string) Workload {
	for _, w := range l.Workloads {
		if w.Name == name {
			return w
		}
	}
	return Workload{}
}
