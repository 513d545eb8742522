package lab

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// netnsDir is where named network namespaces are bind-mounted, as iproute2 does, so that
// `ip netns exec` and `ip -n` work on the lab's namespaces too.
const netnsDir = "/run/netns"

// NSPath returns the bind-mount path of a named namespace.
func NSPath(name string) string { return filepath.Join(netnsDir, name) }

// createNamedNS creates a named network namespace without leaving the calling thread in
// it. It does the work of `ip netns add` in Go because busybox's ip (in the test VM) has
// no netns subcommand.
func createNamedNS(name string) error {
	if _, err := os.Stat(NSPath(name)); err == nil {
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

// deleteNamedNS removes a named namespace; a missing one is not an error.
func deleteNamedNS(name string) error {
	err := netns.DeleteNamed(name)
	if err != nil && !errors.Is(err, os.ErrNotExist) && !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("delete network namespace %s: %w", name, err)
	}
	return nil
}

// listNamedNS returns the names of the namespaces that start with prefix.
func listNamedNS(prefix string) ([]string, error) {
	entries, err := os.ReadDir(netnsDir)
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

// nsHandle opens a netlink handle bound to a named namespace. NETLINK_ROUTE is passed
// explicitly: without it a minimal guest kernel refuses the other families.
func nsHandle(name string) (*netlink.Handle, error) {
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

// nsFd opens a namespace for moving links into it; the caller closes it.
func nsFd(name string) (netns.NsHandle, error) {
	ns, err := netns.GetFromName(name)
	if err != nil {
		return 0, fmt.Errorf("open network namespace %s: %w", name, err)
	}
	return ns, nil
}

// writeSysctl writes a sysctl inside a named namespace. /proc/sys/net shows the network
// namespace of the thread that opens it, so the write is done from a thread moved there.
func writeSysctl(nsName, key, value string) error {
	return InNS(nsName, func() error {
		path := filepath.Join("/proc/sys", strings.ReplaceAll(key, ".", "/"))
		if err := os.WriteFile(path, []byte(value), 0o644); err != nil {
			return fmt.Errorf("sysctl %s=%s in %s: %w", key, value, nsName, err)
		}
		return nil
	})
}

// InNS runs fn on a thread that is inside the named namespace, then puts the thread back.
func InNS(nsName string, fn func() error) error {
	target, err := netns.GetFromName(nsName)
	if err != nil {
		return fmt.Errorf("open network namespace %s: %w", nsName, err)
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
			errc <- fmt.Errorf("enter network namespace %s: %w", nsName, err)
			return
		}
		errc <- fn()
		if netns.Set(orig) == nil {
			runtime.UnlockOSThread()
		}
	}()
	return <-errc
}

// Command returns a command that runs inside the named namespace. It uses nsenter
// (util-linux, or busybox's in the VM) rather than `ip netns exec`, which busybox lacks.
func Command(nsName string, name string, args ...string) *exec.Cmd {
	all := append([]string{"--net=" + NSPath(nsName), "--", name}, args...)
	return exec.Command("nsenter", all...)
}
