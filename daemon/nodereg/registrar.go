package nodereg

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"time"

	"github.com/tabby-net/tabby/datastore"
	"github.com/tabby-net/tabby/datastore/ipam"
	"github.com/tabby-net/tabby/internal/backoff"
	"github.com/tabby-net/tabby/internal/cow"
	"github.com/tabby-net/tabby/internal/latest"
)

// Store reads and writes Node resources with compare-and-swap (datastore.Client).
type Store interface {
	// GetNode returns the stored Node; a missing one is an error wrapping
	// datastore.ErrNotFound.
	GetNode(ctx context.Context, name string) (*datastore.Node, error)
	// CreateNode creates a Node that must not exist yet.
	CreateNode(ctx context.Context, n *datastore.Node) (*datastore.Node, error)
	// UpdateNode writes a Node only if it is still at n's resourceVersion; otherwise the
	// error wraps datastore.ErrConflict.
	UpdateNode(ctx context.Context, n *datastore.Node) (*datastore.Node, error)
}

// IPAM hands out and takes back tunnel addresses (*ipam.Allocator).
type IPAM interface {
	// EnsureTunnelAddr returns the node's tunnel address of a kind from one of pools,
	// assigning one when the node has none there yet.
	EnsureTunnelAddr(ctx context.Context, node string, kind ipam.TunnelKind, pools []netip.Prefix) (netip.Addr, error)
	// ReleaseTunnelAddr releases it; releasing an address that is not assigned succeeds.
	ReleaseTunnelAddr(ctx context.Context, node string, kind ipam.TunnelKind) error
}

// Status is how far the Node in etcd is from what this host wants.
type Status struct {
	// Synced is true when the last snapshot looked at needed no write: etcd holds the
	// Node and the tunnel addresses this host wants.
	Synced bool
	// Revision is the revision of that snapshot.
	Revision int64
	// Node is the Node as last read or written.
	Node *datastore.Node
	// Err is why the last attempt failed; nil after a success.
	Err error
}

// Registrar is the Node's reconciler.
type Registrar struct {
	store Store
	ipam  IPAM
	id    Identity
	log   *slog.Logger

	in      *latest.Value[*datastore.Snapshot]
	changed chan struct{}

	mu     sync.Mutex
	status Status
}

// New returns a Registrar for the host id describes.
func New(store Store, ipam IPAM, id Identity, log *slog.Logger) *Registrar {
	return &Registrar{
		store:   store,
		ipam:    ipam,
		id:      id,
		log:     log,
		in:      latest.New[*datastore.Snapshot](),
		changed: make(chan struct{}, 1),
	}
}

// Set hands the registrar the newest snapshot; it never blocks, and an older snapshot
// not yet looked at is dropped.
func (r *Registrar) Set(snap *datastore.Snapshot) { r.in.Set(snap) }

// Status returns the current status.
func (r *Registrar) Status() Status {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.status
}

// Changed is signalled (coalesced) when the status changes.
func (r *Registrar) Changed() <-chan struct{} { return r.changed }

// Run reconciles each snapshot handed to Set until ctx ends. A failed attempt is retried
// with backoff on the newest snapshot.
//
// A snapshot in which nothing the registrar looks at changed since one that needed no
// write (this host's Node, the pools, its tunnel handles) needs none either, and is not
// reconciled: a reconciliation reads the Node from etcd, and every host of a cluster
// would otherwise do so on every change anywhere in it.
func (r *Registrar) Run(ctx context.Context) error {
	var snap, syncedAt *datastore.Snapshot
	var retry <-chan time.Time
	// Capped at 10 s, not backoff's 30 s: the Node gates readiness, and once etcd answers
	// again after an outage a host should not stay unready for long.
	bo := backoff.Backoff{Max: 10 * time.Second}
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-r.in.Wake():
			next, ok := r.in.Take()
			if !ok {
				continue
			}
			snap = next
			if syncedAt != nil && r.sameInputs(syncedAt, snap) {
				st := r.Status()
				r.setStatus(Status{Synced: true, Revision: snap.Revision, Node: st.Node})
				continue
			}
		case <-retry:
		}
		retry = nil
		synced, node, err := r.reconcile(ctx, snap)
		if ctx.Err() != nil {
			return nil
		}
		r.setStatus(Status{Synced: synced, Revision: snap.Revision, Node: node, Err: err})
		syncedAt = nil
		if synced && err == nil {
			syncedAt = snap
		}
		if err != nil {
			wait := bo.Next()
			r.log.Warn("node registration failed; retrying", "node", r.id.Name, "in", wait, "err", err)
			retry = time.After(wait)
			continue
		}
		bo.Reset()
	}
}

// sameInputs reports whether a reconciliation of b would look at what one of a did: the
// same Node of this host (present in both), pools and tunnel handles. Snapshots share
// unchanged objects, and every write of the Node shows in a later snapshot as a new one.
func (r *Registrar) sameInputs(a, b *datastore.Snapshot) bool {
	na, okA := a.Nodes[r.id.Name]
	nb, okB := b.Nodes[r.id.Name]
	if !okA || !okB || na != nb || !cow.Same(a.Pools, b.Pools) {
		return false
	}
	for _, t := range Tunnels() {
		ha, okA := a.Handles[t.Handle(r.id.Name)]
		hb, okB := b.Handles[t.Handle(r.id.Name)]
		if okA != okB || ha != hb {
			return false
		}
	}
	return true
}

func (r *Registrar) setStatus(s Status) {
	r.mu.Lock()
	old := r.status
	r.status = s
	r.mu.Unlock()
	if old.Synced != s.Synced || old.Revision != s.Revision || (old.Err == nil) != (s.Err == nil) ||
		(old.Err != nil && s.Err != nil && old.Err.Error() != s.Err.Error()) {
		select {
		case r.changed <- struct{}{}:
		default:
		}
	}
}

// reconcile makes etcd hold the Node and tunnel addresses this host wants, judged against
// snap's pools and handles. It reports whether no write was needed. When someone else
// writes the Node in between, it reads it again (datastore.DefaultRetry bounds how often).
func (r *Registrar) reconcile(ctx context.Context, snap *datastore.Snapshot) (bool, *datastore.Node, error) {
	var synced bool
	var node *datastore.Node
	retry := datastore.DefaultRetry
	retry.Refused = func(err error) bool {
		return errors.Is(err, datastore.ErrConflict) || errors.Is(err, datastore.ErrAlreadyExists)
	}
	err := retry.Do(ctx, "node "+r.id.Name, func(ctx context.Context) error {
		var err error
		synced, node, err = r.attempt(ctx, snap)
		return err
	})
	return synced, node, err
}

func (r *Registrar) attempt(ctx context.Context, snap *datastore.Snapshot) (bool, *datastore.Node, error) {
	stored, err := r.store.GetNode(ctx, r.id.Name)
	if errors.Is(err, datastore.ErrNotFound) {
		stored, err = nil, nil
	}
	if err != nil {
		return false, nil, fmt.Errorf("read node %s: %w", r.id.Name, err)
	}
	created := stored == nil
	if created {
		// The Node first, its tunnel addresses after (Calico's order): a host that may not
		// write its Node (etcd RBAC refuses it) claims no block and holds no address for
		// a node that does not exist.
		if stored, err = r.store.CreateNode(ctx, Desired(nil, r.id, nil)); err != nil {
			return false, nil, fmt.Errorf("create node %s: %w", r.id.Name, err)
		}
		r.log.Info("node created", "node", r.id.Name, "spec", describe(stored))
	}
	need := NeededTunnels(snap.Pools, MergedLabels(stored, r.id))

	tunnels := map[ipam.TunnelKind]netip.Addr{}
	var release []ipam.TunnelKind
	for _, t := range Tunnels() {
		cur, has := TunnelAddr(stored, t)
		_, handled := snap.Handles[t.Handle(r.id.Name)]
		pools := need[t]
		switch {
		case len(pools) > 0 && has && handled && inAny(cur, pools):
			tunnels[t] = cur
		case len(pools) > 0:
			a, err := r.ipam.EnsureTunnelAddr(ctx, r.id.Name, t, pools)
			if err != nil {
				return false, stored, fmt.Errorf("%s tunnel address: %w", t, err)
			}
			tunnels[t] = a
		case has || handled:
			release = append(release, t)
		}
	}

	want := Desired(stored, r.id, tunnels)
	written := stored
	if describe(want) != describe(stored) {
		if written, err = r.store.UpdateNode(ctx, want); err != nil {
			return false, stored, fmt.Errorf("update node %s: %w", r.id.Name, err)
		}
		r.log.Info("node updated", "node", r.id.Name, "was", describe(stored), "now", describe(written))
	}

	// Released only once the Node no longer names them, so no other host routes to an
	// address that a workload may already have been given.
	for _, t := range release {
		if err := r.ipam.ReleaseTunnelAddr(ctx, r.id.Name, t); err != nil {
			return false, written, fmt.Errorf("release %s tunnel address: %w", t, err)
		}
		r.log.Info("tunnel address released: no pool needs it", "node", r.id.Name, "kind", t)
	}
	return !created && written == stored && len(release) == 0, written, nil
}

func inAny(a netip.Addr, pools []netip.Prefix) bool {
	for _, p := range pools {
		if p.Contains(a) {
			return true
		}
	}
	return false
}
