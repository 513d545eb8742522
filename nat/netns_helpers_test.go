package nat

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"log/slog"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netns"
)

// requireRoot skips tests that need to create network namespaces and program iptables.
func requireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates network namespaces and programs iptables and ipsets in them")
	}
	if testing.Short() {
		t.Skip("-short: skipping the network namespace tests")
	}
}

// requireBackend skips a backend whose binaries this host does not have.
func requireBackend(t testing.TB, mode string) {
	t.Helper()
	for _, bin := range []string{"iptables-" + mode, "iptables-" + mode + "-save", "iptables-" + mode + "-restore", "ipset"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Skipf("%s is not installed (make deps installs iptables and ipset)", bin)
		}
	}
}

// newNetNS creates a network namespace named tabby-<purpose>-<random> and removes it when
// the test ends, failed or not. Everything the test does to iptables and ipsets happens in
// such namespaces; the machine's own namespace is never touched.
func newNetNS(t testing.TB, purpose string) string {
	t.Helper()
	b := make([]byte, 4)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	name := "tabby-" + purpose + "-" + hex.EncodeToString(b)
	mustRun(t, "ip", "netns", "add", name)
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			t.Errorf("remove network namespace %s: %v: %s", name, err, out)
		}
	})
	mustRun(t, "ip", "-n", name, "link", "set", "lo", "up")
	return name
}

func nsPath(name string) string { return "/run/netns/" + name }

func mustRun(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v: %s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// inNS runs a command inside namespace ns.
func inNS(t testing.TB, ns string, args ...string) string {
	t.Helper()
	return mustRun(t, "ip", append([]string{"netns", "exec", ns}, args...)...)
}

// nsRunner is the package's own runner bound to ns, for calls that must happen in it.
func nsRunner(t testing.TB, ns string) runner {
	t.Helper()
	h, err := netns.GetFromPath(nsPath(ns))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	return runner{ns: h}
}

var counters = regexp.MustCompile(`\[\d+:\d+\]`)

// saveTable is `iptables-<mode>-save -t table` in ns without its date comments and with
// counters zeroed, comparable with the golden files.
func saveTable(t *testing.T, ns, mode, table string) string {
	t.Helper()
	out := inNS(t, ns, "iptables-"+mode+"-save", "-t", table)
	var b strings.Builder
	for line := range strings.Lines(out) {
		if !strings.HasPrefix(line, "#") {
			b.WriteString(counters.ReplaceAllString(line, "[0:0]"))
		}
	}
	return b.String()
}

// setMembers lists an ipset's members with the ipset command (not tabby's netlink code).
func setMembers(t *testing.T, ns, set string) []string {
	t.Helper()
	out, err := exec.Command("ip", "netns", "exec", ns, "ipset", "save", set).CombinedOutput()
	if err != nil {
		return []string{"<" + strings.TrimSpace(string(out)) + ">"}
	}
	var members []string
	for line := range strings.Lines(string(out)) {
		if f := strings.Fields(line); len(f) == 3 && f[0] == "add" {
			members = append(members, f[2])
		}
	}
	slices.Sort(members)
	return members
}

// eventually polls cond until it holds or a generous deadline passes. It waits for
// convergence; it is not a measure of speed.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// startNAT runs a reconciler in ns until the test ends and returns it.
func startNAT(t *testing.T, ns, mode string, interval time.Duration) (*NAT, func()) {
	t.Helper()
	n, err := New(Options{Backend: mode, NetNSPath: nsPath(ns), RefreshInterval: interval, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- n.Run(ctx) }()
	stopped := false
	stop := func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}
	t.Cleanup(stop)
	return n, stop
}

func waitSynced(t *testing.T, n *NAT) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if err := n.WaitSynced(ctx); err != nil {
		t.Fatalf("reconciler never synced: %v (status %+v)", err, n.Status())
	}
}

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// testWriter sends the reconciler's logs to the test log.
type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

var backends = []string{BackendNFT, BackendLegacy}
