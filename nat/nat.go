package nat

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/tabby-net/tabby/internal/backoff"
	"github.com/tabby-net/tabby/internal/latest"
)

// DefaultRefreshInterval is how often the reconciler re-reads the kernel and restores what
// someone else removed (a flushed table, a deleted jump, an emptied ipset), when Options do
// not say otherwise.
const DefaultRefreshInterval = 10 * time.Second

// Options configure a NAT reconciler.
type Options struct {
	// Backend is BackendAuto (or ""), BackendNFT or BackendLegacy: dataplane.iptablesBackend.
	Backend string
	// NetNSPath is the network namespace to manage, such as /run/netns/x; "" is the
	// namespace of the calling process, which is what tabbyd uses.
	NetNSPath string
	// Logger receives the reconciler's logs; nil means slog.Default().
	Logger *slog.Logger
	// RefreshInterval is the period of the full check against the kernel; 0 means
	// DefaultRefreshInterval.
	RefreshInterval time.Duration
}

func (o Options) withDefaults() (Options, error) {
	switch o.Backend {
	case "":
		o.Backend = BackendAuto
	case BackendAuto, BackendNFT, BackendLegacy:
	default:
		return o, fmt.Errorf("iptables backend %q: must be %s, %s or %s", o.Backend, BackendAuto, BackendNFT, BackendLegacy)
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.RefreshInterval < 0 {
		return o, fmt.Errorf("refresh interval %v: must not be negative", o.RefreshInterval)
	}
	if o.RefreshInterval == 0 {
		o.RefreshInterval = DefaultRefreshInterval
	}
	return o, nil
}

// Status is what the reconciler reports for the status socket, readiness and metrics.
type Status struct {
	// Backend is the iptables backend in use ("nft" or "legacy"), empty until detected, and
	// BackendReason why it was chosen.
	Backend       string
	BackendReason string
	// RandomFully tells whether MASQUERADE rules carry --random-fully on this host.
	RandomFully bool
	// Synced is true once a desired state has been fully applied.
	Synced bool
	// InSync is true when the latest desired state is applied and the last check of the
	// kernel found (or made) it right.
	InSync bool
	// ForwardAccept is true when the host's FORWARD policy is DROP and tabby-FORWARD is in
	// place to let pool traffic through.
	ForwardAccept bool
	// LastSync is the end of the last successful sync; LastSyncDuration how long it took.
	LastSync         time.Time
	LastSyncDuration time.Duration
	// LastError is the error of the last failed sync, cleared by the next success.
	LastError     string
	LastErrorTime time.Time
	// Warning is a problem found by the last successful sync that leaves the wanted state in
	// place, such as a leftover tabby chain that another rule still jumps to.
	Warning string
	// Changes counts every change made to the kernel: rules, chains and set members.
	Changes uint64
	// Repairs counts the periodic checks that found the kernel changed behind tabby's back
	// and put it right.
	Repairs uint64
	// Checks counts the refresh ticks handled: each a successful re-check of the kernel
	// against the applied state, or nothing while no desired state is known yet. Tests
	// wait on it to know that periodic checks really ran.
	Checks uint64
}

// NAT is the reconciler of tabby's NAT outgoing state on one host. Producers call Set; Run
// is the only goroutine that touches the kernel.
type NAT struct {
	opts    Options
	log     *slog.Logger
	desired *latest.Value[Desired] // normalized
	synced  chan struct{}          // closed after the first successful sync

	mu     sync.Mutex
	status Status
}

// New returns a reconciler. It touches nothing until Run is called and Set has given it a
// desired state.
func New(opts Options) (*NAT, error) {
	o, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	if o.NetNSPath != "" {
		h, err := openNetNS(o.NetNSPath)
		if err != nil {
			return nil, err
		}
		h.Close()
	}
	return &NAT{
		opts:    o,
		log:     o.Logger.With("subsystem", "nat"),
		desired: latest.New[Desired](),
		synced:  make(chan struct{}),
	}, nil
}

// Set publishes the complete desired state. It never blocks: the latest state wins, and
// the reconciler applies it as soon as it is free.
func (n *NAT) Set(d Desired) {
	norm, problems := d.normalize()
	for _, p := range problems {
		n.log.Warn("ignoring part of the desired NAT state", "err", p)
	}
	n.desired.Set(norm)
}

// Synced reports whether a desired state has been fully applied at least once; the daemon's
// readiness and READY=1 wait for it.
func (n *NAT) Synced() bool {
	select {
	case <-n.synced:
		return true
	default:
		return false
	}
}

// FirstSync is closed once a desired state has been fully applied, after Status says so:
// for a caller that waits on other things as well.
func (n *NAT) FirstSync() <-chan struct{} { return n.synced }

// WaitSynced blocks until Synced is true or ctx is done.
func (n *NAT) WaitSynced(ctx context.Context) error {
	select {
	case <-n.synced:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Status returns a copy of the reconciler's status.
func (n *NAT) Status() Status {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.status
}

func (n *NAT) updateStatus(f func(*Status)) {
	n.mu.Lock()
	defer n.mu.Unlock()
	f(&n.status)
}

// Run is the reconciler's goroutine: it applies each new desired state, re-checks the
// kernel every RefreshInterval, and retries failures with backoff. Nothing is applied before
// the first Set, so a restarted tabbyd leaves the previous run's rules alone until it knows
// what it wants, and then changes only what differs. Run returns nil when ctx is done,
// leaving every rule and set in place (SPEC §5: stopping tabbyd changes nothing), and an
// error only if it cannot start.
func (n *NAT) Run(ctx context.Context) error {
	ns, err := openNetNS(n.opts.NetNSPath)
	if err != nil {
		return err
	}
	defer ns.Close()
	nl, err := netlink.NewHandleAt(ns, unix.NETLINK_NETFILTER)
	if err != nil {
		return fmt.Errorf("netlink netfilter socket: %w", err)
	}
	defer nl.Close()
	s := &syncer{runner: runner{ns: ns}, ipsets: nl, backendWanted: n.opts.Backend}

	ticker := time.NewTicker(n.opts.RefreshInterval)
	defer ticker.Stop()
	// retryC is nil (never ready) unless a failed sync waits for its retry.
	var retryTimer *time.Timer
	var retryC <-chan time.Time
	stopRetry := func() {
		if retryTimer != nil {
			retryTimer.Stop()
		}
		retryC = nil
	}
	defer stopRetry()
	var retry backoff.Backoff
	var d *Desired       // the newest desired state taken
	var applied *Desired // the last desired state applied in full

	for {
		tick := false
		select {
		case <-ctx.Done():
			return nil
		case <-n.desired.Wake():
			next, ok := n.desired.Take()
			if !ok || (d != nil && d.Equal(next)) {
				// Nothing new: the producer publishes on every change of anything, and a
				// sync reads the whole ruleset; the retry timer and the ticker still run.
				continue
			}
			d = &next
		case <-ticker.C:
			tick = true
		case <-retryC:
			retryC = nil
		}
		if d == nil {
			if tick {
				n.updateStatus(func(st *Status) { st.Checks++ })
			}
			continue
		}
		periodic := applied != nil && applied.Equal(*d)
		start := time.Now()
		res, err := s.sync(ctx, *d)
		n.report(res)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			wait := retry.Next()
			n.log.Error("NAT sync failed; retrying", "err", err, "retry_in", wait)
			n.updateStatus(func(st *Status) {
				st.InSync = false
				st.LastError = err.Error()
				st.LastErrorTime = time.Now()
			})
			stopRetry()
			retryTimer = time.NewTimer(wait)
			retryC = retryTimer.C
			continue
		}
		stopRetry()
		retry.Reset()
		applied = d
		if res.warning != "" && res.warning != n.Status().Warning {
			n.log.Warn("NAT state applied, with a problem", "warning", res.warning)
		}
		n.updateStatus(func(st *Status) {
			st.Warning = res.warning
			st.Synced, st.InSync = true, true
			st.LastSync, st.LastSyncDuration = time.Now(), time.Since(start)
			st.LastError, st.LastErrorTime = "", time.Time{}
			st.ForwardAccept = res.forwardAccept
			if periodic && len(res.changes) > 0 {
				st.Repairs++
			}
			if tick {
				st.Checks++
			}
		})
		switch {
		case periodic && len(res.changes) > 0:
			n.log.Warn("restored NAT state changed by someone else", "changes", strings.Join(res.changes, "; "))
		case len(res.changes) > 0:
			n.log.Info("applied NAT state", "masq_pools", len(d.MasqPools), "pools", len(d.AllPools),
				"changes", len(res.changes), "took", time.Since(start))
			for _, c := range res.changes {
				n.log.Debug("NAT change", "change", c)
			}
		}
		if !n.Synced() {
			close(n.synced)
		}
	}
}

// report records what a sync learned and changed, whether or not it finished.
func (n *NAT) report(res syncResult) {
	n.updateStatus(func(st *Status) {
		st.Changes += uint64(len(res.changes))
		if res.backend != nil {
			st.Backend, st.BackendReason = res.backend.mode, res.backendReason
			st.RandomFully = res.features.randomFully
		}
	})
	if res.detected {
		n.log.Info("iptables backend selected", "backend", res.backend.mode, "reason", res.backendReason,
			"iptables", res.backend.iptablesBin, "random_fully", res.features.randomFully, "note", res.featureNote)
	}
}
