package statussock

import (
	"context"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tabby-net/tabby/internal/statusapi"
)

func TestServeAndStaleSocket(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	path := filepath.Join(dir, "run", "tabbyd.sock")

	// A stale socket: bound, then its listener closed without unlinking the file, as a
	// killed daemon leaves it.
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	stale, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	stale.(*net.UnixListener).SetUnlinkOnClose(false)
	stale.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	l, err := Listen(ctx, path)
	if err != nil {
		t.Fatalf("Listen over a stale socket: %v", err)
	}
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != Mode {
		t.Errorf("socket mode = %v, %v; want %v", fi.Mode().Perm(), err, os.FileMode(Mode))
	}
	srvCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- Serve(srvCtx, l, func() statusapi.Status {
			return statusapi.Status{Node: "worker-1", Ready: true, Peers: []statusapi.Peer{{Address: "10.30.0.56", State: "up"}}}
		}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	}()

	st, err := statusapi.Fetch(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Node != "worker-1" || !st.Ready || len(st.Peers) != 1 || st.Peers[0].Address != "10.30.0.56" {
		t.Errorf("fetched %+v", st)
	}

	// A second daemon must not steal a live socket.
	if _, err := Listen(ctx, path); err == nil || !strings.Contains(err.Error(), "another tabbyd") {
		t.Errorf("Listen on a live socket: %v", err)
	}
	stop()
	if err := <-done; err != nil {
		t.Errorf("Serve: %v", err)
	}

	// Any other file in the way is not removed.
	other := filepath.Join(dir, "plain")
	os.WriteFile(other, []byte("x"), 0o600)
	if _, err := Listen(ctx, other); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Errorf("Listen over a plain file: %v", err)
	}
}
