// Package netnstest gives tests throwaway network namespaces, the links between them and
// the processes inside them. Every namespace is named tabby-<purpose>-<random suffix>, so
// packages testing in parallel never collide, and is removed in t.Cleanup whatever the
// test's outcome; a namespace or process that cannot be removed fails the test, so nothing
// is left behind unnoticed. Nothing here touches the root namespace: veth pairs are created
// inside a test's namespace and their far end is moved straight into another.
//
// It is the one namespace helper of the repository's tests; internal/namedns does the
// namespace work itself, for the lab as well.
package netnstest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/tabby-net/tabby/internal/namedns"
)

// RequireRoot skips a test that needs root when it runs as another user (the environment
// cannot do what it checks; make test runs as root), and fails it when a tool it needs is
// missing: that is a broken setup (make deps installs them), not a reason to test less.
func RequireRoot(t testing.TB, tools ...string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to create network namespaces (make test runs as root); the pure table tests of the same package still run without root")
	}
	for _, tool := range append([]string{"ip", "nsenter"}, tools...) {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is not installed (make deps installs it): %v", tool, err)
		}
	}
}

// NS is a network namespace made for one test.
type NS struct {
	Name   string
	remove func()
}

// New creates tabby-<purpose>-<random> with its loopback up; it is removed when the test
// ends (or earlier with Remove).
func New(t testing.TB, purpose string) *NS {
	t.Helper()
	name := "tabby-" + purpose + "-" + RandomHex(t, 8)
	if len(name) > 40 {
		t.Fatalf("namespace name %s is too long: use a shorter purpose", name)
	}
	if err := namedns.Create(name); err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	ns := &NS{Name: name, remove: func() {
		once.Do(func() {
			if err := namedns.Delete(name); err != nil {
				t.Errorf("remove the test's network namespace: %v", err)
			} else if namedns.Exists(name) {
				t.Errorf("network namespace %s is still there after its removal", name)
			}
		})
	}}
	t.Cleanup(ns.remove)
	if err := loUp(name); err != nil {
		t.Fatal(err)
	}
	return ns
}

// loUp sets the namespace's loopback up, through netlink: namespaces are made by the
// thousand in benchmarks, where a process per namespace would cost more than the namespace.
func loUp(name string) error {
	h, err := namedns.Handle(name)
	if err != nil {
		return err
	}
	defer h.Close()
	lo, err := h.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("lo in %s: %w", name, err)
	}
	if err := h.LinkSetUp(lo); err != nil {
		return fmt.Errorf("set lo up in %s: %w", name, err)
	}
	return nil
}

// Remove deletes the namespace now rather than at the end of the test. Handles opened on
// it with Handle or Open must be closed first.
func (n *NS) Remove() { n.remove() }

// String is the namespace's name, for messages.
func (n *NS) String() string { return n.Name }

// Path is the namespace's bind mount, what CNI_NETNS and NetNSPath options take.
func (n *NS) Path() string { return namedns.Path(n.Name) }

// Run runs a command inside the namespace and fails the test when it fails.
func (n *NS) Run(t testing.TB, args ...string) string {
	t.Helper()
	out, err := n.Try(args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// Try runs a command inside the namespace and returns its combined output, and an error
// that carries the output when it fails.
func (n *NS) Try(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	out, err := n.Command(ctx, args[0], args[1:]...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s in %s: %w: %s", strings.Join(args, " "), n.Name, err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// Command builds a command that runs inside the namespace.
func (n *NS) Command(ctx context.Context, program string, args ...string) *exec.Cmd {
	return namedns.CommandContext(ctx, n.Name, program, args...)
}

// Do runs fn on a thread inside the namespace (sockets it opens stay there).
func (n *NS) Do(fn func() error) error { return namedns.Do(n.Name, fn) }

// Handle opens a netlink handle on the namespace, closed at cleanup.
func (n *NS) Handle(t testing.TB) *netlink.Handle {
	t.Helper()
	h, err := namedns.Handle(n.Name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.Close)
	return h
}

// Open opens the namespace itself (for a reconciler bound to it), closed at cleanup.
func (n *NS) Open(t testing.TB) netns.NsHandle {
	t.Helper()
	h, err := namedns.Open(n.Name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	return h
}

// Veth creates a veth pair with one end in a and one in b, named as given, addressed (CIDR,
// "" for none) and up.
func Veth(t testing.TB, a *NS, aName, aAddr string, b *NS, bName, bAddr string) {
	t.Helper()
	tmp, tmpPeer := "tv"+RandomHex(t, 6), "tp"+RandomHex(t, 6)
	// Created inside a, so the root namespace never holds either end, even briefly.
	a.Run(t, "ip", "link", "add", tmp, "type", "veth", "peer", "name", tmpPeer, "netns", b.Name)
	a.Run(t, "ip", "link", "set", tmp, "name", aName)
	b.Run(t, "ip", "link", "set", tmpPeer, "name", bName)
	for _, e := range []struct {
		ns         *NS
		name, addr string
	}{{a, aName, aAddr}, {b, bName, bAddr}} {
		if e.addr != "" {
			e.ns.Run(t, "ip", "addr", "add", e.addr, "dev", e.name)
		}
		e.ns.Run(t, "ip", "link", "set", e.name, "up")
	}
}

// LAN is a layer-2 segment: a bridge in a namespace of its own.
type LAN struct {
	ns    *NS
	mu    sync.Mutex
	ports int
}

// NewLAN creates the bridge namespace and its bridge.
func NewLAN(t testing.TB, purpose string) *LAN {
	t.Helper()
	ns := New(t, purpose)
	ns.Run(t, "ip", "link", "add", "br0", "type", "bridge")
	ns.Run(t, "ip", "link", "set", "br0", "up")
	return &LAN{ns: ns}
}

// Attach plugs a namespace into the LAN: a veth named ifname inside host with the given
// addresses (CIDRs such as "10.99.0.1/24"), its peer on the bridge.
func (l *LAN) Attach(t testing.TB, host *NS, ifname string, cidrs ...string) {
	t.Helper()
	l.mu.Lock()
	l.ports++
	port := fmt.Sprintf("p%d", l.ports)
	l.mu.Unlock()
	l.ns.Run(t, "ip", "link", "add", port, "type", "veth", "peer", "name", ifname, "netns", host.Name)
	l.ns.Run(t, "ip", "link", "set", port, "master", "br0", "up")
	for _, c := range cidrs {
		host.Run(t, "ip", "addr", "add", c, "dev", ifname)
	}
	host.Run(t, "ip", "link", "set", ifname, "up")
}

// Start runs a program inside the named namespace (one of the test's, or of a lab the test
// made) with extra environment, its output appended to logFile. The test's cleanup kills it
// (by its PID) if it still runs, and fails the test if it cannot.
func Start(t testing.TB, ns string, env []string, logFile string, args ...string) *namedns.Process {
	t.Helper()
	p, err := namedns.Start(namedns.ProcessOptions{Namespace: ns, Log: logFile, Env: env}, args[0], args[1:]...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := p.Kill(); err != nil {
			t.Errorf("stop %s in %s: %v", args[0], ns, err)
		}
	})
	return p
}

// Eventually polls check until it returns nil or the timeout passes; then it fails the
// test with the last error. Convergence is asserted this way, never with timed checks.
func Eventually(t testing.TB, timeout time.Duration, what string, check func() error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	for {
		err := check()
		if err == nil {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("%s: not within %v: %v", what, timeout, err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// RandomHex returns n random hex digits, for names that must not collide with those of
// tests running beside this one.
func RandomHex(t testing.TB, n int) string {
	t.Helper()
	b := make([]byte, (n+1)/2)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)[:n]
}
