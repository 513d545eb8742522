// Package e2e holds tabbyd's end-to-end tests: real tabbyd processes, each inside a network
// namespace the test made, against a real etcd that also runs inside a namespace, with
// workloads made by the real tabby-cni binary. Nothing here touches the root namespace's
// routes, addresses, links or firewall: the test process reaches etcd and the daemons'
// HTTP endpoints by creating its sockets inside their namespaces.
package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
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

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"

	"github.com/tabby-net/tabby/datastore"
	"github.com/tabby-net/tabby/internal/namedns"
	"github.com/tabby-net/tabby/internal/statusapi"
)

// binDir holds the binaries TestMain built for this test binary: tabbyd always, tabby-cni
// when the module has it.
var binDir string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "tabby-e2e-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binDir = dir
	for _, cmd := range []string{"tabbyd", "tabby-cni"} {
		pkg := "github.com/tabby-net/tabby/cmd/" + cmd
		out, err := exec.Command("go", "build", "-o", filepath.Join(dir, cmd), pkg).CombinedOutput()
		if err != nil {
			if cmd == "tabbyd" {
				fmt.Fprintf(os.Stderr, "build %s: %v\n%s", cmd, err, out)
				os.RemoveAll(dir)
				os.Exit(1)
			}
			fmt.Fprintf(os.Stderr, "note: %s not built (%v): tests that need it are skipped\n", cmd, err)
		}
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func bin(name string) string { return filepath.Join(binDir, name) }

// requireBin fails a test whose binary TestMain did not build: every program of tabby
// exists, so a missing one is a broken build, not a reason to test less.
func requireBin(t *testing.T, name string) {
	t.Helper()
	if _, err := os.Stat(bin(name)); err != nil {
		t.Fatalf("%s was not built: %v", name, err)
	}
}

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root for network namespaces")
	}
	for _, tool := range []string{"ip", "etcd", "ping", "iptables", "ipset"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("needs %s (make deps installs it)", tool)
		}
	}
}

func randSuffix(t testing.TB) string {
	b := make([]byte, 3)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

// inNS runs fn on an OS thread inside the named network namespace. Sockets created by fn
// belong to that namespace for their whole life, whichever thread uses them later.
func inNS(name string, fn func() error) error { return namedns.Do(name, fn) }

// nsDialer dials TCP from inside a namespace.
func nsDialer(ns string) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		var conn net.Conn
		err := inNS(ns, func() error {
			var d net.Dialer
			c, err := d.DialContext(ctx, network, addr)
			conn = c
			return err
		})
		return conn, err
	}
}

// run runs a command inside a namespace and returns its combined output.
func run(ctx context.Context, ns string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", ns}, args...)...)
	out, err := cmd.CombinedOutput()
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

// process is a command started by a test, stopped by PID at cleanup whatever happens.
type process struct {
	cmd  *exec.Cmd
	done chan struct{}
	err  error
	log  string
}

func startProcess(t *testing.T, logFile string, env []string, ns string, args ...string) *process {
	t.Helper()
	f, err := os.Create(logFile)
	if err != nil {
		t.Fatal(err)
	}
	// `ip netns exec` execs the program: the PID is the program's.
	cmd := exec.Command("ip", append([]string{"netns", "exec", ns}, args...)...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.Env = append(os.Environ(), env...)
	if err := cmd.Start(); err != nil {
		f.Close()
		t.Fatalf("start %s: %v", strings.Join(args, " "), err)
	}
	p := &process{cmd: cmd, done: make(chan struct{}), log: logFile}
	go func() {
		p.err = cmd.Wait()
		f.Close()
		close(p.done)
	}()
	t.Cleanup(func() { p.kill() })
	return p
}

// kill stops the process with SIGKILL and waits for it.
func (p *process) kill() {
	select {
	case <-p.done:
		return
	default:
	}
	p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.done
}

// signal sends sig and waits up to timeout for the exit; it returns the exit code.
func (p *process) stop(t *testing.T, sig syscall.Signal, timeout time.Duration) int {
	t.Helper()
	if err := p.cmd.Process.Signal(sig); err != nil {
		t.Fatalf("signal %v: %v", sig, err)
	}
	select {
	case <-p.done:
	case <-time.After(timeout):
		t.Fatalf("process %d did not exit within %s of %v", p.cmd.Process.Pid, timeout, sig)
	}
	return p.cmd.ProcessState.ExitCode()
}

// tail returns the last lines of the process's log, for failure messages.
func (p *process) tail(n int) string {
	b, _ := os.ReadFile(p.log)
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// etcdServer is Debian's etcd binary running inside a namespace.
type etcdServer struct {
	t        *testing.T
	ns       string
	dir      string
	endpoint string
	listen   netip.Addr
	proc     *process
}

func startEtcd(t *testing.T, ns string, listen netip.Addr, dir string) *etcdServer {
	t.Helper()
	e := &etcdServer{t: t, ns: ns, dir: dir, listen: listen, endpoint: "http://" + net.JoinHostPort(listen.String(), "2379")}
	e.start()
	return e
}

func (e *etcdServer) start() {
	e.t.Helper()
	peer := "http://127.0.0.1:2380"
	e.proc = startProcess(e.t, filepath.Join(e.dir, "etcd.log"), nil, e.ns, "etcd",
		"--name", "e2e", "--data-dir", filepath.Join(e.dir, "etcd"),
		"--listen-client-urls", e.endpoint, "--advertise-client-urls", e.endpoint,
		"--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
		"--initial-cluster", "e2e="+peer,
		"--heartbeat-interval", "10", "--election-timeout", "100",
		"--logger", "zap", "--log-level", "error")
}

// client connects to etcd from inside its namespace.
func (e *etcdServer) client(t *testing.T) *datastore.Client {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   []string{e.endpoint},
		DialTimeout: 5 * time.Second,
		DialOptions: []grpc.DialOption{grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			return nsDialer(e.ns)(ctx, "tcp", addr)
		})},
	})
	if err != nil {
		t.Fatalf("etcd client: %v", err)
	}
	t.Cleanup(func() { cli.Close() })
	c := datastore.NewFromEtcd(cli, "")
	eventually(t, 30*time.Second, "etcd answers", func() string {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		if _, _, err := c.List(ctx, "/calico/ipam/v2/config"); err != nil {
			return err.Error() + "\n" + e.proc.tail(10)
		}
		return ""
	})
	return c
}

// daemonHost is one host of the lab with its tabbyd.
type daemonHost struct {
	t      *testing.T
	name   string
	ns     string
	addr   netip.Prefix
	dir    string
	config string
	etcd   string
	proc   *process
	notify *notifyListener
}

func newDaemonHost(t *testing.T, name, ns string, addr netip.Prefix, dir, etcdEndpoint string) *daemonHost {
	t.Helper()
	h := &daemonHost{t: t, name: name, ns: ns, addr: addr, dir: filepath.Join(dir, name), etcd: etcdEndpoint}
	for _, d := range []string{"data", "run", "secrets", "rtprotos"} {
		if err := os.MkdirAll(filepath.Join(h.dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	h.config = filepath.Join(h.dir, "tabbyd.yaml")
	cfg := fmt.Sprintf(`nodeName: %s
etcd:
  endpoints: [%q]
ipv4:
  address: %s
labels:
  e2e: "true"
dataDir: %s
runDir: %s
statusSocket: %s
bgp:
  secretsDir: %s
health:
  listen: "127.0.0.1:9099"
metrics:
  listen: "127.0.0.1:9091"
logLevel: debug
`, name, etcdEndpoint, addr, filepath.Join(h.dir, "data"), filepath.Join(h.dir, "run"), h.socket(), filepath.Join(h.dir, "secrets"))
	if err := os.WriteFile(h.config, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	return h
}

func (h *daemonHost) socket() string { return filepath.Join(h.dir, "run", "tabbyd.sock") }

// start runs tabbyd inside the host's namespace, with a NOTIFY_SOCKET the test listens on
// and any extra environment variables.
func (h *daemonHost) start(env ...string) {
	h.t.Helper()
	h.notify = listenNotify(h.t, filepath.Join(h.dir, fmt.Sprintf("notify-%s.sock", randSuffix(h.t))))
	h.proc = startProcess(h.t, filepath.Join(h.dir, fmt.Sprintf("tabbyd-%d.log", time.Now().UnixNano())),
		append([]string{"NOTIFY_SOCKET=" + h.notify.path}, env...), h.ns,
		bin("tabbyd"), "run", "--config", h.config, "--rt-protos-dir", filepath.Join(h.dir, "rtprotos"))
	h.t.Cleanup(func() {
		if h.t.Failed() && h.proc != nil {
			h.t.Logf("tabbyd on %s, last log lines:\n%s", h.name, h.proc.tail(40))
		}
	})
}

// waitReady waits for READY=1 on the notify socket.
func (h *daemonHost) waitReady(timeout time.Duration) time.Duration {
	h.t.Helper()
	start := time.Now()
	if !h.notify.wait("READY=1", timeout) {
		h.t.Fatalf("tabbyd on %s: no READY=1 within %s; notifications %q; log:\n%s", h.name, timeout, h.notify.all(), h.proc.tail(40))
	}
	return time.Since(start)
}

// get fetches a URL of the daemon's HTTP endpoints from inside its namespace.
func (h *daemonHost) get(url string) (int, string, error) {
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DialContext: nsDialer(h.ns), DisableKeepAlives: true}}
	resp, err := client.Get(url)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
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
	code, body, err := h.get("http://127.0.0.1:9091/metrics")
	if err != nil || code != 200 {
		h.t.Fatalf("GET /metrics on %s: %d %v", h.name, code, err)
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

// notifyListener plays systemd: it receives sd_notify datagrams.
type notifyListener struct {
	path string
	conn *net.UnixConn

	mu   sync.Mutex
	msgs []string
	cond *sync.Cond
}

func listenNotify(t *testing.T, path string) *notifyListener {
	t.Helper()
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	n := &notifyListener{path: path, conn: c}
	n.cond = sync.NewCond(&n.mu)
	t.Cleanup(func() { c.Close() })
	go func() {
		buf := make([]byte, 4096)
		for {
			k, err := c.Read(buf)
			if err != nil {
				return
			}
			n.mu.Lock()
			n.msgs = append(n.msgs, string(buf[:k]))
			n.cond.Broadcast()
			n.mu.Unlock()
		}
	}()
	return n
}

// wait reports whether a notification containing the line want arrives within timeout.
func (n *notifyListener) wait(want string, timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for {
		for _, m := range n.all() {
			for l := range strings.Lines(m) {
				if strings.TrimSpace(l) == want {
					return true
				}
			}
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (n *notifyListener) all() []string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return slices.Clone(n.msgs)
}

// workload is a network namespace plugged in by tabby-cni.
type workload struct {
	ns          string
	containerID string
	addr        netip.Addr
	host        *daemonHost
}

// addWorkload creates a namespace and runs tabby-cni ADD for it inside the host's
// namespace, exactly as a CNI runtime does: CNI_* variables and the configuration on stdin.
func addWorkload(t *testing.T, h *daemonHost, ns string) *workload {
	t.Helper()
	requireBin(t, "tabby-cni")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if out, err := exec.CommandContext(ctx, "ip", "netns", "add", ns).CombinedOutput(); err != nil {
		t.Fatalf("netns add %s: %v: %s", ns, err, out)
	}
	t.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
	w := &workload{ns: ns, containerID: "e2e" + randSuffix(t) + randSuffix(t), host: h}
	res, err := w.cni(ctx, "ADD")
	if err != nil {
		t.Fatalf("tabby-cni ADD on %s: %v", h.name, err)
	}
	var result struct {
		IPs []struct {
			Address string `json:"address"`
		} `json:"ips"`
	}
	if err := json.Unmarshal([]byte(res), &result); err != nil || len(result.IPs) == 0 {
		t.Fatalf("tabby-cni ADD result %q: %v", res, err)
	}
	p, err := netip.ParsePrefix(result.IPs[0].Address)
	if err != nil {
		t.Fatalf("tabby-cni address %q: %v", result.IPs[0].Address, err)
	}
	w.addr = p.Addr()
	return w
}

func (w *workload) cni(ctx context.Context, command string) (string, error) {
	h := w.host
	conf := fmt.Sprintf(`{"cniVersion":"1.0.0","name":"tabby","type":"tabby-cni","etcd_endpoints":%q,"nodename":%q,"mtu":0,"data_dir":%q,"run_dir":%q}`,
		h.etcd, h.name, filepath.Join(h.dir, "data"), filepath.Join(h.dir, "run"))
	cmd := exec.CommandContext(ctx, "ip", "netns", "exec", h.ns, bin("tabby-cni"))
	cmd.Env = append(os.Environ(),
		"CNI_COMMAND="+command,
		"CNI_CONTAINERID="+w.containerID,
		"CNI_NETNS=/run/netns/"+w.ns,
		"CNI_IFNAME=eth0",
		"CNI_PATH="+binDir,
	)
	cmd.Stdin = strings.NewReader(conf)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("%v: %s %s", err, stdout.String(), stderr.String())
	}
	return stdout.String(), nil
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
	if err := inNS(ns, func() error {
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
