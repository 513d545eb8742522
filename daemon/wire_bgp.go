package daemon

import (
	"context"
	"net/netip"
	"reflect"
	"slices"
	"sync"
	"time"

	"github.com/tabby-net/tabby/bgp"
	"github.com/tabby-net/tabby/daemon/metrics"
	"github.com/tabby-net/tabby/datastore"
	"github.com/tabby-net/tabby/internal/statusapi"
	"github.com/tabby-net/tabby/routing"
)

// bgpSub feeds the BGP speaker (SPEC §7). The speaker is started only once some BGP is
// needed (a mesh with other nodes, or peers); a host without BGP runs no GoBGP server.
type bgpSub struct {
	d *daemon
	g *group

	speaker *bgp.Speaker // nil until BGP is first needed
	changed chan struct{}
	// planner computes the configuration and advertisements at the cost of what changed:
	// recomputed from the whole snapshot they cost milliseconds per change at scale, even
	// with BGP idle.
	planner bgp.Planner
	// set is what the speaker was last given; nil before the first Set.
	set *speakerInput

	mu       sync.Mutex
	routes   []routing.LearnedRoute
	problems []string
}

func newBGPSub(d *daemon, g *group) *bgpSub {
	return &bgpSub{d: d, g: g, changed: make(chan struct{}, 1)}
}

// speakerInput is one desired state of the speaker.
type speakerInput struct {
	global  bgp.Global
	peers   []bgp.Peer
	adverts []netip.Prefix
}

func (a *speakerInput) equal(b *speakerInput) bool {
	return reflect.DeepEqual(a.global, b.global) && slices.Equal(a.peers, b.peers) && slices.Equal(a.adverts, b.adverts)
}

// update computes the node's BGP identity, sessions and advertisements and hands them to
// the speaker, starting it the first time there is a session to run. The speaker is not
// woken when nothing changed.
func (s *bgpSub) update(snap *datastore.Snapshot) {
	global, peers, problems := s.planner.Config(snap, s.d.nodeName, s.d.cfg.BGP.SecretsDir)
	lines := make([]string, 0, len(problems))
	for _, p := range problems {
		lines = append(lines, "BGP: "+p.String())
	}
	s.mu.Lock()
	s.problems = lines
	s.mu.Unlock()
	if s.speaker == nil {
		if len(peers) == 0 {
			return
		}
		s.start()
	}
	in := &speakerInput{global: global, peers: peers, adverts: s.planner.Advertisements(snap, s.d.nodeName)}
	if s.set != nil && s.set.equal(in) {
		return
	}
	s.speaker.Set(in.global, in.peers, in.adverts)
	s.set = in
}

func (s *bgpSub) start() {
	cfg := s.d.cfg
	s.speaker = bgp.NewSpeaker(bgp.SpeakerOptions{
		Logger: s.d.log,
		RunDir: cfg.RunDir,
		Timers: bgp.Timers{ConnectRetry: cfg.BGP.ConnectRetry, HoldTime: cfg.BGP.HoldTime, KeepaliveInterval: cfg.BGP.Keepalive},
		ObserveReconcile: func(took time.Duration) {
			s.d.metrics.ObserveReconcile(metrics.SubsystemBGP, took)
		},
	})
	s.d.log.Info("BGP needed: starting the speaker")
	s.g.Go("bgp speaker", s.speaker.Run)
	s.g.Go("bgp learned routes", s.forwardLearned)
}

// forwardLearned keeps the latest learned routes (outside every pool) for the routing
// computation and wakes the main loop.
func (s *bgpSub) forwardLearned(ctx context.Context) error {
	for {
		select {
		case <-ctx.Done():
			return nil
		case learned := <-s.speaker.Learned():
			routes := make([]routing.LearnedRoute, 0, len(learned))
			for _, r := range learned {
				routes = append(routes, routing.LearnedRoute{Prefix: r.Prefix, NextHop: r.NextHop})
			}
			s.mu.Lock()
			s.routes = routes
			s.mu.Unlock()
			select {
			case s.changed <- struct{}{}:
			default:
			}
		}
	}
}

// learnedChanged fires when the learned routes change.
func (s *bgpSub) learnedChanged() <-chan struct{} { return s.changed }

// learned returns the latest learned routes.
func (s *bgpSub) learned() []routing.LearnedRoute {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.routes
}

// peers returns the session table; empty while BGP is not needed.
func (s *bgpSub) peers() []statusapi.Peer {
	if s.speaker == nil {
		return []statusapi.Peer{}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	peers := s.speaker.Status(ctx)
	if peers == nil {
		peers = []statusapi.Peer{}
	}
	return peers
}

// readiness is BGP's part of readiness: "" or "BGP not established with …".
func (s *bgpSub) readiness(peers []statusapi.Peer, sinceStart time.Duration) string {
	_, reason := bgp.Readiness(peers, sinceStart)
	return reason
}

func (s *bgpSub) problemLines() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.problems
}
