package datastore

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/metadata"

	"github.com/tabby-net/tabby/internal/backoff"
	"github.com/tabby-net/tabby/internal/latest"
)

// SyncerOptions tune a Syncer; zero values take the defaults.
type SyncerOptions struct {
	// ProgressInterval is how often the syncer asks etcd to prove that the watch is alive.
	// A watch that has delivered nothing (no event, no progress notification) by the next
	// interval is presumed dead and replaced by a fresh list and watch. Default 10s.
	ProgressInterval time.Duration
	// RequestTimeout bounds each list request. Default 30s.
	RequestTimeout time.Duration
	// MinBackoff and MaxBackoff bound the wait before a retry after a failure.
	// Defaults 100ms and 10s: every tabbyd's readiness waits for its syncer, so after an
	// etcd outage a host should be back within seconds (the waits are jittered, so that
	// the hosts of a cluster do not all list at the same instant).
	MinBackoff, MaxBackoff time.Duration
	// PageSize is the number of keys per list request. Default 1000.
	PageSize int64
	// OnlyHandles, when not empty, limits the IPAM handles in snapshots to these IDs.
	// A cluster holds one handle per workload, so in a large one they are most of the
	// keys, and tabbyd reads only its own tunnel handles. Empty: every handle.
	OnlyHandles []string
}

func (o SyncerOptions) withDefaults() SyncerOptions {
	if o.ProgressInterval <= 0 {
		o.ProgressInterval = 10 * time.Second
	}
	if o.RequestTimeout <= 0 {
		o.RequestTimeout = 30 * time.Second
	}
	if o.MinBackoff <= 0 {
		o.MinBackoff = 100 * time.Millisecond
	}
	if o.MaxBackoff < o.MinBackoff {
		o.MaxBackoff = max(10*time.Second, o.MinBackoff)
	}
	if o.PageSize <= 0 {
		o.PageSize = 1000
	}
	return o
}

// SyncerStats describe the syncer's health, for metrics and readiness.
type SyncerStats struct {
	// Connected: the last list succeeded and the watch since has not failed.
	Connected bool
	// LastRevision is the newest etcd revision the syncer knows it is consistent with
	// (from lists, events and progress notifications).
	LastRevision int64
	// SnapshotRevision is the revision of the last published snapshot.
	SnapshotRevision int64
	// InvalidDocuments counts the document versions refused since start.
	InvalidDocuments uint64
	// Problems is the number of refused documents in the last snapshot.
	Problems int
	// Lists counts full lists (the first one included); Relists those after the first.
	Lists, Relists uint64
	// WatchErrors counts watches that ended: errors, compactions, silence.
	WatchErrors uint64
	// ListErrors counts lists that failed.
	ListErrors uint64
	// Snapshots counts published snapshots.
	Snapshots uint64
	// LastError is the last list or watch error, "" when none.
	LastError string
}

// Syncer keeps an in-memory copy of everything under the key root (resources and IPAM)
// by list-then-watch, and publishes it as consistent, revision-tagged Snapshots.
//
// It watches from the list's revision + 1 with WithRequireLeader (a member cut off from
// its cluster ends the watch) and progress notifications, which it also requests itself,
// so that a watch that silently died is noticed within one ProgressInterval. Any watch
// error, compaction or silence means a fresh list and watch, after a backoff. Documents
// that break the rules are reported (log, Stats, Snapshot.Problems) and the last valid
// version of that resource stays in force.
type Syncer struct {
	client *Client
	log    *slog.Logger
	opts   SyncerOptions
	// wantedHandles holds the keys of OnlyHandles; nil when every handle is wanted.
	wantedHandles map[string]bool
	handlePrefix  string

	mu      sync.Mutex
	subs    map[chan *Snapshot]struct{}
	latest  *Snapshot
	stats   SyncerStats
	started bool
	stopped bool
}

// NewSyncer returns a syncer of c's key root with default options.
func NewSyncer(c *Client, log *slog.Logger) *Syncer {
	return NewSyncerWithOptions(c, log, SyncerOptions{})
}

// NewSyncerWithOptions returns a syncer of c's key root.
func NewSyncerWithOptions(c *Client, log *slog.Logger, opts SyncerOptions) *Syncer {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Syncer{
		client: c,
		log:    log.With("component", "datastore-syncer"),
		opts:   opts.withDefaults(),
		subs:   map[chan *Snapshot]struct{}{},
	}
	s.handlePrefix = c.Keys.HandlePrefix()
	if len(opts.OnlyHandles) > 0 {
		s.wantedHandles = map[string]bool{}
		for _, id := range opts.OnlyHandles {
			s.wantedHandles[c.Keys.Handle(id)] = true
		}
	}
	return s
}

// keyRange is the half-open key range [from, end) of one list.
type keyRange struct{ from, end string }

// listRanges are the key ranges a list reads, in key order: the whole root, or, with
// OnlyHandles, the root around the handle prefix plus each wanted handle's key.
func (s *Syncer) listRanges() []keyRange {
	root := s.client.Keys.Root + "/"
	rootEnd := clientv3.GetPrefixRangeEnd(root)
	if s.wantedHandles == nil {
		return []keyRange{{root, rootEnd}}
	}
	hp := s.handlePrefix
	ranges := []keyRange{{root, hp}}
	for _, key := range slices.Sorted(maps.Keys(s.wantedHandles)) {
		ranges = append(ranges, keyRange{key, key + "\x00"})
	}
	return append(ranges, keyRange{clientv3.GetPrefixRangeEnd(hp), rootEnd})
}

// wanted reports whether the snapshot carries key (see OnlyHandles).
func (s *Syncer) wanted(key string) bool {
	return s.wantedHandles == nil || s.wantedHandles[key] || !strings.HasPrefix(key, s.handlePrefix)
}

// Subscribe returns a channel of snapshots and a function that ends the subscription.
// The channel holds at most one snapshot: a subscriber that falls behind skips to the
// newest and never slows the syncer. The current snapshot, if any, is delivered at once.
// The channel is closed when the subscription or Run ends.
func (s *Syncer) Subscribe() (<-chan *Snapshot, func()) {
	ch := make(chan *Snapshot, 1)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopped {
		close(ch)
		return ch, func() {}
	}
	if s.latest != nil {
		ch <- s.latest
	}
	s.subs[ch] = struct{}{}
	return ch, sync.OnceFunc(func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		if _, ok := s.subs[ch]; ok {
			delete(s.subs, ch)
			close(ch)
		}
	})
}

// Latest returns the last published snapshot, nil before the first list.
func (s *Syncer) Latest() *Snapshot {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.latest
}

// Stats returns the syncer's counters.
func (s *Syncer) Stats() SyncerStats {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stats
}

func (s *Syncer) update(f func(*SyncerStats)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	f(&s.stats)
}

// publish hands a snapshot to every subscriber, replacing one it has not taken yet.
func (s *Syncer) publish(snap *Snapshot, st *syncState) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.latest = snap
	s.stats.Snapshots++
	s.stats.SnapshotRevision = snap.Revision
	s.stats.Problems = len(snap.Problems)
	s.stats.InvalidDocuments = st.invalid
	for ch := range s.subs {
		latest.Send(ch, snap)
	}
}

// Run lists and watches until ctx ends, then closes every subscription and returns nil.
// Failures are retried with backoff, never returned. Run may be called once.
func (s *Syncer) Run(ctx context.Context) error {
	s.mu.Lock()
	if s.started {
		s.mu.Unlock()
		return errors.New("datastore syncer: Run called twice")
	}
	s.started = true
	s.mu.Unlock()
	defer s.stop()

	st := newSyncState(s.client.Keys, s.log)
	bo := backoff.Backoff{Min: s.opts.MinBackoff, Max: s.opts.MaxBackoff, Jitter: true}
	for ctx.Err() == nil {
		rev, err := s.list(ctx, st)
		if err != nil {
			if ctx.Err() != nil {
				break
			}
			s.update(func(x *SyncerStats) { x.ListErrors++; x.Connected = false; x.LastError = err.Error() })
			wait := bo.Next()
			s.log.Warn("etcd list failed; retrying", "error", err, "retry_in", wait)
			sleep(ctx, wait)
			continue
		}
		err = s.watch(ctx, st, rev, bo.Reset)
		if ctx.Err() != nil {
			break
		}
		s.update(func(x *SyncerStats) { x.WatchErrors++; x.Connected = false; x.LastError = err.Error() })
		wait := bo.Next()
		s.log.Warn("etcd watch ended; listing again", "error", err, "retry_in", wait)
		sleep(ctx, wait)
	}
	return nil
}

func (s *Syncer) stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stopped = true
	s.stats.Connected = false
	for ch := range s.subs {
		close(ch)
	}
	clear(s.subs)
}

// sleep waits d or until ctx ends.
func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// list reads the whole root (but the handles OnlyHandles leaves out) at one revision,
// page by page, merges it into the cache and publishes the result.
//
// Pages are decoded by a second goroutine while the next one is being fetched, so that
// etcd's time to serve a page and tabby's time to decode the previous one overlap: at
// 20,000 keys the first list is most of a joining host's start-up. Only that goroutine
// touches st until it is done; at most two pages wait for it.
func (s *Syncer) list(ctx context.Context, st *syncState) (int64, error) {
	prefix := s.client.Keys.Root + "/"
	var (
		kvs     []rawKV
		rev     int64
		pages   = make(chan listPage, 2)
		decoded = make(chan struct{})
	)
	go func() {
		defer close(decoded)
		for page := range pages {
			if kvs == nil {
				// Count is the whole first range's: the list's slice is allocated once
				// (but for the few keys of the ranges after it, with OnlyHandles).
				kvs = make([]rawKV, 0, page.count)
			}
			for _, kv := range page.kvs {
				raw := rawKV{key: string(kv.Key), value: kv.Value, modRev: kv.ModRevision, createRev: kv.CreateRevision}
				st.prepare(&raw) // decode now: a page's raw values are garbage once it is read
				kvs = append(kvs, raw)
			}
		}
	}()
	fetchErr := func() error {
		defer close(pages)
		for _, r := range s.listRanges() {
			key := r.from
			for {
				opts := []clientv3.OpOption{clientv3.WithRange(r.end), clientv3.WithLimit(s.opts.PageSize)}
				if rev != 0 {
					opts = append(opts, clientv3.WithRev(rev))
				}
				rctx, cancel := context.WithTimeout(clientv3.WithRequireLeader(ctx), s.opts.RequestTimeout)
				resp, err := s.client.etcd.Get(rctx, key, opts...)
				cancel()
				if err != nil {
					return fmt.Errorf("list %s: %w", prefix, err)
				}
				if rev == 0 {
					rev = resp.Header.Revision
				}
				if len(resp.Kvs) > 0 {
					select {
					case pages <- listPage{kvs: resp.Kvs, count: resp.Count}:
					case <-ctx.Done():
						return fmt.Errorf("list %s: %w", prefix, ctx.Err())
					}
				}
				if !resp.More || len(resp.Kvs) == 0 {
					break
				}
				key = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
			}
		}
		return nil
	}()
	<-decoded
	if fetchErr != nil {
		return 0, fetchErr
	}
	snap, changed := st.relist(kvs, rev)
	s.update(func(x *SyncerStats) {
		if x.Lists > 0 {
			x.Relists++
		}
		x.Lists++
		x.Connected = true
		x.LastError = ""
		x.LastRevision = max(x.LastRevision, rev)
	})
	if changed || s.Latest() == nil {
		if !changed {
			// The root is empty: publish the empty snapshot at the list's revision.
			empty := *snap
			empty.Revision = rev
			snap = &empty
			st.snap = snap
		}
		s.publish(snap, st)
	}
	s.log.Debug("listed the datastore", "revision", rev, "keys", len(kvs))
	return rev, nil
}

// listPage is one page of a list on its way to the decoding goroutine; count is the number
// of keys from its first to the end of the range.
type listPage struct {
	kvs   []*mvccpb.KeyValue
	count int64
}

// watch follows changes from rev+1 until the watch fails, is compacted or falls silent.
// healthy is called once the watch is established.
func (s *Syncer) watch(ctx context.Context, st *syncState, rev int64, healthy func()) error {
	// Our own gRPC watch stream (the client shares one per set of metadata): etcd answers
	// a progress request only when every watch on the stream is in sync, so another
	// component's watch must not be able to silence ours.
	wctx, cancel := context.WithCancel(metadata.AppendToOutgoingContext(
		clientv3.WithRequireLeader(ctx), "tabby-watch-stream", fmt.Sprintf("syncer-%p", s)))
	defer cancel()
	prefix := s.client.Keys.Root + "/"
	start := rev + 1
	// Watch blocks until etcd confirms the watch: bound that too, or an etcd that stops
	// answering between the list and the watch would hang the syncer.
	establish := time.AfterFunc(s.opts.RequestTimeout, cancel)
	wch := s.client.etcd.Watch(wctx, prefix, clientv3.WithPrefix(), clientv3.WithRev(start),
		clientv3.WithProgressNotify(), clientv3.WithCreatedNotify())
	if !establish.Stop() && ctx.Err() == nil {
		return fmt.Errorf("watch from revision %d not established within %s", start, s.opts.RequestTimeout)
	}
	ticker := time.NewTicker(s.opts.ProgressInterval)
	defer ticker.Stop()
	heard := true // something arrived since the last progress request
	// etcd ignores a progress request while the cluster's revision is below the watch's
	// start revision (nothing has been written since our list). startReached says the
	// revision got there before the last request was sent, so that it had to be answered.
	startReached := false
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-ticker.C:
			if !heard {
				if startReached {
					return fmt.Errorf("watch silent: no answer to a progress request within %s", s.opts.ProgressInterval)
				}
				// A quiet cluster, or a dead watch? Ask for the revision. The answer is one
				// number, so it gets a progress interval, not a list's RequestTimeout: with
				// etcd gone the request waits for a connection until its deadline, and the
				// dead watch must be noticed within two progress intervals, not 30 s.
				rctx, rcancel := context.WithTimeout(wctx, s.opts.ProgressInterval)
				resp, err := s.client.etcd.Get(rctx, prefix, clientv3.WithCountOnly())
				rcancel()
				if err != nil {
					return fmt.Errorf("check watch liveness: %w", err)
				}
				startReached = resp.Header.Revision >= start
			}
			heard = false
			// The request goes on the stream of wctx's metadata, which is the watch's.
			rctx, rcancel := context.WithTimeout(wctx, s.opts.ProgressInterval)
			err := s.client.etcd.RequestProgress(rctx)
			rcancel()
			if err != nil && ctx.Err() == nil {
				return fmt.Errorf("request watch progress: %w", err)
			}
		case resp, ok := <-wch:
			if !ok {
				return errors.New("watch channel closed")
			}
			heard = true
			startReached = startReached || len(resp.Events) > 0 || resp.IsProgressNotify()
			d := s.drain(resp, wch)
			if len(d.events) > 0 {
				lastRev := d.events[len(d.events)-1].modRev
				if snap, changed := st.apply(d.events, lastRev); changed {
					s.publish(snap, st)
				}
				s.update(func(x *SyncerStats) { x.LastRevision = max(x.LastRevision, lastRev) })
			}
			if d.err != nil {
				return d.err
			}
			if d.created {
				healthy()
				s.update(func(x *SyncerStats) { x.Connected = true; x.LastError = "" })
			}
			if d.progressRev != 0 {
				s.update(func(x *SyncerStats) { x.LastRevision = max(x.LastRevision, d.progressRev) })
			}
		}
	}
}

// drained is what one or more watch responses brought.
type drained struct {
	events      []rawKV
	created     bool  // the watch was established
	progressRev int64 // a progress notification vouched for every change up to this revision
	err         error // the watch ended
}

// drain collects the events of resp and of every response already waiting behind it, so
// that a burst of writes makes one snapshot, not one per write. It stops at the first
// response that ends the watch, keeping the events before it.
func (s *Syncer) drain(resp clientv3.WatchResponse, wch clientv3.WatchChan) drained {
	const maxBatch = 10000
	var d drained
	for {
		if d.err = watchError(resp); d.err != nil {
			return d
		}
		d.created = d.created || resp.Created
		if resp.IsProgressNotify() {
			d.progressRev = resp.Header.Revision
		}
		for _, ev := range resp.Events {
			key := string(ev.Kv.Key)
			if !s.wanted(key) {
				continue
			}
			d.events = append(d.events, rawKV{
				key: key, value: ev.Kv.Value, modRev: ev.Kv.ModRevision,
				createRev: ev.Kv.CreateRevision, deleted: ev.Type == clientv3.EventTypeDelete,
			})
		}
		if len(d.events) >= maxBatch {
			return d
		}
		select {
		case next, ok := <-wch:
			if !ok {
				d.err = errors.New("watch channel closed")
				return d
			}
			resp = next
		default:
			return d
		}
	}
}

func watchError(resp clientv3.WatchResponse) error {
	if resp.CompactRevision != 0 {
		return fmt.Errorf("watch: revisions up to %d were compacted: %w", resp.CompactRevision, rpctypes.ErrCompacted)
	}
	if err := resp.Err(); err != nil {
		return fmt.Errorf("watch: %w", err)
	}
	if resp.Canceled {
		return errors.New("watch canceled by etcd")
	}
	return nil
}
