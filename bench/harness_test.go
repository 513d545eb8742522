package bench

import (
	"bufio"
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"

	"github.com/tabby-net/tabby/datastore"
	"github.com/tabby-net/tabby/datastore/etcdembed"
	"github.com/tabby-net/tabby/internal/namedns"
	"github.com/tabby-net/tabby/lab"
)

// childEnv makes the test binary run one of its helper programs instead of benchmarks:
// the etcd server (inside the router namespace) or tabbyd with profiling (profile_test.go).
const childEnv = "TABBY_BENCH_CHILD"

func TestMain(m *testing.M) {
	switch os.Getenv(childEnv) {
	case "":
		os.Exit(m.Run())
	case "etcd":
		os.Exit(etcdChild())
	case "tabbyd":
		os.Exit(tabbydChild())
	default:
		fmt.Fprintf(os.Stderr, "unknown %s=%q\n", childEnv, os.Getenv(childEnv))
		os.Exit(2)
	}
}

// etcdChild runs a single-member etcd, listening on every address of its namespace at
// port 2379, until SIGTERM. Its data lives in memory (TABBY_BENCH_ETCD_DIR on tmpfs), as
// a production member's would live on a fast disk: the benchmarks measure tabby, not fsync.
func etcdChild() int {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	srv, err := etcdembed.Start(ctx, etcdembed.Options{
		Dir: os.Getenv("TABBY_BENCH_ETCD_DIR"), Host: "0.0.0.0", AdvertiseHost: os.Getenv("TABBY_BENCH_ETCD_ADDR"),
		ClientPort: etcdPort, PeerPort: etcdPort + 1, Fast: true,
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, "etcd:", err)
		return 1
	}
	fmt.Println("etcd serving on", srv.Endpoint)
	<-ctx.Done()
	srv.Close()
	return 0
}

const etcdPort = 2379

// The benchmarks' addressing: one /16 segment behind a router namespace that runs etcd.
// Synthetic nodes of the cluster get 10.99.1.1 and up, measured hosts 10.99.0.2 and up;
// pool blocks are /26 of 10.128.0.0/9.
var (
	segmentPrefix = netip.MustParsePrefix("10.99.0.1/16")
	poolCIDR      = netip.MustParsePrefix("10.128.0.0/9")
)

// routeProto is tabby's default route protocol number.
const routeProto = 95

// hostAddr is the address of the i-th measured host (i from 0): 10.99.0.2, .3, …
func hostAddr(i int) netip.Prefix {
	return netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 99, byte((i + 2) >> 8), byte(i + 2)}), 16)
}

// nodeAddr is the address of the i-th synthetic node (i from 0), 250 per /24 from 10.99.1.1.
func nodeAddr(i int) netip.Addr {
	return netip.AddrFrom4([4]byte{10, 99, byte(1 + i/250), byte(1 + i%250)})
}

// blockCIDR is the i-th /26 of the pool.
func blockCIDR(i int) netip.Prefix {
	a := poolCIDR.Addr().As4()
	v := uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3])
	v += uint32(i) * 64
	return netip.PrefixFrom(netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)}), 26)
}

// env is one benchmark's private piece of the machine: a lab topology (router namespace
// with etcd, measured hosts) named tabby-bench-<random>, a state directory, and every
// process started in it. Cleanup removes all of it, also when the benchmark fails.
type env struct {
	tb     testing.TB
	topo   *lab.Topology
	dir    string
	binDir string

	mu    sync.Mutex
	procs []*proc
	etcd  *datastore.Client
}

// newEnv builds the namespaces: a router holding 10.99.0.1/16 on a bridge, and one host
// namespace per name, each with eth0 on that bridge (hostAddr(i)) and a default route via
// the router.
func newEnv(tb testing.TB, hosts ...string) *env {
	tb.Helper()
	var hs []lab.Host
	for i, h := range hosts {
		hs = append(hs, lab.Host{Name: h, Addr: hostAddr(i), Segment: "s0"})
	}
	return buildEnv(tb, []lab.Segment{{Name: "s0", Router: segmentPrefix}}, hs)
}

// newRoutedEnv is newEnv with every host in a /24 of its own behind the router
// (10.100.<i+1>.2/24, the router at .1), for many hosts: on one shared segment every host
// would hold an ARP entry for every other, and the kernel's neighbour table is one for all
// namespaces (gc_thresh3, 1,024 entries by default): 50 hosts in a full mesh overflow it,
// and then no namespace on the machine can resolve a new neighbour. The router keeps
// 10.99.0.1, where etcd listens.
func newRoutedEnv(tb testing.TB, hosts ...string) *env {
	tb.Helper()
	segs := []lab.Segment{{Name: "s0", Router: segmentPrefix}}
	var hs []lab.Host
	for i, h := range hosts {
		seg := fmt.Sprintf("s%d", i+1)
		segs = append(segs, lab.Segment{Name: seg, Router: netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 100, byte(i + 1), 1}), 24)})
		hs = append(hs, lab.Host{Name: h, Addr: netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 100, byte(i + 1), 2}), 24), Segment: seg})
	}
	return buildEnv(tb, segs, hs)
}

func buildEnv(tb testing.TB, segments []lab.Segment, hosts []lab.Host) *env {
	tb.Helper()
	if os.Geteuid() != 0 {
		tb.Skip("needs root for network namespaces")
	}
	bin := binDir(tb)
	suffix := make([]byte, 4)
	if _, err := rand.Read(suffix); err != nil {
		tb.Fatal(err)
	}
	prefix := "tabby-bench-" + hex.EncodeToString(suffix)
	topo := &lab.Topology{
		Prefix:   prefix,
		Segments: segments,
		Hosts:    hosts,
		Outside: lab.Outside{
			Addr:   netip.MustParsePrefix("198.51.100.10/24"),
			Router: netip.MustParsePrefix("198.51.100.1/24"),
			Knows:  netip.MustParsePrefix("10.99.0.0/16"),
		},
		MTU: 1500,
	}
	dir, err := os.MkdirTemp(tmpfsDir(), prefix+"-")
	if err != nil {
		tb.Fatal(err)
	}
	e := &env{tb: tb, topo: topo, dir: dir, binDir: bin}
	tb.Cleanup(e.close)
	if err := topo.Build(); err != nil {
		tb.Fatalf("build namespaces: %v", err)
	}
	return e
}

// hostIP is a measured host's address.
func (e *env) hostIP(host string) netip.Addr {
	h, _ := e.topo.Host(host)
	return h.Addr.Addr()
}

// tmpfsDir is a memory-backed directory for etcd's data and the daemons' state, so that
// disk latency is no part of any figure.
func tmpfsDir() string {
	if st, err := os.Stat("/dev/shm"); err == nil && st.IsDir() {
		return "/dev/shm"
	}
	return os.TempDir()
}

// binDir is where tabbyd was built: TABBY_BENCH_BIN, else ../bin (make build).
func binDir(tb testing.TB) string {
	dir := os.Getenv("TABBY_BENCH_BIN")
	if dir == "" {
		dir = "../bin"
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		tb.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(abs, "tabbyd")); err != nil {
		tb.Skipf("no tabbyd in %s: run make build (or set TABBY_BENCH_BIN)", abs)
	}
	return abs
}

// close stops every process by PID (SIGTERM, SIGKILL after 5 s), then removes the
// namespaces and the state directory.
func (e *env) close() {
	e.mu.Lock()
	procs := e.procs
	e.procs = nil
	cli := e.etcd
	e.etcd = nil
	e.mu.Unlock()
	if cli != nil {
		cli.Close()
	}
	var wg sync.WaitGroup
	for _, p := range procs {
		wg.Add(1)
		go func() { defer wg.Done(); p.stop(5 * time.Second) }()
	}
	wg.Wait()
	if err := e.topo.Destroy(); err != nil {
		e.tb.Errorf("remove namespaces: %v", err)
	}
	os.RemoveAll(e.dir)
}

// hostNS is the namespace of a measured host.
func (e *env) hostNS(host string) string { return e.topo.HostNS(host) }

// proc is a process started in one of the env's namespaces.
type proc struct {
	name    string
	cmd     *exec.Cmd
	log     string
	started time.Time
	done    chan struct{}
	err     error
}

// start runs a program inside a namespace with its output in <dir>/<name>.log. nsenter
// execs the program in place, so the PID is the program's own.
func (e *env) start(ns, name string, extraEnv []string, program string, args ...string) *proc {
	e.tb.Helper()
	logPath := filepath.Join(e.dir, name+".log")
	lf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		e.tb.Fatal(err)
	}
	defer lf.Close()
	cmd := namedns.Command(ns, program, args...)
	cmd.Stdout, cmd.Stderr = lf, lf
	cmd.Env = append(os.Environ(), extraEnv...)
	p := &proc{name: name, cmd: cmd, log: logPath, done: make(chan struct{})}
	p.started = time.Now()
	if err := cmd.Start(); err != nil {
		e.tb.Fatalf("start %s in %s: %v", name, ns, err)
	}
	go func() { p.err = cmd.Wait(); close(p.done) }()
	e.mu.Lock()
	e.procs = append(e.procs, p)
	e.mu.Unlock()
	return p
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

func (p *proc) running() bool {
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// stop sends SIGTERM and, after grace, SIGKILL, to this process only.
func (p *proc) stop(grace time.Duration) {
	if !p.running() {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(grace):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

// tail returns the last lines of the process's log, for failure messages.
func (p *proc) tail(n int) string {
	b, _ := os.ReadFile(p.log)
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// grep returns the lines of the process's log that contain s.
func (p *proc) grep(s string) string {
	b, _ := os.ReadFile(p.log)
	var out []string
	for line := range strings.Lines(string(b)) {
		if strings.Contains(line, s) {
			out = append(out, strings.TrimRight(line, "\n"))
		}
	}
	return strings.Join(out, "\n")
}

// logLine returns the first line of the process's log that contains s, "" when none.
func (p *proc) logLine(s string) string {
	f, err := os.Open(p.log)
	if err != nil {
		return ""
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		if strings.Contains(sc.Text(), s) {
			return sc.Text()
		}
	}
	return ""
}

// startEtcd starts the etcd child in the router namespace and returns a client that
// reaches it through sockets made in that namespace.
func (e *env) startEtcd(ctx context.Context) *datastore.Client {
	e.tb.Helper()
	dataDir := filepath.Join(e.dir, "etcd")
	router := e.topo.RouterNS()
	e.start(router, "etcd", []string{childEnv + "=etcd", "TABBY_BENCH_ETCD_DIR=" + dataDir,
		"TABBY_BENCH_ETCD_ADDR=" + segmentPrefix.Addr().String()}, os.Args[0])
	endpoint := e.etcdEndpoint()
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   []string{endpoint},
		DialTimeout: 5 * time.Second,
		DialOptions: []grpc.DialOption{grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			return namedns.Dial(ctx, router, "tcp", addr)
		})},
		Logger:             zap.NewNop(),
		MaxCallSendMsgSize: 64 << 20,
		MaxCallRecvMsgSize: 256 << 20,
	})
	if err != nil {
		e.tb.Fatalf("etcd client: %v", err)
	}
	c := datastore.NewFromEtcd(cli, "")
	e.mu.Lock()
	e.etcd = c
	e.mu.Unlock()
	deadline := time.Now().Add(30 * time.Second)
	for {
		pctx, cancel := context.WithTimeout(ctx, time.Second)
		_, err := cli.Get(pctx, "probe")
		cancel()
		if err == nil {
			return c
		}
		if time.Now().After(deadline) {
			e.tb.Fatalf("etcd did not answer within 30 s: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (e *env) etcdEndpoint() string {
	return fmt.Sprintf("http://%s:%d", segmentPrefix.Addr(), etcdPort)
}

// tabbydOptions are what differs between the benchmarks' tabbyd configurations.
type tabbydOptions struct {
	// extra YAML appended to the configuration.
	extra string
	// env is added to the process's environment (GOMEMLIMIT, GODEBUG, …).
	env []string
	// logLevel is tabbyd's; info when empty.
	logLevel string
	// etcdPrefix is the key root; /calico when empty.
	etcdPrefix string
}

// writeConfig writes host's tabbyd.yaml (everything under the env's directory) and
// returns its path.
func (e *env) writeConfig(host string, o tabbydOptions) string {
	e.tb.Helper()
	h, ok := e.topo.Host(host)
	if !ok {
		e.tb.Fatalf("unknown host %s", host)
	}
	dir := filepath.Join(e.dir, host)
	for _, d := range []string{"data", "run", "secrets", "rtprotos"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o700); err != nil {
			e.tb.Fatal(err)
		}
	}
	cfg := fmt.Sprintf(`nodeName: %s
etcd:
  endpoints: [%q]
  prefix: %s
ipv4:
  address: %s
dataDir: %s
runDir: %s
statusSocket: %s
bgp:
  secretsDir: %s
health:
  listen: "127.0.0.1:9099"
metrics:
  listen: "127.0.0.1:9091"
logLevel: %s
%s`, host, e.etcdEndpoint(), cmp.Or(o.etcdPrefix, "/calico"), h.Addr, filepath.Join(dir, "data"), filepath.Join(dir, "run"),
		e.statusSocket(host), filepath.Join(dir, "secrets"), cmp.Or(o.logLevel, "info"), o.extra)
	path := filepath.Join(dir, "tabbyd.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		e.tb.Fatal(err)
	}
	return path
}

func (e *env) statusSocket(host string) string {
	return filepath.Join(e.dir, host, "run", "tabbyd.sock")
}

// startTabbyd starts bin/tabbyd on a host. The route protocol's name is registered in a
// directory of the env's, not in /etc.
func (e *env) startTabbyd(host, logName string, o tabbydOptions) *proc {
	e.tb.Helper()
	cfg := e.writeConfig(host, o)
	// TABBY_BENCH_TABBYD_ENV adds to every daemon's environment, for experiments
	// (GOGC=50, GOMEMLIMIT=40MiB, TABBY_LOGLEVEL=debug).
	env := append(slices.Clone(o.env), strings.Fields(os.Getenv("TABBY_BENCH_TABBYD_ENV"))...)
	return e.start(e.hostNS(host), logName, env, filepath.Join(e.binDir, "tabbyd"),
		"run", "--config", cfg, "--rt-protos-dir", filepath.Join(e.dir, host, "rtprotos"))
}

// nsHandle opens a netlink handle in a namespace; closed at cleanup.
func (e *env) nsHandle(ns string) *netlink.Handle {
	e.tb.Helper()
	h, err := netns.GetFromName(ns)
	if err != nil {
		e.tb.Fatal(err)
	}
	defer h.Close()
	nh, err := netlink.NewHandleAt(h, unix.NETLINK_ROUTE)
	if err != nil {
		e.tb.Fatal(err)
	}
	e.tb.Cleanup(nh.Close)
	return nh
}

// flushOurRoutes deletes every route with tabby's protocol in a namespace, so that the
// next tabbyd starts cold instead of adopting a previous run's (flushOurNexthops does the
// same for nexthop objects).
// Routes are deleted by destination and protocol only: a delete that also names a gateway
// does not match a route that reaches it through a nexthop object.
func flushOurRoutes(tb testing.TB, h *netlink.Handle) {
	tb.Helper()
	routes, err := h.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Protocol: routeProto, Table: unix.RT_TABLE_MAIN},
		netlink.RT_FILTER_PROTOCOL|netlink.RT_FILTER_TABLE)
	if err != nil {
		tb.Fatal(err)
	}
	for _, r := range routes {
		del := &netlink.Route{Dst: r.Dst, Table: r.Table, Protocol: r.Protocol, Priority: r.Priority, Tos: r.Tos, Scope: netlink.SCOPE_NOWHERE}
		if err := h.RouteDel(del); err != nil && !errors.Is(err, unix.ESRCH) {
			tb.Fatalf("flush route %s: %v", r.Dst, err)
		}
	}
	if n := countOurRoutes(tb, h); n != 0 {
		tb.Fatalf("flush: %d routes of tabby's left", n)
	}
}

// flushOurNexthops deletes the nexthop objects with tabby's protocol in a namespace (and
// with them any route that still uses one).
func flushOurNexthops(tb testing.TB, ns string) {
	tb.Helper()
	if out, err := exec.Command("ip", "-n", ns, "nexthop", "flush", "proto", strconv.Itoa(routeProto)).CombinedOutput(); err != nil &&
		!strings.Contains(string(out), "Nothing to flush") {
		tb.Fatalf("ip -n %s nexthop flush: %v: %s", ns, err, out)
	}
}

// countOurRoutes counts the routes with tabby's protocol in the main table.
func countOurRoutes(tb testing.TB, h *netlink.Handle) int {
	tb.Helper()
	routes, err := h.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Protocol: routeProto, Table: unix.RT_TABLE_MAIN},
		netlink.RT_FILTER_PROTOCOL|netlink.RT_FILTER_TABLE)
	if err != nil {
		tb.Fatal(err)
	}
	return len(routes)
}

// memory is a process's resident memory in MB: total, anonymous (heap, stacks) and
// file-backed (the binary's pages in use), and the peak of the total.
type memory struct{ rss, anon, file, peak float64 }

// procMemoryDetail reads a process's memory from /proc/<pid>/status.
func procMemoryDetail(pid int) (memory, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return memory{}, err
	}
	var m memory
	for line := range strings.Lines(string(b)) {
		name, rest, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		switch name {
		case "VmRSS":
			m.rss = kbField(rest) / 1024
		case "RssAnon":
			m.anon = kbField(rest) / 1024
		case "RssFile":
			m.file = kbField(rest) / 1024
		case "VmHWM":
			m.peak = kbField(rest) / 1024
		}
	}
	return m, nil
}

// procMemory reads a process's resident memory now and at its peak, in MB.
func procMemory(pid int) (rss, peak float64, err error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0, err
	}
	for line := range strings.Lines(string(b)) {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			rss = kbField(rest) / 1024
		}
		if rest, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			peak = kbField(rest) / 1024
		}
	}
	return rss, peak, nil
}

func kbField(s string) float64 {
	f := strings.Fields(s)
	if len(f) == 0 {
		return 0
	}
	v, _ := strconv.ParseFloat(f[0], 64)
	return v
}

// procCPU is the CPU time (user + system) a process's threads have run, with nanosecond
// precision from /proc/<pid>/task/*/schedstat (the clock-tick counters of /proc/<pid>/stat
// are 10 ms coarse). Threads that exited are not counted, so take differences over a
// period in which the process keeps its threads (Go's do).
func procCPU(pid int) (time.Duration, error) {
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		return 0, err
	}
	var total time.Duration
	for _, t := range tasks {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/schedstat", pid, t.Name()))
		if err != nil {
			continue // the thread exited
		}
		f := strings.Fields(string(b))
		if len(f) == 0 {
			continue
		}
		ns, _ := strconv.ParseInt(f[0], 10, 64)
		total += time.Duration(ns)
	}
	return total, nil
}

// loadAverage is the first field of /proc/loadavg, printed with every figure: the
// machine is shared.
func loadAverage() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

// waitFor polls cond every interval until it holds or timeout passes.
func waitFor(timeout, interval time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(interval)
	}
}
