package bench

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/tabby-net/tabby/datastore"
	"github.com/tabby-net/tabby/lab"
)

// startupNodes is the size of the cluster a host joins in BenchmarkStartup5000.
const startupNodes = 5000

// BenchmarkStartup5000 (issue 8, figure 2): a host joins a cluster of 5,000 nodes that are
// already in etcd (Direct pool, mesh off). Each iteration starts bin/tabbyd in a namespace
// with no routes of ours and measures the time from the process's start to the last of
// the 5,000 routes arriving in the kernel (a netlink route subscription in the namespace
// timestamps every arrival). References, in the same iteration and in another namespace
// on the same segment: `ip -batch` of the same forwarding (5,000 nexthop objects and
// 5,000 routes through them, as tabbyd writes it), and of 5,000 plain routes, and a bare
// netlink RouteReplace loop of the plain routes. Goal: ≤ 0.3 s on 2 cores.
//
// It also prints tabbyd's own "first convergence" time and its resident memory at the
// moment the last route arrived (figure 5 has the settled figures).
func BenchmarkStartup5000(b *testing.B) {
	ctx := context.Background()
	e := newEnv(b, "joiner", "ref")
	c := e.startEtcd(ctx)
	populate(ctx, b, c, clusterSpec{nodes: startupNodes, perBlock: 1})
	joiner := e.nsHandle(e.hostNS("joiner"))
	ref := e.nsHandle(e.hostNS("ref"))
	batch := writeRouteBatch(b, e, startupNodes)
	nhBatch := writeNexthopBatch(b, e, startupNodes)
	routes := directRoutes(b, ref, startupNodes)

	var tabby, conv, pass, ipBatch, nhIPBatch, rawNL, rss, peak samples
	i := 0
	for b.Loop() {
		i++
		// References first: they also warm nothing tabbyd could use (another namespace).
		flushOurRoutes(b, ref)
		t0 := time.Now()
		if out, err := exec.Command("ip", "-n", e.hostNS("ref"), "-batch", batch).CombinedOutput(); err != nil {
			b.Fatalf("ip -batch: %v: %s", err, out)
		}
		ipBatch = append(ipBatch, ms(time.Since(t0)))
		if n := countOurRoutes(b, ref); n != startupNodes {
			b.Fatalf("ip -batch installed %d routes, want %d", n, startupNodes)
		}
		flushOurRoutes(b, ref)
		t0 = time.Now()
		if out, err := exec.Command("ip", "-n", e.hostNS("ref"), "-batch", nhBatch).CombinedOutput(); err != nil {
			b.Fatalf("ip -batch (nexthop objects): %v: %s", err, out)
		}
		nhIPBatch = append(nhIPBatch, ms(time.Since(t0)))
		flushOurRoutes(b, ref)
		flushOurNexthops(b, e.hostNS("ref"))
		t0 = time.Now()
		for _, r := range routes {
			if err := ref.RouteReplace(r); err != nil {
				b.Fatalf("RouteReplace %s: %v", r.Dst, err)
			}
		}
		rawNL = append(rawNL, ms(time.Since(t0)))
		flushOurRoutes(b, ref)

		flushOurRoutes(b, joiner)
		flushOurNexthops(b, e.hostNS("joiner"))
		if _, err := c.Etcd().Delete(ctx, c.Keys.Resource(datastore.KindNode, "joiner")); err != nil {
			b.Fatal(err)
		}
		w := watchRoutes(b, e.hostNS("joiner"))
		p := e.startTabbyd("joiner", fmt.Sprintf("tabbyd-startup-%d", i), lab.TabbydOptions{})
		last, err := w.waitPresent(startupNodes, 60*time.Second)
		if err != nil {
			b.Fatalf("%v\n%s", err, p.Tail(30))
		}
		tabby = append(tabby, ms(last.Sub(p.Started)))
		if r, pk, err := procMemory(p.PID); err == nil {
			rss, peak = append(rss, r), append(peak, pk)
		}
		if d, ok := waitConvergence(p, 30*time.Second); ok {
			conv = append(conv, ms(d))
		}
		if m := kernelSynced.FindStringSubmatch(p.LogLine(`msg="kernel routing synced"`)); m != nil {
			if d, err := time.ParseDuration(m[1]); err == nil {
				pass = append(pass, ms(d))
			}
		}
		if os.Getenv("TABBY_BENCH_SHOW_LOG") != "" {
			fmt.Println(p.Tail(40))
		}
		p.Stop(syscall.SIGTERM, 10*time.Second)
		w.close()
	}
	b.StopTimer()
	reportMedian(b, tabby, "tabbyd-ms")
	reportMedian(b, ipBatch, "ip-batch-ms")
	reportMedian(b, rawNL, "netlink-ms")
	figure(b, "startup-5000", "process start → all %d routes in the kernel: tabbyd %s ms (its kernel pass alone %s ms) | reference: ip -batch of the same %d nexthop objects and routes %s ms | tabbyd's own 'first convergence' %s ms | goal ≤ 300 ms: %s",
		startupNodes, tabby, pass, startupNodes, nhIPBatch, conv, verdict(tabby.median() <= 300))
	figure(b, "startup-plain", "the same forwarding as plain routes, each naming its gateway: ip -batch %s ms, netlink RouteReplace loop %s ms: the kernel looks a new route's gateway up among the device's existing ones one by one, a nexthop object by its id",
		ipBatch, rawNL)
	figure(b, "startup-rss", "tabbyd resident memory when the last route arrived: %s MB, peak so far %s MB", rss, peak)
}

// directRoutes are the Direct routes a joiner installs for n synthetic nodes, for the
// netlink reference loop: B via N dev eth0 proto 95.
func directRoutes(tb testing.TB, h *netlink.Handle, n int) []*netlink.Route {
	tb.Helper()
	eth0, err := h.LinkByName(lab.NIC)
	if err != nil {
		tb.Fatal(err)
	}
	out := make([]*netlink.Route, n)
	for i := range n {
		dst := blockCIDR(i)
		out[i] = &netlink.Route{
			Dst:       &net.IPNet{IP: dst.Addr().AsSlice(), Mask: net.CIDRMask(dst.Bits(), 32)},
			Gw:        nodeAddr(i).AsSlice(),
			LinkIndex: eth0.Attrs().Index,
			Protocol:  routeProto,
		}
	}
	return out
}

// writeRouteBatch writes the same routes as an `ip -batch` file.
func writeRouteBatch(tb testing.TB, e *env, n int) string {
	tb.Helper()
	path := filepath.Join(e.StateDir, "routes.batch")
	f, err := os.Create(path)
	if err != nil {
		tb.Fatal(err)
	}
	w := bufio.NewWriter(f)
	for i := range n {
		fmt.Fprintf(w, "route replace %s via %s dev %s proto %d\n", blockCIDR(i), nodeAddr(i), lab.NIC, routeProto)
	}
	if err := w.Flush(); err != nil {
		tb.Fatal(err)
	}
	if err := f.Close(); err != nil {
		tb.Fatal(err)
	}
	return path
}

// writeNexthopBatch writes the same forwarding as writeRouteBatch with one nexthop object
// per node, which the routes name by id.
func writeNexthopBatch(tb testing.TB, e *env, n int) string {
	tb.Helper()
	path := filepath.Join(e.StateDir, "nexthops.batch")
	f, err := os.Create(path)
	if err != nil {
		tb.Fatal(err)
	}
	w := bufio.NewWriter(f)
	for i := range n {
		fmt.Fprintf(w, "nexthop replace id %d via %s dev %s proto %d\n", i+1, nodeAddr(i), lab.NIC, routeProto)
	}
	for i := range n {
		fmt.Fprintf(w, "route replace %s nhid %d proto %d\n", blockCIDR(i), i+1, routeProto)
	}
	if err := w.Flush(); err != nil {
		tb.Fatal(err)
	}
	if err := f.Close(); err != nil {
		tb.Fatal(err)
	}
	return path
}

var kernelSynced = regexp.MustCompile(`msg="kernel routing synced".* took=([0-9.]+[a-zµ]+)`)

var convergenceAfter = regexp.MustCompile(`msg="first convergence".* after=([0-9.]+[a-zµ]+)`)

// waitConvergence waits for tabbyd's "first convergence" log line and returns the time
// it reports since its own start.
func waitConvergence(p *lab.Tabbyd, timeout time.Duration) (time.Duration, bool) {
	var d time.Duration
	ok := waitFor(timeout, 20*time.Millisecond, func() bool {
		m := convergenceAfter.FindStringSubmatch(p.LogLine(`msg="first convergence"`))
		if m == nil {
			return false
		}
		v, err := time.ParseDuration(m[1])
		d = v
		return err == nil
	})
	return d, ok
}
