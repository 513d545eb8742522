// Package nstest gives root tests throwaway network namespaces. Every namespace is named
// tabby-<purpose>-<random suffix> so that packages testing in parallel never collide, and
// is deleted in t.Cleanup whatever the test's outcome. Nothing here touches the root
// namespace.
package nstest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// NS is a network namespace made for one test.
type NS struct {
	Name string
	t    testing.TB
}

// RequireRoot skips a test that needs root when it runs as another user; the feature is
// still tested wherever root is available (make test runs as root).
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to create network namespaces")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("needs iproute2's ip")
	}
}

// New creates tabby-<purpose>-<suffix> with its loopback up.
func New(t testing.TB, purpose string) *NS {
	t.Helper()
	RequireRoot(t)
	b := make([]byte, 3)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	name := fmt.Sprintf("tabby-%s-%s", purpose, hex.EncodeToString(b))
	if len(name) > 40 {
		t.Fatalf("namespace name %s too long", name)
	}
	run(t, "ip", "netns", "add", name)
	ns := &NS{Name: name, t: t}
	t.Cleanup(func() {
		// Deleting the namespace removes its veth ends and with them their peers.
		out, err := exec.Command("ip", "netns", "del", name).CombinedOutput()
		if err != nil {
			t.Logf("delete netns %s: %v: %s", name, err, out)
		}
	})
	ns.Run("ip", "link", "set", "lo", "up")
	return ns
}

// Run runs a command inside the namespace and fails the test when it fails.
func (n *NS) Run(args ...string) string {
	n.t.Helper()
	return run(n.t, append([]string{"ip", "netns", "exec", n.Name}, args...)...)
}

// Try runs a command inside the namespace and returns its output and error.
func (n *NS) Try(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", n.Name}, args...)...).CombinedOutput()
	return string(out), err
}

// Command builds a command that runs inside the namespace.
func (n *NS) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", n.Name, name}, args...)...)
}

// Handle opens a netlink handle on the namespace, closed at cleanup.
func (n *NS) Handle() *netlink.Handle {
	n.t.Helper()
	h, err := netns.GetFromName(n.Name)
	if err != nil {
		n.t.Fatalf("open netns %s: %v", n.Name, err)
	}
	defer h.Close()
	nh, err := netlink.NewHandleAt(h)
	if err != nil {
		n.t.Fatalf("netlink handle in %s: %v", n.Name, err)
	}
	n.t.Cleanup(nh.Close)
	return nh
}

// Veth creates a veth pair with one end in a and one in b (both namespaces made by the
// test), named as given, addressed (CIDR, "" for none) and up.
func Veth(t testing.TB, a *NS, aName, aAddr string, b *NS, bName, bAddr string) {
	t.Helper()
	tmp := "tv" + randHex(t, 5)
	tmpPeer := "tp" + randHex(t, 5)
	// Created inside a, so the root namespace never holds either end, even briefly.
	a.Run("ip", "link", "add", tmp, "type", "veth", "peer", "name", tmpPeer)
	a.Run("ip", "link", "set", tmpPeer, "netns", b.Name)
	a.Run("ip", "link", "set", tmp, "name", aName)
	b.Run("ip", "link", "set", tmpPeer, "name", bName)
	for _, e := range []struct {
		ns         *NS
		name, addr string
	}{{a, aName, aAddr}, {b, bName, bAddr}} {
		if e.addr != "" {
			e.ns.Run("ip", "addr", "add", e.addr, "dev", e.name)
		}
		e.ns.Run("ip", "link", "set", e.name, "up")
	}
}

func randHex(t testing.TB, n int) string {
	b := make([]byte, (n+1)/2)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)[:n]
}

func run(t testing.TB, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, args[0], args[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v: %s", strings.Join(args, " "), err, out)
	}
	return string(out)
}
