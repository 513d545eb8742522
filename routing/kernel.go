package routing

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

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/tabby-net/tabby/internal/backoff"
	"github.com/tabby-net/tabby/internal/keyed"
	"github.com/tabby-net/tabby/internal/latest"
)

// Defaults of KernelOptions.
const (
	// DefaultRefreshInterval is Calico's routeRefreshInterval: a full resync this often
	// catches whatever the event stream missed.
	DefaultRefreshInterval = 90 * time.Second
	// DefaultRepairInterval is the shortest time between two repairs triggered by kernel
	// events, so that a process fighting over a route cannot make tabby spin.
	DefaultRepairInterval = 100 * time.Millisecond
	// retryMin is the first wait after a failed pass, half backoff's default: a failure is
	// most often a race with a device being recreated or an address being moved, which
	// settles within one repair interval, and a pass that only finds it done costs little.
	retryMin = DefaultRepairInterval
	// resubscribeDelay is how long to wait before subscribing again after a subscription
	// failed or died.
	resubscribeDelay = 500 * time.Millisecond
)

// KernelOptions configures a Kernel.
type KernelOptions struct {
	// Handle is a netlink handle bound to the network namespace to program, e.g.
	// netlink.NewHandleAt(ns, unix.NETLINK_ROUTE). Required. The Kernel does not close it.
	Handle *netlink.Handle
	// Namespace is the namespace Handle is bound to, for the event subscriptions; nil means
	// the namespace of the calling process.
	Namespace *netns.NsHandle
	// Protocol is the route protocol number of tabby's routes; 0 means DefaultProtocol.
	Protocol int
	// RefreshInterval is the period of full resyncs; 0 means DefaultRefreshInterval.
	RefreshInterval time.Duration
	// RepairInterval rate-limits event-driven repairs; 0 means DefaultRepairInterval.
	// Full resyncs driven by events (lost events, a device going down or away) are at
	// least ten times as far apart.
	RepairInterval time.Duration
	// Logger receives the reconciler's logs; nil means slog.Default().
	Logger *slog.Logger
	// ObservePass, when set, is called by Run with the duration of every pass (the
	// daemon's tabby_reconcile_duration_seconds{subsystem="routes"}). It must not block.
	ObservePass func(time.Duration)
}

// KernelStatus is a snapshot of the reconciler's state, for status, metrics and readiness.
type KernelStatus struct {
	// Synced: a desired state has been applied in full at least once.
	Synced bool
	// Routes counts the routes installed, by kind.
	Routes map[RouteKind]int
	// Adopted counts routes with tabby's protocol found in the kernel that the desired
	// state does not explain yet (a previous run's leftovers before the first sweep).
	Adopted int
	// Wanted is the number of routes in the desired state being applied.
	Wanted    int
	Neighbors int
	FDB       int
	// Tunl0 and VXLAN are the states of the tunnel devices.
	Tunl0 DeviceState
	VXLAN DeviceState
	// Problems lists, one line each, what the kernel side cannot do: "kernel has no ipip
	// support", routes left alone because another protocol holds their prefix, a held
	// desired state. The desired state's own problems are in State.Problems.
	Problems []string
	// LastError is the first error of the last pass that had failures; Failures is how
	// many operations of the last pass failed (they are retried with backoff).
	LastError     string
	LastErrorTime time.Time
	Failures      int
	Passes        uint64
	FullSyncs     uint64
	LastPass      time.Time
	// Ops counts every netlink request since start.
	Ops OpCounts
}

// Kernel is the one owner of tabby's routes, tunnel devices, VXLAN neighbours and FDB
// entries in one network namespace. Producers hand it complete desired states with Set;
// its Run goroutine coalesces them, diffs the latest against the record of what it really
// installed, applies the difference (adds before deletes), repairs what others remove, and
// retries failures with backoff. It never changes or deletes a route of another protocol.
type Kernel struct {
	nl        *counting
	events    eventSource
	proto     int
	refresh   time.Duration
	repairGap time.Duration
	resyncGap time.Duration // shortest time between two event-driven full resyncs
	log       *slog.Logger

	// desired holds the last non-hold state given to Set.
	desired *latest.Value[*State]

	mu       sync.Mutex
	hold     string // the reason of the last hold state, cleared by a real one
	status   KernelStatus
	synced   chan struct{}
	underlay chan struct{}
	running  atomic.Bool
	// idle is true while Run waits with nothing to do but the periodic resync: every
	// desired state applied, no repair, retry or event-driven resync pending.
	idle atomic.Bool

	// Owned by the Run goroutine.
	sch  schedule
	subs subscriptions
	rec  *record
	want compiled // what the tables' wanted side was compiled from
	// The keyed tables of desired against installed objects: tabby's routes in the main
	// table, and vxlan.tabby's neighbours (tunnel address → MAC bytes) and FDB entries
	// (MAC bytes → underlay address).
	routes keyed.Table[routeKey, routeEntry]
	neighs keyed.Table[netip.Addr, string]
	fdb    keyed.Table[string, netip.Addr]
	// installedWanted counts, in an all-dirty pass, the wanted routes found or put in the
	// kernel; when it equals the record's size there is nothing to delete.
	installedWanted int
	req             request // the netlink request every route write reuses
	isSynced        bool
	lastFull        time.Time
	lastRepair      time.Time
	passes          uint64
	fullSyncs       uint64
	pools           []netip.Prefix // of the state being applied: their routes are not underlay
	// noNexthops: the kernel has no nexthop objects; routes name their gateways.
	noNexthops bool

	// onPass, when set (tests, benchmarks), is called by Run after every pass.
	onPass func(passReport)
	// observePass is KernelOptions.ObservePass.
	observePass func(time.Duration)
	// closeNL closes what NewKernel opened; nil for a test's fake kernel.
	closeNL func()
}

// NewKernel returns a reconciler for the namespace opts.Handle is bound to. It opens one
// route netlink socket there (for nexthop objects, which the library does not know), which
// Run closes when it returns; nothing else touches the kernel until Run.
func NewKernel(opts KernelOptions) (*Kernel, error) {
	if opts.Handle == nil {
		return nil, errors.New("routing: KernelOptions.Handle is required")
	}
	nl, err := newRTNL(opts.Handle, opts.Namespace)
	if err != nil {
		return nil, fmt.Errorf("routing: %w", err)
	}
	k := newKernel(nl, handleSource{ns: opts.Namespace}, opts)
	k.closeNL = nl.Close
	return k, nil
}

func newKernel(nl netlinker, events eventSource, opts KernelOptions) *Kernel {
	k := &Kernel{
		nl:          &counting{nl: nl},
		events:      events,
		proto:       opts.Protocol,
		refresh:     opts.RefreshInterval,
		repairGap:   opts.RepairInterval,
		log:         opts.Logger,
		observePass: opts.ObservePass,
		desired:     latest.New[*State](),
		synced:      make(chan struct{}),
		underlay:    make(chan struct{}, 1),
		rec:         newRecord(),
	}
	if k.proto == 0 {
		k.proto = DefaultProtocol
	}
	if k.refresh <= 0 {
		k.refresh = DefaultRefreshInterval
	}
	if k.repairGap <= 0 {
		k.repairGap = DefaultRepairInterval
	}
	k.resyncGap = 10 * k.repairGap
	if k.log == nil {
		k.log = slog.Default()
	}
	k.log = k.log.With("subsystem", "routing")
	k.status = KernelStatus{Routes: map[RouteKind]int{}}
	return k
}

// Set hands the reconciler a new desired state. It never blocks; the latest state wins.
// A state with Hold set keeps the previous one in force and is only reported. The Kernel
// keeps s (its slices included) until the next Set: the caller must not modify it.
func (k *Kernel) Set(s State) {
	k.mu.Lock()
	k.hold = s.Hold
	k.mu.Unlock()
	if s.Hold == "" {
		k.desired.Set(&s)
	}
}

// Synced is closed once a desired state has been applied in full for the first time; the
// daemon waits for it before telling systemd READY=1.
func (k *Kernel) Synced() <-chan struct{} { return k.synced }

// UnderlayChanged receives a value (coalesced) whenever a route of another protocol in the
// main table or a device tabby's routes use changes: the caller should read the underlay
// again (ReadUnderlay) and recompute the desired state, since Direct and BGP-learned routes
// are resolved through it.
func (k *Kernel) UnderlayChanged() <-chan struct{} { return k.underlay }

// Status returns a snapshot of the reconciler's state.
func (k *Kernel) Status() KernelStatus {
	k.mu.Lock()
	defer k.mu.Unlock()
	st := k.status
	st.Routes = maps.Clone(k.status.Routes)
	st.Problems = slices.Clone(k.status.Problems)
	if k.hold != "" {
		st.Problems = append(st.Problems, "desired state held: "+k.hold)
	}
	st.Ops = k.nl.counts()
	return st
}

func (k *Kernel) signalUnderlay() {
	select {
	case k.underlay <- struct{}{}:
	default:
	}
}

// schedule is when the Run loop must act next. A zero time means "not scheduled".
type schedule struct {
	fresh    bool      // the desired state taken last has not been applied yet
	repairAt time.Time // a repair asked for by kernel events
	retryAt  time.Time // a retry after failures
	fullAt   time.Time // the next full resync
	fullSoon bool      // fullAt was brought forward by an event
	// inPass and fullAgain: a full resync was asked for while a pass ran (its route events
	// were paused), so the pass's own dump, if it made one, is already stale.
	inPass, fullAgain bool
	resubAt           time.Time // the next attempt to subscribe to events
	retry             backoff.Backoff
}

func earliest(ts ...time.Time) time.Time {
	var e time.Time
	for _, t := range ts {
		if !t.IsZero() && (e.IsZero() || t.Before(e)) {
			e = t
		}
	}
	return e
}

func due(t, now time.Time) bool { return !t.IsZero() && !now.Before(t) }

// subscriptions are the live kernel event subscriptions; a nil channel is not subscribed.
// Route and link events are separate so that route events can be paused during a bulk
// pass while link events keep flowing.
type subscriptions struct {
	routeDone chan struct{}
	routeCh   <-chan routeUpdate
	linkDone  chan struct{}
	linkCh    <-chan netlink.LinkUpdate
}

// subscribe opens the subscriptions that are not open. On failure it retries later; until
// then the periodic resync is the safety net.
func (k *Kernel) subscribe() {
	var err error
	if k.subs.linkCh == nil {
		done := make(chan struct{})
		if k.subs.linkCh, err = k.events.subscribeLinks(done); err != nil {
			close(done)
		} else {
			k.subs.linkDone = done
		}
	}
	if err == nil && k.subs.routeCh == nil {
		done := make(chan struct{})
		if k.subs.routeCh, err = k.events.subscribeRoutes(done); err != nil {
			close(done)
		} else {
			k.subs.routeDone = done
		}
	}
	if err != nil {
		k.log.Warn("cannot subscribe to kernel events; relying on periodic resyncs until it works", "err", err)
		k.sch.resubAt = time.Now().Add(resubscribeDelay)
		return
	}
	k.sch.resubAt = time.Time{}
}

func (k *Kernel) dropRouteEvents() {
	if k.subs.routeDone != nil {
		close(k.subs.routeDone)
	}
	k.subs.routeDone, k.subs.routeCh = nil, nil
}

func (k *Kernel) dropLinkEvents() {
	if k.subs.linkDone != nil {
		close(k.subs.linkDone)
	}
	k.subs.linkDone, k.subs.linkCh = nil, nil
}

// lost is called when a subscription died (the socket overflowed): events were lost, so
// the record may be wrong. Subscribe again and resync in full.
func (k *Kernel) lost() {
	k.log.Info("kernel event subscription lost (events dropped); resubscribing and resyncing")
	k.dropRouteEvents()
	k.dropLinkEvents()
	now := time.Now()
	k.sch.resubAt = now.Add(resubscribeDelay)
	k.askFull(now)
}

// bulkWrites is the number of route writes in one pass after which the pass stops
// listening to route events: they would only be the echo of its own writes, and their
// delivery costs the kernel about as much again as the writes. The subscription is renewed
// right after the pass, followed by a full resync that reads the table once instead.
const bulkWrites = 256

// pauseRouteEvents is called by a pass that has made bulkWrites route writes.
func (k *Kernel) pauseRouteEvents() {
	if k.subs.routeCh == nil {
		return
	}
	k.dropRouteEvents()
	now := time.Now()
	k.sch.resubAt = now
	k.askFull(now)
}

// Run is the reconciler's one goroutine: it returns (nil) when ctx is done. It subscribes
// to route and link events, seeds its record from the kernel on the first pass (adopting
// the routes of a previous run rather than flushing them), and from then on applies every
// new desired state, repairs what others remove (rate-limited), resyncs in full every
// RefreshInterval and retries failures with exponential backoff.
func (k *Kernel) Run(ctx context.Context) error {
	if !k.running.CompareAndSwap(false, true) {
		return errors.New("routing: Kernel.Run called twice")
	}
	if k.closeNL != nil {
		defer k.closeNL()
	}
	k.sch = schedule{fullAt: time.Now(), retry: backoff.Backoff{Min: retryMin}}
	k.subscribe()
	defer k.dropRouteEvents()
	defer k.dropLinkEvents()

	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	var want *State // the desired state being applied
	for {
		now := time.Now()
		if due(k.sch.resubAt, now) {
			k.subscribe()
		}
		sch := &k.sch
		if s, ok := k.desired.Take(); ok {
			want, sch.fresh = s, true
		}
		if want != nil && (sch.fresh || due(sch.repairAt, now) || due(sch.retryAt, now) || due(sch.fullAt, now)) {
			// Take in what the kernel told us since the last pass, so that the pass works
			// from the freshest record.
			k.drain()
			k.runPass(ctx, want)
			if ctx.Err() != nil {
				return nil
			}
			continue
		}

		k.idle.Store(want != nil && !sch.fresh && !k.desired.Pending() && sch.repairAt.IsZero() && sch.retryAt.IsZero() &&
			!sch.fullSoon && sch.resubAt.IsZero() && len(k.subs.routeCh) == 0 && len(k.subs.linkCh) == 0)
		next := earliest(sch.resubAt)
		if want != nil {
			next = earliest(sch.repairAt, sch.retryAt, sch.fullAt, sch.resubAt)
		}
		wait := time.Hour
		if !next.IsZero() {
			wait = max(time.Until(next), 0)
		}
		timer.Reset(wait)
		select {
		case <-ctx.Done():
			return nil
		case <-k.desired.Wake():
			k.idle.Store(false)
		case <-timer.C:
		case u, ok := <-k.subs.routeCh:
			if !ok {
				k.lost()
				break
			}
			k.handleRoute(u)
		case u, ok := <-k.subs.linkCh:
			if !ok {
				k.lost()
				break
			}
			k.handleLink(u)
		}
		if !timer.Stop() {
			select {
			case <-timer.C:
			default:
			}
		}
	}
}

// drain handles the events already queued.
func (k *Kernel) drain() {
	for {
		select {
		case u, ok := <-k.subs.routeCh:
			if !ok {
				k.lost()
				return
			}
			k.handleRoute(u)
		case u, ok := <-k.subs.linkCh:
			if !ok {
				k.lost()
				return
			}
			k.handleLink(u)
		default:
			return
		}
	}
}

// askRepair schedules an event-driven repair, no sooner than RepairInterval after the last.
func (k *Kernel) askRepair(now time.Time) {
	at := now
	if next := k.lastRepair.Add(k.repairGap); next.After(at) {
		at = next
	}
	k.sch.repairAt = earliest(k.sch.repairAt, at)
}

// askFull schedules a full resync, no sooner than resyncGap after the last.
func (k *Kernel) askFull(now time.Time) {
	at := now
	if next := k.lastFull.Add(k.resyncGap); next.After(at) {
		at = next
	}
	k.sch.fullAt = earliest(k.sch.fullAt, at)
	k.sch.fullSoon = true
	if k.sch.inPass {
		k.sch.fullAgain = true
	}
}

func (k *Kernel) runPass(ctx context.Context, want *State) {
	sch := &k.sch
	now := time.Now()
	full := due(sch.fullAt, now)
	repair := due(sch.repairAt, now)
	sch.inPass, sch.fullAgain = true, false
	rep := k.pass(ctx, want, full)
	sch.inPass = false
	if ctx.Err() != nil {
		return
	}
	end := time.Now()
	sch.fresh = false
	if repair || full {
		k.lastRepair = end
		sch.repairAt = time.Time{}
	}
	switch {
	case full && sch.fullAgain:
		k.lastFull = end
		sch.fullAt = end
	case full:
		k.lastFull = end
		sch.fullAt = end.Add(k.refresh)
		sch.fullSoon = false
	}
	if rep.failures > 0 {
		sch.retryAt = end.Add(sch.retry.Next())
		k.log.Warn("routing pass had failures; retrying", "failures", rep.failures, "first", rep.firstErr, "retry_in", sch.retryAt.Sub(end))
	} else {
		sch.retryAt = time.Time{}
		sch.retry.Reset()
	}
	if rep.redoDevices {
		// A device changed under the pass (recreated): look again at once.
		sch.repairAt = earliest(sch.repairAt, end)
	}
	k.passes++
	if full {
		k.fullSyncs++
	}
	firstSync := rep.failures == 0 && !k.isSynced
	if firstSync {
		k.isSynced = true
		k.log.Info("kernel routing synced", "routes", k.routes.NumInstalled(), "took", end.Sub(now))
	}
	k.publish(rep, end)
	if firstSync {
		// After publish: whoever wakes on Synced reads a Status that says so (the daemon
		// decides READY=1 from it, and would otherwise wait for its next tick).
		close(k.synced)
	}
	if k.observePass != nil {
		k.observePass(end.Sub(now))
	}
	if k.onPass != nil {
		k.onPass(rep)
	}
}

// publish copies the loop's view into the status snapshot.
func (k *Kernel) publish(rep passReport, at time.Time) {
	routes := map[RouteKind]int{}
	for i, n := range k.rec.kinds {
		if n > 0 {
			routes[routeKinds[i]] = n
		}
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	st := &k.status
	st.Synced = k.isSynced
	st.Routes = routes
	st.Adopted = k.rec.adopted
	st.Wanted = rep.wanted
	st.Neighbors = k.neighs.NumInstalled()
	st.FDB = k.fdb.NumInstalled()
	st.Tunl0 = deviceState(k.rec.ipip, rep.tunl0Wanted)
	st.VXLAN = deviceState(k.rec.vxlan, rep.vxlanWanted)
	st.Problems = rep.problems
	st.Failures = rep.failures
	if rep.failures > 0 {
		st.LastError = fmt.Sprintf("%d operations failed, first: %v", rep.failures, rep.firstErr)
		st.LastErrorTime = at
	}
	st.Passes = k.passes
	st.FullSyncs = k.fullSyncs
	st.LastPass = at
}

// DeviceState is what the reconciler reached for one of its tunnel devices.
type DeviceState int

const (
	// DeviceAbsent: the desired state needs no such device.
	DeviceAbsent DeviceState = iota
	// DevicePending: the device is wanted and not in place yet.
	DevicePending
	// DeviceUp: the device is in place as wanted.
	DeviceUp
	// DeviceUnsupported: the device is wanted and the kernel cannot make it (no module).
	DeviceUnsupported
)

// String returns the state's word for logs and status: absent, pending, up, unsupported.
func (s DeviceState) String() string {
	switch s {
	case DeviceAbsent:
		return "absent"
	case DevicePending:
		return "pending"
	case DeviceUp:
		return "up"
	case DeviceUnsupported:
		return "unsupported"
	}
	return fmt.Sprintf("DeviceState(%d)", int(s))
}

func deviceState(d devRecord, wanted bool) DeviceState {
	switch {
	case !wanted:
		return DeviceAbsent
	case d.unsupported:
		return DeviceUnsupported
	case d.ok:
		return DeviceUp
	default:
		return DevicePending
	}
}
