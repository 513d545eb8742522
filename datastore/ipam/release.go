package ipam

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tabby-net/tabby/datastore"
)

// IPsByHandle returns the addresses handle holds, ascending. An unknown handle holds none.
func (a *Allocator) IPsByHandle(ctx context.Context, handle string) ([]netip.Addr, error) {
	if err := validName("handle", handle); err != nil {
		return nil, fmt.Errorf("addresses by handle: %w", err)
	}
	sh, err := a.getHandle(ctx, handle)
	if err != nil {
		return nil, err
	}
	var ips []netip.Addr
	for _, cidr := range handleBlocks(sh, a) {
		sb, err := a.getBlock(ctx, cidr)
		if errors.Is(err, datastore.ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("addresses of handle %s: %w", handle, err)
		}
		for _, o := range ordinalsOfHandle(sb.b, handle) {
			ips = append(ips, ordinalAddr(cidr, o))
		}
	}
	slices.SortFunc(ips, netip.Addr.Compare)
	return ips, nil
}

// handleBlocks lists the block CIDRs a handle counts, sorted; unparsable entries are logged
// and skipped.
func handleBlocks(sh storedHandle, a *Allocator) []netip.Prefix {
	var out []netip.Prefix
	for s := range sh.h.Block {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			a.log.Warn("handle counts a block with an unreadable CIDR", "handle", sh.id, "block", s)
			continue
		}
		out = append(out, p)
	}
	slices.SortFunc(out, func(x, y netip.Prefix) int { return x.Addr().Compare(y.Addr()) })
	return out
}

// ReleaseByHandle releases every address handle holds. An unknown handle is not an error
// (releasing twice is fine). It must not run concurrently with an AssignOne for the same
// handle (tabby-cni serializes a container's ADD and DEL).
func (a *Allocator) ReleaseByHandle(ctx context.Context, handle string) error {
	if err := validName("handle", handle); err != nil {
		return fmt.Errorf("release by handle: %w", err)
	}
	sh, err := a.getHandle(ctx, handle)
	if err != nil {
		return err
	}
	var errs []error
	for _, cidr := range handleBlocks(sh, a) {
		if err := a.releaseHandleInBlock(ctx, handle, cidr, sh.h.Block[cidr.String()]); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("release handle %s: %w", handle, err)
	}
	return nil
}

// releaseHandleInBlock frees the addresses of handle in one block: the block is written
// first, the handle second (so a crash between leaves a handle that overcounts, which a
// later release repairs, never an allocation nobody can release by handle). When the block
// holds none of the handle's addresses, the handle's count for it is dropped, on condition
// that neither the block nor the handle changed since they were read. counted is what the
// handle said; when it counted more than the block holds, the excess is dropped too.
func (a *Allocator) releaseHandleInBlock(ctx context.Context, handle string, cidr netip.Prefix, counted int) error {
	return casRetry().Do(ctx, "block "+cidr.String(), func(ctx context.Context) error {
		for {
			sb, err := a.getBlock(ctx, cidr)
			missing := errors.Is(err, datastore.ErrNotFound)
			if err != nil && !missing {
				return err
			}
			var ords []int
			if !missing {
				ords = ordinalsOfHandle(sb.b, handle)
			}
			if len(ords) == 0 {
				return a.dropStaleHandleCount(ctx, handle, cidr, sb, missing)
			}
			err = a.freeOrdinals(ctx, sb, ords)
			if err != nil || counted <= len(ords) {
				return err
			}
			counted = 0 // look again: the excess count is dropped on the next pass
		}
	})
}

// dropStaleHandleCount removes handle's count for a block that holds none of its addresses
// (left by a crash between the two writes of an assignment or a release).
func (a *Allocator) dropStaleHandleCount(ctx context.Context, handle string, cidr netip.Prefix, sb storedBlock, blockMissing bool) error {
	sh, err := a.getHandle(ctx, handle)
	if err != nil {
		return err
	}
	if sh.rev == 0 || sh.h.Block[cidr.String()] == 0 {
		return nil
	}
	h := withCount(sh.h, cidr, -sh.h.Block[cidr.String()])
	bkey, hkey := a.c.Keys.Block(cidr), a.c.Keys.Handle(handle)
	blockCond := clientv3.Compare(clientv3.ModRevision(bkey), "=", sb.rev)
	if blockMissing {
		blockCond = clientv3.Compare(clientv3.Version(bkey), "=", 0)
	}
	var op clientv3.Op
	if len(h.Block) == 0 {
		op = clientv3.OpDelete(hkey)
	} else {
		v, err := encodeHandle(sh, h)
		if err != nil {
			return err
		}
		op = clientv3.OpPut(hkey, string(v))
	}
	resp, err := a.c.Etcd().Txn(ctx).
		If(blockCond, clientv3.Compare(clientv3.ModRevision(hkey), "=", sh.rev)).
		Then(op).Commit()
	if err != nil {
		return fmt.Errorf("drop stale count of handle %s for block %s: %w", handle, cidr, datastore.Denied(err, bkey, hkey))
	}
	if !resp.Succeeded {
		return &datastore.KeyError{Key: hkey, Err: datastore.ErrConflict}
	}
	a.log.Info("dropped a handle count that matched no allocation", "handle", handle, "block", cidr)
	return nil
}

// freeOrdinals releases allocated ordinals of a block: the block is written (or deleted,
// when it ends up empty and affine to no host), then each handle that lost addresses is
// decremented, then an emptied block may give up its affinity.
func (a *Allocator) freeOrdinals(ctx context.Context, sb storedBlock, ords []int) error {
	nb := cloneBlock(sb.b)
	lost := releaseOrdinals(nb, ords)
	var err error
	var written storedBlock
	if isEmpty(nb) && nb.Affinity == nil {
		err = a.deleteBlock(ctx, sb)
	} else {
		written, err = a.updateBlock(ctx, sb, nb)
	}
	a.step(ctx, "block-released")
	if err != nil {
		return err
	}
	// The addresses are free now; the bookkeeping that follows must happen even if the
	// caller gives up waiting.
	cctx, cancel := cleanupContext(ctx)
	defer cancel()
	for h, n := range lost {
		if h == "" {
			continue
		}
		if _, err := a.addToHandle(cctx, h, sb.cidr, -n, nil); err != nil {
			a.log.Error("released addresses but could not decrement their handle; ipam check will report it",
				"handle", h, "block", sb.cidr, "error", err)
		}
	}
	if written.b != nil && isEmpty(written.b) {
		a.maybeReleaseEmptyBlock(cctx, written)
	}
	return nil
}

// ReleaseIP releases one address whoever holds it. An address that is not allocated is
// ErrNotAssigned.
func (a *Allocator) ReleaseIP(ctx context.Context, ip netip.Addr) error {
	if !ip.IsValid() || !ip.Is4() {
		return fmt.Errorf("release address: %v is not an IPv4 address", ip)
	}
	if err := a.releaseAddr(ctx, ip, ""); err != nil {
		return fmt.Errorf("release %s: %w", ip, err)
	}
	return nil
}

// releaseAddr releases ip; with wantHandle set, only if that handle holds it (otherwise
// ErrNotAssigned), so that a stale view never frees someone else's address.
func (a *Allocator) releaseAddr(ctx context.Context, ip netip.Addr, wantHandle string) error {
	cidr, err := a.blockOf(ctx, ip)
	if err != nil {
		return err
	}
	ord, err := addrOrdinal(cidr, ip)
	if err != nil {
		return err
	}
	return casRetry().Do(ctx, "block "+cidr.String(), func(ctx context.Context) error {
		sb, err := a.getBlock(ctx, cidr)
		if errors.Is(err, datastore.ErrNotFound) {
			return fmt.Errorf("block %s does not exist: %w", cidr, ErrNotAssigned)
		}
		if err != nil {
			return err
		}
		p := sb.b.Allocations[ord]
		if p == nil {
			return ErrNotAssigned
		}
		if h := handleOf(sb.b.Attributes[*p]); wantHandle != "" && h != wantHandle {
			return fmt.Errorf("held by handle %q, not %q: %w", h, wantHandle, ErrNotAssigned)
		}
		return a.freeOrdinals(ctx, sb, []int{ord})
	})
}

// blockOf finds the block CIDR that holds ip: from the pool containing it, or, for an
// address outside every pool (its pool was deleted), by looking at the existing blocks.
func (a *Allocator) blockOf(ctx context.Context, ip netip.Addr) (netip.Prefix, error) {
	kvs, _, err := a.c.List(ctx, a.c.Keys.ResourcePrefix(datastore.KindIPPool))
	if err != nil {
		return netip.Prefix{}, err
	}
	if p, ok := a.decodePools(kvs).containing(ip); ok {
		return blockFor(ip, p.blockSize), nil
	}
	existing, err := a.listBlockCIDRs(ctx)
	if err != nil {
		return netip.Prefix{}, err
	}
	for cidr := range existing {
		if cidr.Contains(ip) {
			return cidr, nil
		}
	}
	return netip.Prefix{}, fmt.Errorf("no pool and no block contains it: %w", ErrNotAssigned)
}

// maybeReleaseEmptyBlock decides whether a block that a release just emptied should go
// back to the pool. Calico's rule (ensureConsistentAffinity): when its pool is gone or no
// longer selects the block's host. Plus one of tabby's: when the host has another block of
// the same pool that is in use and has free addresses, this one is surplus. A host's last
// block with room is kept, so that a node whose workloads come and go does not claim and
// release a block each time. The release is conditional on the block's sequence number,
// so an assignment that slipped in since wins.
func (a *Allocator) maybeReleaseEmptyBlock(ctx context.Context, sb storedBlock) {
	host := sb.b.AffinityHost()
	if host == "" {
		return
	}
	e, err := a.readEnv(ctx, host, "")
	if err != nil {
		a.log.Warn("could not decide whether to release an empty block", "block", sb.cidr, "error", err)
		return
	}
	reason := ""
	p, ok := e.pools.containing(sb.cidr.Addr())
	switch {
	case !ok:
		reason = "its pool is gone"
	case !p.selector.Matches(e.nodeLabels):
		reason = "its pool no longer selects the node"
	default:
		var others []storedAffinity
		for _, sa := range e.affinities {
			if sa.cidr != sb.cidr && sa.state() == datastore.AffinityConfirmed && p.cidr.Contains(sa.cidr.Addr()) {
				others = append(others, sa)
			}
		}
		raw, err := a.getBlockKVs(ctx, others)
		if err != nil {
			a.log.Warn("could not decide whether to release an empty block", "block", sb.cidr, "error", err)
			return
		}
		for cidr, kv := range raw {
			// The other block must be in use too: two blocks emptied at the same moment
			// must not each give up on account of the other.
			p, err := probeBlock(cidr, kv.Value)
			if err == nil && p.host() == host && len(p.Unallocated) > 0 && len(p.Unallocated) < blockSizeOf(cidr) {
				reason = fmt.Sprintf("the node has room in block %s, which is in use", cidr)
				break
			}
		}
	}
	if reason == "" {
		return
	}
	seq := sb.b.SequenceNumber
	err = a.releaseBlockAffinity(ctx, host, sb.cidr, true, &seq)
	switch {
	case err == nil:
		a.log.Info("released empty block", "host", host, "block", sb.cidr, "reason", reason)
	case errors.Is(err, errBlockChanged), errors.Is(err, errBlockNotEmpty), errors.Is(err, errBlockTaken),
		errors.Is(err, datastore.ErrNotFound), casRefused(err):
		a.log.Debug("empty block not released: it changed meanwhile", "block", sb.cidr, "error", err)
	default:
		a.log.Warn("could not release empty block", "host", host, "block", sb.cidr, "error", err)
	}
}
