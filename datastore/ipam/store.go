package ipam

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tabby-net/tabby/datastore"
)

// Typed reads and compare-and-swap writes of blocks, affinities and handles. Every value
// carries the ModRevision it was read at, which is the condition of its next write, and
// the JSON it was read from, which its next write overlays (datastore.Overlay): fields
// that tabby does not model, written by Calico or a newer tabby, survive every IPAM write.

// storedBlock is a block and the revision it was read at.
type storedBlock struct {
	cidr netip.Prefix
	b    *datastore.AllocationBlock
	rev  int64
	raw  []byte // the block as stored
}

// storedAffinity is one host's affinity to one block and the revision it was read at.
type storedAffinity struct {
	host string
	cidr netip.Prefix
	aff  datastore.BlockAffinity
	rev  int64
	raw  []byte // the affinity as stored
}

// state is the affinity's state with the legacy empty value read as confirmed.
func (s storedAffinity) state() datastore.AffinityState {
	if s.aff.State == "" {
		return datastore.AffinityConfirmed
	}
	return s.aff.State
}

// storedHandle is a handle and the revision it was read at (0: it does not exist yet).
type storedHandle struct {
	id  string
	h   datastore.IPAMHandle
	rev int64
	raw []byte // the handle as stored
}

// casRefused reports whether err is a compare-and-swap that etcd refused (the write was
// certainly not applied), as opposed to an error after which the write may or may not have
// been applied (a cancelled context, a lost connection).
func casRefused(err error) bool {
	return errors.Is(err, datastore.ErrConflict) || errors.Is(err, datastore.ErrAlreadyExists) ||
		errors.Is(err, datastore.ErrNotFound)
}

func (a *Allocator) getBlock(ctx context.Context, cidr netip.Prefix) (storedBlock, error) {
	kv, err := a.c.Get(ctx, a.c.Keys.Block(cidr))
	if err != nil {
		return storedBlock{}, fmt.Errorf("read block %s: %w", cidr, err)
	}
	return decodeBlock(cidr, kv)
}

// decodeBlock decodes and checks a stored block.
func decodeBlock(cidr netip.Prefix, kv datastore.KV) (storedBlock, error) {
	var b datastore.AllocationBlock
	if err := json.Unmarshal(kv.Value, &b); err != nil {
		return storedBlock{}, fmt.Errorf("block %s: %w", cidr, err)
	}
	if err := checkBlock(cidr, &b); err != nil {
		return storedBlock{}, err
	}
	return storedBlock{cidr: cidr, b: &b, rev: kv.ModRevision, raw: kv.Value}, nil
}

// createBlock creates a block that must not exist yet.
func (a *Allocator) createBlock(ctx context.Context, cidr netip.Prefix, b *datastore.AllocationBlock) (storedBlock, error) {
	v, err := json.Marshal(b)
	if err != nil {
		return storedBlock{}, fmt.Errorf("encode block %s: %w", cidr, err)
	}
	rev, err := a.c.Create(ctx, a.c.Keys.Block(cidr), v)
	if err != nil {
		return storedBlock{}, fmt.Errorf("create block %s: %w", cidr, err)
	}
	return storedBlock{cidr: cidr, b: b, rev: rev, raw: v}, nil
}

// updateBlock writes nb over sb if the block is still at sb's revision, stepping the
// sequence number as Calico does on every block write.
func (a *Allocator) updateBlock(ctx context.Context, sb storedBlock, nb *datastore.AllocationBlock) (storedBlock, error) {
	nb.SequenceNumber++
	v, err := encodeBlock(sb, nb)
	if err != nil {
		return storedBlock{}, err
	}
	rev, err := a.c.Update(ctx, a.c.Keys.Block(sb.cidr), v, sb.rev)
	if err != nil {
		return storedBlock{}, fmt.Errorf("update block %s: %w", sb.cidr, err)
	}
	return storedBlock{cidr: sb.cidr, b: nb, rev: rev, raw: v}, nil
}

// encodeBlock encodes nb for writing over sb, keeping what tabby does not model.
func encodeBlock(sb storedBlock, nb *datastore.AllocationBlock) ([]byte, error) {
	v, err := datastore.Overlay(sb.raw, nb)
	if err != nil {
		return nil, fmt.Errorf("encode block %s: %w", sb.cidr, err)
	}
	return v, nil
}

// deleteBlock deletes the block if it is still at sb's revision.
func (a *Allocator) deleteBlock(ctx context.Context, sb storedBlock) error {
	if err := a.c.Delete(ctx, a.c.Keys.Block(sb.cidr), sb.rev); err != nil {
		return fmt.Errorf("delete block %s: %w", sb.cidr, err)
	}
	return nil
}

// decodeAffinity decodes an affinity key and value. An empty value is a confirmed affinity
// (older Calico versions stored nothing).
func (a *Allocator) decodeAffinity(kv datastore.KV) (storedAffinity, error) {
	info, err := a.c.Keys.Parse(kv.Key)
	if err != nil {
		return storedAffinity{}, err
	}
	if info.Type != datastore.KeyAffinity {
		return storedAffinity{}, fmt.Errorf("%s is not a block affinity key", kv.Key)
	}
	sa := storedAffinity{host: info.Host, cidr: info.CIDR, rev: kv.ModRevision, raw: kv.Value}
	if len(kv.Value) > 0 {
		if err := json.Unmarshal(kv.Value, &sa.aff); err != nil {
			return storedAffinity{}, fmt.Errorf("affinity of %s to %s: %w", info.Host, info.CIDR, err)
		}
	}
	return sa, nil
}

func (a *Allocator) getAffinity(ctx context.Context, host string, cidr netip.Prefix) (storedAffinity, error) {
	kv, err := a.c.Get(ctx, a.c.Keys.Affinity(host, cidr))
	if err != nil {
		return storedAffinity{}, fmt.Errorf("read affinity of %s to %s: %w", host, cidr, err)
	}
	return a.decodeAffinity(kv)
}

// encodeAffinity encodes an affinity in state over the one stored (nil: none).
func encodeAffinity(stored []byte, state datastore.AffinityState) ([]byte, error) {
	v, err := datastore.Overlay(stored, datastore.BlockAffinity{State: state})
	if err != nil {
		return nil, fmt.Errorf("encode affinity: %w", err)
	}
	return v, nil
}

// createAffinity creates host's affinity to cidr in the given state.
func (a *Allocator) createAffinity(ctx context.Context, host string, cidr netip.Prefix, state datastore.AffinityState) (storedAffinity, error) {
	v, err := encodeAffinity(nil, state)
	if err != nil {
		return storedAffinity{}, err
	}
	rev, err := a.c.Create(ctx, a.c.Keys.Affinity(host, cidr), v)
	if err != nil {
		return storedAffinity{}, fmt.Errorf("create %s affinity of %s to %s: %w", state, host, cidr, err)
	}
	return storedAffinity{host: host, cidr: cidr, aff: datastore.BlockAffinity{State: state}, rev: rev, raw: v}, nil
}

// setAffinityState moves an affinity to state if it is still at sa's revision.
func (a *Allocator) setAffinityState(ctx context.Context, sa storedAffinity, state datastore.AffinityState) (storedAffinity, error) {
	v, err := encodeAffinity(sa.raw, state)
	if err != nil {
		return storedAffinity{}, err
	}
	rev, err := a.c.Update(ctx, a.c.Keys.Affinity(sa.host, sa.cidr), v, sa.rev)
	if err != nil {
		return storedAffinity{}, fmt.Errorf("mark affinity of %s to %s %s: %w", sa.host, sa.cidr, state, err)
	}
	sa.aff = datastore.BlockAffinity{State: state}
	sa.rev, sa.raw = rev, v
	return sa, nil
}

// deleteAffinity deletes an affinity if it is still at sa's revision.
func (a *Allocator) deleteAffinity(ctx context.Context, sa storedAffinity) error {
	if err := a.c.Delete(ctx, a.c.Keys.Affinity(sa.host, sa.cidr), sa.rev); err != nil {
		return fmt.Errorf("delete affinity of %s to %s: %w", sa.host, sa.cidr, err)
	}
	return nil
}

// decodeHandle decodes a stored handle.
func decodeHandle(id string, kv datastore.KV) (storedHandle, error) {
	sh := storedHandle{id: id, rev: kv.ModRevision, raw: kv.Value}
	if err := json.Unmarshal(kv.Value, &sh.h); err != nil {
		return storedHandle{}, fmt.Errorf("handle %s: %w", id, err)
	}
	if sh.h.Block == nil {
		sh.h.Block = map[string]int{}
	}
	return sh, nil
}

// getHandle reads a handle; a missing handle is returned with revision 0 and no blocks.
func (a *Allocator) getHandle(ctx context.Context, id string) (storedHandle, error) {
	kv, err := a.c.Get(ctx, a.c.Keys.Handle(id))
	if errors.Is(err, datastore.ErrNotFound) {
		return storedHandle{id: id, h: datastore.IPAMHandle{Block: map[string]int{}}}, nil
	}
	if err != nil {
		return storedHandle{}, fmt.Errorf("read handle %s: %w", id, err)
	}
	return decodeHandle(id, kv)
}

// writeHandle stores h over sh: a create when sh does not exist, a delete when h counts
// nothing any more, an update otherwise; each conditional on sh's revision. It returns the
// handle as stored (revision 0 after a delete).
func (a *Allocator) writeHandle(ctx context.Context, sh storedHandle, h datastore.IPAMHandle) (storedHandle, error) {
	key := a.c.Keys.Handle(sh.id)
	if len(h.Block) == 0 {
		if sh.rev == 0 {
			return storedHandle{id: sh.id, h: h}, nil
		}
		if err := a.c.Delete(ctx, key, sh.rev); err != nil {
			return storedHandle{}, fmt.Errorf("delete handle %s: %w", sh.id, err)
		}
		return storedHandle{id: sh.id, h: h}, nil
	}
	v, err := encodeHandle(sh, h)
	if err != nil {
		return storedHandle{}, err
	}
	var rev int64
	if sh.rev == 0 {
		rev, err = a.c.Create(ctx, key, v)
	} else {
		rev, err = a.c.Update(ctx, key, v, sh.rev)
	}
	if err != nil {
		return storedHandle{}, fmt.Errorf("write handle %s: %w", sh.id, err)
	}
	return storedHandle{id: sh.id, h: h, rev: rev, raw: v}, nil
}

// encodeHandle encodes h for writing over sh, keeping what tabby does not model.
func encodeHandle(sh storedHandle, h datastore.IPAMHandle) ([]byte, error) {
	v, err := datastore.Overlay(sh.raw, h)
	if err != nil {
		return nil, fmt.Errorf("encode handle %s: %w", sh.id, err)
	}
	return v, nil
}

// withCount returns a copy of h with block's count changed by delta (entries that reach 0
// or less are removed).
func withCount(h datastore.IPAMHandle, block netip.Prefix, delta int) datastore.IPAMHandle {
	out := datastore.IPAMHandle{Block: make(map[string]int, len(h.Block)+1)}
	for k, v := range h.Block {
		out.Block[k] = v
	}
	n := out.Block[block.String()] + delta
	if n > 0 {
		out.Block[block.String()] = n
	} else {
		delete(out.Block, block.String())
	}
	return out
}

// opKeys lists the keys (or key prefixes) a transaction's operations touch, for an error
// that must name them.
func opKeys(ops []clientv3.Op) []string {
	keys := make([]string, 0, len(ops))
	for _, op := range ops {
		keys = append(keys, string(op.KeyBytes()))
	}
	return keys
}
