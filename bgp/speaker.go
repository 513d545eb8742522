package bgp

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	api "github.com/osrg/gobgp/v3/api"
	"github.com/osrg/gobgp/v3/pkg/server"

	"github.com/tabby-net/tabby/internal/backoff"
	"github.com/tabby-net/tabby/internal/ipprefix"
	"github.com/tabby-net/tabby/internal/latest"
	"github.com/tabby-net/tabby/internal/statusapi"
)

// LearnedRoute is a best path in the BGP table.
type LearnedRoute struct {
	Prefix netip.Prefix
	// NextHop is where the route points.
	NextHop netip.Addr
	// Peer is the neighbour the path came from; the zero Addr for a path this node
	// originates (only Routes reports those).
	Peer netip.Addr
	// Stale marks a path kept from a peer that is restarting (graceful restart).
	Stale bool
}

// SpeakerOptions configures a Speaker. Zero values take the defaults.
type SpeakerOptions struct {
	Logger *slog.Logger
	// RunDir holds the graceful-restart marker <RunDir>/bgp-restart. Empty: no marker,
	// every start is a cold start (tests, or hosts that do not want graceful restart).
	RunDir string
	// Timers apply to every session (SPEC §7: connect retry 5 s, hold 90 s, keepalive 30 s).
	Timers Timers
	// RestartTime is the graceful-restart time announced to peers without their own
	// (BGPPeer maxRestartTime, nodeMeshMaxRestartTime): 120 s.
	RestartTime time.Duration
	// DeferralTime bounds how long a restarting node waits for its peers' End-of-RIB
	// before sending its own routes: 60 s.
	DeferralTime time.Duration
	// ObserveReconcile, when set, is called by Run with the duration of every
	// reconciliation of the desired state (the daemon's
	// tabby_reconcile_duration_seconds{subsystem="bgp"}). It must not block.
	ObserveReconcile func(time.Duration)
}

// Speaker owns the process's one GoBGP server (GoBGP keeps global state, so there can only
// be one). Set publishes what it should do; Run is the one goroutine that does it.
type Speaker struct {
	// observe is SpeakerOptions.ObserveReconcile.
	observe func(time.Duration)
	log     *slog.Logger
	timers  Timers
	gr      grSettings
	marker  restartMarker
	tracker *peerTracker
	glog    *gobgpLogger

	// desired is the latest Set.
	desired *latest.Value[*desiredState]

	// GoBGP's watch callbacks queue table events here for Run; events of an older server
	// generation are dropped.
	eventsMu  sync.Mutex
	events    []tableEvent
	eventWake chan struct{}
	gen       atomic.Uint64

	learned chan []LearnedRoute

	stopOnce sync.Once
	stopped  chan struct{}

	// applyMu serialises Run's reconciliations with Stop. Everything below it is owned by
	// whoever holds it.
	applyMu sync.Mutex
	cur     *running
	// spare is a GoBGP server whose management loop runs but whose BGP is stopped (its
	// StartBgp failed, or it ran the previous identity): the next start reuses it, because
	// the loop (BgpServer.Serve) never ends and a new server would leave it behind.
	spare       *server.BgpServer
	startedOnce bool
	best        map[netip.Prefix]LearnedRoute
	published   []LearnedRoute
	pools       []netip.Prefix
	isStopped   bool

	// What Status and Routes read, under its own lock so that they never wait for a
	// reconciliation: the server now running, and why peers failed to be configured.
	viewMu    sync.Mutex
	view      *server.BgpServer
	applyErrs map[netip.Addr]string
}

type desiredState struct {
	global  Global
	peers   []Peer
	adverts []netip.Prefix
}

type tableEvent struct {
	gen   uint64
	paths []*api.Path
}

// running is the state of the GoBGP server the Speaker started, and what it applied to it.
type running struct {
	srv         *server.BgpServer
	gen         uint64
	cancelWatch context.CancelFunc
	global      Global
	peers       map[netip.Addr]Peer
	paths       map[netip.Prefix][]byte // prefix → GoBGP's path UUID
	keepNextHop map[netip.Addr]bool     // peers in the keep-next-hop policy
	// restartWindow is open until the first reconciliation after a restart: sessions
	// added then carry the Restart State bit.
	restartWindow bool
}

// NewSpeaker returns a speaker that does nothing until Run and the first Set.
func NewSpeaker(opts SpeakerOptions) *Speaker {
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	log = log.With("subsystem", "bgp")
	gr := grSettings{restartTime: opts.RestartTime, deferralTime: opts.DeferralTime}
	if gr.restartTime <= 0 {
		gr.restartTime = DefaultRestartTime
	}
	if gr.deferralTime <= 0 {
		gr.deferralTime = DefaultDeferralTime
	}
	s := &Speaker{
		observe:   opts.ObserveReconcile,
		log:       log,
		timers:    opts.Timers.withDefaults(),
		gr:        gr,
		marker:    newRestartMarker(opts.RunDir),
		tracker:   newPeerTracker(time.Now),
		desired:   latest.New[*desiredState](),
		eventWake: make(chan struct{}, 1),
		learned:   make(chan []LearnedRoute, 1),
		stopped:   make(chan struct{}),
		best:      map[netip.Prefix]LearnedRoute{},
		applyErrs: map[netip.Addr]string{},
	}
	s.glog = &gobgpLogger{log: log.With("component", "gobgp"), observe: s.tracker.observeLog}
	return s
}

// Set publishes the desired state: the node's identity, its sessions and the prefixes it
// originates. It never blocks; the latest call wins. A Global with no RouterID turns BGP
// off (sessions are closed with a Cease).
func (s *Speaker) Set(global Global, peers []Peer, adverts []netip.Prefix) {
	d := &desiredState{
		global:  global,
		peers:   slices.Clone(peers),
		adverts: slices.Clone(adverts),
	}
	d.global.Pools = slices.Clone(global.Pools)
	s.desired.Set(d)
}

// Learned delivers the best paths the speaker learned for prefixes outside every pool
// (routes inside pools are computed from the datastore, SPEC §5), sorted by prefix. It holds
// only the latest list: a slow reader skips intermediate ones, never gets a stale one.
func (s *Speaker) Learned() <-chan []LearnedRoute { return s.learned }

// Run applies the desired state until ctx is cancelled or Stop is called. It returns nil
// on cancellation WITHOUT closing the sessions: tabbyd is expected to exit, which closes
// its TCP connections without a Cease, so peers treat it as a graceful restart and keep its
// routes. Failed operations are retried with backoff.
func (s *Speaker) Run(ctx context.Context) error {
	// The first retry waits a second, not backoff's default: what fails here (StartBgp on
	// a port another process still holds, a peer GoBGP refuses) does not clear within
	// milliseconds: retrying sooner would only fill the log.
	bo := backoff.Backoff{Min: time.Second}
	retry := time.NewTimer(time.Hour)
	retry.Stop()
	defer retry.Stop()
	var d *desiredState // the desired state taken last
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-s.stopped:
			return nil
		case <-s.eventWake:
			s.processEvents()
			continue
		case <-s.desired.Wake():
			if next, ok := s.desired.Take(); ok {
				d = next
			}
		case <-retry.C:
		}
		if d == nil {
			continue
		}
		start := time.Now()
		err := s.reconcile(ctx, d)
		if s.observe != nil {
			s.observe(time.Since(start))
		}
		if err != nil {
			wait := bo.Next()
			s.log.Warn("BGP configuration not fully applied, will retry", "error", err, "retry_in", wait)
			retry.Reset(wait)
			continue
		}
		bo.Reset()
		retry.Stop()
	}
}

// Stop ends the speaker. graceful=true leaves every session as it is, for a process about
// to exit: no Cease is sent and peers keep this node's routes for the restart time (the
// same as cancelling Run's context). graceful=false is a deliberate shutdown: the node's
// routes are withdrawn, each session is closed with a Cease, and the restart marker is
// removed so the next start is a cold start. Run returns after Stop.
func (s *Speaker) Stop(ctx context.Context, graceful bool) error {
	s.applyMu.Lock()
	defer s.applyMu.Unlock()
	s.isStopped = true
	s.stopOnce.Do(func() { close(s.stopped) })
	if graceful {
		return nil
	}
	var errs []error
	if s.cur != nil {
		errs = append(errs, s.withdrawAll(ctx))
		s.stopServer(ctx)
	}
	errs = append(errs, s.marker.remove())
	return errors.Join(errs...)
}

// reconcile makes the GoBGP server match d.
func (s *Speaker) reconcile(ctx context.Context, d *desiredState) error {
	s.applyMu.Lock()
	defer s.applyMu.Unlock()
	if s.isStopped {
		return nil
	}
	if !d.global.RouterID.IsValid() {
		if s.cur != nil {
			s.log.Info("BGP turned off: the node has no address; closing every session")
			s.stopServer(ctx)
		}
		return nil
	}
	if s.cur != nil && !sameIdentity(s.cur.global, d.global) {
		s.log.Info("BGP identity changed, restarting the BGP server (sessions reset)",
			"router_id", d.global.RouterID, "as", d.global.ASN, "port", d.global.ListenPort,
			"old_router_id", s.cur.global.RouterID, "old_as", s.cur.global.ASN, "old_port", s.cur.global.ListenPort)
		s.stopServer(ctx)
	}
	if s.cur == nil {
		if err := s.startServer(ctx, d.global); err != nil {
			return err
		}
	}
	if !slices.Equal(s.pools, d.global.Pools) {
		s.pools = d.global.Pools
		s.publishLearned()
	}
	s.cur.global.Pools = d.global.Pools

	var errs []error
	// Routes first, so that the first UPDATE a new session sends already carries them.
	errs = append(errs, s.applyPaths(ctx, d.adverts)...)
	errs = append(errs, s.applyPeers(ctx, d.peers)...)
	errs = append(errs, s.applyKeepNextHop(ctx))
	s.cur.restartWindow = false
	return errors.Join(errs...)
}

func sameIdentity(a, b Global) bool {
	return a.RouterID == b.RouterID && a.ASN == b.ASN && effectivePort(a.ListenPort) == effectivePort(b.ListenPort)
}

func effectivePort(p uint16) uint16 {
	if p == 0 {
		return DefaultListenPort
	}
	return p
}

// startServer starts a GoBGP server with the node's identity and subscribes to its peer
// and best-path events.
func (s *Speaker) startServer(ctx context.Context, g Global) error {
	srv := s.spare
	s.spare = nil
	if srv == nil {
		srv = server.NewBgpServer(server.LoggerOption(s.glog))
		go srv.Serve() // before any other call: Serve runs the server's management loop
	}
	if err := srv.StartBgp(ctx, &api.StartBgpRequest{Global: apiGlobal(g)}); err != nil {
		s.spare = srv
		return fmt.Errorf("start BGP (router ID %s, AS %d, port %d): %w", g.RouterID, g.ASN, effectivePort(g.ListenPort), err)
	}

	restarting := false
	if !s.startedOnce {
		s.startedOnce = true
		was, err := s.marker.exists()
		if err != nil {
			s.log.Warn("cannot tell whether this is a restart; starting cold", "error", err)
		}
		restarting = was
	}
	if err := s.marker.write(); err != nil {
		s.log.Warn("a later restart will not be graceful", "error", err)
	}

	gen := s.gen.Add(1)
	watchCtx, cancel := context.WithCancel(context.Background())
	err := srv.WatchEvent(watchCtx, &api.WatchEventRequest{
		Peer: &api.WatchEventRequest_Peer{},
		Table: &api.WatchEventRequest_Table{Filters: []*api.WatchEventRequest_Table_Filter{
			{Type: api.WatchEventRequest_Table_Filter_BEST, Init: true},
		}},
	}, s.watchCallback(gen))
	if err != nil {
		cancel()
		_ = srv.StopBgp(ctx, &api.StopBgpRequest{})
		s.spare = nil
		return fmt.Errorf("watch BGP events: %w", err)
	}

	s.cur = &running{
		srv:           srv,
		gen:           gen,
		cancelWatch:   cancel,
		global:        g,
		peers:         map[netip.Addr]Peer{},
		paths:         map[netip.Prefix][]byte{},
		keepNextHop:   map[netip.Addr]bool{},
		restartWindow: restarting,
	}
	clear(s.best)
	s.tracker.reset()
	s.publishLearned()
	s.viewMu.Lock()
	s.view = srv
	clear(s.applyErrs)
	s.viewMu.Unlock()
	s.log.Info("BGP server started", "router_id", g.RouterID, "as", g.ASN, "port", effectivePort(g.ListenPort), "graceful_restart", restarting)
	return nil
}

// stopServer closes every session with a Cease and keeps the stopped server as the spare.
func (s *Speaker) stopServer(ctx context.Context) {
	cur := s.cur
	s.cur = nil
	s.viewMu.Lock()
	s.view = nil
	s.viewMu.Unlock()
	if cur == nil {
		return
	}
	cur.cancelWatch()
	if err := cur.srv.StopBgp(ctx, &api.StopBgpRequest{}); err != nil {
		s.log.Warn("stopping the BGP server", "error", err)
	} else {
		s.spare = cur.srv
	}
	clear(s.best)
	s.tracker.reset()
	s.publishLearned()
}

// watchCallback hands GoBGP's events off quickly: GoBGP queues events without bound for a
// slow callback, so peer states are stored under a short lock and table events queued for
// Run.
func (s *Speaker) watchCallback(gen uint64) func(*api.WatchEventResponse) {
	return func(r *api.WatchEventResponse) {
		if s.gen.Load() != gen {
			return
		}
		switch ev := r.GetEvent().(type) {
		case *api.WatchEventResponse_Peer:
			pe := ev.Peer
			if pe.GetType() != api.WatchEventResponse_PeerEvent_STATE {
				return
			}
			st := pe.GetPeer().GetState()
			if addr := st.GetNeighborAddress(); addr != "" {
				s.tracker.stateChanged(addr, st.GetSessionState())
			}
		case *api.WatchEventResponse_Table:
			paths := ev.Table.GetPaths()
			if len(paths) == 0 {
				return
			}
			s.eventsMu.Lock()
			s.events = append(s.events, tableEvent{gen: gen, paths: paths})
			s.eventsMu.Unlock()
			select {
			case s.eventWake <- struct{}{}:
			default:
			}
		}
	}
}

// processEvents folds queued best-path events into the table of learned routes.
func (s *Speaker) processEvents() {
	s.eventsMu.Lock()
	events := s.events
	s.events = nil
	s.eventsMu.Unlock()

	s.applyMu.Lock()
	defer s.applyMu.Unlock()
	if s.cur == nil {
		return
	}
	for _, ev := range events {
		if ev.gen != s.cur.gen {
			continue
		}
		for _, p := range ev.paths {
			r, local, err := pathRoute(p)
			if err != nil {
				s.log.Debug("ignoring a BGP path", "error", err)
				continue
			}
			// In a best-path event a withdrawn path means the prefix has no path left, and a
			// local one that this node's own route won.
			if p.GetIsWithdraw() || local {
				delete(s.best, r.Prefix)
				continue
			}
			s.best[r.Prefix] = r
		}
	}
	s.publishLearned()
}

// publishLearned sends the learned routes outside every pool, when they changed.
func (s *Speaker) publishLearned() {
	out := make([]LearnedRoute, 0, len(s.best))
	for _, r := range s.best {
		if !insideAny(r.Prefix, s.pools) {
			out = append(out, r)
		}
	}
	slices.SortFunc(out, func(a, b LearnedRoute) int { return ipprefix.Compare(a.Prefix, b.Prefix) })
	if s.published != nil && slices.Equal(out, s.published) {
		return
	}
	s.published = out
	latest.Send(s.learned, slices.Clone(out))
}

// insideAny reports whether p lies within one of the pools (a route covering a pool, like
// a ToR's 10.0.0.0/8, is outside it).
func insideAny(p netip.Prefix, pools []netip.Prefix) bool {
	for _, pool := range pools {
		if pool.Bits() <= p.Bits() && pool.Contains(p.Addr()) {
			return true
		}
	}
	return false
}

// applyPaths originates exactly the wanted prefixes.
func (s *Speaker) applyPaths(ctx context.Context, want []netip.Prefix) []error {
	var errs []error
	wanted := make(map[netip.Prefix]bool, len(want))
	for _, p := range want {
		wanted[p.Masked()] = true
	}
	for prefix, id := range s.cur.paths {
		if wanted[prefix] {
			continue
		}
		// Always by UUID: a DeletePath with neither path nor UUID deletes every local path.
		if err := s.cur.srv.DeletePath(ctx, &api.DeletePathRequest{Family: ipv4Unicast(), Uuid: id}); err != nil {
			errs = append(errs, fmt.Errorf("withdraw %s: %w", prefix, err))
			continue
		}
		delete(s.cur.paths, prefix)
	}
	for _, prefix := range sortedPrefixes(wanted) {
		if _, ok := s.cur.paths[prefix]; ok {
			continue
		}
		path, err := apiPath(prefix, s.cur.global.RouterID)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		resp, err := s.cur.srv.AddPath(ctx, &api.AddPathRequest{Path: path})
		if err != nil {
			errs = append(errs, fmt.Errorf("advertise %s: %w", prefix, err))
			continue
		}
		if len(resp.GetUuid()) == 0 {
			errs = append(errs, fmt.Errorf("advertise %s: GoBGP returned no path id", prefix))
			continue
		}
		s.cur.paths[prefix] = resp.GetUuid()
	}
	return errs
}

// withdrawAll withdraws every route this node originates, then gives GoBGP a moment to
// write the UPDATEs before the Cease that follows, so that peers drop the routes even if
// they would treat that Cease as a graceful restart (RFC 8538). GoBGP v3 has no way to
// tell when its queued UPDATEs have been written, hence the fixed grace.
func (s *Speaker) withdrawAll(ctx context.Context) error {
	const grace = time.Second
	errs := s.applyPaths(ctx, nil)
	select {
	case <-ctx.Done():
	case <-time.After(grace):
	}
	return errors.Join(errs...)
}

// sessionConfig is the part of a Peer that GoBGP sees: a change of anything else (its
// type or source) must not touch the session.
type sessionConfig struct {
	Port                 uint16
	ASN                  uint32
	Passive              bool
	Password             Secret
	RouteReflectorClient bool
	ClusterID            string
	RestartTime          time.Duration
}

func sessionOf(p Peer) sessionConfig {
	return sessionConfig{
		Port:                 effectivePort(p.Port),
		ASN:                  p.ASN,
		Passive:              p.Passive,
		Password:             p.Password,
		RouteReflectorClient: p.RouteReflectorClient,
		ClusterID:            p.ClusterID,
		RestartTime:          p.RestartTime,
	}
}

// applyPeers adds, updates and deletes sessions by difference, so that a peer added or
// removed leaves every other session untouched.
func (s *Speaker) applyPeers(ctx context.Context, want []Peer) []error {
	var errs []error
	wanted := make(map[netip.Addr]Peer, len(want))
	for _, p := range want {
		wanted[p.Address] = p
	}
	for addr := range s.cur.peers {
		if _, ok := wanted[addr]; ok {
			continue
		}
		if err := s.deletePeer(ctx, addr); err != nil {
			errs = append(errs, err)
			continue
		}
		s.log.Info("BGP peer removed", "peer", addr)
	}
	s.viewMu.Lock()
	for addr := range s.applyErrs {
		if _, ok := wanted[addr]; !ok {
			delete(s.applyErrs, addr)
		}
	}
	s.viewMu.Unlock()
	for _, addr := range sortedAddrs(wanted) {
		p := wanted[addr]
		have, ok := s.cur.peers[addr]
		var err error
		switch {
		case !ok:
			err = s.addPeer(ctx, p)
			if err == nil {
				s.log.Info("BGP peer added", "peer", addr, "as", p.ASN, "type", p.Type, "source", p.Source, "passive", p.Passive)
			}
		case sessionOf(have) == sessionOf(p):
			s.cur.peers[addr] = p // type or source only: nothing to tell GoBGP
		case have.RouteReflectorClient != p.RouteReflectorClient || have.ClusterID != p.ClusterID:
			// UpdatePeer does not apply route-reflector settings: replace the session.
			if err = s.deletePeer(ctx, addr); err == nil {
				err = s.addPeer(ctx, p)
			}
		default:
			if _, err = s.cur.srv.UpdatePeer(ctx, &api.UpdatePeerRequest{Peer: s.apiPeer(p, false)}); err == nil {
				s.cur.peers[addr] = p
				s.log.Info("BGP peer updated", "peer", addr, "as", p.ASN, "type", p.Type, "source", p.Source)
			} else {
				err = fmt.Errorf("update peer %s: %w", addr, err)
			}
		}
		s.viewMu.Lock()
		if err != nil {
			s.applyErrs[addr] = err.Error()
			errs = append(errs, err)
		} else {
			delete(s.applyErrs, addr)
		}
		s.viewMu.Unlock()
	}
	return errs
}

func (s *Speaker) apiPeer(p Peer, restarting bool) *api.Peer {
	return apiPeer(p, s.cur.global, s.timers, s.gr, restarting)
}

func (s *Speaker) addPeer(ctx context.Context, p Peer) error {
	s.tracker.added(p.Address.String())
	if err := s.cur.srv.AddPeer(ctx, &api.AddPeerRequest{Peer: s.apiPeer(p, s.cur.restartWindow)}); err != nil {
		return fmt.Errorf("add peer %s: %w", p.Address, err)
	}
	s.cur.peers[p.Address] = p
	return nil
}

func (s *Speaker) deletePeer(ctx context.Context, addr netip.Addr) error {
	if err := s.cur.srv.DeletePeer(ctx, &api.DeletePeerRequest{Address: addr.String()}); err != nil {
		return fmt.Errorf("delete peer %s: %w", addr, err)
	}
	delete(s.cur.peers, addr)
	s.tracker.removed(addr.String())
	return nil
}

// Status reports every wanted session in the order of their addresses, in BIRD's words
// (`tabbyctl node status`, readiness).
func (s *Speaker) Status(ctx context.Context) []statusapi.Peer {
	d, _ := s.desired.Load()
	if d == nil || !d.global.RouterID.IsValid() {
		return nil
	}
	s.viewMu.Lock()
	srv := s.view
	applyErrs := maps.Clone(s.applyErrs)
	s.viewMu.Unlock()
	live := map[string]*api.Peer{}
	if srv != nil {
		_ = srv.ListPeer(ctx, &api.ListPeerRequest{}, func(p *api.Peer) {
			live[p.GetConf().GetNeighborAddress()] = p
		})
	}

	peers := slices.Clone(d.peers)
	slices.SortFunc(peers, func(a, b Peer) int { return a.Address.Compare(b.Address) })
	out := make([]statusapi.Peer, 0, len(peers))
	for _, p := range peers {
		rec, hasRec := s.tracker.get(p.Address.String())
		out = append(out, peerStatus(p, live[p.Address.String()], rec, hasRec, applyErrs[p.Address]))
	}
	return out
}

// peerStatus renders one session's status.
func peerStatus(p Peer, live *api.Peer, rec peerRecord, hasRec bool, applyErr string) statusapi.Peer {
	st := statusapi.Peer{
		Address: p.Address.String() + portSuffix(p.Port),
		Type:    p.Type,
	}
	if live == nil {
		st.State = StateStart
		st.Info = "Start: not configured yet"
		if applyErr != "" {
			st.Info = "Start: " + applyErr
		}
		if hasRec {
			st.Since = rec.since
		}
		return st
	}
	state := live.GetState().GetSessionState()
	st.State = stateWord(state, p.Passive)
	st.Established = state == api.PeerState_ESTABLISHED
	switch {
	case hasRec:
		st.Since = rec.since
	case st.Established && live.GetTimers().GetState().GetUptime() != nil:
		st.Since = live.GetTimers().GetState().GetUptime().AsTime()
	case live.GetTimers().GetState().GetDowntime() != nil:
		st.Since = live.GetTimers().GetState().GetDowntime().AsTime()
	}
	switch {
	case st.Established:
		st.Info = InfoEstablished
	case hasRec && rec.lastErr != "":
		st.Info = rec.lastErr
	case p.Passive && state == api.PeerState_ACTIVE:
		st.Info = passiveWaiting
	default:
		st.Info = phaseWord(state)
	}
	return st
}

// Routes lists every best path in the BGP table, the node's own and learned ones, inside
// pools or not: for diagnostics (what the RIB holds), not for programming routes.
func (s *Speaker) Routes(ctx context.Context) ([]LearnedRoute, error) {
	s.viewMu.Lock()
	srv := s.view
	s.viewMu.Unlock()
	if srv == nil {
		return nil, nil
	}
	var out []LearnedRoute
	var firstErr error
	err := srv.ListPath(ctx, &api.ListPathRequest{TableType: api.TableType_GLOBAL, Family: ipv4Unicast()}, func(d *api.Destination) {
		for _, p := range d.GetPaths() {
			if !p.GetBest() {
				continue
			}
			r, _, err := pathRoute(p)
			if err != nil {
				if firstErr == nil {
					firstErr = err
				}
				continue
			}
			out = append(out, r)
		}
	})
	if err != nil {
		return nil, fmt.Errorf("list BGP table: %w", err)
	}
	slices.SortFunc(out, func(a, b LearnedRoute) int { return ipprefix.Compare(a.Prefix, b.Prefix) })
	return out, firstErr
}

func sortedPrefixes(m map[netip.Prefix]bool) []netip.Prefix {
	out := make([]netip.Prefix, 0, len(m))
	for p := range m {
		out = append(out, p)
	}
	slices.SortFunc(out, ipprefix.Compare)
	return out
}

func sortedAddrs[V any](m map[netip.Addr]V) []netip.Addr {
	out := make([]netip.Addr, 0, len(m))
	for a := range m {
		out = append(out, a)
	}
	slices.SortFunc(out, func(a, b netip.Addr) int { return a.Compare(b) })
	return out
}
