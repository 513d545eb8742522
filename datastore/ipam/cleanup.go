package ipam

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/tabby-net/tabby/datastore"
)

// CleanupResult says what CleanupPending did.
type CleanupResult struct {
	// Confirmed: pending affinities whose block turned out to be the host's.
	Confirmed []AffinityRef
	// Removed: affinities to a block that does not exist or belongs to another host.
	Removed []AffinityRef
	// Released: pendingDeletion affinities whose release was completed.
	Released []AffinityRef
	// Waiting: non-confirmed affinities not yet seen unchanged for minAge.
	Waiting int
}

// CleanupPending completes or removes the affinities that a claimer or releaser left
// half-way (it crashed, or its context ended between two steps), as the owning host's next
// assignment would:
//   - pending, block is the host's: confirm;
//   - pending or pendingDeletion, block missing or another host's: delete the affinity;
//   - pendingDeletion, block the host's and empty: finish the release; not empty: confirm
//     again (addresses are in use, the host keeps the block).
//
// An affinity is only touched once this Allocator has seen it unchanged (same etcd revision)
// for minAge, so that a daemon calling this periodically leaves claims in progress alone;
// etcd keeps no timestamps, so the age is measured from the first call that saw it. With
// minAge 0 everything is handled at once (an operator's repair); even then a claimer that
// is still alive only loses a compare-and-swap and retries.
func (a *Allocator) CleanupPending(ctx context.Context, minAge time.Duration) (CleanupResult, error) {
	kvs, _, err := a.c.List(ctx, a.c.Keys.HostPrefix())
	if err != nil {
		return CleanupResult{}, fmt.Errorf("clean up pending affinities: %w", err)
	}
	now := a.now()
	var res CleanupResult
	var todo []storedAffinity
	seen := map[string]bool{}
	a.mu.Lock()
	for _, kv := range kvs {
		sa, err := a.decodeAffinity(kv)
		if err != nil || sa.state() == datastore.AffinityConfirmed {
			continue
		}
		seen[kv.Key] = true
		s, ok := a.pendingSeen[kv.Key]
		if !ok || s.rev != sa.rev {
			s = seenAt{rev: sa.rev, at: now}
			a.pendingSeen[kv.Key] = s
		}
		if now.Sub(s.at) < minAge {
			res.Waiting++
			continue
		}
		todo = append(todo, sa)
	}
	for k := range a.pendingSeen {
		if !seen[k] {
			delete(a.pendingSeen, k)
		}
	}
	a.mu.Unlock()

	var errs []error
	for _, sa := range todo {
		ref := AffinityRef{Host: sa.host, Block: sa.cidr, State: sa.state()}
		outcome, err := a.resolveAffinity(ctx, sa)
		switch {
		case err != nil && !casRefused(err):
			errs = append(errs, fmt.Errorf("affinity of %s to %s: %w", sa.host, sa.cidr, err))
		case err != nil:
			a.log.Debug("affinity changed while cleaning it up; left to its writer", "host", sa.host, "block", sa.cidr)
		case outcome == "confirmed":
			res.Confirmed = append(res.Confirmed, ref)
		case outcome == "removed":
			res.Removed = append(res.Removed, ref)
		case outcome == "released":
			res.Released = append(res.Released, ref)
		}
		if err == nil {
			a.log.Info("cleaned up half-done block affinity", "host", sa.host, "block", sa.cidr, "state", ref.State, "outcome", outcome)
		}
	}
	return res, errors.Join(errs...)
}

// resolveAffinity completes or removes one non-confirmed affinity.
func (a *Allocator) resolveAffinity(ctx context.Context, sa storedAffinity) (string, error) {
	sb, err := a.getBlock(ctx, sa.cidr)
	if errors.Is(err, datastore.ErrNotFound) || (err == nil && sb.b.AffinityHost() != sa.host) {
		if err := a.deleteAffinity(ctx, sa); err != nil {
			return "", err
		}
		return "removed", nil
	}
	if err != nil {
		return "", err
	}
	if sa.state() == datastore.AffinityPendingDeletion && isEmpty(sb.b) {
		seq := sb.b.SequenceNumber
		if err := a.releaseBlockAffinity(ctx, sa.host, sa.cidr, true, &seq); err != nil {
			return "", err
		}
		return "released", nil
	}
	if _, err := a.blockFromAffinity(ctx, sa); err != nil {
		return "", err
	}
	return "confirmed", nil
}
