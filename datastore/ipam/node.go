package ipam

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tabby-net/tabby/datastore"
)

// Releasing everything a node holds, for a node leaving the fleet: what libcalico-go does
// when calicoctl deletes a Node (release the node's addresses, then RemoveIPAMHost), so
// that a decommissioned node's addresses do not leak and its blocks do not stay affine to
// a node that no longer exists.

// maxHandlesPerTxn bounds the handles one release transaction rewrites, so that its
// compares and writes (one each for the block and for every handle) stay under etcd's
// default --max-txn-ops of 128.
const maxHandlesPerTxn = 100

// NodeRelease counts what ReleaseNode released.
type NodeRelease struct {
	// Addresses is how many addresses of the node were released: in its own blocks and
	// borrowed from other nodes' blocks.
	Addresses int
	// BlocksDeleted is how many of the node's blocks were empty and were deleted.
	BlocksDeleted int
	// BlocksKept is how many of the node's blocks still hold addresses other nodes borrowed
	// from them: they stay, affine to no node, until those addresses are released.
	BlocksKept int
}

// Blocks is how many blocks the node gave up, deleted or kept without affinity.
func (r NodeRelease) Blocks() int { return r.BlocksDeleted + r.BlocksKept }

// ReleaseNode releases the IPAM data of a node that is leaving: every address whose "node"
// attribute names it, in whatever block (those it borrowed too), and then every block
// affinity it has; an emptied block is deleted, one still holding other nodes' borrowed
// addresses keeps them and loses its host. Addresses other nodes borrowed from its blocks
// are left alone: they are in use elsewhere.
//
// The node's tabbyd and CNI plugin must be stopped first, or they may assign the node new
// addresses meanwhile. Every write is a compare-and-swap on what was just read, so
// ReleaseNode can run beside other nodes' assignments, and a release is never applied to an
// address that changed hands since it was read. A node with nothing left is not an error:
// after a partial failure (the error names the block or affinity), running it again
// finishes the job.
func (a *Allocator) ReleaseNode(ctx context.Context, node string) (NodeRelease, error) {
	if err := validName("node name", node); err != nil {
		return NodeRelease{}, fmt.Errorf("release node: %w", err)
	}
	unlock, err := a.lockHost(ctx, node)
	if err != nil {
		return NodeRelease{}, fmt.Errorf("release node %s: %w", node, err)
	}
	defer unlock()

	var r NodeRelease
	affine, err := a.releaseNodeAddrs(ctx, node, &r)
	if err != nil {
		// The affinities stay until every address is released: the rerun looks for the
		// addresses in every block anyway, and the node's blocks are best kept whole
		// meanwhile.
		return r, fmt.Errorf("release node %s: %w", node, err)
	}
	if err := a.releaseNodeBlocks(ctx, node, affine, &r); err != nil {
		return r, fmt.Errorf("release node %s: %w", node, err)
	}
	a.log.Info("released the IPAM data of a node", "node", node, "addresses", r.Addresses,
		"blocksDeleted", r.BlocksDeleted, "blocksKept", r.BlocksKept)
	return r, nil
}

// releaseNodeAddrs releases the node's addresses block by block, counting them in r. It
// also returns the blocks that name the node as their host, so that releaseNodeBlocks
// finds those without an affinity key too.
func (a *Allocator) releaseNodeAddrs(ctx context.Context, node string, r *NodeRelease) ([]netip.Prefix, error) {
	kvs, _, err := a.c.List(ctx, a.c.Keys.BlockPrefix())
	if err != nil {
		return nil, fmt.Errorf("list blocks: %w", err)
	}
	var affine []netip.Prefix
	var errs []error
	for _, kv := range kvs {
		info, err := a.c.Keys.Parse(kv.Key)
		if err != nil || info.Type != datastore.KeyBlock {
			errs = append(errs, fmt.Errorf("%s is not a block key", kv.Key))
			continue
		}
		sb, err := decodeBlock(info.CIDR, kv)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if sb.b.AffinityHost() == node {
			affine = append(affine, sb.cidr)
		}
		n, err := a.releaseNodeAddrsInBlock(ctx, node, sb)
		r.Addresses += n
		if err != nil {
			errs = append(errs, fmt.Errorf("release its addresses in block %s: %w", sb.cidr, err))
		}
	}
	return affine, errors.Join(errs...)
}

// releaseNodeAddrsInBlock releases the node's addresses in one block, starting from sb as
// listed and reading the block again whenever a write is refused (only those count as
// attempts: a block with more handles than one transaction takes is released in several).
// It returns how many it released.
func (a *Allocator) releaseNodeAddrsInBlock(ctx context.Context, node string, sb storedBlock) (int, error) {
	released := 0
	reread := false
	err := casRetry().Do(ctx, "block "+sb.cidr.String(), func(ctx context.Context) error {
		if reread {
			var err error
			sb, err = a.getBlock(ctx, sb.cidr)
			if errors.Is(err, datastore.ErrNotFound) {
				return nil
			}
			if err != nil {
				return err
			}
		}
		reread = true
		for {
			ords := ordinalsOfNode(sb.b, node)
			if len(ords) == 0 {
				return nil
			}
			ords = limitHandles(sb.b, ords, maxHandlesPerTxn)
			next, err := a.freeNodeOrdinals(ctx, node, sb, ords)
			a.step(ctx, "node-addresses-released")
			if err != nil {
				return err
			}
			released += len(ords)
			if next.b == nil {
				return nil // the block was deleted
			}
			sb = next
		}
	})
	return released, err
}

// ordinalsOfNode lists the allocated ordinals whose "node" attribute names node, ascending.
func ordinalsOfNode(b *datastore.AllocationBlock, node string) []int {
	var ords []int
	for o, p := range b.Allocations {
		if p != nil && b.Attributes[*p].Secondary[AttrNode] == node {
			ords = append(ords, o)
		}
	}
	return ords
}

// limitHandles keeps the ordinals held by the first limit distinct handles (in ordinal
// order), so that one transaction does not rewrite more handles than etcd accepts; the
// rest go in the next one.
func limitHandles(b *datastore.AllocationBlock, ords []int, limit int) []int {
	seen := map[string]bool{}
	var out []int
	for _, o := range ords {
		h := handleOf(b.Attributes[*b.Allocations[o]])
		if !seen[h] && len(seen) == limit {
			continue
		}
		seen[h] = true
		out = append(out, o)
	}
	return out
}

// freeNodeOrdinals frees ords of the block and takes them off their handles' counts in
// one transaction, conditional on the block and every handle being as read. Unlike
// freeOrdinals, which writes the block first and the handles after (a crash between leaves
// a handle that overcounts, repaired by the next release of that handle), this leaves
// nothing half done: after a crash a rerun finds the node's addresses where they were, and
// there is no later release by handle that would repair a departed node's handles. It
// returns the block as written (b nil when it was deleted, being empty and affine to no
// host).
func (a *Allocator) freeNodeOrdinals(ctx context.Context, node string, sb storedBlock, ords []int) (storedBlock, error) {
	nb := cloneBlock(sb.b)
	lost := releaseOrdinals(nb, ords)
	bkey := a.c.Keys.Block(sb.cidr)
	conds := []clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(bkey), "=", sb.rev)}
	var ops []clientv3.Op
	var raw []byte
	deleted := isEmpty(nb) && nb.Affinity == nil
	if deleted {
		ops = append(ops, clientv3.OpDelete(bkey))
	} else {
		nb.SequenceNumber++
		var err error
		if raw, err = encodeBlock(sb, nb); err != nil {
			return storedBlock{}, err
		}
		ops = append(ops, clientv3.OpPut(bkey, string(raw)))
	}
	for _, h := range slices.Sorted(maps.Keys(lost)) {
		if h == "" {
			continue
		}
		cmp, op, err := a.handleDecrement(ctx, h, sb.cidr, lost[h])
		if err != nil {
			return storedBlock{}, err
		}
		conds = append(conds, cmp)
		if op != nil {
			ops = append(ops, *op)
		}
	}
	resp, err := a.c.Etcd().Txn(ctx).If(conds...).Then(ops...).Commit()
	if err != nil {
		return storedBlock{}, fmt.Errorf("release addresses of block %s: %w", sb.cidr, datastore.Denied(err, opKeys(ops)...))
	}
	if !resp.Succeeded {
		return storedBlock{}, &datastore.KeyError{Key: bkey, Err: datastore.ErrConflict}
	}
	if deleted {
		a.log.Info("deleted an emptied block that has no host", "block", sb.cidr)
		return storedBlock{cidr: sb.cidr}, nil
	}
	written := storedBlock{cidr: sb.cidr, b: nb, rev: resp.Header.Revision, raw: raw}
	if host := nb.AffinityHost(); host != "" && host != node && isEmpty(nb) {
		// Another node's block that only the departed node used: that node's own rules
		// decide whether it keeps it, as after any release. (The departed node's own
		// blocks go in the next step.)
		cctx, cancel := cleanupContext(ctx)
		defer cancel()
		a.maybeReleaseEmptyBlock(cctx, written)
	}
	return written, nil
}

// handleDecrement reads handle h and returns the condition that it is still as read and
// the write that takes n addresses of block off its count (nil when the handle does not
// exist: the allocations were leaked, and there is nothing to decrement).
func (a *Allocator) handleDecrement(ctx context.Context, h string, block netip.Prefix, n int) (clientv3.Cmp, *clientv3.Op, error) {
	sh, err := a.getHandle(ctx, h)
	if err != nil {
		return clientv3.Cmp{}, nil, err
	}
	hkey := a.c.Keys.Handle(h)
	cmp := clientv3.Compare(clientv3.ModRevision(hkey), "=", sh.rev) // 0 for a missing key
	if sh.rev == 0 {
		return cmp, nil, nil
	}
	nh := withCount(sh.h, block, -n)
	if len(nh.Block) == 0 {
		op := clientv3.OpDelete(hkey)
		return cmp, &op, nil
	}
	v, err := encodeHandle(sh, nh)
	if err != nil {
		return clientv3.Cmp{}, nil, err
	}
	op := clientv3.OpPut(hkey, string(v))
	return cmp, &op, nil
}

// releaseNodeBlocks releases every block affinity of the node with the blocks, counting
// them in r, then those of the affine blocks that name the node as their host without an
// affinity key (written by hand, or by a broken writer): nothing else would ever release
// them.
func (a *Allocator) releaseNodeBlocks(ctx context.Context, node string, affine []netip.Prefix, r *NodeRelease) error {
	kvs, _, err := a.c.List(ctx, a.c.Keys.AffinityPrefix(node))
	if err != nil {
		return fmt.Errorf("list block affinities: %w", err)
	}
	var errs []error
	keyed := map[netip.Prefix]bool{}
	for _, kv := range kvs {
		sa, err := a.decodeAffinity(kv)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		keyed[sa.cidr] = true
		fate, err := a.releaseAffinity(ctx, node, sa.cidr, false)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		r.count(fate)
	}
	for _, cidr := range affine {
		if keyed[cidr] {
			continue
		}
		fate, err := a.releaseUnkeyedBlock(ctx, node, cidr)
		if err != nil {
			errs = append(errs, fmt.Errorf("release block %s: %w", cidr, err))
			continue
		}
		r.count(fate)
	}
	return errors.Join(errs...)
}

// count adds a released block to the totals.
func (r *NodeRelease) count(f blockFate) {
	switch f {
	case blockDeleted:
		r.BlocksDeleted++
	case blockKept:
		r.BlocksKept++
	}
}

// releaseUnkeyedBlock takes node off a block that names it as its host but has no
// affinity key (so releaseBlock, which starts from the key, cannot): deleted when empty,
// else its affinity is cleared.
func (a *Allocator) releaseUnkeyedBlock(ctx context.Context, node string, cidr netip.Prefix) (blockFate, error) {
	fate := blockAbsent
	err := casRetry().Do(ctx, "block "+cidr.String(), func(ctx context.Context) error {
		fate = blockAbsent
		sb, err := a.getBlock(ctx, cidr)
		if errors.Is(err, datastore.ErrNotFound) {
			return nil
		}
		if err != nil {
			return err
		}
		if sb.b.AffinityHost() != node {
			return nil
		}
		if isEmpty(sb.b) {
			fate, err = blockDeleted, a.deleteBlock(ctx, sb)
		} else {
			nb := cloneBlock(sb.b)
			nb.Affinity = nil
			fate = blockKept
			_, err = a.updateBlock(ctx, sb, nb)
		}
		return err
	})
	if err != nil {
		return blockAbsent, err
	}
	if fate != blockAbsent {
		a.log.Warn("released a block that named the node as its host without an affinity key",
			"host", node, "block", cidr, "blockDeleted", fate == blockDeleted)
	}
	return fate, nil
}
