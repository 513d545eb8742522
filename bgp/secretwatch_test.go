package bgp

import (
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestSecretsWatcherWakesOnEveryWayAFileChanges: a file written in place, one replaced by
// rename (Ansible, editors), Kubernetes' "..data" symlink swap, a new secret directory and
// a secrets directory that appears after start each wake the reader.
func TestSecretsWatcherWakesOnEveryWayAFileChanges(t *testing.T) {
	root := t.TempDir()
	dir := filepath.Join(root, "secrets")
	w := NewSecretsWatcher(dir, slog.New(slog.NewTextHandler(io.Discard, nil)))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})

	// wake waits for one wake-up after change, once the wake-ups of earlier changes (one
	// settle period after their last event) are consumed.
	wake := func(what string, within time.Duration, change func()) {
		t.Helper()
		time.Sleep(2 * secretsSettle)
		drain(w)
		change()
		select {
		case <-w.Changed():
		case <-time.After(within):
			t.Fatalf("%s: no wake-up within %s", what, within)
		}
	}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}

	wake("secrets directory created after start", secretsRetry+2*time.Second, func() {
		must(os.MkdirAll(filepath.Join(dir, "tor"), 0o700))
		must(os.WriteFile(filepath.Join(dir, "tor", "password"), []byte("one\n"), 0o600))
	})

	wake("file written in place", 2*time.Second, func() {
		must(os.WriteFile(filepath.Join(dir, "tor", "password"), []byte("two\n"), 0o600))
	})
	wake("file replaced by rename", 2*time.Second, func() {
		tmp := filepath.Join(dir, "tor", ".password.tmp")
		must(os.WriteFile(tmp, []byte("three\n"), 0o600))
		must(os.Rename(tmp, filepath.Join(dir, "tor", "password")))
	})
	wake("new secret directory", 2*time.Second, func() {
		must(os.Mkdir(filepath.Join(dir, "mesh"), 0o700))
	})
	wake("file in the new secret directory", 2*time.Second, func() {
		must(os.WriteFile(filepath.Join(dir, "mesh", "password"), []byte("m\n"), 0o600))
	})

	// Kubernetes' secret volume: <name>/<key> → ..data/<key>, ..data → ..<timestamp>; an
	// update writes a new timestamped directory and renames a new ..data link over the old.
	k8s := filepath.Join(dir, "k8s")
	must(os.MkdirAll(filepath.Join(k8s, "..v1"), 0o700))
	must(os.WriteFile(filepath.Join(k8s, "..v1", "password"), []byte("old"), 0o600))
	must(os.Symlink("..v1", filepath.Join(k8s, "..data")))
	must(os.Symlink(filepath.Join("..data", "password"), filepath.Join(k8s, "password")))
	wake("Kubernetes ..data swap", 2*time.Second, func() {
		must(os.MkdirAll(filepath.Join(k8s, "..v2"), 0o700))
		must(os.WriteFile(filepath.Join(k8s, "..v2", "password"), []byte("new"), 0o600))
		must(os.Symlink("..v2", filepath.Join(k8s, "..data_tmp")))
		must(os.Rename(filepath.Join(k8s, "..data_tmp"), filepath.Join(k8s, "..data")))
	})
	if s, err := readSecret(dir, "k8s", "password"); err != nil || s.Reveal() != "new" {
		t.Errorf("after the swap the secret reads %v, %v; want new", s, err)
	}
}

func drain(w *SecretsWatcher) {
	select {
	case <-w.Changed():
	default:
	}
}
