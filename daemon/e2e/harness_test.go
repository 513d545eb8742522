// Package e2e holds tabbyd's end-to-end tests: real tabbyd processes, each inside a network
// namespace of a lab (package lab, the one harness) the test made, against a real etcd that
// also runs inside a namespace, with workloads made by the real tabby-cni binary. Nothing
// here touches the root namespace's routes, addresses, links or firewall: the test process
// reaches etcd and the daemons' HTTP endpoints by creating its sockets inside their
// namespaces.
package e2e

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tabby-net/tabby/internal/namedns"
	"github.com/tabby-net/tabby/internal/netnstest"
	"github.com/tabby-net/tabby/internal/statusapi"
	"github.com/tabby-net/tabby/lab"
	"github.com/tabby-net/tabby/lab/labtest"
)

// binDir holds the binaries TestMain built for this test binary: tabbyd, tabby-cni and
// tabbylab (whose embedded etcd the lab runs).
var binDir string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "tabby-e2e-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binDir = dir
	args := []string{"build", "-o", dir + "/"}
	for _, cmd := range []string{"tabbyd", "tabby-cni", "tabbylab"} {
		args = append(args, "github.com/tabby-net/tabby/cmd/"+cmd)
	}
	if out, err := exec.Command("go", args...).CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "go %s: %v\n%s", strings.Join(args, " "), err, out)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func bin(name string) string { return filepath.Join(binDir, name) }

func requireRoot(t *testing.T) {
	t.Helper()
	netnstest.RequireRoot(t, "ping", "iptables", "ipset")
}

// newLab makes a lab on topo for this test (removed at cleanup) and builds its namespaces.
func newLab(t *testing.T, topo *lab.Topology) *lab.Cluster {
	t.Helper()
	c := labtest.New(t, &lab.Cluster{Topo: topo}, labtest.Options{Purpose: "e2e", BinDir: binDir})
	if err := topo.Build(); err != nil {
		t.Fatalf("build lab: %v", err)
	}
	return c
}

// run runs a command inside a namespace and returns its combined output.
func run(ctx context.Context, ns string, args ...string) (string, error) {
	out, err := namedns.CommandContext(ctx, ns, args[0], args[1:]...).CombinedOutput()
	return string(out), err
}

func mustRun(t *testing.T, ns string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := run(ctx, ns, args...)
	if err != nil {
		t.Fatalf("%s: %s: %v\n%s", ns, strings.Join(args, " "), err, out)
	}
	return out
}

// eventually polls cond every 20 ms until it returns "" (met) or timeout passes; it
// returns how long it took.
func eventually(t *testing.T, timeout time.Duration, what string, cond func() string) time.Duration {
	t.Helper()
	start := time.Now()
	var last string
	for {
		if last = cond(); last == "" {
			return time.Since(start)
		}
		if time.Since(start) > timeout {
			t.Fatalf("%s: not met after %s: %s", what, timeout, last)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// stop sends sig to a process and waits up to timeout for the exit; it returns the exit
// code and fails the test when the process had to be killed.
func stop(t *testing.T, p *namedns.Process, sig syscall.Signal, timeout time.Duration) int {
	t.Helper()
	if err := p.Stop(sig, timeout); err != nil {
		t.Fatal(err)
	}
	return p.ExitCode()
}

// daemonHost is one host of a lab with its tabbyd, as the tests drive it.
type daemonHost struct {
	t    *testing.T
	lab  *lab.Cluster
	name string
	ns   string
	addr netip.Prefix
	dir  string
	opts lab.TabbydOptions
	// config is the path of its tabbyd.yaml, written at each start.
	config string
	proc   *lab.Tabbyd
	notify *lab.Notifications
}

func newDaemonHost(t *testing.T, c *lab.Cluster, name string, opts lab.TabbydOptions) *daemonHost {
	t.Helper()
	h, ok := c.Topo.Host(name)
	if !ok {
		t.Fatalf("no host %s in the lab", name)
	}
	return &daemonHost{t: t, lab: c, name: name, ns: c.Topo.HostNS(name), addr: h.Addr, dir: c.HostDir(name),
		opts: opts, config: c.TabbydConfigPath(name)}
}

func (h *daemonHost) socket() string { return h.lab.StatusSocket(h.name) }

// start runs tabbyd inside the host's namespace, with a NOTIFY_SOCKET the test listens on
// and any extra environment variables.
func (h *daemonHost) start(env ...string) {
	h.t.Helper()
	o := h.opts
	o.Env = append(slices.Clone(o.Env), env...)
	o.Notify = true
	d, err := h.lab.StartTabbyd(h.name, o)
	if err != nil {
		h.t.Fatal(err)
	}
	h.proc, h.notify = d, d.Notify
	h.t.Cleanup(func() {
		if h.t.Failed() {
			h.t.Logf("tabbyd on %s, last log lines:\n%s", h.name, d.Tail(40))
		}
	})
}

// waitReady waits for READY=1 on the notify socket.
func (h *daemonHost) waitReady(timeout time.Duration) time.Duration {
	h.t.Helper()
	start := time.Now()
	if !h.notify.Wait("READY=1", timeout) {
		h.t.Fatalf("tabbyd on %s: no READY=1 within %s; notifications %q; log:\n%s", h.name, timeout, h.notify.All(), h.proc.Tail(40))
	}
	return time.Since(start)
}

// get fetches a URL of the daemon's HTTP endpoints from inside its namespace.
func (h *daemonHost) get(url string) (int, string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return h.lab.HTTPGet(ctx, h.name, url)
}

func (h *daemonHost) readiness() (int, string) {
	code, body, err := h.get("http://127.0.0.1:9099/readiness")
	if err != nil {
		return 0, err.Error()
	}
	return code, body
}

func (h *daemonHost) metrics() string {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	body, err := h.lab.Metrics(ctx, h.name)
	if err != nil {
		h.t.Fatal(err)
	}
	return body
}

func (h *daemonHost) status() (*statusapi.Status, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return statusapi.Fetch(ctx, h.socket())
}

// tabbyRoutes lists the routes with tabby's protocol in the host's main table.
func (h *daemonHost) tabbyRoutes() []string {
	h.t.Helper()
	out := mustRun(h.t, h.ns, "ip", "-4", "route", "show", "proto", "95")
	var routes []string
	for l := range strings.Lines(out) {
		if l = strings.TrimSpace(l); l != "" {
			routes = append(routes, l)
		}
	}
	slices.Sort(routes)
	return routes
}

// workload is a network namespace plugged in by tabby-cni.
type workload struct {
	ns   string
	addr netip.Addr
}

// addWorkload plugs a workload named name into the host with the lab's tabby-cni.
func addWorkload(t *testing.T, h *daemonHost, name string) *workload {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	addr, err := h.lab.AddWorkload(ctx, lab.Workload{Name: name, Host: h.name})
	if err != nil {
		t.Fatal(err)
	}
	return &workload{ns: h.lab.PodNS(name), addr: addr}
}

// ping sends count pings and reports whether all came back.
func ping(ns string, dst netip.Addr, count int, interval string) (bool, string) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	out, err := run(ctx, ns, "ping", "-n", "-q", "-c", fmt.Sprint(count), "-i", interval, "-W", "1", dst.String())
	return err == nil && strings.Contains(out, fmt.Sprintf("%d received", count)), out
}

// pingLoss parses ping's summary: packets transmitted and received.
func pingLoss(out string) (sent, received int) {
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		if strings.Contains(sc.Text(), "packets transmitted") {
			fmt.Sscanf(sc.Text(), "%d packets transmitted, %d received", &sent, &received)
		}
	}
	return sent, received
}

// icmpSources listens for ICMP inside a namespace and records the source of every echo
// request that arrives: what "the far end sees".
type icmpSources struct {
	conn net.PacketConn
	mu   sync.Mutex
	seen map[netip.Addr]int
}

func listenICMP(t *testing.T, ns string) *icmpSources {
	t.Helper()
	s := &icmpSources{seen: map[netip.Addr]int{}}
	if err := namedns.Do(ns, func() error {
		c, err := net.ListenPacket("ip4:icmp", "0.0.0.0")
		s.conn = c
		return err
	}); err != nil {
		t.Fatalf("raw ICMP socket in %s: %v", ns, err)
	}
	t.Cleanup(func() { s.conn.Close() })
	go func() {
		buf := make([]byte, 1500)
		for {
			n, from, err := s.conn.ReadFrom(buf)
			if err != nil {
				return
			}
			if n > 0 && buf[0] == 8 { // echo request
				if a, ok := netip.AddrFromSlice(from.(*net.IPAddr).IP.To4()); ok {
					s.mu.Lock()
					s.seen[a]++
					s.mu.Unlock()
				}
			}
		}
	}()
	return s
}

func (s *icmpSources) count(a netip.Addr) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.seen[a]
}

func (s *icmpSources) reset() {
	s.mu.Lock()
	defer s.mu.Unlock()
	clear(s.seen)
}
