// Package nettest builds throwaway network topologies for the BGP speaker's tests:
// network namespaces named tabby-<purpose>-<random>, a bridge namespace that joins them,
// processes started inside them (tabby speakers, BIRD), all removed in t.Cleanup even when
// a test fails. Nothing here touches the root namespace's links, addresses or routes:
// veth pairs are created inside the bridge namespace with their other end moved straight
// into the host namespace.
package nettest

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// RequireRoot skips tests that build namespaces when not run as root (the environment
// cannot do what they check), and fails them when a tool they need is missing.
func RequireRoot(t testing.TB, tools ...string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to create network namespaces")
	}
	for _, tool := range append([]string{"ip", "ss"}, tools...) {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is not installed: %v", tool, err)
		}
	}
}

// Netns is a network namespace the test created.
type Netns string

// NewNetns creates tabby-<purpose>-<random> with lo up, deleted in t.Cleanup.
func NewNetns(t testing.TB, purpose string) Netns {
	t.Helper()
	var b [3]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	name := "tabby-" + purpose + "-" + hex.EncodeToString(b[:])
	Must(t, "ip", "netns", "add", name)
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v: %s", name, err, out)
		}
	})
	ns := Netns(name)
	ns.Must(t, "ip", "link", "set", "lo", "up")
	return ns
}

// Exec runs a command inside the namespace and returns its combined output.
func (ns Netns) Exec(args ...string) (string, error) {
	cmd := exec.Command("ip", append([]string{"netns", "exec", string(ns)}, args...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s in %s: %w: %s", strings.Join(args, " "), ns, err, bytes.TrimSpace(out))
	}
	return string(out), nil
}

// Must runs a command inside the namespace and fails the test if it fails.
func (ns Netns) Must(t testing.TB, args ...string) string {
	t.Helper()
	out, err := ns.Exec(args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// Must runs a command (in the test's own namespace) and fails the test if it fails.
func Must(t testing.TB, args ...string) string {
	t.Helper()
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v: %s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// LAN is a layer-2 segment: a bridge in its own namespace.
type LAN struct {
	ns    Netns
	ports int
}

// NewLAN creates the bridge namespace and its bridge.
func NewLAN(t testing.TB, purpose string) *LAN {
	t.Helper()
	ns := NewNetns(t, purpose)
	ns.Must(t, "ip", "link", "add", "br0", "type", "bridge")
	ns.Must(t, "ip", "link", "set", "br0", "up")
	return &LAN{ns: ns}
}

// Attach plugs a namespace into the LAN: a veth named ifname inside host with the address
// cidr (e.g. "10.99.0.1/24"), its peer on the bridge.
func (l *LAN) Attach(t testing.TB, host Netns, ifname string, cidrs ...string) {
	t.Helper()
	l.ports++
	port := fmt.Sprintf("p%d", l.ports)
	l.ns.Must(t, "ip", "link", "add", port, "type", "veth", "peer", "name", ifname, "netns", string(host))
	l.ns.Must(t, "ip", "link", "set", port, "master", "br0", "up")
	for _, c := range cidrs {
		host.Must(t, "ip", "addr", "add", c, "dev", ifname)
	}
	host.Must(t, "ip", "link", "set", ifname, "up")
}

// Proc is a process started inside a namespace.
type Proc struct {
	Cmd  *exec.Cmd
	done chan struct{}
	err  error
}

// Start runs a command inside a namespace with extra environment, output to logFile.
// t.Cleanup kills it (by its PID) if it is still running.
func Start(t testing.TB, ns Netns, env []string, logFile string, args ...string) *Proc {
	t.Helper()
	log, err := os.OpenFile(logFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	// ip netns exec enters the namespace and execs the command: same PID.
	cmd := exec.Command("ip", append([]string{"netns", "exec", string(ns)}, args...)...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		log.Close()
		t.Fatalf("start %s in %s: %v", strings.Join(args, " "), ns, err)
	}
	p := &Proc{Cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		log.Close()
		close(p.done)
	}()
	t.Cleanup(func() { p.Kill(syscall.SIGKILL) })
	return p
}

// Kill sends a signal and waits (up to 10 s) for the process to end.
func (p *Proc) Kill(sig syscall.Signal) error {
	select {
	case <-p.done:
		return nil
	default:
	}
	if err := p.Cmd.Process.Signal(sig); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return err
	}
	select {
	case <-p.done:
		return nil
	case <-time.After(10 * time.Second):
		_ = p.Cmd.Process.Kill()
		<-p.done
		return fmt.Errorf("pid %d did not end on %v", p.Cmd.Process.Pid, sig)
	}
}

// Signal sends a signal without waiting.
func (p *Proc) Signal(sig syscall.Signal) error { return p.Cmd.Process.Signal(sig) }

// Exited reports whether the process has ended.
func (p *Proc) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Eventually polls check until it returns nil or the timeout passes; then it fails the
// test with the last error. Convergence is asserted this way, never with timed checks.
func Eventually(t testing.TB, timeout time.Duration, what string, check func() error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var err error
	for {
		if err = check(); err == nil {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("%s: not within %v: %v", what, timeout, err)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// BIRD is a BIRD2 daemon running in a namespace with its own config and control socket.
type BIRD struct {
	Proc   *Proc
	Socket string
	Config string
	Log    string // BIRD's stderr (configure `log stderr all;` to have it)
}

// StartBIRD writes config to dir and runs `bird -f` in ns; it waits until birdc answers.
func StartBIRD(t testing.TB, ns Netns, dir, config string) *BIRD {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	b := &BIRD{Socket: filepath.Join(dir, "bird.ctl"), Config: filepath.Join(dir, "bird.conf"), Log: filepath.Join(dir, "bird.log")}
	if err := os.WriteFile(b.Config, []byte(config), 0o644); err != nil {
		t.Fatal(err)
	}
	b.Proc = Start(t, ns, nil, b.Log, "/usr/sbin/bird", "-f", "-s", b.Socket, "-c", b.Config)
	Eventually(t, 10*time.Second, "BIRD control socket", func() error {
		if b.Proc.Exited() {
			log, _ := os.ReadFile(b.Log)
			t.Fatalf("bird exited: %v\n%s", b.Proc.err, log)
		}
		_, err := b.Query("show status")
		return err
	})
	return b
}

// Query runs a birdc command and returns its output.
func (b *BIRD) Query(args ...string) (string, error) {
	out, err := exec.Command("birdc", append([]string{"-s", b.Socket}, args...)...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("birdc %s: %w: %s", strings.Join(args, " "), err, out)
	}
	return string(out), nil
}
