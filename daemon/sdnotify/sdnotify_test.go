package sdnotify

import (
	"context"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"
)

// listen opens the unixgram socket a service manager would and points NOTIFY_SOCKET at it.
func listen(t *testing.T) *net.UnixConn {
	t.Helper()
	path := filepath.Join(t.TempDir(), "notify.sock")
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	t.Setenv("NOTIFY_SOCKET", path)
	return c
}

func read(t *testing.T, c *net.UnixConn) string {
	t.Helper()
	buf := make([]byte, 4096)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, err := c.Read(buf)
	if err != nil {
		t.Fatalf("no notification: %v", err)
	}
	return string(buf[:n])
}

func TestNotifications(t *testing.T) {
	c := listen(t)
	n := New(slog.New(slog.NewTextHandler(io.Discard, nil)))
	n.Status("Waiting for etcd: connection refused")
	n.Status("Waiting for etcd: connection refused") // unchanged: not sent again
	n.Status("Converged: 3 routes, 0 BGP peers up")
	n.Ready()
	n.Ready() // once only
	n.Stopping()
	for _, want := range []string{
		"STATUS=Waiting for etcd: connection refused",
		"STATUS=Converged: 3 routes, 0 BGP peers up",
		"READY=1\nSTATUS=Converged: 3 routes, 0 BGP peers up",
		"STOPPING=1",
	} {
		if got := read(t, c); got != want {
			t.Errorf("got %q, want %q", got, want)
		}
	}
}

func TestWatchdog(t *testing.T) {
	c := listen(t)
	t.Setenv("WATCHDOG_USEC", "100000")
	t.Setenv("WATCHDOG_PID", strconv.Itoa(os.Getpid()))
	n := New(slog.New(slog.NewTextHandler(io.Discard, nil)))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	alive := make(chan bool, 1)
	alive <- true
	go func() {
		defer close(done)
		n.RunWatchdog(ctx, func() bool {
			select {
			case a := <-alive:
				return a
			default:
				return false // stuck from the second tick on
			}
		})
	}()
	if got := read(t, c); got != "WATCHDOG=1" {
		t.Errorf("got %q, want WATCHDOG=1", got)
	}
	// A stuck daemon must not feed the watchdog.
	c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	if n, err := c.Read(make([]byte, 64)); err == nil {
		t.Errorf("watchdog fed while stuck (%d bytes)", n)
	}
	cancel()
	<-done
}
