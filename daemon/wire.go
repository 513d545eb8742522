package daemon

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/tabby-net/tabby/daemon/nodereg"
	"github.com/tabby-net/tabby/datastore"
	"github.com/tabby-net/tabby/internal/statusapi"
)

// wiring is the running daemon's subsystems and the loop that feeds them.
type wiring struct {
	d      *daemon
	syncer *datastore.Syncer

	node   *nodeSub
	routes *routesSub
	nat    *natSub
	bgp    *bgpSub

	// Main loop state.
	snap      *datastore.Snapshot
	converged bool
	// seenProblems remembers the invalid documents already logged, by key and revision.
	seenProblems map[datastore.Problem]bool
	// seenStoredOnly remembers the stored-only notices already logged, by key and revision.
	seenStoredOnly map[datastore.StoredOnlyNotice]bool
	// datastoreErrors is the syncer's error count already added to the metric.
	datastoreErrors uint64
	// disconnectedSince is when the syncer was last seen not connected; zero while it is.
	disconnectedSince time.Time
}

// wire connects to the datastore and builds every subsystem; their goroutines run in g.
func (d *daemon) wire(g *group) (*wiring, error) {
	client, err := datastore.New(d.cfg.Etcd)
	if err != nil {
		return nil, err
	}
	g.Go("etcd client", func(ctx context.Context) error {
		<-ctx.Done()
		if err := client.Close(); err != nil {
			d.log.Debug("closing the etcd client", "err", err)
		}
		return nil
	})
	w := &wiring{d: d, seenProblems: map[datastore.Problem]bool{}, seenStoredOnly: map[datastore.StoredOnlyNotice]bool{}}
	// A dead watch is noticed within two progress intervals: 5 s keeps "datastore
	// unreachable" timely at the cost of one small request every 5 s. Of the IPAM handles
	// (one per workload in the cluster) the daemon reads only its own tunnel handles.
	w.syncer = datastore.NewSyncerWithOptions(client, d.log.With("subsystem", "syncer"), datastore.SyncerOptions{
		ProgressInterval: 5 * time.Second,
		OnlyHandles:      nodereg.TunnelHandles(d.nodeName),
	})
	g.Go("datastore syncer", w.syncer.Run)

	if w.node, err = newNodeSub(d, client); err != nil {
		return nil, err
	}
	g.Go("node registration", w.node.run)
	if w.routes, err = newRoutesSub(d); err != nil {
		return nil, err
	}
	g.Go("route reconciler", w.routes.run)
	if w.nat, err = newNATSub(d); err != nil {
		return nil, err
	}
	g.Go("nat reconciler", w.nat.run)
	w.bgp = newBGPSub(d, g)
	g.Go("bgp secrets watcher", w.bgp.secrets.Run)
	return w, nil
}

// loop is the daemon's main loop: it computes every subsystem's desired state from each
// new snapshot (and from BGP's learned routes), and keeps readiness, status, metrics and
// systemd informed. It never touches the kernel or etcd itself.
func (w *wiring) loop(ctx context.Context) error {
	snaps, unsubscribe := w.syncer.Subscribe()
	defer unsubscribe()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	// The first complete route and NAT passes decide READY=1: react to them at once
	// rather than on the next tick (up to a second later). Closed once, so watched once.
	routesSynced := w.routes.k.Synced()
	natSynced := w.nat.n.FirstSync()
	for {
		w.d.health.Beat(loopMain, 30*time.Second)
		select {
		case <-ctx.Done():
			return nil
		case snap, ok := <-snaps:
			if !ok {
				if ctx.Err() != nil {
					return nil // shutting down: the syncer closed its subscriptions
				}
				return fmt.Errorf("the datastore syncer stopped")
			}
			w.snap = drainLatest(snaps, snap)
			w.apply(false)
		case <-w.bgp.learnedChanged():
			w.apply(false)
		case <-w.bgp.secretsChanged():
			w.apply(false)
		case <-w.routes.underlayChanged():
			w.apply(true)
		case <-routesSynced:
			routesSynced = nil
		case <-natSynced:
			natSynced = nil
		case <-w.node.changed():
		case <-w.d.health.Changed():
		case <-tick.C:
		}
		w.refresh(ctx)
	}
}

// drainLatest returns the newest snapshot already queued: only the latest state matters.
func drainLatest(snaps <-chan *datastore.Snapshot, snap *datastore.Snapshot) *datastore.Snapshot {
	for {
		select {
		case s, ok := <-snaps:
			if !ok {
				return snap
			}
			snap = s
		default:
			return snap
		}
	}
}

// apply hands each subsystem the desired state computed from the current inputs;
// underlay says that the host's own routes changed and must be read again.
func (w *wiring) apply(underlay bool) {
	snap := w.snap
	if snap == nil {
		return
	}
	w.noteProblems(snap)
	w.node.update(snap)
	w.bgp.update(snap)
	w.routes.update(snap, w.bgp.learned(), underlay)
	w.nat.update(snap)
}

// noteProblems logs each invalid document once per stored version, and counts them.
func (w *wiring) noteProblems(snap *datastore.Snapshot) {
	current := map[datastore.Problem]bool{}
	for _, p := range snap.Problems {
		current[p] = true
		if !w.seenProblems[p] {
			w.d.log.Warn("invalid resource ignored; the last valid version stays in force", "key", p.Key, "revision", p.ModRevision, "err", p.Err)
			w.d.metrics.InvalidResourcesSeen.Inc()
		}
	}
	w.seenProblems = current
	w.d.metrics.InvalidResources.Set(float64(len(snap.Problems)))

	seen := map[datastore.StoredOnlyNotice]bool{}
	for _, n := range snap.StoredOnly {
		seen[n] = true
		if !w.seenStoredOnly[n] {
			w.d.log.Info("resource accepted with fields tabby stores but does not act on", "key", n.Key, "revision", n.ModRevision, "fields", n.Fields)
		}
	}
	w.seenStoredOnly = seen
	w.d.metrics.StoredOnlyResources.Set(float64(len(snap.StoredOnly)))
}

// refresh recomputes readiness, the status document, metrics and the systemd status from
// what the subsystems report, and sends READY=1 at the first full convergence. Nothing in
// it waits past ctx (the loop's) or for long: the BGP session table is read with a bound.
func (w *wiring) refresh(ctx context.Context) {
	d := w.d
	w.countDatastoreErrors()
	dsReason := w.datastoreReason()
	d.health.Set(partDatastore, dsReason)
	nodeSynced, nodeReason := w.node.report()
	d.health.Set(partNode, nodeReason)
	routesSynced, routesReason := w.routes.report()
	d.health.Set(partRoutes, routesReason)
	natSynced, natReason := w.nat.report()
	d.health.Set(partNAT, natReason)
	peers, stale := w.bgp.peers(ctx)
	d.health.Set(partBGP, w.bgp.readiness(peers, stale, time.Since(d.started)))

	if !w.converged && w.snap != nil && nodeSynced && routesSynced && natSynced {
		w.converged = true
		d.health.Set(partStartup, "")
		d.log.Info("first convergence", "revision", w.snap.Revision, "after", time.Since(d.started).Round(time.Millisecond))
	}
	ready, reasons := d.health.Ready()
	d.metrics.SetReady(ready)

	peerStates := map[string]int{}
	up := 0
	for _, p := range peers {
		peerStates[p.State]++
		if p.Established {
			up++
		}
	}
	d.metrics.SetPeers(peerStates)
	routeCount := w.routes.count(d.metrics)

	var problems []string
	if w.snap != nil {
		for _, p := range w.snap.Problems {
			problems = append(problems, fmt.Sprintf("invalid resource %s (revision %d): %s", p.Key, p.ModRevision, p.Err))
		}
	}
	problems = append(problems, w.routes.problems()...)
	problems = append(problems, w.nat.problems()...)
	problems = append(problems, w.bgp.problems()...)
	hostMTU, podMTU := w.routes.mtus()
	d.setStatus(func(s *statusapi.Status) {
		s.Peers = peers
		s.Problems = problems
		s.StoredOnly = nil
		if w.snap != nil {
			for _, n := range w.snap.StoredOnly {
				s.StoredOnly = append(s.StoredOnly, n.String())
			}
			s.Revision = w.snap.Revision
		}
		s.HostMTU, s.PodMTU = hostMTU, podMTU
	})

	switch {
	case ready:
		d.notify.Status(fmt.Sprintf("Converged: %d routes, %d BGP peers up", routeCount, up))
	case dsReason != "":
		d.notify.Status("Waiting for etcd: " + strings.TrimPrefix(dsReason, "datastore unreachable: "))
	default:
		d.notify.Status("Not ready: " + strings.Join(reasons, "; "))
	}
	if w.converged {
		d.notify.Ready()
	}
}

// unansweredGrace is how long the daemon waits for a first answer from etcd before it
// calls etcd unreachable without an error to show (a dial that just hangs).
const unansweredGrace = 3 * time.Second

// datastoreReason is "" while etcd answers, else why it does not.
func (w *wiring) datastoreReason() string {
	st := w.syncer.Stats()
	switch {
	case st.Connected:
		w.disconnectedSince = time.Time{}
		return ""
	case w.disconnectedSince.IsZero():
		w.disconnectedSince = time.Now()
	}
	if st.LastError != "" {
		return "datastore unreachable: " + st.LastError
	}
	if time.Since(w.disconnectedSince) < unansweredGrace {
		return ""
	}
	return "datastore unreachable: no answer from " + strings.Join(w.d.cfg.Etcd.Endpoints, ",")
}

// countDatastoreErrors adds the syncer's new list and watch failures to the counter.
func (w *wiring) countDatastoreErrors() {
	st := w.syncer.Stats()
	total := st.ListErrors + st.WatchErrors
	if total > w.datastoreErrors {
		w.d.metrics.DatastoreErrors.Add(float64(total - w.datastoreErrors))
		w.datastoreErrors = total
	}
}

// joinLines joins readiness reasons of one part, one per line.
func joinLines(lines []string) string { return strings.Join(lines, "\n") }
