package bench

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tabby-net/tabby/internal/namedns"
	"github.com/tabby-net/tabby/lab"
)

// memorySettle is how long BenchmarkMemory5000 watches the daemons after convergence.
const memorySettle = 20 * time.Second

// BenchmarkMemory5000 (issue 8, figure 5): the resident memory of a tabbyd whose snapshot
// holds 5,000 nodes and their blocks (one address each, with its handle), next to a
// tabbyd that runs the same configuration at the same time against an empty cluster (its
// own key root, with the pool only): the difference is what the cluster costs. Both are
// sampled when the big one's last route arrives and every 500 ms for 20 s after; printed
// are the resident set at convergence and at the end (anonymous and file-backed parts),
// the peak (VmHWM), and the Go heap in use from each daemon's /metrics. Goal: ≤ 60 MB.
func BenchmarkMemory5000(b *testing.B) {
	ctx := context.Background()
	e := newEnv(b, "big", "empty")
	c := e.startEtcd(ctx)
	populate(ctx, b, c, clusterSpec{nodes: startupNodes, perBlock: perBlockFromEnv()})
	emptyRoot := *c
	emptyRoot.Keys = datastoreKeys("/empty")
	populate(ctx, b, &emptyRoot, clusterSpec{})

	var (
		bigConv, bigEnd, bigPeak, bigAnon, bigFile, bigHeap samples
		emptyEnd, emptyPeak, emptyHeap                      samples
	)
	i := 0
	for b.Loop() {
		i++
		flushOurRoutes(b, e.nsHandle(e.hostNS("big")))
		flushOurNexthops(b, e.hostNS("big"))
		w := watchRoutes(b, e.hostNS("big"))
		big := e.startTabbyd("big", fmt.Sprintf("tabbyd-big-%d", i), lab.TabbydOptions{})
		small := e.startTabbyd("empty", fmt.Sprintf("tabbyd-empty-%d", i), lab.TabbydOptions{EtcdPrefix: "/empty"})
		if _, err := w.waitPresent(startupNodes, 60*time.Second); err != nil {
			b.Fatalf("%v\n%s", err, big.Tail(30))
		}
		m, err := procMemoryDetail(big.PID)
		if err != nil {
			b.Fatal(err)
		}
		bigConv = append(bigConv, m.rss)
		time.Sleep(memorySettle)
		m, err = procMemoryDetail(big.PID)
		if err != nil {
			b.Fatal(err)
		}
		bigEnd, bigPeak, bigAnon, bigFile = append(bigEnd, m.rss), append(bigPeak, m.peak), append(bigAnon, m.anon), append(bigFile, m.file)
		bigHeap = append(bigHeap, goHeapMB(b, e.hostNS("big")))
		m, err = procMemoryDetail(small.PID)
		if err != nil {
			b.Fatal(err)
		}
		emptyEnd, emptyPeak = append(emptyEnd, m.rss), append(emptyPeak, m.peak)
		emptyHeap = append(emptyHeap, goHeapMB(b, e.hostNS("empty")))
		big.Stop(syscall.SIGTERM, 10*time.Second)
		small.Stop(syscall.SIGTERM, 10*time.Second)
		w.close()
	}
	reportMedian(b, bigEnd, "rss-MB")
	reportMedian(b, bigPeak, "peak-MB")
	figure(b, "memory-5000", "tabbyd with 5,000 nodes and blocks: RSS at convergence %s MB, %s s later %s MB (anonymous %s + file %s), peak %s MB, Go heap in use %s MB | reference: the same tabbyd with an empty cluster %s MB, peak %s MB, heap %s MB | goal ≤ 60 MB: %s",
		bigConv, strconv.Itoa(int(memorySettle.Seconds())), bigEnd, bigAnon, bigFile, bigPeak, bigHeap, emptyEnd, emptyPeak, emptyHeap,
		verdict(bigPeak.median() <= 60))
}

// goHeapMB reads go_memstats_heap_inuse_bytes from a tabbyd's /metrics, through a socket
// made in its namespace.
func goHeapMB(tb testing.TB, ns string) float64 {
	tb.Helper()
	v, err := scrapeMetric(ns, "127.0.0.1:9091", "go_memstats_heap_inuse_bytes")
	if err != nil {
		tb.Logf("heap of the tabbyd in %s: %v", ns, err)
		return 0
	}
	return v / (1 << 20)
}

// scrapeMetric fetches one unlabelled metric from a Prometheus endpoint in a namespace.
func scrapeMetric(ns, addr, name string) (float64, error) {
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, network, a string) (net.Conn, error) {
			return namedns.Dial(ctx, ns, network, a)
		},
	}}
	resp, err := client.Get("http://" + addr + "/metrics")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
			return strconv.ParseFloat(strings.TrimSpace(rest), 64)
		}
	}
	return 0, fmt.Errorf("%s not in %s/metrics", name, addr)
}
