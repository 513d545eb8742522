package daemon

import (
	"context"
	"fmt"
	"net/netip"
	"reflect"
	"slices"
	"time"

	"github.com/tabby-net/tabby/bgp"
	"github.com/tabby-net/tabby/datastore"
	"github.com/tabby-net/tabby/internal/latest"
	"github.com/tabby-net/tabby/internal/statusapi"
	"github.com/tabby-net/tabby/routing"
)

// How the main loop reads the BGP session table. GoBGP answers on its management loop and
// ignores the caller's context while it waits for it, so the read runs in a goroutine of
// its own: the main loop waits for it at most peerStatusWait and otherwise goes on with
// the table it read last, and only one read is ever outstanding.
const (
	// peerStatusWait is how long the main loop waits for one read, in all.
	peerStatusWait = 500 * time.Millisecond
	// peerStatusTimeout is the context deadline the speaker is given for one read.
	peerStatusTimeout = 2 * time.Second
	// peerStatusStale is how long a read may stay unanswered before readiness says
	// that the BGP speaker does not answer.
	peerStatusStale = 10 * time.Second
	// speakerStopGrace is how long shutdown waits for the speaker's Run once the daemon's
	// context ended. Run returns between two GoBGP calls, and a GoBGP call does not end
	// with its caller's context: a stuck GoBGP must not keep tabbyd from exiting, which
	// ends its sessions as a graceful restart would.
	speakerStopGrace = 5 * time.Second
)

// bgpSub feeds the BGP speaker (SPEC §7). The speaker is started only once some BGP is
// needed (a mesh with other nodes, or peers); a host without BGP runs no GoBGP server.
type bgpSub struct {
	d *daemon
	g *group

	speaker bgpSpeaker // nil until BGP is first needed
	// routes holds the latest learned routes outside every pool, for the routing
	// computation; its Wake wakes the main loop.
	routes *latest.Value[[]routing.LearnedRoute]
	// planner computes the configuration and advertisements at the cost of what changed:
	// recomputed from the whole snapshot they cost milliseconds per change at scale, even
	// with BGP idle.
	planner bgp.Planner
	// secrets wakes the main loop when a password file may have changed: the BGP
	// configuration is then computed again (SPEC §7), as for a new snapshot.
	secrets *bgp.SecretsWatcher
	// set is what the speaker was last given; nil before the first Set.
	set *speakerInput
	// problemLines are the configuration problems of the last snapshot.
	problemLines []string

	// Owned by the main loop: the session table last read, and the read in flight.
	table   []statusapi.Peer
	reading *peerRead
}

// peerRead is one call of the speaker's Status in flight.
type peerRead struct {
	started time.Time
	done    chan []statusapi.Peer // receives the answer; capacity 1, so the call never blocks on it
}

func newBGPSub(d *daemon, g *group) *bgpSub {
	return &bgpSub{
		d:       d,
		g:       g,
		routes:  latest.New[[]routing.LearnedRoute](),
		secrets: bgp.NewSecretsWatcher(d.cfg.BGP.SecretsDir, d.log.With("subsystem", "bgp secrets")),
		table:   []statusapi.Peer{},
	}
}

// secretsChanged fires when a file in the secrets directory changed.
func (s *bgpSub) secretsChanged() <-chan struct{} { return s.secrets.Changed() }

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
	s.problemLines = lines
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
	s.speaker = s.d.dataplane.speaker(s.d)
	s.d.log.Info("BGP needed: starting the speaker")
	s.g.Go("bgp speaker", s.runSpeaker)
	s.g.Go("bgp learned routes", s.forwardLearned)
}

// runSpeaker runs the speaker until ctx ends, and waits for it then at most
// speakerStopGrace; a speaker that does not stop by then is left behind, and logged.
func (s *bgpSub) runSpeaker(ctx context.Context) error {
	done := make(chan error, 1)
	go func() { done <- s.speaker.Run(ctx) }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
	}
	grace := time.NewTimer(s.d.speakerStopGrace)
	defer grace.Stop()
	select {
	case err := <-done:
		return err
	case <-grace.C:
		s.d.log.Warn("the BGP speaker did not stop in time (GoBGP not answering); exiting without it", "waited", s.d.speakerStopGrace)
		return nil
	}
}

// forwardLearned keeps the latest learned routes (outside every pool) for the routing
// computation, which wakes the main loop.
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
			s.routes.Set(routes)
		}
	}
}

// learnedChanged fires when the learned routes change.
func (s *bgpSub) learnedChanged() <-chan struct{} { return s.routes.Wake() }

// learned returns the latest learned routes.
func (s *bgpSub) learned() []routing.LearnedRoute {
	r, _ := s.routes.Load()
	return r
}

// peers returns the session table (empty while BGP is not needed) and, when the speaker
// has not answered for long (daemon.peerStatusStale), why the table is old. It waits for
// one read at most peerStatusWait in all and returns early when ctx ends, so a stuck
// speaker delays no refresh and no shutdown.
func (s *bgpSub) peers(ctx context.Context) ([]statusapi.Peer, string) {
	if s.speaker == nil {
		return s.table, ""
	}
	if s.reading == nil {
		r := &peerRead{started: time.Now(), done: make(chan []statusapi.Peer, 1)}
		speaker := s.speaker
		go func() {
			rctx, cancel := context.WithTimeout(ctx, peerStatusTimeout)
			defer cancel()
			r.done <- speaker.Status(rctx)
		}()
		s.reading = r
	}
	// A read the loop already waited for is only looked at, so that a stuck speaker slows
	// the loop down once, not at every refresh.
	wait := time.NewTimer(max(peerStatusWait-time.Since(s.reading.started), 0))
	defer wait.Stop()
	select {
	case table := <-s.reading.done:
		s.reading = nil
		if table == nil {
			table = []statusapi.Peer{}
		}
		s.table = table
		return s.table, ""
	case <-wait.C:
	case <-ctx.Done():
	}
	if time.Since(s.reading.started) >= s.d.peerStatusStale {
		// A text that does not change while the speaker stays stuck: each change of a
		// readiness reason wakes the main loop.
		return s.table, fmt.Sprintf("BGP speaker not answering for more than %s; session states are from before", s.d.peerStatusStale)
	}
	return s.table, ""
}

// readiness is BGP's part of readiness: "" or "BGP not established with …", and why the
// session table is old.
func (s *bgpSub) readiness(peers []statusapi.Peer, stale string, sinceStart time.Duration) string {
	_, reason := bgp.Readiness(peers, sinceStart, s.d.cfg.BGP.ReadinessExplicitPeers)
	var lines []string
	for _, l := range []string{stale, reason} {
		if l != "" {
			lines = append(lines, l)
		}
	}
	return joinLines(lines)
}

func (s *bgpSub) problems() []string { return s.problemLines }
