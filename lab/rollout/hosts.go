// Package rollout boots Debian hosts with systemd as PID 1 inside the lab's network
// namespaces, so that tabby can be installed on them as users install it: the Debian
// package and the Ansible role over SSH, tabbyd under its systemd unit. rootfs.sh builds
// the hosts' root file system once; each host boots from an overlay of its own on it.
package rollout

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/tabby-net/tabby/internal/namedns"
)

// Host is one Debian machine booted with systemd-nspawn in a network namespace the caller
// made. Its processes are found and stopped by PID: the nspawn process and the container's
// PID 1 (systemd).
type Host struct {
	Name string
	// NS is the network namespace the container runs in.
	NS string
	// Root is the container's root directory as the host machine sees it (the overlay).
	Root string

	dir    string // upper, work and merged directories of the overlay, the console log
	nspawn *exec.Cmd
	waited chan struct{} // closed when nspawn has exited
	leader int           // the container's PID 1 in the root PID namespace
}

// Boot starts a container from rootfs on an overlay under workDir and waits until its
// systemd has finished booting and sshd runs. authorizedKey goes to the ubuntu user's
// authorized_keys. On failure nothing of it is left behind.
func Boot(ctx context.Context, rootfs, workDir, name, ns string, authorizedKey []byte) (h *Host, err error) {
	h = &Host{Name: name, NS: ns, dir: filepath.Join(workDir, "host-"+name)}
	h.Root = filepath.Join(h.dir, "merged")
	defer func() {
		if err != nil {
			err = errors.Join(fmt.Errorf("host %s: %w (console: %s)", name, err, h.consoleTail()), h.Stop())
			h = nil
		}
	}()
	for _, d := range []string{"upper", "work", "merged"} {
		if err := os.MkdirAll(filepath.Join(h.dir, d), 0o755); err != nil {
			return h, err
		}
	}
	opts := fmt.Sprintf("lowerdir=%s,upperdir=%s,workdir=%s", rootfs, filepath.Join(h.dir, "upper"), filepath.Join(h.dir, "work"))
	if err := syscall.Mount("overlay", h.Root, "overlay", 0, opts); err != nil {
		return h, fmt.Errorf("mount the overlay on %s: %w", h.Root, err)
	}
	// The host's own name resolves without DNS (the containers have none), as cloud-init
	// arranges on a cloud image: sudo looks it up on every call.
	hosts := fmt.Sprintf("127.0.0.1\tlocalhost\n127.0.1.1\t%s\n", name)
	if err := os.WriteFile(filepath.Join(h.Root, "etc/hosts"), []byte(hosts), 0o644); err != nil {
		return h, err
	}
	ssh := filepath.Join(h.Root, "home/ubuntu/.ssh")
	if err := os.MkdirAll(ssh, 0o700); err != nil {
		return h, err
	}
	if err := os.WriteFile(filepath.Join(ssh, "authorized_keys"), authorizedKey, 0o600); err != nil {
		return h, err
	}
	// The ubuntu user of the tree: uid and gid 1000, as useradd gave it.
	for _, p := range []string{ssh, filepath.Join(ssh, "authorized_keys")} {
		if err := os.Lchown(p, 1000, 1000); err != nil {
			return h, err
		}
	}
	console, err := os.Create(filepath.Join(h.dir, "console.log"))
	if err != nil {
		return h, err
	}
	defer console.Close()
	// --register=no: no machined on this machine. --private-network with the namespace:
	// the container owns its network (CAP_NET_ADMIN, a writable /proc/sys/net).
	h.nspawn = exec.Command("systemd-nspawn", "--quiet", "-D", h.Root, "--boot",
		"--register=no", "--keep-unit", "--private-network",
		"--network-namespace-path="+namedns.Path(ns), "--machine="+name)
	h.nspawn.Stdout = console
	h.nspawn.Stderr = console
	// Its own process group, so a ^C on the test reaches the test, which stops the
	// container in order.
	h.nspawn.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := h.nspawn.Start(); err != nil {
		return h, fmt.Errorf("systemd-nspawn: %w", err)
	}
	h.waited = make(chan struct{})
	go func() { _ = h.nspawn.Wait(); close(h.waited) }()

	deadline := time.Now().Add(90 * time.Second)
	for h.leader == 0 {
		if pid := containerInit(h.nspawn.Process.Pid); pid != 0 {
			h.leader = pid
			break
		}
		if err := h.sleep(ctx, deadline, "systemd-nspawn started no container"); err != nil {
			return h, err
		}
	}
	for {
		out, _ := h.Output(ctx, "systemctl", "is-system-running")
		state := strings.TrimSpace(out)
		if state == "running" || state == "degraded" {
			// sshd runs and logins are open: pam_nologin refuses the ubuntu user while
			// /run/nologin exists (until systemd-user-sessions.service has run).
			out, err := h.Output(ctx, "sh", "-c", "systemctl is-active ssh.service && test ! -e /run/nologin")
			if err == nil {
				return h, nil
			} else if time.Now().After(deadline) {
				return h, fmt.Errorf("booted (%s) but sshd does not take logins: %s", state, strings.TrimSpace(out))
			}
		}
		if err := h.sleep(ctx, deadline, "systemd did not finish booting (state "+state+")"); err != nil {
			return h, err
		}
	}
}

// sleep waits a little, or says why waiting is over.
func (h *Host) sleep(ctx context.Context, deadline time.Time, what string) error {
	select {
	case <-h.waited:
		return fmt.Errorf("systemd-nspawn exited: %v", h.nspawn.ProcessState)
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(200 * time.Millisecond):
	}
	if time.Now().After(deadline) {
		return fmt.Errorf("%s within 90s", what)
	}
	return nil
}

// containerInit returns the container's PID 1 once it runs systemd, or 0. systemd-nspawn
// forks helpers before the container's init, and the init execs systemd only after
// setting the container up: the child counts once it is systemd.
func containerInit(nspawn int) int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", nspawn, nspawn))
	if err != nil {
		return 0
	}
	for _, f := range strings.Fields(string(b)) {
		pid, err := strconv.Atoi(f)
		if err != nil {
			continue
		}
		if exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid)); err == nil && strings.HasSuffix(exe, "/systemd") {
			return pid
		}
	}
	return 0
}

// Leader is the container's PID 1 (systemd) as the root PID namespace numbers it.
func (h *Host) Leader() int { return h.leader }

// Command returns a command that runs inside the container: in all its namespaces, with
// its root directory, as root.
func (h *Host) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	all := append([]string{"-t", strconv.Itoa(h.leader), "-a", "--", name}, args...)
	return exec.CommandContext(ctx, "nsenter", all...)
}

// Output runs a command inside the container and returns its stdout and stderr together.
func (h *Host) Output(ctx context.Context, name string, args ...string) (string, error) {
	var out bytes.Buffer
	cmd := h.Command(ctx, name, args...)
	cmd.Stdout = &out
	cmd.Stderr = &out
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("%s on %s: %w: %s", strings.Join(append([]string{name}, args...), " "), h.Name, err, strings.TrimSpace(out.String()))
	}
	return out.String(), nil
}

// PodNSPath is where a network namespace made inside the container with `ip netns add
// NAME` is seen from the root mount namespace.
func (h *Host) PodNSPath(name string) string {
	return fmt.Sprintf("/proc/%d/root/run/netns/%s", h.leader, name)
}

// Journal returns the journal of a unit inside the container, message text only.
func (h *Host) Journal(ctx context.Context, unit string) (string, error) {
	return h.Output(ctx, "journalctl", "-u", unit, "--no-pager", "-o", "cat")
}

// consoleTail is the end of the container's console, for an error message.
func (h *Host) consoleTail() string {
	b, err := os.ReadFile(filepath.Join(h.dir, "console.log"))
	if err != nil {
		return "none"
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) > 8 {
		lines = lines[len(lines)-8:]
	}
	return strings.Join(lines, " | ")
}

// Stop shuts the container down (nspawn turns SIGTERM into an orderly poweroff of its
// systemd), kills what is left by PID after a grace period, and removes its overlay. It
// can be called on a half-booted host and more than once.
func (h *Host) Stop() error {
	var errs []error
	if h.nspawn != nil && h.nspawn.Process != nil && h.waited != nil {
		_ = h.nspawn.Process.Signal(syscall.SIGTERM)
		select {
		case <-h.waited:
		case <-time.After(20 * time.Second):
			// The container's PID 1 takes its whole PID namespace with it.
			if h.leader != 0 {
				_ = syscall.Kill(h.leader, syscall.SIGKILL)
			}
			_ = h.nspawn.Process.Kill()
			select {
			case <-h.waited:
			case <-time.After(10 * time.Second):
				errs = append(errs, fmt.Errorf("host %s: systemd-nspawn (pid %d) does not exit", h.Name, h.nspawn.Process.Pid))
			}
		}
	}
	if err := syscall.Unmount(h.Root, 0); err != nil && !errors.Is(err, syscall.EINVAL) && !errors.Is(err, syscall.ENOENT) {
		if err := syscall.Unmount(h.Root, syscall.MNT_DETACH); err != nil {
			errs = append(errs, fmt.Errorf("host %s: unmount %s: %w", h.Name, h.Root, err))
		}
	}
	if len(errs) == 0 {
		errs = append(errs, os.RemoveAll(h.dir))
	}
	return errors.Join(errs...)
}
