package bgp_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/pprof"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/tabby-net/tabby/bgp"
	"github.com/tabby-net/tabby/datastore"
	"github.com/tabby-net/tabby/internal/namedns"
	"github.com/tabby-net/tabby/internal/netnstest"
	"github.com/tabby-net/tabby/internal/statusapi"
	"github.com/tabby-net/tabby/routing"
)

// The integration tests run each tabby speaker as a separate process inside its own
// network namespace, the way tabbyd runs: GoBGP allows one server per process. The
// process is this test binary, re-executed with helperEnv naming its configuration.
const helperEnv = "TABBY_BGP_TEST_SPEAKER"

func TestMain(m *testing.M) {
	if cfg := os.Getenv(helperEnv); cfg != "" {
		os.Exit(runSpeakerHelper(cfg))
	}
	os.Exit(m.Run())
}

// helperConfig tells a speaker process what to do.
type helperConfig struct {
	Node         string
	SnapshotFile string
	SecretsDir   string
	RunDir       string
	Control      string // unix socket serving /status, /learned, /routes
	Timers       bgp.Timers
	RestartTime  time.Duration
	// Routing also runs the kernel reconciler in the speaker's namespace, fed by
	// routing.Desired with the learned routes, as tabbyd does.
	Routing bool
}

// snapshotFile is a datastore.Snapshot in a form JSON can carry (affinities are keyed by
// a struct in the snapshot).
type snapshotFile struct {
	Pools      map[string]*datastore.IPPool
	Nodes      map[string]*datastore.Node
	BGPPeers   map[string]*datastore.BGPPeer
	BGPConfigs map[string]*datastore.BGPConfiguration
	Blocks     map[netip.Prefix]*datastore.AllocationBlock
	Affinities []affinityEntry
}

type affinityEntry struct {
	Host  string
	CIDR  netip.Prefix
	State datastore.AffinityState
}

func writeSnapshot(path string, s *datastore.Snapshot) error {
	f := snapshotFile{Pools: s.Pools, Nodes: s.Nodes, BGPPeers: s.BGPPeers, BGPConfigs: s.BGPConfigs, Blocks: s.Blocks}
	for k, v := range s.Affinities {
		f.Affinities = append(f.Affinities, affinityEntry{Host: k.Host, CIDR: k.CIDR, State: v.State})
	}
	b, err := json.Marshal(f)
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

func readSnapshot(path string) (*datastore.Snapshot, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var f snapshotFile
	if err := json.Unmarshal(b, &f); err != nil {
		return nil, err
	}
	s := datastore.NewSnapshot()
	for k, v := range f.Pools {
		s.Pools[k] = v
	}
	for k, v := range f.Nodes {
		s.Nodes[k] = v
	}
	for k, v := range f.BGPPeers {
		s.BGPPeers[k] = v
	}
	for k, v := range f.BGPConfigs {
		s.BGPConfigs[k] = v
	}
	for k, v := range f.Blocks {
		s.Blocks[k] = v
	}
	for _, a := range f.Affinities {
		s.Affinities[datastore.AffinityKey{Host: a.Host, CIDR: a.CIDR}] = datastore.BlockAffinity{State: a.State}
	}
	return s, nil
}

// runSpeakerHelper is the speaker process: it reads the snapshot (again on SIGHUP), feeds
// Config and Advertisements to a Speaker, and serves what the speaker reports. SIGTERM ends
// it the way it ends tabbyd: Run returns and the process exits without a Cease.
func runSpeakerHelper(cfgPath string) int {
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	b, err := os.ReadFile(cfgPath)
	if err != nil {
		log.Error("read helper config", "error", err)
		return 2
	}
	var cfg helperConfig
	if err := json.Unmarshal(b, &cfg); err != nil {
		log.Error("parse helper config", "error", err)
		return 2
	}
	sp := bgp.NewSpeaker(bgp.SpeakerOptions{Logger: log, RunDir: cfg.RunDir, Timers: cfg.Timers, RestartTime: cfg.RestartTime})
	ctx, cancel := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer cancel()

	var mu sync.Mutex
	var snap *datastore.Snapshot
	learned := []bgp.LearnedRoute{}
	kernel := func() {} // recomputes the kernel state, when Routing is on
	if cfg.Routing {
		var err error
		if kernel, err = runRouting(ctx, log, cfg.Node, func() (*datastore.Snapshot, []bgp.LearnedRoute) {
			mu.Lock()
			defer mu.Unlock()
			return snap, learned
		}); err != nil {
			log.Error("routing", "error", err)
			return 2
		}
	}
	var loadMu sync.Mutex // load runs on SIGHUP and on a secrets change
	load := func() {
		loadMu.Lock()
		defer loadMu.Unlock()
		s, err := readSnapshot(cfg.SnapshotFile)
		if err != nil {
			log.Error("read snapshot", "error", err)
			return
		}
		mu.Lock()
		snap = s
		mu.Unlock()
		g, peers, problems := bgp.Config(s, cfg.Node, cfg.SecretsDir)
		for _, p := range problems {
			log.Warn("problem", "problem", p.String())
		}
		sp.Set(g, peers, bgp.Advertisements(s, cfg.Node))
		kernel()
	}
	load()

	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	go func() {
		for range hup {
			load()
		}
	}()
	// A changed password file is an input of its own, as in tabbyd: the configuration is
	// computed again, with no new snapshot.
	if cfg.SecretsDir != "" {
		secrets := bgp.NewSecretsWatcher(cfg.SecretsDir, log)
		go func() {
			if err := secrets.Run(ctx); err != nil {
				log.Error("secrets watcher", "error", err)
			}
		}()
		go func() {
			for {
				select {
				case <-ctx.Done():
					return
				case <-secrets.Changed():
					log.Info("secrets changed: configuration computed again")
					load()
				}
			}
		}()
	}

	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case l := <-sp.Learned():
				mu.Lock()
				learned = l
				mu.Unlock()
				kernel()
			}
		}
	}()

	mux := http.NewServeMux()
	reply := func(w http.ResponseWriter, v any, err error) {
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		_ = json.NewEncoder(w).Encode(v)
	}
	mux.HandleFunc("/status", func(w http.ResponseWriter, r *http.Request) {
		reply(w, sp.Status(r.Context()), nil)
	})
	mux.HandleFunc("/learned", func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		reply(w, learned, nil)
	})
	mux.HandleFunc("/routes", func(w http.ResponseWriter, r *http.Request) {
		routes, err := sp.Routes(r.Context())
		reply(w, routes, err)
	})
	// /serveloops counts GoBGP management loops (BgpServer.Serve) alive in this process:
	// they never end, so each server the speaker creates stays for good.
	mux.HandleFunc("/serveloops", func(w http.ResponseWriter, r *http.Request) {
		var stacks strings.Builder
		err := pprof.Lookup("goroutine").WriteTo(&stacks, 2)
		reply(w, strings.Count(stacks.String(), "server.(*BgpServer).Serve("), err)
	})
	// /stop is a deliberate, non-graceful stop (tabbyd cleanup): withdraw, Cease, no marker.
	mux.HandleFunc("/stop", func(w http.ResponseWriter, r *http.Request) {
		err := sp.Stop(r.Context(), false)
		reply(w, "stopped", err)
	})
	_ = os.Remove(cfg.Control)
	ln, err := net.Listen("unix", cfg.Control)
	if err != nil {
		log.Error("listen", "error", err)
		return 2
	}
	go func() { _ = http.Serve(ln, mux) }()

	if err := sp.Run(ctx); err != nil {
		log.Error("speaker", "error", err)
		return 1
	}
	<-ctx.Done() // after a /stop, keep answering until SIGTERM
	log.Info("speaker helper exiting without closing its sessions")
	return 0
}

// races counts the race detector's reports in a speaker's log: those whose racing
// accesses involve tabby's code, and those entirely inside GoBGP. Only the accesses'
// stacks count, not where their goroutines were created, and not the wrapper frame of
// `go srv.Serve()`, which merely starts GoBGP's own loop.
func races(log string) (ours, theirs int) {
	reports := strings.Split(log, "WARNING: DATA RACE")
	for _, r := range reports[1:] {
		accesses, _, _ := strings.Cut(r, "created at:")
		mine := false
		for _, line := range strings.Split(accesses, "\n") {
			if strings.Contains(line, "github.com/tabby-net/tabby") && !strings.Contains(line, ".gowrap") {
				mine = true
			}
		}
		if mine {
			ours++
		} else {
			theirs++
		}
	}
	return ours, theirs
}

// runRouting starts routing's kernel reconciler in the process's namespace and returns
// the function that hands it a new desired state: routing.Desired over the latest snapshot
// and learned routes, with the underlay read from the kernel.
func runRouting(ctx context.Context, log *slog.Logger, node string, latest func() (*datastore.Snapshot, []bgp.LearnedRoute)) (func(), error) {
	h, err := netlink.NewHandle()
	if err != nil {
		return nil, err
	}
	k, err := routing.NewKernel(routing.KernelOptions{Handle: h, Logger: log})
	if err != nil {
		return nil, err
	}
	go func() { _ = k.Run(ctx) }()
	var mu sync.Mutex // one computation at a time, so the latest state is the last Set
	recompute := func() {
		mu.Lock()
		defer mu.Unlock()
		snap, learned := latest()
		if snap == nil {
			return
		}
		underlay, err := routing.ReadUnderlay(h, routing.DefaultProtocol)
		if err != nil {
			log.Error("read underlay", "error", err)
			return
		}
		var routes []routing.LearnedRoute
		for _, l := range learned {
			routes = append(routes, routing.LearnedRoute{Prefix: l.Prefix, NextHop: l.NextHop})
		}
		k.Set(routing.Desired(snap, routing.Local{NodeName: node, NIC: "eth0", HostMTU: 1500, Underlay: underlay}, routes))
	}
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case <-k.UnderlayChanged():
				recompute()
			}
		}
	}()
	return recompute, nil
}

// speaker is a speaker process under test.
type speaker struct {
	t        testing.TB
	node     string
	ns       *netnstest.NS
	dir      string
	cfgPath  string
	snapPath string
	client   *http.Client
	proc     *namedns.Process
}

type speakerOptions struct {
	restartTime time.Duration
	secretsDir  string
	routing     bool
}

// fastTimers keep the tests quick: retry every second, notice a dead peer in 9 s.
func fastTimers() bgp.Timers {
	return bgp.Timers{ConnectRetry: time.Second, HoldTime: 9 * time.Second, KeepaliveInterval: 3 * time.Second}
}

func newSpeaker(t testing.TB, ns *netnstest.NS, node string, snap *datastore.Snapshot, opts speakerOptions) *speaker {
	t.Helper()
	dir := filepath.Join(t.TempDir(), node)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	s := &speaker{t: t, node: node, ns: ns, dir: dir, cfgPath: filepath.Join(dir, "helper.json"), snapPath: filepath.Join(dir, "snapshot.json")}
	cfg := helperConfig{
		Node:         node,
		SnapshotFile: s.snapPath,
		SecretsDir:   opts.secretsDir,
		RunDir:       filepath.Join(dir, "run"),
		Control:      filepath.Join(dir, "ctl.sock"),
		Timers:       fastTimers(),
		RestartTime:  opts.restartTime,
		Routing:      opts.routing,
	}
	b, _ := json.Marshal(cfg)
	if err := os.WriteFile(s.cfgPath, b, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := writeSnapshot(s.snapPath, snap); err != nil {
		t.Fatal(err)
	}
	s.client = &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", cfg.Control)
		},
	}}
	// Registered before the process starts, so it runs after the process is killed: a
	// race or a panic in the speaker fails the test, and a failing test shows the log.
	t.Cleanup(func() {
		log := s.log()
		ours, theirs := races(log)
		switch {
		case ours > 0 || strings.Contains(log, "panic:"):
			t.Errorf("speaker %s raced or panicked:\n%s", node, log)
		case t.Failed():
			t.Logf("speaker %s log:\n%s", node, log)
		}
		if theirs > 0 {
			t.Logf("speaker %s: %d data race(s) inside GoBGP v3.37.0 itself (its watch goroutine reads paths the server marks stale), not in tabby", node, theirs)
		}
	})
	s.start()
	return s
}

// start runs (or re-runs, after a kill) the speaker process.
func (s *speaker) start() {
	s.t.Helper()
	exe, err := os.Executable()
	if err != nil {
		s.t.Fatal(err)
	}
	s.proc = netnstest.Start(s.t, s.ns.Name, []string{helperEnv + "=" + s.cfgPath}, filepath.Join(s.dir, "speaker.log"), exe, "-test.run=^$")
	netnstest.Eventually(s.t, 10*time.Second, s.node+" control socket", func() error {
		if !s.proc.Running() {
			s.t.Fatalf("speaker %s exited:\n%s", s.node, s.log())
		}
		_, err := s.status()
		return err
	})
}

func (s *speaker) log() string {
	b, _ := os.ReadFile(filepath.Join(s.dir, "speaker.log"))
	return string(b)
}

// update gives the speaker a new snapshot.
func (s *speaker) update(snap *datastore.Snapshot) {
	s.t.Helper()
	if err := writeSnapshot(s.snapPath, snap); err != nil {
		s.t.Fatal(err)
	}
	if err := s.proc.Signal(syscall.SIGHUP); err != nil {
		s.t.Fatal(err)
	}
}

func (s *speaker) get(path string, v any) error {
	resp, err := s.client.Get("http://speaker" + path)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s: %s", path, resp.Status, body)
	}
	return json.Unmarshal(body, v)
}

func (s *speaker) status() ([]statusapi.Peer, error) {
	var st []statusapi.Peer
	return st, s.get("/status", &st)
}

func (s *speaker) routes() ([]bgp.LearnedRoute, error) {
	var r []bgp.LearnedRoute
	return r, s.get("/routes", &r)
}

// serveLoops is the number of GoBGP servers the speaker has created (see /serveloops).
func (s *speaker) serveLoops() (int, error) {
	var n int
	return n, s.get("/serveloops", &n)
}

func (s *speaker) learned() ([]bgp.LearnedRoute, error) {
	var r []bgp.LearnedRoute
	return r, s.get("/learned", &r)
}

// statusByAddr indexes a status by peer address.
func (s *speaker) statusByAddr() (map[string]statusapi.Peer, error) {
	st, err := s.status()
	if err != nil {
		return nil, err
	}
	out := map[string]statusapi.Peer{}
	for _, p := range st {
		out[p.Address] = p
	}
	return out, nil
}

// waitEstablished waits until the speaker has exactly the given peers, all up.
func (s *speaker) waitEstablished(timeout time.Duration, peers ...string) map[string]statusapi.Peer {
	s.t.Helper()
	var got map[string]statusapi.Peer
	netnstest.Eventually(s.t, timeout, s.node+" sessions established with "+fmt.Sprint(peers), func() error {
		st, err := s.statusByAddr()
		if err != nil {
			return err
		}
		if len(st) != len(peers) {
			return fmt.Errorf("status %v", st)
		}
		for _, p := range peers {
			if !st[p].Established {
				return fmt.Errorf("%s: %+v", p, st[p])
			}
		}
		got = st
		return nil
	})
	return got
}

// routeSet renders routes as "prefix via nexthop" for comparisons.
func routeSet(routes []bgp.LearnedRoute) map[string]bool {
	out := map[string]bool{}
	for _, r := range routes {
		out[r.Prefix.String()+" via "+r.NextHop.String()] = true
	}
	return out
}
