// Package labtest ties a lab.Cluster to a test or benchmark: the lab gets a unique name
// (tabby-<purpose>-<random>), its state lives in a directory of the test's, and at cleanup
// every process and namespace of it is removed; what cannot be removed fails the test.
package labtest

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/tabby-net/tabby/internal/namedns"
	"github.com/tabby-net/tabby/internal/netnstest"
	"github.com/tabby-net/tabby/lab"
)

// Options say where a test's lab lives.
type Options struct {
	// Purpose names the lab: tabby-<Purpose>-<random>.
	Purpose string
	// StateDir is the parent of the lab's state directory; a temporary directory of the
	// test's when empty. Benchmarks pass a memory-backed one (/dev/shm) so that disk
	// latency is no part of any figure.
	StateDir string
	// BinDir holds the tabby binaries the lab runs.
	BinDir string
	// Verbose sends the lab's progress lines to the test log.
	Verbose bool
}

// New readies c (its Topo set, as lab.NewArticlesCluster or a literal makes it) for a test:
// a unique Topo.Prefix, a state directory, the binaries, and teardown when the test ends
// that fails the test if anything of the lab survives. It skips a test not run as root.
// The topology is not built yet: call Up, or Topo.Build and the start methods.
func New(tb testing.TB, c *lab.Cluster, o Options) *lab.Cluster {
	tb.Helper()
	netnstest.RequireRoot(tb, "nsenter")
	topo := c.Topo
	topo.Prefix = "tabby-" + o.Purpose + "-" + netnstest.RandomHex(tb, 8)
	parent := o.StateDir
	if parent == "" {
		parent = tb.TempDir()
	}
	c.StateDir, c.BinDir = filepath.Join(parent, topo.Prefix), o.BinDir
	c.Out = nil
	if o.Verbose {
		c.Out = logWriter{tb}
	}
	tb.Cleanup(func() {
		if tb.Failed() {
			tb.Logf("lab %s:\n%s", topo.Prefix, c.LogTails(40))
		}
		if err := c.Down(); err != nil {
			tb.Errorf("remove the lab %s: %v", topo.Prefix, err)
		}
		if left, err := namedns.List(topo.Prefix + "-"); err != nil || len(left) > 0 {
			tb.Errorf("namespaces of the lab left behind: %v %v", left, err)
		}
	})
	return c
}

// TmpfsDir is a memory-backed directory, for benchmarks whose figures must not include
// disk latency; the system's temporary directory where there is none.
func TmpfsDir() string {
	if st, err := os.Stat("/dev/shm"); err == nil && st.IsDir() {
		return "/dev/shm"
	}
	return os.TempDir()
}

// logWriter turns the lab's progress lines into test log lines.
type logWriter struct{ tb testing.TB }

func (w logWriter) Write(p []byte) (int, error) {
	w.tb.Log(string(p))
	return len(p), nil
}
