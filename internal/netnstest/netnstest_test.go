package netnstest

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/tabby-net/tabby/internal/namedns"
)

// recorder is a test's TB whose cleanups run when the test says so and whose errors are
// kept, to see what the helper reports.
type recorder struct {
	testing.TB
	cleanups []func()
	errors   []string
}

func (r *recorder) Cleanup(f func()) { r.cleanups = append(r.cleanups, f) }
func (r *recorder) Errorf(format string, args ...any) {
	r.errors = append(r.errors, fmt.Sprintf(format, args...))
}

func (r *recorder) runCleanups() {
	for i := len(r.cleanups) - 1; i >= 0; i-- {
		r.cleanups[i]()
	}
	r.cleanups = nil
}

// TestNamespacesAndVeth: namespaces are made with the tabby- prefix, joined by a veth that
// carries traffic, and gone after cleanup without an error.
func TestNamespacesAndVeth(t *testing.T) {
	RequireRoot(t, "ping")
	r := &recorder{TB: t}
	a, b := New(r, "nsa"), New(r, "nsb")
	if !strings.HasPrefix(a.Name, "tabby-nsa-") || a.Name == b.Name {
		t.Fatalf("names %s and %s", a.Name, b.Name)
	}
	Veth(r, a, "eth0", "10.123.0.1/24", b, "eth0", "10.123.0.2/24")
	if _, err := a.Try("ping", "-c", "1", "-W", "2", "10.123.0.2"); err != nil {
		t.Error(err)
	}
	p := Start(r, b.Name, nil, filepath.Join(t.TempDir(), "sleep.log"), "sleep", "60")
	r.runCleanups()
	if p.Running() {
		t.Error("the process still runs after cleanup")
	}
	for _, ns := range []*NS{a, b} {
		if namedns.Exists(ns.Name) {
			t.Errorf("%s is still there after cleanup", ns.Name)
		}
	}
	if len(r.errors) != 0 {
		t.Errorf("cleanup reported %q", r.errors)
	}
}

// TestRemovalFailureFailsTheTest: a namespace that cannot be removed is an error of the
// test, not a line in its log.
func TestRemovalFailureFailsTheTest(t *testing.T) {
	RequireRoot(t)
	r := &recorder{TB: t}
	ns := New(r, "nsfail")
	// Replace the namespace's file with a directory that is not empty: nothing can remove
	// it the way a namespace is removed.
	path := ns.Path()
	if err := unix.Unmount(path, unix.MNT_DETACH); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(path, "busy"), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(path) })
	r.runCleanups()
	if len(r.errors) != 1 || !strings.Contains(r.errors[0], ns.Name) {
		t.Errorf("cleanup reported %q, want one error naming %s", r.errors, ns.Name)
	}
}
