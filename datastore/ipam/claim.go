package ipam

import (
	"context"
	"errors"
	"fmt"
	"net/netip"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tabby-net/tabby/datastore"
)

// Claiming and releasing blocks: Calico's three-step protocol (ipam_block_reader_writer.go).
//
// Claim: (1) create a pending affinity host→block, (2) create the block with
// affinity "host:<node>" (a create, so only one host can ever win a block), (3) confirm the
// affinity. Release: (1) mark the affinity pendingDeletion, (2) delete the block (or, if it
// still holds addresses, clear its affinity), (3) delete the affinity.
//
// The block key is the single source of truth for who owns a block: it is created with
// Version==0, so two hosts can never both own it. Affinity keys are an index, per host,
// that routing trusts only when confirmed; every state a crash can leave them in is repaired
// by the owning host's next assignment (blockFromAffinity) or by CleanupPending:
//
//   - crash after (1) of a claim: a pending affinity to a block that does not exist;
//   - crash after (2): a pending affinity to a block that is the host's;
//   - crash after (1) of a release: a pendingDeletion affinity to a block still there;
//   - crash after (2) of a release: a pendingDeletion affinity to a missing block.

// errBlockTaken: the block exists and is affine to another host.
var errBlockTaken = errors.New("block is claimed by another host")

// errStaleAffinity: the affinity pointed at a block affine to another host and was deleted.
var errStaleAffinity = errors.New("stale affinity")

// errBlockNotEmpty: a release that required an empty block found addresses in use.
var errBlockNotEmpty = errors.New("block is not empty")

// errBlockChanged: a release conditional on the block's sequence number found it changed.
var errBlockChanged = errors.New("block changed since it was read")

// blockFromAffinity returns the block a host's affinity refers to, completing whatever state
// the affinity is in (Calico's getBlockFromAffinity):
//   - block missing: claim it (create it) and confirm the affinity;
//   - block affine to another host: the affinity is stale, delete it (errStaleAffinity);
//   - affinity not confirmed: mark it pending, rewrite the block so that any writer holding
//     an older revision fails its compare-and-swap, then confirm.
func (a *Allocator) blockFromAffinity(ctx context.Context, sa storedAffinity) (storedBlock, error) {
	sb, err := a.getBlock(ctx, sa.cidr)
	if errors.Is(err, datastore.ErrNotFound) {
		if sa.state() != datastore.AffinityPending {
			if sa, err = a.setAffinityState(ctx, sa, datastore.AffinityPending); err != nil {
				return storedBlock{}, err
			}
		}
		return a.claimAffineBlock(ctx, sa)
	}
	if err != nil {
		return storedBlock{}, err
	}
	if sb.b.AffinityHost() != sa.host {
		a.log.Info("deleting stale block affinity", "host", sa.host, "block", sa.cidr, "blockAffinity", affinityText(sb.b))
		if err := a.deleteAffinity(ctx, sa); err != nil && !errors.Is(err, datastore.ErrNotFound) {
			return storedBlock{}, err
		}
		return storedBlock{}, fmt.Errorf("affinity of %s to %s: %w", sa.host, sa.cidr, errStaleAffinity)
	}
	if sa.state() == datastore.AffinityConfirmed {
		return sb, nil
	}
	a.log.Info("confirming block affinity", "host", sa.host, "block", sa.cidr, "state", sa.state())
	if sa.state() != datastore.AffinityPending {
		if sa, err = a.setAffinityState(ctx, sa, datastore.AffinityPending); err != nil {
			return storedBlock{}, err
		}
	}
	if sb, err = a.updateBlock(ctx, sb, cloneBlock(sb.b)); err != nil {
		return storedBlock{}, err
	}
	if _, err := a.setAffinityState(ctx, sa, datastore.AffinityConfirmed); err != nil {
		return storedBlock{}, err
	}
	return sb, nil
}

// claimAffineBlock creates the block of a pending affinity and confirms the affinity.
// When the block exists already it is ours only if it is affine to this host (another
// process of the same host won); otherwise the pending affinity is withdrawn.
func (a *Allocator) claimAffineBlock(ctx context.Context, sa storedAffinity) (storedBlock, error) {
	sb, err := a.createBlock(ctx, sa.cidr, newBlock(sa.cidr, sa.host, a.now()))
	a.step(ctx, "block-created")
	if errors.Is(err, datastore.ErrAlreadyExists) {
		existing, gerr := a.getBlock(ctx, sa.cidr)
		if gerr != nil {
			return storedBlock{}, gerr
		}
		if existing.b.AffinityHost() == sa.host {
			if _, err := a.confirmAffinity(ctx, sa); err != nil {
				return storedBlock{}, err
			}
			return existing, nil
		}
		if derr := a.deleteAffinity(ctx, sa); derr != nil && !errors.Is(derr, datastore.ErrNotFound) {
			a.log.Warn("could not withdraw pending affinity to a block another host owns", "host", sa.host, "block", sa.cidr, "error", derr)
		}
		return storedBlock{}, fmt.Errorf("claim block %s for %s (owner %s): %w", sa.cidr, sa.host, affinityText(existing.b), errBlockTaken)
	}
	if err != nil {
		// Whether or not the create reached etcd, the pending affinity stays: this host's
		// next assignment (or CleanupPending) completes or removes it.
		return storedBlock{}, fmt.Errorf("claim block %s for %s: %w", sa.cidr, sa.host, err)
	}
	if _, err := a.confirmAffinity(ctx, sa); err != nil {
		return storedBlock{}, err
	}
	a.log.Info("claimed block", "host", sa.host, "block", sa.cidr)
	return sb, nil
}

// confirmAffinity confirms a pending affinity; if the write fails but someone else confirmed
// it meanwhile, that is success too.
func (a *Allocator) confirmAffinity(ctx context.Context, sa storedAffinity) (storedAffinity, error) {
	confirmed, err := a.setAffinityState(ctx, sa, datastore.AffinityConfirmed)
	a.step(ctx, "affinity-confirmed")
	if err == nil {
		return confirmed, nil
	}
	if cur, gerr := a.getAffinity(ctx, sa.host, sa.cidr); gerr == nil && cur.state() == datastore.AffinityConfirmed {
		return cur, nil
	}
	return storedAffinity{}, err
}

// pendingAffinity creates a pending affinity of host to cidr, or returns the existing one
// (marked pending again unless it is confirmed), as Calico's getPendingAffinity.
func (a *Allocator) pendingAffinity(ctx context.Context, host string, cidr netip.Prefix) (storedAffinity, error) {
	sa, err := a.createAffinity(ctx, host, cidr, datastore.AffinityPending)
	a.step(ctx, "affinity-pending")
	if err == nil || !errors.Is(err, datastore.ErrAlreadyExists) {
		return sa, err
	}
	sa, err = a.getAffinity(ctx, host, cidr)
	if err != nil {
		return storedAffinity{}, err
	}
	if sa.state() == datastore.AffinityConfirmed || sa.state() == datastore.AffinityPending {
		return sa, nil
	}
	return a.setAffinityState(ctx, sa, datastore.AffinityPending)
}

// listBlockCIDRs returns the CIDR of every existing block (keys only: cheap).
func (a *Allocator) listBlockCIDRs(ctx context.Context) (map[netip.Prefix]bool, error) {
	resp, err := a.c.Etcd().Get(ctx, a.c.Keys.BlockPrefix(), clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		return nil, fmt.Errorf("list blocks: %w", err)
	}
	out := make(map[netip.Prefix]bool, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		info, err := a.c.Keys.Parse(string(kv.Key))
		if err != nil || info.Type != datastore.KeyBlock {
			continue
		}
		out[info.CIDR] = true
	}
	return out, nil
}

// findUnclaimedBlock returns the first block, in the host's pseudo-random order over every
// block of every pool, that does not exist yet. Another host may create it before we do:
// the claim's create settles that.
func (a *Allocator) findUnclaimedBlock(ctx context.Context, host string, pools poolSet) (netip.Prefix, error) {
	existing, err := a.listBlockCIDRs(ctx)
	if err != nil {
		return netip.Prefix{}, err
	}
	for _, p := range pools {
		for cidr := range blockCandidates(p.cidr, p.blockSize, host) {
			if !existing[cidr] {
				return cidr, nil
			}
		}
	}
	return netip.Prefix{}, fmt.Errorf("every block of pools %s is claimed: %w", poolNames(pools), ErrNoFreeBlock)
}

// claimNewBlock claims a block nobody owns for host.
func (a *Allocator) claimNewBlock(ctx context.Context, host string, pools poolSet) (storedBlock, error) {
	var sb storedBlock
	retry := casRetry()
	retry.Refused = func(err error) bool {
		return errors.Is(err, errBlockTaken) || errors.Is(err, errStaleAffinity) || casRefused(err)
	}
	err := retry.Do(ctx, "claim a block for "+host, func(ctx context.Context) error {
		cidr, err := a.findUnclaimedBlock(ctx, host, pools)
		if err != nil {
			return err
		}
		sa, err := a.pendingAffinity(ctx, host, cidr)
		if err == nil {
			if sb, err = a.blockFromAffinity(ctx, sa); err == nil {
				return nil
			}
		}
		a.log.Debug("block claim lost a race, looking again", "host", host, "block", cidr, "error", err)
		return err
	})
	if err != nil {
		return storedBlock{}, err
	}
	return sb, nil
}

// blockFate is what releasing an affinity did to its block.
type blockFate int

const (
	// blockAbsent: there was no block (the affinity pointed at nothing); only the
	// affinity key went.
	blockAbsent blockFate = iota
	// blockDeleted: the block was empty and was deleted.
	blockDeleted
	// blockKept: the block still holds addresses; it stays, affine to no host.
	blockKept
)

// releaseBlockAffinity releases host's affinity to cidr; see releaseBlock.
func (a *Allocator) releaseBlockAffinity(ctx context.Context, host string, cidr netip.Prefix, requireEmpty bool, requiredSeq *uint64) error {
	_, err := a.releaseBlock(ctx, host, cidr, requireEmpty, requiredSeq)
	return err
}

// releaseBlock releases host's affinity to cidr (Calico's releaseBlockAffinity): mark the
// affinity pendingDeletion, delete the block when it is empty or else clear its affinity,
// then delete the affinity. With requireEmpty it refuses a block in use; with requiredSeq
// it refuses a block written since the caller read it (so that a release never undoes an
// assignment that slipped in). If the block write is refused, the affinity is put back to
// confirmed so no half-released state is left. It says what became of the block, which
// ReleaseNode reports.
func (a *Allocator) releaseBlock(ctx context.Context, host string, cidr netip.Prefix, requireEmpty bool, requiredSeq *uint64) (blockFate, error) {
	sa, err := a.getAffinity(ctx, host, cidr)
	if err != nil {
		return blockAbsent, err
	}
	sb, err := a.getBlock(ctx, cidr)
	if errors.Is(err, datastore.ErrNotFound) {
		// The affinity points at nothing: finish the job.
		return blockAbsent, a.deleteAffinity(ctx, sa)
	}
	if err != nil {
		return blockAbsent, err
	}
	if requiredSeq != nil && *requiredSeq != sb.b.SequenceNumber {
		return blockAbsent, fmt.Errorf("release block %s of %s: %w", cidr, host, errBlockChanged)
	}
	if sb.b.Affinity != nil && sb.b.AffinityHost() != host {
		if err := a.deleteAffinity(ctx, sa); err != nil && !errors.Is(err, datastore.ErrNotFound) {
			a.log.Warn("could not delete stale affinity", "host", host, "block", cidr, "error", err)
		}
		return blockAbsent, fmt.Errorf("release block %s of %s (owner %s): %w", cidr, host, affinityText(sb.b), errBlockTaken)
	}
	empty := isEmpty(sb.b)
	if requireEmpty && !empty {
		return blockAbsent, fmt.Errorf("release block %s of %s: %w", cidr, host, errBlockNotEmpty)
	}
	if sa, err = a.setAffinityState(ctx, sa, datastore.AffinityPendingDeletion); err != nil {
		return blockAbsent, err
	}
	a.step(ctx, "affinity-pending-deletion")
	if empty {
		err = a.deleteBlock(ctx, sb)
		if errors.Is(err, datastore.ErrNotFound) {
			err = nil
		}
	} else {
		nb := cloneBlock(sb.b)
		nb.Affinity = nil
		_, err = a.updateBlock(ctx, sb, nb)
	}
	if err != nil {
		if casRefused(err) {
			cctx, cancel := cleanupContext(ctx)
			if _, rerr := a.setAffinityState(cctx, sa, datastore.AffinityConfirmed); rerr != nil {
				a.log.Warn("could not restore affinity after a refused block release", "host", host, "block", cidr, "error", rerr)
			}
			cancel()
		}
		return blockAbsent, err
	}
	a.step(ctx, "block-released")
	if err := a.deleteAffinity(ctx, sa); err != nil && !errors.Is(err, datastore.ErrNotFound) {
		return blockAbsent, err
	}
	a.log.Info("released block", "host", host, "block", cidr, "blockDeleted", empty)
	if empty {
		return blockDeleted, nil
	}
	return blockKept, nil
}

// ReleaseAffinity releases host's affinity to the block cidr: an empty block is deleted, a
// block in use keeps its addresses but loses its host (with mustBeEmpty it is left alone).
// A block affine to another host, or no affinity at all, is not an error.
func (a *Allocator) ReleaseAffinity(ctx context.Context, host string, cidr netip.Prefix, mustBeEmpty bool) error {
	if err := validName("node name", host); err != nil {
		return fmt.Errorf("release affinity: %w", err)
	}
	if !cidr.IsValid() || !cidr.Addr().Is4() || cidr.Masked() != cidr {
		return fmt.Errorf("release affinity of %s: %s is not a block CIDR", host, cidr)
	}
	_, err := a.releaseAffinity(ctx, host, cidr, mustBeEmpty)
	return err
}

// releaseAffinity is ReleaseAffinity on valid arguments, retrying refused compare-and-swaps
// on fresh data, and saying what became of the block (blockAbsent when there was nothing
// of host's to release).
func (a *Allocator) releaseAffinity(ctx context.Context, host string, cidr netip.Prefix, mustBeEmpty bool) (blockFate, error) {
	fate := blockAbsent
	err := casRetry().Do(ctx, fmt.Sprintf("release affinity of %s to %s", host, cidr), func(ctx context.Context) error {
		var err error
		fate, err = a.releaseBlock(ctx, host, cidr, mustBeEmpty, nil)
		switch {
		case errors.Is(err, errBlockTaken), errors.Is(err, datastore.ErrNotFound):
			fate = blockAbsent
			return nil
		case err != nil && !errors.Is(err, errBlockNotEmpty) && !casRefused(err):
			return fmt.Errorf("release affinity of %s to %s: %w", host, cidr, err)
		}
		return err
	})
	if err != nil {
		return blockAbsent, err
	}
	return fate, nil
}

// ReleaseHostAffinities releases every block affinity of host (for a node leaving the
// fleet). With mustBeEmpty, blocks still holding addresses keep their affinity.
func (a *Allocator) ReleaseHostAffinities(ctx context.Context, host string, mustBeEmpty bool) error {
	if err := validName("node name", host); err != nil {
		return fmt.Errorf("release affinities: %w", err)
	}
	kvs, _, err := a.c.List(ctx, a.c.Keys.AffinityPrefix(host))
	if err != nil {
		return fmt.Errorf("release affinities of %s: %w", host, err)
	}
	var errs []error
	for _, kv := range kvs {
		sa, err := a.decodeAffinity(kv)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if err := a.ReleaseAffinity(ctx, host, sa.cidr, mustBeEmpty); err != nil && !errors.Is(err, errBlockNotEmpty) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// affinityText renders a block's affinity for messages.
func affinityText(b *datastore.AllocationBlock) string {
	if b.Affinity == nil {
		return "none"
	}
	return *b.Affinity
}

// poolNames renders pool CIDRs for messages.
func poolNames(ps poolSet) string {
	s := "["
	for i, p := range ps {
		if i > 0 {
			s += " "
		}
		s += p.cidr.String()
	}
	return s + "]"
}

// ClaimBlock claims one more block for node in the pools usable for use (or in the
// requested pools), whether or not its blocks are full: for pre-claiming address space.
// It fails with ErrBlockLimit at maxBlocksPerHost and with ErrNoFreeBlock when every block
// is taken.
func (a *Allocator) ClaimBlock(ctx context.Context, node, use string, pools []netip.Prefix) (netip.Prefix, error) {
	if err := validName("node name", node); err != nil {
		return netip.Prefix{}, fmt.Errorf("claim block: %w", err)
	}
	if err := validUse(use); err != nil {
		return netip.Prefix{}, fmt.Errorf("claim block for %s: %w", node, err)
	}
	if err := validPools(pools); err != nil {
		return netip.Prefix{}, fmt.Errorf("claim block for %s: %w", node, err)
	}
	unlock, err := a.lockHost(ctx, node)
	if err != nil {
		return netip.Prefix{}, err
	}
	defer unlock()
	e, err := a.readEnv(ctx, node, "")
	if err != nil {
		return netip.Prefix{}, err
	}
	usable, err := usablePools(e.pools, pools, e.nodeLabels, use)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("claim block for %s: %w", node, err)
	}
	if len(usable) == 0 {
		return netip.Prefix{}, fmt.Errorf("claim block for %s: %w for use %s (pools: %s)", node, ErrNoUsablePool, use, describePools(e.pools))
	}
	owned := 0
	for _, sa := range e.affinities {
		if _, ok := usable.containing(sa.cidr.Addr()); ok {
			owned++
		}
	}
	if e.config.BlockLimitReached(owned) {
		return netip.Prefix{}, fmt.Errorf("claim block for %s: it has %d blocks (maxBlocksPerHost %d): %w", node, owned, e.config.MaxBlocksPerHost, ErrBlockLimit)
	}
	sb, err := a.claimNewBlock(ctx, node, usable)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("claim block for %s: %w", node, err)
	}
	return sb.cidr, nil
}
