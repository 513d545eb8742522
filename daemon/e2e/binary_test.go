package e2e

import (
	"bytes"
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tabby-net/tabby/lab"
)

// tabbyd runs the binary outside any namespace (for commands that touch no network) and
// returns its exit code, stdout and stderr.
func tabbyd(t *testing.T, env []string, args ...string) (int, string, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin("tabbyd"), args...)
	cmd.Env = append(os.Environ(), env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if err != nil && cmd.ProcessState == nil {
		t.Fatalf("run tabbyd: %v", err)
	}
	return cmd.ProcessState.ExitCode(), stdout.String(), stderr.String()
}

// TestConfigErrorExitCode: a bad value is one line naming the key, exit code 2; so is a
// usage error; version exits 0.
func TestConfigErrorExitCode(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.yaml")
	os.WriteFile(bad, []byte("dataplane:\n  routeProtocol: 300\n"), 0o644)
	typo := filepath.Join(dir, "typo.yaml")
	os.WriteFile(typo, []byte("dataplane:\n  routeProtocl: 95\n"), 0o644)
	empty := filepath.Join(dir, "empty.yaml")
	os.WriteFile(empty, nil, 0o644)
	missing := filepath.Join(dir, "missing.yaml")

	for _, tc := range []struct {
		name   string
		env    []string
		args   []string
		code   int
		stderr string
	}{
		{name: "bad value", args: []string{"run", "--config", bad}, code: 2,
			stderr: "tabbyd: config: dataplane.routeProtocol: 300 is not a route protocol number (1..255)\n"},
		{name: "default command", args: []string{"--config", bad}, code: 2,
			stderr: "tabbyd: config: dataplane.routeProtocol: 300 is not a route protocol number (1..255)\n"},
		{name: "unknown key", args: []string{"run", "--config", typo}, code: 2,
			stderr: "tabbyd: config: " + typo + ": unknown key \"dataplane.routeProtocl\"\n"},
		{name: "bad env value", env: []string{"TABBY_LOGLEVEL=loud"}, args: []string{"run", "--config", empty}, code: 2,
			stderr: "tabbyd: config: logLevel: \"loud\" must be debug, info, warn or error\n"},
		{name: "bad flag value", args: []string{"cleanup", "--config", empty, "--log-level", "loud"}, code: 2,
			stderr: "tabbyd: config: logLevel: \"loud\" must be debug, info, warn or error\n"},
		{name: "missing file", args: []string{"run", "--config", missing}, code: 2,
			stderr: "tabbyd: config: " + missing + ": cannot read the configuration file: " + missing + ": no such file or directory\n"},
		{name: "unknown command", args: []string{"frobnicate"}, code: 2},
		{name: "unknown flag", args: []string{"run", "--frobnicate"}, code: 2},
		{name: "version", args: []string{"version"}, code: 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, stdout, stderr := tabbyd(t, tc.env, tc.args...)
			if code != tc.code {
				t.Errorf("exit code %d, want %d (stdout %q, stderr %q)", code, tc.code, stdout, stderr)
			}
			if tc.stderr != "" && stderr != tc.stderr {
				t.Errorf("stderr:\n got %q\nwant %q", stderr, tc.stderr)
			}
			if tc.code == 2 && strings.Count(stderr, "\n") != 1 {
				t.Errorf("the error is not one line: %q", stderr)
			}
			if tc.name == "version" && !strings.HasPrefix(stdout, "tabbyd ") {
				t.Errorf("version output %q", stdout)
			}
		})
	}
}

// TestWithoutDatastore: a tabbyd whose etcd does not answer keeps retrying, serves
// /liveness, says why it is not ready on /readiness, the status socket, /metrics and the
// systemd STATUS line, and exits 0 on SIGTERM.
func TestWithoutDatastore(t *testing.T) {
	t.Parallel()
	requireRoot(t)
	// One host whose router, 10.77.0.1, exists but runs no etcd: connection refused,
	// quickly.
	l := oneHostLab(t, "lonely", "10.77.0.1/24", "10.77.0.2/24")
	// Start from forwarding off, whatever the lab set, so the check below proves that
	// tabbyd turned it on.
	host := l.Topo.HostNS("lonely")
	mustRun(t, host, "sysctl", "-q", "-w", "net.ipv4.ip_forward=0")
	// Autodetection instead of a fixed address, to run that path in the binary too.
	h := newDaemonHost(t, l, "lonely", lab.TabbydOptions{LogLevel: "debug", Autodetect: "interface=eth0"})
	h.start()

	eventually(t, 30*time.Second, "readiness names the datastore", func() string {
		code, body := h.readiness()
		if code == 503 && strings.Contains(body, "datastore unreachable: ") && strings.Contains(body, "not converged yet") {
			return ""
		}
		return body
	})
	// Workloads need forwarding; a fresh namespace starts with it off.
	if out := mustRun(t, host, "cat", "/proc/sys/net/ipv4/ip_forward"); strings.TrimSpace(out) != "1" {
		t.Errorf("IPv4 forwarding not turned on: %q", out)
	}
	if code, body, err := h.get("http://127.0.0.1:9099/liveness"); err != nil || code != 200 || body != "ok\n" {
		t.Errorf("liveness = %d %q %v", code, body, err)
	}
	st, err := h.status()
	if err != nil {
		t.Fatal(err)
	}
	if st.Node != "lonely" || st.Ready || st.NodeAddress != "10.77.0.2/24" || len(st.NotReady) == 0 {
		t.Errorf("status = %+v", st)
	}
	m := h.metrics()
	for _, want := range []string{"tabby_ready 0", `tabby_reconcile_duration_seconds_bucket{subsystem="routes"`, "tabby_datastore_errors_total "} {
		if !strings.Contains(m, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	if !h.notify.Wait("STATUS=Waiting for etcd: "+strings.TrimPrefix(firstLine(t, h, "datastore unreachable: "), "datastore unreachable: "), 10*time.Second) {
		t.Errorf("no STATUS=Waiting for etcd line: %q", h.notify.All())
	}
	if h.notify.Wait("READY=1", 0) {
		t.Error("READY=1 sent without a datastore")
	}
	if code := stop(t, h.proc.Process, syscall.SIGTERM, 15*time.Second); code != 0 {
		t.Errorf("exit code after SIGTERM = %d, want 0\n%s", code, h.proc.Tail(20))
	}
	if _, err := os.Stat(h.socket()); err == nil {
		t.Error("the status socket file was left behind")
	}
}

// oneHostLab is a lab of one host behind a router, with no etcd and no outside host.
func oneHostLab(t *testing.T, host, router, addr string) *lab.Cluster {
	t.Helper()
	return newLab(t, &lab.Topology{
		Segments: []lab.Segment{{Name: "s1", Router: netip.MustParsePrefix(router)}},
		Hosts:    []lab.Host{{Name: host, Addr: netip.MustParsePrefix(addr), Segment: "s1"}},
		MTU:      1500,
	})
}

// firstLine returns the readiness line that starts with prefix.
func firstLine(t *testing.T, h *daemonHost, prefix string) string {
	t.Helper()
	_, body := h.readiness()
	for l := range strings.Lines(body) {
		if strings.HasPrefix(l, prefix) {
			return strings.TrimSpace(l)
		}
	}
	t.Fatalf("no readiness line starts with %q: %q", prefix, body)
	return ""
}

// TestAddressAppearsLater: a tabbyd that starts before its NIC has an address says so and
// goes on once the address appears (interfaces configured late at boot).
func TestAddressAppearsLater(t *testing.T) {
	t.Parallel()
	requireRoot(t)
	// The host's eth0 (10.78.1.2) is not the interface autodetection looks for; eth1, which
	// appears later, is.
	l := oneHostLab(t, "late", "10.78.1.1/24", "10.78.1.2/24")
	host := l.Topo.HostNS("late")
	h := newDaemonHost(t, l, "late", lab.TabbydOptions{LogLevel: "debug", Autodetect: "interface=^eth1$"})
	h.start()

	eventually(t, 20*time.Second, "readiness names the missing address", func() string {
		code, body := h.readiness()
		if code == 503 && strings.Contains(body, "no node address: interface=^eth1$: no interface that is up and not skipped") {
			return ""
		}
		return fmt.Sprintf("%d %q", code, body)
	})
	if st, err := h.status(); err != nil || st.Ready || len(st.NotReady) == 0 || st.NodeAddress != "" {
		t.Errorf("status while waiting for the address: %+v %v", st, err)
	}
	// Both ends inside the host: eth1 gets the address, its peer only has to be up.
	mustRun(t, host, "ip", "link", "add", "eth1", "type", "veth", "peer", "name", "eth1p")
	mustRun(t, host, "ip", "addr", "add", "10.78.0.2/24", "dev", "eth1")
	mustRun(t, host, "ip", "link", "set", "eth1p", "up")
	mustRun(t, host, "ip", "link", "set", "eth1", "up")
	eventually(t, 30*time.Second, "the address is found", func() string {
		st, err := h.status()
		if err != nil {
			return err.Error()
		}
		if st.NodeAddress != "10.78.0.2/24" {
			return fmt.Sprintf("node address %q, not ready because %q", st.NodeAddress, st.NotReady)
		}
		return ""
	})
	if code, body := h.readiness(); strings.Contains(body, "no node address") {
		t.Errorf("readiness still names the address: %d %q", code, body)
	}
}
