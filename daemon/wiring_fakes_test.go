package daemon

import (
	"context"
	"net/netip"
	"slices"
	"sync"

	"github.com/tabby-net/tabby/bgp"
	"github.com/tabby-net/tabby/internal/statusapi"
	"github.com/tabby-net/tabby/nat"
	"github.com/tabby-net/tabby/routing"
)

// Fakes of the subsystems that program the host: they record what the wiring hands them
// and report what the test tells them to, so that the wiring runs without root.

// fakeRoutes is a route reconciler whose status the test sets.
type fakeRoutes struct {
	synced   chan struct{}
	underlay chan struct{}

	mu     sync.Mutex
	status routing.KernelStatus
	last   *routing.State
	sets   int
}

func newFakeRoutes() *fakeRoutes {
	return &fakeRoutes{synced: make(chan struct{}), underlay: make(chan struct{}, 1)}
}

func (f *fakeRoutes) Run(ctx context.Context) error {
	<-ctx.Done()
	return nil
}

func (f *fakeRoutes) Set(s routing.State) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.last = &s
	f.sets++
}

func (f *fakeRoutes) Synced() <-chan struct{}          { return f.synced }
func (f *fakeRoutes) UnderlayChanged() <-chan struct{} { return f.underlay }

func (f *fakeRoutes) Status() routing.KernelStatus {
	f.mu.Lock()
	defer f.mu.Unlock()
	st := f.status
	st.Problems = slices.Clone(f.status.Problems)
	return st
}

// lastSet returns the last desired state handed over, nil before the first.
func (f *fakeRoutes) lastSet() *routing.State {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.last
}

// update changes the reported status.
func (f *fakeRoutes) update(fn func(*routing.KernelStatus)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn(&f.status)
}

// converge reports the first full sync, as routing.Kernel does: status first, then Synced.
func (f *fakeRoutes) converge(routes int) {
	f.update(func(st *routing.KernelStatus) {
		st.Synced = true
		st.Routes = map[routing.RouteKind]int{routing.KindDirect: routes}
	})
	close(f.synced)
}

// fakeHost is the host as the route computation reads it.
type fakeHost struct{ mtu int }

func (h fakeHost) Underlay() ([]routing.UnderlayRoute, error) { return nil, nil }
func (h fakeHost) MTU(netip.Addr) (int, string, error)        { return h.mtu, "eth0", nil }

// fakeNAT is a NAT reconciler whose status the test sets.
type fakeNAT struct {
	synced chan struct{}

	mu     sync.Mutex
	status nat.Status
	last   *nat.Desired
}

func newFakeNAT() *fakeNAT { return &fakeNAT{synced: make(chan struct{})} }

func (f *fakeNAT) Run(ctx context.Context) error {
	<-ctx.Done()
	return nil
}

func (f *fakeNAT) Set(d nat.Desired) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.last = &d
}

func (f *fakeNAT) FirstSync() <-chan struct{} { return f.synced }

func (f *fakeNAT) Status() nat.Status {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.status
}

func (f *fakeNAT) lastSet() *nat.Desired {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.last
}

func (f *fakeNAT) update(fn func(*nat.Status)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn(&f.status)
}

func (f *fakeNAT) converge() {
	f.update(func(st *nat.Status) { st.Synced, st.InSync = true, true })
	close(f.synced)
}

// fakeSpeaker reports every peer it was given as established, or, once blocked, is stuck
// as GoBGP is when its management loop does not answer: Status never returns and Run does
// not return when its context ends, both until the test ends.
type fakeSpeaker struct {
	learned chan []bgp.LearnedRoute
	// release ends every blocked Status call; closed by the test's cleanup.
	release chan struct{}

	mu      sync.Mutex
	peers   []bgp.Peer
	blocked bool
	calls   int
}

func newFakeSpeaker() *fakeSpeaker {
	return &fakeSpeaker{learned: make(chan []bgp.LearnedRoute, 1), release: make(chan struct{})}
}

func (f *fakeSpeaker) Run(ctx context.Context) error {
	<-ctx.Done()
	f.mu.Lock()
	blocked := f.blocked
	f.mu.Unlock()
	if blocked {
		<-f.release
	}
	return nil
}

func (f *fakeSpeaker) Set(_ bgp.Global, peers []bgp.Peer, _ []netip.Prefix) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.peers = slices.Clone(peers)
}

func (f *fakeSpeaker) Learned() <-chan []bgp.LearnedRoute { return f.learned }

func (f *fakeSpeaker) Status(context.Context) []statusapi.Peer {
	f.mu.Lock()
	f.calls++
	blocked := f.blocked
	peers := slices.Clone(f.peers)
	f.mu.Unlock()
	if blocked {
		<-f.release
		return nil
	}
	out := []statusapi.Peer{}
	for _, p := range peers {
		out = append(out, statusapi.Peer{Address: p.Address.String(), Type: p.Type, State: "up", Info: bgp.InfoEstablished, Established: true})
	}
	return out
}

// block makes every later Status call, and Run's return, wait until the test ends.
func (f *fakeSpeaker) block() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.blocked = true
}

func (f *fakeSpeaker) statusCalls() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls
}

func (f *fakeSpeaker) peerAddrs() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for _, p := range f.peers {
		out = append(out, p.Address.String())
	}
	return out
}
