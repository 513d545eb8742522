package bench

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tabby-net/tabby/datastore"
	"github.com/tabby-net/tabby/internal/statusapi"
	"github.com/tabby-net/tabby/lab"
)

// meshHosts is the size of BenchmarkMesh50's cluster.
const meshHosts = 50

// BenchmarkMesh50 (issue 8, figure 6): 50 hosts, each a network namespace on one bridge
// with its own bin/tabbyd, form a full BGP mesh (1,225 sessions, the default
// nodeToNodeMeshEnabled and timers). Each iteration starts the 50 daemons at once on an
// empty cluster (the pool only) and measures the time until every daemon's status socket
// shows 49 peers Established. References in the same iteration: the time until all 50
// daemons reached their first convergence (datastore, routes, NAT: everything but BGP),
// and the connect-retry timer (5 s) that a session whose first attempt was refused waits.
// Also printed: the CPU the 50 daemons used until then and their memory after. Goal: ≤ 10 s.
func BenchmarkMesh50(b *testing.B) {
	ctx := context.Background()
	hosts := make([]string, meshHosts)
	for i := range hosts {
		hosts[i] = fmt.Sprintf("h%02d", i+1)
	}
	e := newRoutedEnv(b, hosts...)
	c := e.startEtcd(ctx)
	populate(ctx, b, c, clusterSpec{mesh: true})

	var established, converged, cpu, rssSum, rssMax samples
	iter := 0
	for b.Loop() {
		iter++
		procs := make([]*lab.Tabbyd, len(hosts))
		t0 := time.Now()
		for i, h := range hosts {
			procs[i] = e.startTabbyd(h, fmt.Sprintf("tabbyd-%s-%d", h, iter), lab.TabbydOptions{})
		}
		done, err := waitMesh(e, hosts, procs, 60*time.Second)
		if err != nil {
			if os.Getenv("TABBY_BENCH_HOLD") != "" {
				fmt.Println("HOLD", e.Topo.Prefix, err)
				time.Sleep(5 * time.Minute)
			}
			b.Fatal(err)
		}
		established = append(established, done.Sub(t0).Seconds())
		var lastConv time.Duration
		var total time.Duration
		var sum, top float64
		for _, p := range procs {
			d, ok := waitConvergence(p, 10*time.Second)
			if !ok {
				b.Fatalf("%s never converged\n%s", "tabbyd on "+p.Host, p.Tail(20))
			}
			// "after" counts from the daemon's own start, which is at most a few ms
			// after the process's; add the difference of process starts.
			lastConv = max(lastConv, p.Started.Sub(t0)+d)
			if c, err := procCPU(p.PID); err == nil {
				total += c
			}
			if m, err := procMemoryDetail(p.PID); err == nil {
				sum += m.rss
				top = max(top, m.rss)
			}
		}
		converged = append(converged, lastConv.Seconds())
		cpu = append(cpu, total.Seconds())
		rssSum, rssMax = append(rssSum, sum), append(rssMax, top)
		stopAll(procs)
		resetMesh(ctx, b, e, c, hosts)
	}
	reportMedian(b, established, "s-established")
	figure(b, "bgp-mesh-50", "%d tabbyd (%d sessions): start → every session Established %s s | reference: start → all daemons converged (everything but BGP) %s s; connect retry 5 s | CPU of the %d daemons until then %s s on 2 cores; RSS %s MB in all, %s MB the largest | goal ≤ 10 s: %s",
		meshHosts, meshHosts*(meshHosts-1)/2, established, converged, meshHosts, cpu, rssSum, rssMax, verdict(established.median() <= 10))
}

// waitMesh polls every daemon's status socket until each shows all the others as
// Established peers, and returns when the last one did.
func waitMesh(e *env, hosts []string, procs []*lab.Tabbyd, timeout time.Duration) (time.Time, error) {
	want := len(hosts) - 1
	doneAt := make([]time.Time, len(hosts))
	deadline := time.Now().Add(timeout)
	for {
		var wg sync.WaitGroup
		for i, h := range hosts {
			if !doneAt[i].IsZero() {
				continue
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
				defer cancel()
				st, err := statusapi.Fetch(ctx, e.StatusSocket(h))
				now := time.Now()
				if err == nil && established(st) == want {
					doneAt[i] = now
				}
			}()
		}
		wg.Wait()
		left := 0
		var last time.Time
		for i := range hosts {
			if doneAt[i].IsZero() {
				left++
			} else if doneAt[i].After(last) {
				last = doneAt[i]
			}
		}
		if left == 0 {
			return last, nil
		}
		if time.Now().After(deadline) {
			for i, p := range procs {
				if doneAt[i].IsZero() {
					st, err := statusapi.Fetch(context.Background(), e.StatusSocket(hosts[i]))
					if err != nil {
						return time.Time{}, fmt.Errorf("%d daemons without a full mesh after %s; %s: %v\n%s", left, timeout, hosts[i], err, p.Tail(20))
					}
					var down []string
					other := ""
					for _, peer := range st.Peers {
						if !peer.Established {
							down = append(down, fmt.Sprintf("%s %s since %s: %s", peer.Address, peer.State, peer.Since.Format(time.TimeOnly), peer.Info))
							for j := range hosts {
								if other == "" && e.hostIP(hosts[j]).String() == peer.Address {
									other = fmt.Sprintf("log of %s about %s:\n%s\nlog of %s about %s:\n%s", hosts[j], e.hostIP(hosts[i]), procs[j].Grep(e.hostIP(hosts[i]).String()+" "),
										hosts[i], peer.Address, procs[i].Grep(peer.Address+" "))
								}
							}
						}
					}
					return time.Time{}, fmt.Errorf("%d daemons without a full mesh after %s; %s has %d peers, %d established, ready %v %q; down: %s\n%s",
						left, timeout, hosts[i], len(st.Peers), established(st), st.Ready, st.NotReady, strings.Join(down, "; "), p.Tail(20)+"\n"+other)
				}
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func established(st *statusapi.Status) int {
	n := 0
	for _, p := range st.Peers {
		if p.Established {
			n++
		}
	}
	return n
}

// stopAll sends SIGTERM to every process at once and waits for them.
func stopAll(procs []*lab.Tabbyd) {
	var wg sync.WaitGroup
	for _, p := range procs {
		wg.Add(1)
		go func() { defer wg.Done(); p.Stop(syscall.SIGTERM, 10*time.Second) }()
	}
	wg.Wait()
}

// resetMesh makes the next iteration start as the first did: no Nodes in etcd, no
// graceful-restart markers, no routes.
func resetMesh(ctx context.Context, tb testing.TB, e *env, c *datastore.Client, hosts []string) {
	tb.Helper()
	w := &txnWriter{tb: tb, ctx: ctx, cli: c.Etcd()}
	for _, h := range hosts {
		w.del(c.Keys.Resource(datastore.KindNode, h))
		if err := os.RemoveAll(filepath.Join(e.StateDir, h, "run")); err != nil {
			tb.Fatal(err)
		}
		flushOurRoutes(tb, e.nsHandle(e.hostNS(h)))
		flushOurNexthops(tb, e.hostNS(h))
	}
	w.flush()
}
