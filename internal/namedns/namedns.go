// Package namedns creates, enters and removes named network namespaces (the ones iproute2
// keeps under /run/netns) and runs commands and processes inside them. It is the one place
// that does so for the lab, the end-to-end harness and the tests (internal/netnstest wraps
// it for testing.TB). It does everything `ip netns add/del/exec` would do in Go or through
// nsenter, because busybox's ip (in the test VM) has no netns subcommand.
package namedns

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Dir is where named network namespaces are bind-mounted, as iproute2 does, so that
// `ip netns exec` and `ip -n` work on these namespaces too.
const Dir = "/run/netns"

// Path returns the bind-mount path of a named namespace.
func Path(name string) string { return filepath.Join(Dir, name) }

// Create creates a named network namespace without leaving the calling thread in it.
func Create(name string) error {
	if _, err := os.Stat(Path(name)); err == nil {
		return fmt.Errorf("network namespace %s exists already", name)
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		return fmt.Errorf("current network namespace: %w", err)
	}
	defer orig.Close()
	h, err := netns.NewNamed(name)
	if err != nil {
		// NewNamed may have switched the thread before failing.
		_ = netns.Set(orig)
		return fmt.Errorf("create network namespace %s: %w", name, err)
	}
	h.Close()
	if err := netns.Set(orig); err != nil {
		// The thread is stuck in the wrong namespace: never hand it back to the scheduler.
		runtime.Goexit()
	}
	return nil
}

// Delete removes a named namespace: its bind mount and the file under Dir. A missing one
// is not an error, nor is a file whose mount is gone already. Links inside it die with it
// once no process holds it.
func Delete(name string) error {
	path := Path(name)
	if err := unix.Unmount(path, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("delete network namespace %s: unmount: %w", name, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("delete network namespace %s: %w", name, err)
	}
	return nil
}

// Exists reports whether a named namespace is present.
func Exists(name string) bool {
	_, err := os.Stat(Path(name))
	return err == nil
}

// List returns the names of the namespaces that start with prefix.
func List(prefix string) ([]string, error) {
	entries, err := os.ReadDir(Dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), prefix) {
			out = append(out, e.Name())
		}
	}
	return out, nil
}

// Handle opens a netlink handle bound to a named namespace; the caller closes it.
// NETLINK_ROUTE is passed explicitly: without it a minimal guest kernel refuses the other
// families.
func Handle(name string) (*netlink.Handle, error) {
	ns, err := netns.GetFromName(name)
	if err != nil {
		return nil, fmt.Errorf("open network namespace %s: %w", name, err)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns, unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("netlink handle in %s: %w", name, err)
	}
	return h, nil
}

// Open opens a namespace (to move links into it, to bind a reconciler to it); the caller
// closes the handle.
func Open(name string) (netns.NsHandle, error) {
	ns, err := netns.GetFromName(name)
	if err != nil {
		return 0, fmt.Errorf("open network namespace %s: %w", name, err)
	}
	return ns, nil
}

// Do runs fn on a thread that is inside the named namespace, then puts the thread back.
// Sockets fn creates belong to that namespace for their whole life, whichever thread uses
// them later.
func Do(name string, fn func() error) error {
	target, err := netns.GetFromName(name)
	if err != nil {
		return fmt.Errorf("open network namespace %s: %w", name, err)
	}
	defer target.Close()
	errc := make(chan error, 1)
	// A fresh goroutine: if the thread cannot be restored it exits with the goroutine
	// instead of going back to the scheduler in the wrong namespace.
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			errc <- err
			return
		}
		defer orig.Close()
		if err := netns.Set(target); err != nil {
			errc <- fmt.Errorf("enter network namespace %s: %w", name, err)
			return
		}
		errc <- fn()
		if netns.Set(orig) == nil {
			runtime.UnlockOSThread()
		}
	}()
	return <-errc
}

// Dial opens a connection from inside a named namespace. The root namespace has no route
// into a lab (and must not get one), so this is how a test reaches a daemon or etcd there.
func Dial(ctx context.Context, name, network, addr string) (net.Conn, error) {
	var conn net.Conn
	err := Do(name, func() error {
		var d net.Dialer
		c, err := d.DialContext(ctx, network, addr)
		conn = c
		return err
	})
	return conn, err
}

// Dialer returns Dial bound to a namespace, in the form http.Transport and gRPC take.
func Dialer(name string) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		return Dial(ctx, name, network, addr)
	}
}

// WriteSysctl writes a sysctl inside a named namespace. /proc/sys/net shows the network
// namespace of the thread that opens it, so the write is done from a thread moved there.
func WriteSysctl(name, key, value string) error {
	return Do(name, func() error {
		path := filepath.Join("/proc/sys", strings.ReplaceAll(key, ".", "/"))
		if err := os.WriteFile(path, []byte(value), 0o644); err != nil {
			return fmt.Errorf("sysctl %s=%s in %s: %w", key, value, name, err)
		}
		return nil
	})
}

// Command returns a command that runs inside the named namespace. It uses nsenter
// (util-linux, or busybox's in the VM), which execs the program in place: the command's
// PID is the program's own.
func Command(name string, program string, args ...string) *exec.Cmd {
	all := append([]string{"--net=" + Path(name), "--", program}, args...)
	return exec.Command("nsenter", all...)
}

// CommandContext is Command killed when ctx ends.
func CommandContext(ctx context.Context, name string, program string, args ...string) *exec.Cmd {
	all := append([]string{"--net=" + Path(name), "--", program}, args...)
	return exec.CommandContext(ctx, "nsenter", all...)
}
