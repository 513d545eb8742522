package daemon

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tabby-net/tabby/daemon/autodetect"
	"github.com/tabby-net/tabby/datastore"
	"github.com/tabby-net/tabby/datastore/etcdtest"
	"github.com/tabby-net/tabby/internal/statusapi"
	"github.com/tabby-net/tabby/nat"
	"github.com/tabby-net/tabby/routing"
)

// The daemon's wiring against a real etcd and fake subsystems, without root: readiness,
// the status document, READY=1 and what a failing or stuck subsystem does to them.

const (
	localNode = "worker-1"
	localAddr = "10.30.0.206/24"
	otherNode = "worker-2"
	otherAddr = "10.30.0.207/24"
)

// wiringTest is a daemon from the node address on: etcd client, syncer, node
// registration, the main loop, the status socket, and fakes for routes, NAT and BGP.
type wiringTest struct {
	t       *testing.T
	etcd    *etcdtest.Etcd
	d       *daemon
	routes  *fakeRoutes
	nat     *fakeNAT
	speaker *fakeSpeaker
	notes   *notifySocket

	stop func()
	done chan error
}

// startWiring runs the wiring until the test ends. prepare, when set, writes the cluster's
// documents before the daemon starts, and may change the daemon (it is not running yet).
func startWiring(t *testing.T, prepare func(w *wiringTest)) *wiringTest {
	t.Helper()
	w := &wiringTest{
		t:       t,
		etcd:    etcdtest.Start(t),
		routes:  newFakeRoutes(),
		nat:     newFakeNAT(),
		speaker: newFakeSpeaker(),
		notes:   listenNotify(t),
	}
	t.Cleanup(func() { close(w.speaker.release) })
	pool := datastore.NewIPPool("default-ipv4-ippool")
	pool.Spec = datastore.IPPoolSpec{CIDR: "192.168.0.0/16", IPIPMode: datastore.EncapNever, VXLANMode: datastore.EncapNever, NATOutgoing: true}
	if _, err := w.etcd.Client.CreateIPPool(context.Background(), pool); err != nil {
		t.Fatal(err)
	}

	dir := t.TempDir()
	cfg := &Config{
		NodeName:     localNode,
		Etcd:         datastore.Config{Endpoints: []string{w.etcd.Endpoint}, Prefix: "/calico"},
		BGP:          BGPConfig{SecretsDir: filepath.Join(dir, "secrets"), ConnectRetry: 5 * time.Second, HoldTime: 90 * time.Second, Keepalive: 30 * time.Second},
		Data:         DataplaneConfig{RouteProtocol: routing.DefaultProtocol, RouteRefreshInterval: 90 * time.Second, IPTablesBackend: nat.BackendAuto},
		Labels:       map[string]string{},
		DataDir:      filepath.Join(dir, "data"),
		RunDir:       filepath.Join(dir, "run"),
		StatusSocket: filepath.Join(dir, "tabbyd.sock"),
	}
	for _, p := range []string{cfg.DataDir, cfg.RunDir} {
		if err := os.MkdirAll(p, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	dp := dataplane{
		routes:  func(*daemon) (routeReconciler, hostReader, error) { return w.routes, fakeHost{mtu: 1500}, nil },
		nat:     func(*daemon) (natReconciler, error) { return w.nat, nil },
		speaker: func(*daemon) bgpSpeaker { return w.speaker },
	}
	log := slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	w.d = newDaemon(cfg, log, Options{RTProtosDir: t.TempDir()}, dp)
	w.d.setNode(localNode)
	w.d.setAddress(autodetect.Result{Address: netip.MustParsePrefix(localAddr), Interface: "eth0"})
	if prepare != nil {
		prepare(w)
	}

	ctx, cancel := context.WithCancel(context.Background())
	g := newGroup(ctx)
	if err := w.d.startServers(g.ctx, g); err != nil {
		cancel()
		t.Fatal(err)
	}
	w.done = make(chan error, 1)
	go func() { w.done <- w.d.runWired(g) }()
	var once sync.Once
	w.stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-w.done:
				if err != nil {
					t.Errorf("the daemon ended with %v", err)
				}
			case <-time.After(20 * time.Second):
				t.Fatal("the daemon did not stop within 20 s of its context's end")
			}
		})
	}
	t.Cleanup(w.stop)
	return w
}

// addOtherNode stores a second Node: with the default node-to-node mesh, BGP is needed.
func (w *wiringTest) addOtherNode() {
	w.t.Helper()
	n := datastore.NewNode(otherNode)
	n.Spec.BGP = &datastore.NodeBGPSpec{IPv4Address: otherAddr}
	if _, err := w.etcd.Client.CreateNode(context.Background(), n); err != nil {
		w.t.Fatal(err)
	}
}

// readiness returns GET /readiness: its code and lines.
func (w *wiringTest) get(path string) (int, []string) {
	rec := httptest.NewRecorder()
	w.d.health.Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
	return rec.Code, strings.Split(strings.TrimSpace(rec.Body.String()), "\n")
}

// status reads the status document from the status socket, as tabbyctl does.
func (w *wiringTest) status() *statusapi.Status {
	w.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	st, err := statusapi.Fetch(ctx, w.d.cfg.StatusSocket)
	if err != nil {
		w.t.Fatal(err)
	}
	return st
}

// waitReadiness waits until /readiness answers exactly want (code and lines).
func (w *wiringTest) waitReadiness(code int, want ...string) {
	w.t.Helper()
	var gotCode int
	var got []string
	waitUntil(w.t, "readiness "+strings.Join(want, " | "), func() bool {
		gotCode, got = w.get("/readiness")
		return gotCode == code && slices.Equal(got, want)
	}, func() string { return strings.Join(got, " | ") })
}

// waitUntil polls cond for up to 20 s; describe says what was seen last on failure.
func waitUntil(t *testing.T, what string, cond func() bool, describe func() string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s; last seen: %s", what, describe())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// notifySocket stands in for systemd's notification socket: NOTIFY_SOCKET points at it
// for the test, and it keeps every message received.
type notifySocket struct {
	mu   sync.Mutex
	msgs []string
}

func listenNotify(t *testing.T) *notifySocket {
	t.Helper()
	path := filepath.Join(t.TempDir(), "notify.sock")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv("NOTIFY_SOCKET", path)
	n := &notifySocket{}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 4096)
		for {
			k, err := conn.Read(buf)
			if err != nil {
				return
			}
			n.mu.Lock()
			n.msgs = append(n.msgs, string(buf[:k]))
			n.mu.Unlock()
		}
	}()
	t.Cleanup(func() { conn.Close(); <-done })
	return n
}

// received returns the messages so far.
func (n *notifySocket) received() []string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return slices.Clone(n.msgs)
}

// readies counts the messages that say READY=1.
func (n *notifySocket) readies() int {
	c := 0
	for _, m := range n.received() {
		if slices.Contains(strings.Split(m, "\n"), "READY=1") {
			c++
		}
	}
	return c
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

var _ io.Writer = testWriter{}

// TestWiringReadyAfterFirstConvergence: READY=1 is sent once, only when the Node is
// registered and the route and NAT reconcilers have each applied a desired state in full;
// until then readiness says the daemon has not converged.
func TestWiringReadyAfterFirstConvergence(t *testing.T) {
	w := startWiring(t, nil)

	// The desired states reach both reconcilers (routes are held until the registrar has
	// stored the local Node); nothing has converged.
	waitUntil(t, "desired states for routes and NAT", func() bool {
		st := w.routes.lastSet()
		return st != nil && st.Hold == "" && w.nat.lastSet() != nil
	}, func() string { return "" })
	if got := w.nat.lastSet().MasqPools; len(got) != 1 || got[0] != netip.MustParsePrefix("192.168.0.0/16") {
		t.Errorf("NAT masquerades %v, want the pool 192.168.0.0/16", got)
	}
	if st := w.routes.lastSet(); st.PodMTU != 1500 {
		t.Errorf("routes were handed pod MTU %d, want 1500 (Direct on a 1500 NIC)", st.PodMTU)
	}
	w.waitReadiness(http.StatusServiceUnavailable, "not converged yet")

	// NAT alone is not enough. A route failure reported after NAT's sync shows that the
	// loop has looked at the subsystems since NAT converged.
	w.nat.converge()
	w.routes.update(func(st *routing.KernelStatus) { st.Failures, st.LastError = 1, "1 operations failed, first: boom" })
	w.waitReadiness(http.StatusServiceUnavailable, "not converged yet", "routes not applied: 1 operations failing: 1 operations failed, first: boom")
	if n := w.notes.readies(); n != 0 {
		t.Fatalf("READY=1 sent %d times before the routes converged; messages: %q", n, w.notes.received())
	}

	w.routes.update(func(st *routing.KernelStatus) { st.Failures, st.LastError = 0, "" })
	w.routes.converge(3)
	waitUntil(t, "READY=1", func() bool { return w.notes.readies() == 1 }, func() string { return strings.Join(w.notes.received(), " | ") })
	w.waitReadiness(http.StatusOK, "ready")
	msgs := w.notes.received()
	if last := msgs[len(msgs)-1]; !strings.Contains(last, "STATUS=Converged: 3 routes, 0 BGP peers up") {
		t.Errorf("last notification %q, want the converged status", last)
	}

	// Later changes do not send READY=1 again.
	w.routes.update(func(st *routing.KernelStatus) { st.Failures, st.LastError = 2, "2 operations failed" })
	w.waitReadiness(http.StatusServiceUnavailable, "routes not applied: 2 operations failing: 2 operations failed")
	w.routes.update(func(st *routing.KernelStatus) { st.Failures, st.LastError = 0, "" })
	w.waitReadiness(http.StatusOK, "ready")
	if n := w.notes.readies(); n != 1 {
		t.Errorf("READY=1 sent %d times, want once", n)
	}
}

// TestWiringStatusDocument: the status socket's document says who the node is, which
// revision it applied, its MTUs, its BGP sessions and the problems of the datastore and
// the subsystems, with the same verdict as /readiness.
func TestWiringStatusDocument(t *testing.T) {
	w := startWiring(t, func(w *wiringTest) { w.addOtherNode() })
	// An invalid pool: reported, and the rest of the snapshot still applied.
	if _, err := w.etcd.Raw().Put(context.Background(), w.etcd.Client.Keys.Resource(datastore.KindIPPool, "broken"),
		`{"kind":"IPPool","apiVersion":"projectcalico.org/v3","metadata":{"name":"broken"},"spec":{"cidr":"not-a-cidr"}}`); err != nil {
		t.Fatal(err)
	}
	w.routes.update(func(st *routing.KernelStatus) { st.Problems = []string{"kernel has no ipip support"} })
	w.nat.update(func(st *nat.Status) { st.Warning = "chain tabby-OLD is still referenced" })
	w.nat.converge()
	w.routes.converge(2)

	waitUntil(t, "the speaker to be given the mesh peer", func() bool {
		return slices.Equal(w.speaker.peerAddrs(), []string{"10.30.0.207"})
	}, func() string { return strings.Join(w.speaker.peerAddrs(), ",") })
	var st *statusapi.Status
	waitUntil(t, "a converged status document with the peer and the invalid pool", func() bool {
		st = w.status()
		return st.Ready && len(st.Peers) == 1 && slices.ContainsFunc(st.Problems, func(p string) bool { return strings.Contains(p, "broken") })
	}, func() string { return describeStatus(st) })

	// Any read answers with etcd's current revision.
	rev, err := w.etcd.Raw().Get(context.Background(), "/calico/revision-probe")
	if err != nil {
		t.Fatal(err)
	}
	if st.Node != localNode || st.NodeAddress != localAddr {
		t.Errorf("node %q at %q, want %q at %q", st.Node, st.NodeAddress, localNode, localAddr)
	}
	waitUntil(t, "the document's revision to reach etcd's", func() bool {
		st = w.status()
		return st.Revision == rev.Header.Revision
	}, func() string { return describeStatus(st) })
	if st.HostMTU != 1500 || st.PodMTU != 1500 {
		t.Errorf("MTUs host %d pod %d, want 1500 and 1500", st.HostMTU, st.PodMTU)
	}
	if p := st.Peers[0]; p.Address != "10.30.0.207" || !p.Established || p.Type != statusapi.PeerTypeMesh {
		t.Errorf("peer %+v, want the established mesh peer 10.30.0.207", p)
	}
	for _, want := range []string{"kernel has no ipip support", "NAT: chain tabby-OLD is still referenced"} {
		if !slices.Contains(st.Problems, want) {
			t.Errorf("problems %q lack %q", st.Problems, want)
		}
	}
	if len(st.NotReady) != 0 {
		t.Errorf("a ready document lists reasons %q", st.NotReady)
	}
	if mtu, err := os.ReadFile(filepath.Join(w.d.cfg.DataDir, routing.PodMTUFile)); err != nil || strings.TrimSpace(string(mtu)) != "1500" {
		t.Errorf("published pod MTU %q (%v), want 1500", mtu, err)
	}
}

// TestWiringFailingSubsystems: what a failing subsystem reports is in readiness, one reason
// per line, and in the status document's verdict; when it recovers, both say ready again.
func TestWiringFailingSubsystems(t *testing.T) {
	w := startWiring(t, nil)
	w.nat.converge()
	w.routes.converge(1)
	w.waitReadiness(http.StatusOK, "ready")

	w.routes.update(func(st *routing.KernelStatus) {
		st.Tunl0 = routing.DeviceUnsupported
		st.VXLAN = routing.DeviceUp
		st.Failures, st.LastError = 3, "3 operations failed, first: no such device"
	})
	w.nat.update(func(st *nat.Status) { st.InSync, st.LastError = false, "iptables-restore: exit status 4" })
	want := []string{
		"kernel has no ipip support",
		"routes not applied: 3 operations failing: 3 operations failed, first: no such device",
		"NAT not applied: iptables-restore: exit status 4",
	}
	w.waitReadiness(http.StatusServiceUnavailable, want...)
	st := w.status()
	if st.Ready || !slices.Equal(st.NotReady, want) {
		t.Errorf("status document ready=%v reasons %q, want not ready with %q", st.Ready, st.NotReady, want)
	}

	w.routes.update(func(st *routing.KernelStatus) {
		st.Tunl0, st.Failures, st.LastError = routing.DeviceUp, 0, ""
	})
	w.nat.update(func(st *nat.Status) { st.InSync, st.LastError = true, "" })
	w.waitReadiness(http.StatusOK, "ready")
	if st := w.status(); !st.Ready || len(st.NotReady) != 0 {
		t.Errorf("status document after recovery: ready=%v reasons %q", st.Ready, st.NotReady)
	}
}

// TestWiringStuckSpeaker: a BGP speaker that is stuck (GoBGP's management loop does not
// answer: the status call never returns, Run does not end with its context) stalls
// neither the main loop nor liveness nor shutdown; readiness says that the speaker does
// not answer.
func TestWiringStuckSpeaker(t *testing.T) {
	w := startWiring(t, func(w *wiringTest) {
		w.addOtherNode()
		w.d.peerStatusStale = 300 * time.Millisecond
		w.d.speakerStopGrace = 300 * time.Millisecond
	})
	w.nat.converge()
	w.routes.converge(1)
	w.waitReadiness(http.StatusOK, "ready")
	waitUntil(t, "the session in the status document", func() bool { return len(w.status().Peers) == 1 }, func() string { return "" })

	w.speaker.block()
	calls := w.speaker.statusCalls()
	var lines []string
	waitUntil(t, "readiness to say the speaker does not answer", func() bool {
		_, lines = w.get("/readiness")
		return slices.ContainsFunc(lines, func(l string) bool { return strings.HasPrefix(l, "BGP speaker not answering for ") })
	}, func() string { return strings.Join(lines, " | ") })

	// The main loop goes on: a NAT failure reported now shows in readiness and in the
	// status document, which still lists the session as last read.
	w.nat.update(func(st *nat.Status) { st.LastError = "iptables-restore: exit status 1" })
	waitUntil(t, "the NAT failure in readiness", func() bool {
		_, lines = w.get("/readiness")
		return slices.Contains(lines, "NAT not applied: iptables-restore: exit status 1")
	}, func() string { return strings.Join(lines, " | ") })
	if st := w.status(); len(st.Peers) != 1 || st.Peers[0].Address != "10.30.0.207" {
		t.Errorf("status document peers %+v, want the session as last read", st.Peers)
	}
	if code, body := w.get("/liveness"); code != http.StatusOK {
		t.Errorf("liveness %d %q, want 200", code, body)
	}
	// One read at a time: the stuck call is not piled up on every tick.
	if n := w.speaker.statusCalls() - calls; n != 1 {
		t.Errorf("%d status calls since the speaker got stuck, want 1", n)
	}

	w.stop() // fails the test if the daemon does not stop
}

func describeStatus(st *statusapi.Status) string {
	if st == nil {
		return "no document"
	}
	return strings.Join([]string{
		"ready=" + map[bool]string{true: "yes", false: "no"}[st.Ready],
		"reasons=" + strings.Join(st.NotReady, ";"),
		"problems=" + strings.Join(st.Problems, ";"),
	}, " ")
}
