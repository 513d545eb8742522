package bench

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/tabby-net/tabby/datastore"
	"github.com/tabby-net/tabby/internal/namedns"
	"github.com/tabby-net/tabby/lab"
	"github.com/tabby-net/tabby/lab/labtest"
)

// childEnv makes the test binary run tabbyd with profiling (profile_test.go) instead of
// benchmarks.
const childEnv = "TABBY_BENCH_CHILD"

func TestMain(m *testing.M) {
	switch os.Getenv(childEnv) {
	case "":
		os.Exit(m.Run())
	case "tabbyd":
		os.Exit(tabbydChild())
	default:
		fmt.Fprintf(os.Stderr, "unknown %s=%q\n", childEnv, os.Getenv(childEnv))
		os.Exit(2)
	}
}

// The benchmarks' addressing: one /16 segment behind a router namespace that runs etcd
// (the lab's embedded etcd, its data in memory as a production member's would be on a fast
// disk: the benchmarks measure tabby, not fsync).
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

// env is one benchmark's private lab (package lab, the one harness): a router namespace
// with etcd and the measured hosts, named tabby-bench-<random>-*, its state in memory.
// Cleanup removes all of it, also when the benchmark fails.
type env struct {
	tb testing.TB
	*lab.Cluster

	mu   sync.Mutex
	etcd *datastore.Client
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
	topo := &lab.Topology{
		Segments: segments,
		Hosts:    hosts,
		Outside: lab.Outside{
			Addr:   netip.MustParsePrefix("198.51.100.10/24"),
			Router: netip.MustParsePrefix("198.51.100.1/24"),
			Knows:  netip.MustParsePrefix("10.99.0.0/16"),
		},
		MTU: 1500,
	}
	c := labtest.New(tb, &lab.Cluster{Topo: topo}, labtest.Options{Purpose: "bench", StateDir: labtest.TmpfsDir(), BinDir: binDir(tb)})
	e := &env{tb: tb, Cluster: c}
	// Registered after the lab's teardown, so it runs first.
	tb.Cleanup(func() {
		e.mu.Lock()
		defer e.mu.Unlock()
		if e.etcd != nil {
			e.etcd.Close()
		}
	})
	if err := topo.Build(); err != nil {
		tb.Fatalf("build namespaces: %v", err)
	}
	return e
}

// hostIP is a measured host's address.
func (e *env) hostIP(host string) netip.Addr {
	h, _ := e.Topo.Host(host)
	return h.Addr.Addr()
}

// hostNS is the namespace of a measured host.
func (e *env) hostNS(host string) string { return e.Topo.HostNS(host) }

// binDir is where tabbyd and tabbylab (whose embedded etcd the lab runs) were built:
// TABBY_BENCH_BIN, else ../bin (make build).
func binDir(tb testing.TB) string {
	dir := os.Getenv("TABBY_BENCH_BIN")
	if dir == "" {
		dir = "../bin"
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		tb.Fatal(err)
	}
	for _, name := range []string{"tabbyd", "tabbylab"} {
		if _, err := os.Stat(filepath.Join(abs, name)); err != nil {
			tb.Skipf("no %s in %s: run make build (or set TABBY_BENCH_BIN)", name, abs)
		}
	}
	return abs
}

// startEtcd starts etcd in the router namespace and returns a client that reaches it
// through sockets made in that namespace.
func (e *env) startEtcd(ctx context.Context) *datastore.Client {
	e.tb.Helper()
	if err := e.StartEtcd(ctx); err != nil {
		e.tb.Fatal(err)
	}
	c, err := e.Datastore()
	if err != nil {
		e.tb.Fatal(err)
	}
	e.mu.Lock()
	e.etcd = c
	e.mu.Unlock()
	return c
}

// startTabbyd starts bin/tabbyd on a host, its log in <state>/<logName>.log.
func (e *env) startTabbyd(host, logName string, o lab.TabbydOptions) *lab.Tabbyd {
	e.tb.Helper()
	o.LogName = logName
	// TABBY_BENCH_TABBYD_ENV adds to every daemon's environment, for experiments
	// (GOGC=50, GOMEMLIMIT=40MiB, TABBY_LOGLEVEL=debug).
	o.Env = append(slices.Clone(o.Env), strings.Fields(os.Getenv("TABBY_BENCH_TABBYD_ENV"))...)
	d, err := e.StartTabbyd(host, o)
	if err != nil {
		e.tb.Fatal(err)
	}
	return d
}

// nsHandle opens a netlink handle in a namespace; closed at cleanup.
func (e *env) nsHandle(ns string) *netlink.Handle {
	e.tb.Helper()
	h, err := namedns.Handle(ns)
	if err != nil {
		e.tb.Fatal(err)
	}
	e.tb.Cleanup(h.Close)
	return h
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
