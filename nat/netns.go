package nat

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"

	"github.com/vishvananda/netns"
)

// openNetNS opens the network namespace at path, or returns netns.None() (meaning the
// caller's own namespace) for "".
func openNetNS(path string) (netns.NsHandle, error) {
	if path == "" {
		return netns.None(), nil
	}
	h, err := netns.GetFromPath(path)
	if err != nil {
		return netns.None(), fmt.Errorf("open network namespace %s: %w", path, err)
	}
	return h, nil
}

// runner runs the iptables binaries in the network namespace tabby manages. iptables and
// ipset state is per network namespace, and an exec'd binary inherits the namespace of the
// OS thread that forks it, so with a namespace set each command is started from a fresh
// goroutine locked to a thread that has entered the namespace. That thread is never unlocked:
// when the goroutine ends the Go runtime ends the thread instead of handing it, still inside
// the other namespace, to unrelated goroutines.
type runner struct {
	ns netns.NsHandle // netns.None(): the process's own namespace, no switching
}

// do calls fn on a thread inside r's namespace.
func (r runner) do(fn func() error) error {
	if !r.ns.IsOpen() {
		return fn()
	}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if err := netns.Set(r.ns); err != nil {
			errc <- fmt.Errorf("enter network namespace: %w", err)
			return
		}
		errc <- fn()
	}()
	return <-errc
}

// output runs bin with args (and stdin, if not empty) in r's namespace and returns what it
// printed. A failure carries the command and its stderr, which is where iptables explains
// itself ("line 3 failed: ...").
func (r runner) output(ctx context.Context, stdin, bin string, args ...string) (string, error) {
	var stdout, stderr bytes.Buffer
	err := r.do(func() error {
		cmd := exec.CommandContext(ctx, bin, args...)
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		if stdin != "" {
			cmd.Stdin = strings.NewReader(stdin)
		}
		return cmd.Run()
	})
	if err != nil {
		return "", fmt.Errorf("%s %s: %w: %s", filepath.Base(bin), strings.Join(args, " "), err,
			strings.TrimSpace(stderr.String()))
	}
	return stdout.String(), nil
}
