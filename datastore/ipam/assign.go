package ipam

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tabby-net/tabby/datastore"
)

// AssignArgs says what address to assign to whom.
type AssignArgs struct {
	// Handle names the holder, e.g. "tabby.<containerID>", "ipip-tunnel-addr-<node>";
	// ReleaseByHandle releases everything it holds.
	Handle string
	// Node is the node asking: its blocks are used first, new blocks are claimed for it.
	Node string
	// Attrs are secondary attributes stored with the allocation ("node" is always set to
	// Node, which tells a borrowed address's real user).
	Attrs map[string]string
	// Use is datastore.UseWorkload or datastore.UseTunnel; pools whose allowedUses lack it
	// are skipped.
	Use string
	// Pools optionally restricts the assignment to these pools (which must exist and be
	// enabled; their nodeSelector and assignmentMode are then not consulted, as in Calico).
	Pools []netip.Prefix
	// PoolNames restricts the assignment to the pools of these names, like Pools (Calico's
	// CNI takes a pool by name or by CIDR); the two lists add up.
	PoolNames []string

	// reserved are the addresses of the IPReservations, read with the pools.
	reserved reservations
}

func (args AssignArgs) validate() error {
	if err := validName("handle", args.Handle); err != nil {
		return err
	}
	if err := validName("node name", args.Node); err != nil {
		return err
	}
	if err := validUse(args.Use); err != nil {
		return err
	}
	return validPools(args.Pools)
}

// AssignOne assigns one address to args.Handle, following Calico's autoAssign:
//
//  1. from a block affine to the node that has a free address (the node's pending or
//     half-released affinities are completed on the way);
//  2. else from a block newly claimed for the node, unless the node has maxBlocksPerHost
//     blocks already (ErrBlockLimit);
//  3. else, when strict_affinity is false, borrowed from another node's block; the
//     allocation's "node" attribute names the borrower.
//
// Within a block the address is the front of the block's FIFO of free ordinals. The handle
// is written first and the block second; see doc.go for what a crash between them leaves.
func (a *Allocator) AssignOne(ctx context.Context, args AssignArgs) (netip.Addr, error) {
	if err := args.validate(); err != nil {
		return netip.Addr{}, fmt.Errorf("assign address: %w", err)
	}
	unlock, err := a.lockHost(ctx, args.Node)
	if err != nil {
		return netip.Addr{}, err
	}
	defer unlock()
	ip, err := a.assign(ctx, args)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("assign address to %s on node %s: %w", args.Handle, args.Node, err)
	}
	return ip, nil
}

// assign is AssignOne with the host lock held.
func (a *Allocator) assign(ctx context.Context, args AssignArgs) (netip.Addr, error) {
	secondary := maps.Clone(args.Attrs)
	if secondary == nil {
		secondary = map[string]string{}
	}
	secondary[AttrNode] = args.Node

	var ip netip.Addr
	err := casRetry().Do(ctx, "assign", func(ctx context.Context) error {
		var err error
		ip, err = a.assignPass(ctx, args, secondary)
		if casRefused(err) {
			a.log.Debug("assignment lost a race, trying again", "handle", args.Handle, "node", args.Node, "error", err)
		}
		return err
	})
	return ip, err
}

// assignPass is one attempt on fresh data. A refused compare-and-swap error means "read
// again and retry".
func (a *Allocator) assignPass(ctx context.Context, args AssignArgs, secondary map[string]string) (netip.Addr, error) {
	e, err := a.readEnv(ctx, args.Node, args.Handle)
	if err != nil {
		return netip.Addr{}, err
	}
	requested, err := e.pools.byName(args.Pools, args.PoolNames)
	if err != nil {
		return netip.Addr{}, err
	}
	pools, err := usablePools(e.pools, requested, e.nodeLabels, args.Use)
	if err != nil {
		return netip.Addr{}, err
	}
	args.reserved = e.reserved
	if len(pools) == 0 {
		return netip.Addr{}, fmt.Errorf("%w for node %s and use %s (pools: %s)", ErrNoUsablePool, args.Node, args.Use, describePools(e.pools))
	}
	a.releaseDeselectedBlocks(ctx, args.Node, e)

	// 1. The node's own blocks.
	var affine []storedAffinity
	for _, sa := range e.affinities {
		if p, ok := pools.containing(sa.cidr.Addr()); ok && p.cidr.Bits() <= sa.cidr.Bits() {
			affine = append(affine, sa)
		}
	}
	owned := len(affine)
	knownHandle := e.handle
	ordered, hinted := a.hintFirst(args.Node, affine)
	raw := map[netip.Prefix]datastore.KV{}
	for i, sa := range ordered {
		// Read the hinted block alone first: usually it has room and the node's other,
		// full blocks need not be read at all.
		if i == 0 || (i == 1 && hinted) {
			end := len(ordered)
			if i == 0 && hinted {
				end = 1
			}
			if raw, err = a.getBlockKVs(ctx, ordered[i:end]); err != nil {
				return netip.Addr{}, err
			}
		}
		kv, ok := raw[sa.cidr]
		var sb storedBlock
		if ok && sa.state() == datastore.AffinityConfirmed {
			probe, err := probeBlock(sa.cidr, kv.Value)
			if err != nil {
				return netip.Addr{}, err
			}
			if probe.host() == sa.host && len(probe.Unallocated) == 0 {
				continue // full: not worth decoding
			}
			if sb, err = decodeBlock(sa.cidr, kv); err != nil {
				return netip.Addr{}, err
			}
		}
		if !ok || sa.state() != datastore.AffinityConfirmed || sb.b.AffinityHost() != sa.host {
			sb, err = a.blockFromAffinity(ctx, sa)
			if errors.Is(err, errStaleAffinity) || errors.Is(err, errBlockTaken) {
				owned--
				continue
			}
			if err != nil {
				return netip.Addr{}, err
			}
		}
		if freeCount(sb.b) == 0 {
			continue
		}
		ip, err := a.assignFromBlock(ctx, sb, args, secondary, knownHandle, true)
		knownHandle = nil // from here on it may be stale
		if err == nil {
			a.setHint(args.Node, sb.cidr)
			return ip, nil
		}
		if !errors.Is(err, errBlockFull) {
			return netip.Addr{}, err
		}
	}

	// 2. A new block.
	var noFree error
	switch {
	case e.config.BlockLimitReached(owned):
		return netip.Addr{}, fmt.Errorf("node %s has %d blocks (maxBlocksPerHost %d) and they are full: %w",
			args.Node, owned, e.config.MaxBlocksPerHost, ErrBlockLimit)
	case !e.config.AutoAllocateBlocks:
		noFree = errors.New("auto_allocate_blocks is false")
	default:
		sb, err := a.claimNewBlock(ctx, args.Node, pools)
		if err == nil {
			ip, err := a.assignFromBlock(ctx, sb, args, secondary, nil, true)
			if err == nil {
				a.setHint(args.Node, sb.cidr)
			}
			if errors.Is(err, errBlockFull) {
				// Someone of this host filled it between claim and assignment: read again.
				return netip.Addr{}, &datastore.KeyError{Key: a.c.Keys.Block(sb.cidr), Err: datastore.ErrConflict}
			}
			return ip, err
		}
		if !errors.Is(err, ErrNoFreeBlock) {
			return netip.Addr{}, err
		}
		noFree = err
	}

	// 3. Borrow.
	if e.config.StrictAffinity {
		return netip.Addr{}, fmt.Errorf("no free address in the blocks of node %s, no block left to claim (%w), and strict_affinity forbids borrowing: %w",
			args.Node, noFree, ErrPoolExhausted)
	}
	ip, err := a.borrow(ctx, args, secondary, pools)
	if err != nil {
		return netip.Addr{}, err
	}
	return ip, nil
}

// getBlockKVs reads the blocks of some affinities in one transaction, undecoded; missing
// ones are absent from the result.
func (a *Allocator) getBlockKVs(ctx context.Context, affs []storedAffinity) (map[netip.Prefix]datastore.KV, error) {
	out := make(map[netip.Prefix]datastore.KV, len(affs))
	if len(affs) == 0 {
		return out, nil
	}
	ops := make([]clientv3.Op, len(affs))
	for i, sa := range affs {
		ops[i] = clientv3.OpGet(a.c.Keys.Block(sa.cidr))
	}
	resp, err := a.c.Etcd().Txn(ctx).Then(ops...).Commit()
	if err != nil {
		return nil, fmt.Errorf("read %d blocks: %w", len(affs), datastore.Denied(err, opKeys(ops)...))
	}
	for i, sa := range affs {
		if kvs := rangeKVs(resp, i); len(kvs) == 1 {
			out[sa.cidr] = kvs[0]
		}
	}
	return out, nil
}

// blockProbe is the part of a block needed to tell whether it has room: decoding only
// this skips building the allocation and attribute arrays, which is most of the cost of
// reading a node's full blocks on every assignment.
type blockProbe struct {
	Affinity    *string `json:"affinity"`
	Unallocated []int   `json:"unallocated"`
}

func (p blockProbe) host() string {
	return (&datastore.AllocationBlock{Affinity: p.Affinity}).AffinityHost()
}

func probeBlock(cidr netip.Prefix, value []byte) (blockProbe, error) {
	var p blockProbe
	if err := json.Unmarshal(value, &p); err != nil {
		return blockProbe{}, fmt.Errorf("block %s: %w", cidr, err)
	}
	return p, nil
}

// hintFirst orders a node's affinities with the block it last assigned from first, and says
// whether there was such a block: it most likely still has room. The hint only orders; it
// is never trusted.
func (a *Allocator) hintFirst(node string, affs []storedAffinity) ([]storedAffinity, bool) {
	a.mu.Lock()
	hint, ok := a.hints[node]
	a.mu.Unlock()
	if !ok {
		return affs, false
	}
	i := slices.IndexFunc(affs, func(sa storedAffinity) bool { return sa.cidr == hint })
	if i < 0 {
		return affs, false
	}
	out := make([]storedAffinity, 0, len(affs))
	out = append(out, affs[i])
	out = append(out, affs[:i]...)
	return append(out, affs[i+1:]...), true
}

// setHint remembers the block a node last assigned from.
func (a *Allocator) setHint(node string, cidr netip.Prefix) {
	a.mu.Lock()
	a.hints[node] = cidr
	a.mu.Unlock()
}

// errBlockFull: the block has no free address (any more).
var errBlockFull = errors.New("block is full")

// assignFromBlock assigns the front free ordinal of sb, re-reading the block and trying
// again when another writer changed it. With affine it insists that the block stays affine
// to args.Node (a block whose affinity was released meanwhile is not borrowed by accident).
// knownHandle, when not nil, is the handle as read before (saves one read).
func (a *Allocator) assignFromBlock(ctx context.Context, sb storedBlock, args AssignArgs, secondary map[string]string, knownHandle *storedHandle, affine bool) (netip.Addr, error) {
	var ip netip.Addr
	retry := casRetry()
	retry.Refused = func(err error) bool { return errors.Is(err, datastore.ErrConflict) }
	reread := false
	err := retry.Do(ctx, "block "+sb.cidr.String(), func(ctx context.Context) error {
		if reread {
			var err error
			if sb, err = a.getBlock(ctx, sb.cidr); err != nil {
				return err
			}
		}
		reread = true
		if affine && sb.b.AffinityHost() != args.Node {
			return errBlockFull
		}
		var err error
		ip, err = a.assignOnce(ctx, sb, args.Handle, secondary, knownHandle, args.reserved)
		knownHandle = nil
		return err
	})
	if errors.Is(err, datastore.ErrNotFound) {
		return netip.Addr{}, errBlockFull // the block was released meanwhile
	}
	return ip, err
}

// assignOnce is one compare-and-swap attempt on one block: count the address in the handle,
// then write the block, on condition that neither the block nor the handle changed since.
// If the block write is refused, the handle count is taken back. If its outcome is unknown
// (the context ended, the connection dropped), the block is read again to find out.
func (a *Allocator) assignOnce(ctx context.Context, sb storedBlock, handle string, secondary map[string]string, knownHandle *storedHandle, reserved reservations) (netip.Addr, error) {
	nb := cloneBlock(sb.b)
	ord, ok := takeFirstUnreserved(nb, handle, secondary, func(ord int) bool { return reserved.contains(ordinalAddr(sb.cidr, ord)) })
	if !ok {
		return netip.Addr{}, errBlockFull
	}
	ip := ordinalAddr(sb.cidr, ord)

	sh, err := a.addToHandle(ctx, handle, sb.cidr, 1, knownHandle)
	if err != nil {
		return netip.Addr{}, err
	}
	a.step(ctx, "handle-incremented")

	nb.SequenceNumber++
	err = a.writeBlockGuarded(ctx, sb, nb, sh)
	a.step(ctx, "block-written")
	if err == nil {
		return ip, nil
	}

	cctx, cancel := cleanupContext(ctx)
	defer cancel()
	if !casRefused(err) {
		if cur, gerr := a.getBlock(cctx, sb.cidr); gerr == nil && cur.b.SequenceNumber == nb.SequenceNumber &&
			cur.b.Allocations[ord] != nil && handleOf(cur.b.Attributes[*cur.b.Allocations[ord]]) == handle {
			return ip, nil // the write landed after all
		}
	}
	if _, uerr := a.addToHandle(cctx, handle, sb.cidr, -1, nil); uerr != nil {
		a.log.Error("could not take back a handle count after a failed block write; ipam check will report it",
			"handle", handle, "block", sb.cidr, "error", uerr)
	}
	return netip.Addr{}, err
}

// addToHandle changes the handle's count for block by delta with compare-and-swap,
// creating the handle on first use and deleting it when it counts nothing. It returns the
// handle as stored.
func (a *Allocator) addToHandle(ctx context.Context, id string, block netip.Prefix, delta int, known *storedHandle) (storedHandle, error) {
	var out storedHandle
	err := casRetry().Do(ctx, "handle "+id, func(ctx context.Context) error {
		var sh storedHandle
		if known != nil {
			sh, known = *known, nil
		} else {
			var err error
			if sh, err = a.getHandle(ctx, id); err != nil {
				return err
			}
		}
		if delta < 0 && sh.h.Block[block.String()] == 0 {
			out = sh
			return nil
		}
		var err error
		out, err = a.writeHandle(ctx, sh, withCount(sh.h, block, delta))
		return err
	})
	if err != nil {
		return storedHandle{}, err
	}
	return out, nil
}

// writeBlockGuarded writes nb over sb on condition that the block is still at sb's revision
// and the handle still at sh's: a release or repair of the handle that slipped in between
// makes the write fail rather than leave an allocation its handle does not count.
func (a *Allocator) writeBlockGuarded(ctx context.Context, sb storedBlock, nb *datastore.AllocationBlock, sh storedHandle) error {
	v, err := encodeBlock(sb, nb)
	if err != nil {
		return err
	}
	bkey, hkey := a.c.Keys.Block(sb.cidr), a.c.Keys.Handle(sh.id)
	resp, err := a.c.Etcd().Txn(ctx).
		If(clientv3.Compare(clientv3.ModRevision(bkey), "=", sb.rev),
			clientv3.Compare(clientv3.ModRevision(hkey), "=", sh.rev)).
		Then(clientv3.OpPut(bkey, string(v))).
		Else(clientv3.OpGet(bkey, clientv3.WithCountOnly())).
		Commit()
	if err != nil {
		return fmt.Errorf("update block %s: %w", sb.cidr, datastore.Denied(err, bkey, hkey))
	}
	if !resp.Succeeded {
		kerr := datastore.ErrConflict
		if r := resp.Responses[0].GetResponseRange(); r != nil && r.Count == 0 {
			kerr = datastore.ErrNotFound
		}
		return fmt.Errorf("update block %s: %w", sb.cidr, &datastore.KeyError{Key: bkey, Err: kerr})
	}
	return nil
}

// borrow assigns an address from any block of the usable pools that has one free,
// whoever it is affine to (strict_affinity false only).
func (a *Allocator) borrow(ctx context.Context, args AssignArgs, secondary map[string]string, pools poolSet) (netip.Addr, error) {
	existing, err := a.listBlockCIDRs(ctx)
	if err != nil {
		return netip.Addr{}, err
	}
	for _, p := range pools {
		for cidr := range blockCandidates(p.cidr, p.blockSize, args.Node) {
			if !existing[cidr] {
				continue
			}
			sb, err := a.getBlock(ctx, cidr)
			if errors.Is(err, datastore.ErrNotFound) {
				continue
			}
			if err != nil {
				return netip.Addr{}, err
			}
			if freeCount(sb.b) == 0 {
				continue
			}
			ip, err := a.assignFromBlock(ctx, sb, args, secondary, nil, false)
			if errors.Is(err, errBlockFull) {
				continue
			}
			if err != nil {
				return netip.Addr{}, err
			}
			a.log.Info("borrowed address from another node's block", "ip", ip, "block", cidr,
				"blockAffinity", affinityText(sb.b), "node", args.Node, "handle", args.Handle)
			return ip, nil
		}
	}
	return netip.Addr{}, fmt.Errorf("no free address in any block of pools %s: %w", poolNames(pools), ErrPoolExhausted)
}

// releaseDeselectedBlocks releases, best effort, the empty blocks of node that belong to
// pools that no longer select it (Calico's prepareAffinityBlocksForHost), so they return
// to the nodes the pool does select.
func (a *Allocator) releaseDeselectedBlocks(ctx context.Context, node string, e env) {
	for _, sa := range e.affinities {
		p, ok := e.pools.containing(sa.cidr.Addr())
		if !ok || p.selector.Matches(e.nodeLabels) {
			continue
		}
		err := a.releaseBlockAffinity(ctx, node, sa.cidr, true, nil)
		switch {
		case err == nil:
			a.log.Info("released empty block of a pool that no longer selects the node", "node", node, "block", sa.cidr, "pool", p.name)
		case errors.Is(err, errBlockNotEmpty), errors.Is(err, errBlockTaken), errors.Is(err, datastore.ErrNotFound):
		default:
			a.log.Warn("could not release block of a pool that no longer selects the node", "node", node, "block", sa.cidr, "error", err)
		}
	}
}

// describePools renders every pool for a "no usable pool" error.
func describePools(ps poolSet) string {
	if len(ps) == 0 {
		return "none defined"
	}
	s := ""
	for i, p := range ps {
		if i > 0 {
			s += "; "
		}
		s += fmt.Sprintf("%s %s disabled=%t nodeSelector=%q allowedUses=%v", p.name, p.cidr, p.disabled, p.selector.String(), p.allowedUses)
	}
	return s
}
