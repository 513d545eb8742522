package bench

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tabby-net/tabby/daemon"
	"github.com/tabby-net/tabby/datastore"
	"github.com/tabby-net/tabby/lab"
)

// tabbydChild runs tabbyd's daemon.Run, the whole of `tabbyd run` but its flag parsing,
// with profiling, writing into TABBY_BENCH_PROFILE_DIR: a CPU profile of the first
// TABBY_BENCH_CPU_SECONDS (none when unset) as cpu.pprof, a heap profile on every SIGUSR1
// (heap-N.pprof), and a CPU profile between two SIGUSR2 (cpu-N.pprof). The
// configuration file is TABBY_BENCH_CONFIG.
func tabbydChild() int {
	dir := os.Getenv("TABBY_BENCH_PROFILE_DIR")
	cfg, err := daemon.LoadConfig(daemon.LoadOptions{File: os.Getenv("TABBY_BENCH_CONFIG")})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	var cpu cpuProfiler
	defer cpu.stop()
	if v, err := time.ParseDuration(os.Getenv("TABBY_BENCH_CPU_SECONDS") + "s"); err == nil && v > 0 {
		if err := cpu.start(filepath.Join(dir, "cpu.pprof")); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		time.AfterFunc(v, cpu.stop)
	}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGUSR1, syscall.SIGUSR2)
	go func() {
		heaps, cpus := 0, 0
		for sig := range sigs {
			switch {
			case sig == syscall.SIGUSR1:
				heaps++
				runtime.GC()
				f, err := os.Create(filepath.Join(dir, fmt.Sprintf("heap-%d.pprof", heaps)))
				if err != nil {
					continue
				}
				_ = pprof.Lookup("heap").WriteTo(f, 0)
				f.Close()
			case cpu.running():
				cpu.stop()
			default:
				cpus++
				if err := cpu.start(filepath.Join(dir, fmt.Sprintf("cpu-%d.pprof", cpus))); err != nil {
					fmt.Fprintln(os.Stderr, err)
				}
			}
		}
	}()
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: cfg.LogLevel}))
	if err := daemon.Run(ctx, cfg, log, daemon.Options{RTProtosDir: os.Getenv("TABBY_BENCH_RTPROTOS")}); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

// cpuProfiler is one CPU profile at a time, started and stopped from any goroutine.
type cpuProfiler struct {
	mu sync.Mutex
	f  *os.File
}

func (p *cpuProfiler) start(path string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.f != nil {
		return nil
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return err
	}
	p.f = f
	return nil
}

func (p *cpuProfiler) running() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.f != nil
}

func (p *cpuProfiler) stop() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.f == nil {
		return
	}
	pprof.StopCPUProfile()
	p.f.Close()
	p.f = nil
}

// startProfiled starts tabbydChild on a host in place of bin/tabbyd, with its profiles
// going to dir.
func (e *env) startProfiled(host, logName, dir string, cpuSeconds int, o lab.TabbydOptions) *lab.Tabbyd {
	e.tb.Helper()
	o.Program, o.LogName = os.Args[0], logName
	o.Env = append([]string{
		childEnv + "=tabbyd", "TABBY_BENCH_CONFIG=" + e.TabbydConfigPath(host), "TABBY_BENCH_PROFILE_DIR=" + dir,
		fmt.Sprintf("TABBY_BENCH_CPU_SECONDS=%d", cpuSeconds), "TABBY_BENCH_RTPROTOS=" + e.RTProtosDir(host),
	}, o.Env...)
	d, err := e.StartTabbyd(host, o)
	if err != nil {
		e.tb.Fatal(err)
	}
	return d
}

// profileDir is TABBY_BENCH_PROFILE_DIR, or its subdirectory sub (made here); the
// profiling benchmarks skip when it is unset, since they only write profiles.
func profileDir(b *testing.B, sub string) string {
	b.Helper()
	dir := os.Getenv("TABBY_BENCH_PROFILE_DIR")
	if dir == "" {
		b.Skip("profiles only: TABBY_BENCH_PROFILE_DIR names their directory (bench/profile.sh sets it)")
	}
	dir = filepath.Join(dir, sub)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		b.Fatal(err)
	}
	return dir
}

// convergedProfiled starts etcd with 5,000 nodes and a profiled tabbyd on a joining host,
// and returns once every route is in that host's kernel.
func convergedProfiled(ctx context.Context, b *testing.B, logName, dir string) (*datastore.Client, *routeWatch, *lab.Tabbyd) {
	b.Helper()
	e := newEnv(b, "joiner")
	c := e.startEtcd(ctx)
	populate(ctx, b, c, clusterSpec{nodes: startupNodes, perBlock: 1})
	w := watchRoutes(b, e.hostNS("joiner"))
	p := e.startProfiled("joiner", logName, dir, 0, lab.TabbydOptions{})
	if _, err := w.waitPresent(startupNodes, 60*time.Second); err != nil {
		b.Fatalf("%v\n%s", err, p.Tail(30))
	}
	return c, w, p
}

// BenchmarkProfileStartup5000 profiles a joining tabbyd (BenchmarkStartup5000's scenario)
// with tabbydChild: a CPU profile of its first seconds and heap profiles once every route
// is in and again a few seconds later. It runs only when TABBY_BENCH_PROFILE_DIR names
// the directory for the profiles (bench/profile.sh sets it and prints the top entries).
func BenchmarkProfileStartup5000(b *testing.B) {
	dir := profileDir(b, "")
	ctx := context.Background()
	e := newEnv(b, "joiner")
	c := e.startEtcd(ctx)
	populate(ctx, b, c, clusterSpec{nodes: startupNodes, perBlock: perBlockFromEnv()})
	for b.Loop() {
		w := watchRoutes(b, e.hostNS("joiner"))
		p := e.startProfiled("joiner", "tabbyd-profile", dir, 3, lab.TabbydOptions{LogLevel: os.Getenv("TABBY_BENCH_LOGLEVEL")})
		last, err := w.waitPresent(startupNodes, 60*time.Second)
		if err != nil {
			b.Fatalf("%v\n%s", err, p.Tail(30))
		}
		rss, peak, _ := procMemory(p.PID)
		figure(b, "profile", "all routes after %.0f ms; RSS %.1f MB, peak %.1f MB; profiles in %s", ms(last.Sub(p.Started)), rss, peak, dir)
		_ = p.Signal(syscall.SIGUSR1)
		time.Sleep(4 * time.Second)
		_ = p.Signal(syscall.SIGUSR1)
		time.Sleep(500 * time.Millisecond)
		rss, peak, _ = procMemory(p.PID)
		figure(b, "profile", "4 s later: RSS %.1f MB, peak %.1f MB", rss, peak)
		p.Stop(syscall.SIGTERM, 10*time.Second)
		w.close()
		if os.Getenv("TABBY_BENCH_LOGLEVEL") != "" {
			fmt.Println(p.Tail(60))
		}
	}
}

// perBlockFromEnv is TABBY_BENCH_PER_BLOCK (allocated addresses per block), 1 by default.
func perBlockFromEnv() int {
	if v, err := strconv.Atoi(os.Getenv("TABBY_BENCH_PER_BLOCK")); err == nil && v >= 0 && v <= 64 {
		return v
	}
	return 1
}

// BenchmarkProfileWrites5000 profiles a converged tabbyd of 5,000 nodes while
// BenchmarkPropagation1000's paced writes arrive: the CPU profile covers the writes only.
// It runs only when TABBY_BENCH_PROFILE_DIR is set.
func BenchmarkProfileWrites5000(b *testing.B) {
	dir := profileDir(b, "")
	ctx := context.Background()
	c, w, p := convergedProfiled(ctx, b, "tabbyd-profile-writes", dir)
	ew := watchEtcd(ctx, b, c, c.Keys.BlockPrefix())
	time.Sleep(time.Second)
	for b.Loop() {
		_ = p.Signal(syscall.SIGUSR2)
		r := propagate(ctx, b, c, w, ew, 5*time.Millisecond)
		_ = p.Signal(syscall.SIGUSR2)
		figure(b, "profile", "paced writes: p50 %.1f ms, p99 %.1f ms; CPU profiles in %s", r.route.quantile(0.5), r.route.quantile(0.99), dir)
	}
	time.Sleep(200 * time.Millisecond)
}

// joinLeaveCycles is the number of joins (and as many leaves) BenchmarkProfileJoinLeave5000
// profiles.
const joinLeaveCycles = 100

// BenchmarkProfileJoinLeave5000 profiles a converged tabbyd of 5,000 nodes while nodes join
// and leave one at a time (BenchmarkJoinLeave5000's writes, 50 ms apart): a CPU profile of
// the joins and leaves only, and heap profiles just before and after them, whose
// difference in alloc_space is what the changes allocated. Its profiles go to the
// subdirectory joinleave of TABBY_BENCH_PROFILE_DIR; it runs only when that is set.
func BenchmarkProfileJoinLeave5000(b *testing.B) {
	dir := profileDir(b, "joinleave")
	ctx := context.Background()
	c, w, p := convergedProfiled(ctx, b, "tabbyd-profile-joinleave", dir)
	time.Sleep(2 * time.Second) // let start-up's after-effects (GC, first metrics) pass
	k := c.Keys
	for b.Loop() {
		_ = p.Signal(syscall.SIGUSR1)
		time.Sleep(time.Second)
		_ = p.Signal(syscall.SIGUSR2)
		c0, err := procCPU(p.PID)
		if err != nil {
			b.Fatal(err)
		}
		for i := range joinLeaveCycles {
			node := startupNodes + i
			dst := blockCIDR(node)
			tw := &txnWriter{tb: b, ctx: ctx, cli: c.Etcd()}
			writeNode(b, tw, k, node, node, 1)
			tw.flush()
			if _, err := w.waitAdded([]netip.Prefix{dst}, 10*time.Second); err != nil {
				b.Fatal(err)
			}
			time.Sleep(50 * time.Millisecond)
			tw = &txnWriter{tb: b, ctx: ctx, cli: c.Etcd()}
			tw.del(k.Resource(datastore.KindNode, nodeName(node)))
			deleteBlock(tw, k, nodeName(node), node, 1)
			tw.flush()
			if _, err := w.waitRemoved([]netip.Prefix{dst}, 10*time.Second); err != nil {
				b.Fatal(err)
			}
			time.Sleep(50 * time.Millisecond)
		}
		c1, err := procCPU(p.PID)
		if err != nil {
			b.Fatal(err)
		}
		_ = p.Signal(syscall.SIGUSR2)
		time.Sleep(200 * time.Millisecond)
		_ = p.Signal(syscall.SIGUSR1)
		time.Sleep(time.Second)
		figure(b, "profile", "%d joins and %d leaves: %.2f ms CPU per change, ticks and GC included; profiles in %s",
			joinLeaveCycles, joinLeaveCycles, ms(c1-c0)/(2*joinLeaveCycles), dir)
	}
}
