package ipam

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/tabby-net/tabby/datastore"
	"github.com/tabby-net/tabby/internal/backoff"
)

// Sentinel errors. Errors returned by the Allocator wrap them with context; test them with
// errors.Is.
var (
	// ErrNoFreeBlock: every block of the usable pools is claimed by some host.
	ErrNoFreeBlock = errors.New("no free block")
	// ErrPoolExhausted: no address can be given: the node's blocks are full, it cannot claim
	// another, and borrowing from other nodes' blocks is forbidden (strict_affinity) or found
	// nothing free.
	ErrPoolExhausted = errors.New("pool exhausted")
	// ErrBlockLimit: the node already has maxBlocksPerHost blocks and they are full.
	ErrBlockLimit = errors.New("per-host block limit reached")
	// ErrNoUsablePool: no enabled pool selects the node and allows the requested use.
	ErrNoUsablePool = errors.New("no usable IP pool")
	// ErrNotAssigned: the address is not allocated.
	ErrNotAssigned = errors.New("address not assigned")
	// ErrTooManyConflicts: the bounded compare-and-swap retries ran out; etcd is too
	// contended at the moment. It is the datastore's, which every retry loop returns.
	ErrTooManyConflicts = datastore.ErrTooManyConflicts
)

// maxRetries bounds every compare-and-swap loop (Calico uses 100). Conflicts between the
// processes of one node are rare because each Allocator serializes a node's assignments;
// the bound is for many nodes borrowing from one block at once.
const maxRetries = 100

// cleanupTimeout bounds the undo of a half-done step after the caller's context ended.
const cleanupTimeout = 10 * time.Second

// Allocator assigns and releases workload and tunnel addresses with Calico's block protocol.
// It is safe for concurrent use. It caches no data: every decision is taken on what etcd
// holds (the only memory is which block to look at first), so any number of Allocators in
// any number of processes can share one etcd.
type Allocator struct {
	c   *datastore.Client
	log *slog.Logger

	// now is the clock (tests move it).
	now func() time.Time
	// afterStep, when set, is called after each step of a multi-step write with the step's
	// name; tests use it to cancel the context between steps.
	afterStep func(ctx context.Context, step string)

	mu sync.Mutex
	// hostLocks serializes the assignments of one node inside this Allocator, as Calico's
	// CNI plugin holds a host-wide lock around IPAM: a node's concurrent requests would all
	// race for the same block and waste etcd round trips on conflicts.
	hostLocks map[string]*hostLock
	// hints remembers, per node, the block it last assigned from (tried first next time).
	hints map[string]netip.Prefix
	// pendingSeen remembers since when each non-confirmed affinity has been seen unchanged,
	// so that CleanupPending leaves a claim in progress alone.
	pendingSeen map[string]seenAt
}

// hostLock is a mutex that a waiter can give up on when its context ends: a channel with
// room for one token.
type hostLock struct {
	token chan struct{}
	refs  int
}

type seenAt struct {
	rev int64
	at  time.Time
}

// New returns an Allocator working on c's etcd. log receives one line per block claimed or
// released and per problem met; nil discards.
func New(c *datastore.Client, log *slog.Logger) *Allocator {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Allocator{
		c:           c,
		log:         log,
		now:         time.Now,
		hostLocks:   map[string]*hostLock{},
		hints:       map[string]netip.Prefix{},
		pendingSeen: map[string]seenAt{},
	}
}

// lockHost takes this Allocator's lock for host and returns its release.
func (a *Allocator) lockHost(ctx context.Context, host string) (func(), error) {
	a.mu.Lock()
	l := a.hostLocks[host]
	if l == nil {
		l = &hostLock{token: make(chan struct{}, 1)}
		a.hostLocks[host] = l
	}
	l.refs++
	a.mu.Unlock()
	unref := func() {
		a.mu.Lock()
		l.refs--
		if l.refs == 0 {
			delete(a.hostLocks, host)
		}
		a.mu.Unlock()
	}
	select {
	case l.token <- struct{}{}:
	case <-ctx.Done():
		unref()
		return nil, fmt.Errorf("wait for the IPAM lock of %s: %w", host, context.Cause(ctx))
	}
	return func() { <-l.token; unref() }, nil
}

// step marks the end of one step of a multi-step write (a test hook).
func (a *Allocator) step(ctx context.Context, name string) {
	if a.afterStep != nil {
		a.afterStep(ctx, name)
	}
}

// casRetry is the policy of every IPAM compare-and-swap loop: maxRetries attempts, any
// refused compare-and-swap (a conflict, a key created or deleted meanwhile) retried after
// a short random pause that grows with the attempts, so that writers that just collided
// do not collide again in lock step. The pauses are far shorter than the reconcilers'
// (internal/backoff's defaults): IPAM writers collide within one etcd round trip (about
// a millisecond), and an assignment waits for them.
func casRetry() datastore.Retry {
	return datastore.Retry{
		Attempts: maxRetries,
		Backoff:  backoff.Backoff{Min: 100 * time.Microsecond, Max: 6400 * time.Microsecond, Jitter: true},
		Refused:  casRefused,
	}
}

// cleanupContext is for undoing a half-done step after the caller's context ended: the undo
// must still reach etcd, but not hang forever.
func cleanupContext(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
}

// validName checks a node name or handle ID, which become etcd key segments.
func validName(what, s string) error {
	if s == "" {
		return fmt.Errorf("%s is empty", what)
	}
	if strings.ContainsAny(s, "/\x00") || s == "." || s == ".." {
		return fmt.Errorf("%s %q contains a character not allowed in an etcd key segment", what, s)
	}
	return nil
}

// validUse checks an intended use.
func validUse(use string) error {
	if use != datastore.UseWorkload && use != datastore.UseTunnel {
		return fmt.Errorf("use %q is neither %s nor %s", use, datastore.UseWorkload, datastore.UseTunnel)
	}
	return nil
}

// validPools checks requested pool CIDRs.
func validPools(ps []netip.Prefix) error {
	for _, p := range ps {
		if !p.IsValid() || !p.Addr().Is4() {
			return fmt.Errorf("requested pool %s is not an IPv4 CIDR", p)
		}
		if p.Masked() != p {
			return fmt.Errorf("requested pool %s has host bits set (want %s)", p, p.Masked())
		}
	}
	return nil
}
