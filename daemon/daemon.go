// Package daemon is tabbyd's lifecycle and wiring (SPEC §4, §9, §10): it reads the
// configuration, finds the node's address, registers the node, starts the datastore
// syncer and, from every snapshot, computes the desired state of each subsystem (Node
// resource, kernel routes, NAT, BGP) and hands it over. It is the only package that knows
// all the others; each subsystem applies its own state in its own goroutine.
//
// It also serves what operators and systemd look at: /liveness and /readiness, /metrics,
// the status socket, and sd_notify READY / STATUS / WATCHDOG.
package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/tabby-net/tabby/daemon/autodetect"
	"github.com/tabby-net/tabby/daemon/health"
	"github.com/tabby-net/tabby/daemon/metrics"
	"github.com/tabby-net/tabby/daemon/sdnotify"
	"github.com/tabby-net/tabby/internal/statusapi"
	"github.com/tabby-net/tabby/internal/version"
)

// DefaultRTProtosDir is where the route protocol's name is registered for iproute2.
const DefaultRTProtosDir = "/etc/iproute2/rt_protos.d"

// Options are settings that are not part of the operator's configuration.
type Options struct {
	// RTProtosDir is the directory the route protocol's name ("tabby") is registered in;
	// DefaultRTProtosDir when empty. It is the one file tabbyd writes outside its
	// configured directories; tests point it at a directory of their own.
	RTProtosDir string
}

// Readiness parts: each names one condition of GET /readiness.
const (
	partStartup    = "startup"
	partAddress    = "address"
	partForwarding = "forwarding"
	partDatastore  = "datastore"
	partNode       = "node"
	partRoutes     = "routes"
	partNAT        = "nat"
	partBGP        = "bgp"
)

// Loops whose heartbeats /liveness watches.
const loopMain = "main loop"

// daemon is one run of tabbyd.
type daemon struct {
	cfg     *Config
	opts    Options
	log     *slog.Logger
	health  *health.Health
	metrics *metrics.Metrics
	notify  *sdnotify.Notifier
	started time.Time
	// dataplane builds the subsystems that program the host.
	dataplane dataplane
	// peerStatusStale is how long an unanswered read of the BGP session table may take
	// before readiness says so: the constant of that name; tests shorten it.
	peerStatusStale time.Duration
	// speakerStopGrace is how long shutdown waits for the BGP speaker: the constant of
	// that name; tests shorten it.
	speakerStopGrace time.Duration

	// Set once at start.
	nodeName string
	addr     autodetect.Result

	mu     sync.Mutex
	status statusapi.Status
}

// Run runs the daemon until ctx ends (SIGTERM, SIGINT), then returns nil and leaves every
// route, device, rule and BGP route of the host in place. It returns an error only when it
// cannot run at all (a port or socket taken, a configuration the host cannot honour).
func Run(ctx context.Context, cfg *Config, log *slog.Logger, opts Options) error {
	d := newDaemon(cfg, log, opts, hostDataplane())
	err := d.run(ctx)
	d.notify.Stopping()
	if err != nil {
		return err
	}
	log.Info("tabbyd stopped; routes, devices and rules stay in place")
	return nil
}

func newDaemon(cfg *Config, log *slog.Logger, opts Options, dp dataplane) *daemon {
	if opts.RTProtosDir == "" {
		opts.RTProtosDir = DefaultRTProtosDir
	}
	d := &daemon{
		cfg:              cfg,
		opts:             opts,
		log:              log,
		health:           health.New(),
		metrics:          metrics.New(),
		notify:           sdnotify.New(log),
		started:          time.Now(),
		dataplane:        dp,
		peerStatusStale:  peerStatusStale,
		speakerStopGrace: speakerStopGrace,
		status:           statusapi.Status{Version: version.Version, Peers: []statusapi.Peer{}},
	}
	d.health.Set(partStartup, "not converged yet")
	return d
}

func (d *daemon) run(ctx context.Context) error {
	g := newGroup(ctx)
	defer g.Stop()
	d.health.Beat(loopMain, 30*time.Second)
	d.notify.Status("Starting")

	name, err := d.cfg.ResolveNodeName()
	if err != nil {
		return err
	}
	d.setNode(name)
	d.log.Info("tabbyd starting", "version", version.Version, "node", name, "config", d.cfg.File)

	if err := d.startServers(g.ctx, g); err != nil {
		return err
	}
	g.Go("systemd watchdog", func(ctx context.Context) error {
		d.notify.RunWatchdog(ctx, func() bool { ok, _ := d.health.Alive(); return ok })
		return nil
	})

	addr, err := d.findAddress(g.ctx)
	if err != nil {
		if errors.Is(err, context.Canceled) && ctx.Err() != nil {
			return g.Wait()
		}
		return fmt.Errorf("node address: %w", err)
	}
	d.setAddress(addr)

	switch changed, err := ensureIPForwarding(); {
	case err != nil:
		d.log.Error("workloads cannot be routed", "err", err)
		d.health.Set(partForwarding, err.Error())
	case changed:
		d.log.Info("IPv4 forwarding turned on")
	}

	return d.runWired(g)
}

// runWired connects to the datastore, starts every subsystem and the main loop in g, and
// waits for them: the part of a run after the node address is known.
func (d *daemon) runWired(g *group) error {
	w, err := d.wire(g)
	if err != nil {
		return err
	}
	g.Go(loopMain, w.loop)
	return g.Wait()
}

// setNode records the node's name.
func (d *daemon) setNode(name string) {
	d.nodeName = name
	d.setStatus(func(s *statusapi.Status) { s.Node = name })
}

// setAddress records the node's address.
func (d *daemon) setAddress(addr autodetect.Result) {
	d.addr = addr
	d.setStatus(func(s *statusapi.Status) { s.NodeAddress = addr.Address.String() })
}

// setStatus changes the status document under the lock.
func (d *daemon) setStatus(f func(*statusapi.Status)) {
	d.mu.Lock()
	defer d.mu.Unlock()
	f(&d.status)
}

// statusDoc returns a copy of the status document for the status socket. Its readiness
// verdict is read from health at that moment, so it agrees with GET /readiness also while
// the daemon is still starting.
func (d *daemon) statusDoc() statusapi.Status {
	ready, reasons := d.health.Ready()
	d.mu.Lock()
	defer d.mu.Unlock()
	s := d.status
	s.Ready, s.NotReady = ready, reasons
	s.Peers = append([]statusapi.Peer{}, d.status.Peers...)
	s.Problems = append([]string(nil), d.status.Problems...)
	return s
}
