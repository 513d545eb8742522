package nat

import (
	"context"
	"fmt"
	"log/slog"
	"os/exec"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tabby-net/tabby/internal/netnstest"
)

// requireRoot skips tests that need to create network namespaces and program iptables.
func requireRoot(t testing.TB) {
	t.Helper()
	if testing.Short() {
		t.Skip("-short: skipping the network namespace tests")
	}
	netnstest.RequireRoot(t)
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

// nsRunner is the package's own runner bound to ns, for calls that must happen in it.
func nsRunner(t testing.TB, ns *netnstest.NS) runner {
	t.Helper()
	return runner{ns: ns.Open(t)}
}

var counters = regexp.MustCompile(`\[\d+:\d+\]`)

// saveTable is `iptables-<mode>-save -t table` in ns without its date comments and with
// counters zeroed, comparable with the golden files.
func saveTable(t *testing.T, ns *netnstest.NS, mode, table string) string {
	t.Helper()
	out := ns.Run(t, "iptables-"+mode+"-save", "-t", table)
	var b strings.Builder
	for line := range strings.Lines(out) {
		if !strings.HasPrefix(line, "#") {
			b.WriteString(counters.ReplaceAllString(line, "[0:0]"))
		}
	}
	return b.String()
}

// setMembers lists an ipset's members with the ipset command (not tabby's netlink code).
func setMembers(t *testing.T, ns *netnstest.NS, set string) []string {
	t.Helper()
	out, err := ns.Try("ipset", "save", set)
	if err != nil {
		return []string{"<" + strings.TrimSpace(out) + ">"}
	}
	var members []string
	for line := range strings.Lines(out) {
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
func startNAT(t *testing.T, ns *netnstest.NS, mode string, interval time.Duration) (*NAT, func()) {
	t.Helper()
	n, err := New(Options{Backend: mode, NetNSPath: ns.Path(), RefreshInterval: interval, Logger: testLogger(t)})
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

// waitChecks waits until the reconciler has handled n more refresh ticks than it had: the
// periodic checks a test wants to see go by, observed rather than slept for.
func waitChecks(t *testing.T, n *NAT, more uint64) {
	t.Helper()
	target := n.Status().Checks + more
	eventually(t, fmt.Sprintf("%d periodic checks", more), func() bool { return n.Status().Checks >= target })
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
