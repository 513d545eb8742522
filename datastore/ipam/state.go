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

// ipamState is every pool, block, affinity and handle, read at one revision: what Show and
// Check look at.
type ipamState struct {
	rev        int64
	pools      poolSet
	blocks     []storedBlock // in etcd key order, as calicoctl lists them
	affinities []storedAffinity
	handles    map[string]storedHandle
	unreadable []Unreadable
}

// Unreadable is a document under the IPAM keys that could not be decoded.
type Unreadable struct {
	Key string
	Err string
}

// readState reads the whole IPAM tree and the pools in one transaction.
func (a *Allocator) readState(ctx context.Context) (ipamState, error) {
	k := a.c.Keys
	ops := []clientv3.Op{
		clientv3.OpGet(k.ResourcePrefix(datastore.KindIPPool), clientv3.WithPrefix()),
		clientv3.OpGet(k.BlockPrefix(), clientv3.WithPrefix()),
		clientv3.OpGet(k.HostPrefix(), clientv3.WithPrefix()),
		clientv3.OpGet(k.HandlePrefix(), clientv3.WithPrefix()),
	}
	resp, err := a.c.Etcd().Txn(ctx).Then(ops...).Commit()
	if err != nil {
		return ipamState{}, fmt.Errorf("read IPAM state: %w", datastore.Denied(err, opKeys(ops)...))
	}
	st := ipamState{rev: resp.Header.Revision, handles: map[string]storedHandle{}}
	st.pools = a.decodePools(rangeKVs(resp, 0))
	bad := func(key string, err error) {
		st.unreadable = append(st.unreadable, Unreadable{Key: key, Err: err.Error()})
	}
	for _, kv := range rangeKVs(resp, 1) {
		info, err := k.Parse(kv.Key)
		if err != nil || info.Type != datastore.KeyBlock {
			bad(kv.Key, fmt.Errorf("not a block key: %v", err))
			continue
		}
		sb, err := decodeBlock(info.CIDR, kv)
		if err != nil {
			bad(kv.Key, err)
			continue
		}
		st.blocks = append(st.blocks, sb)
	}
	for _, kv := range rangeKVs(resp, 2) {
		sa, err := a.decodeAffinity(kv)
		if err != nil {
			bad(kv.Key, err)
			continue
		}
		st.affinities = append(st.affinities, sa)
	}
	for _, kv := range rangeKVs(resp, 3) {
		info, err := k.Parse(kv.Key)
		if err != nil || info.Type != datastore.KeyHandle {
			bad(kv.Key, fmt.Errorf("not a handle key: %v", err))
			continue
		}
		sh, err := decodeHandle(info.Name, kv)
		if err != nil {
			bad(kv.Key, err)
			continue
		}
		st.handles[info.Name] = sh
	}
	return st, nil
}

// Usage is how full the pools and their blocks are.
type Usage struct {
	Pools []PoolUsage
	// Orphans are blocks inside no pool (their pool was deleted); calicoctl lists them
	// without a pool row.
	Orphans []BlockUsage
}

// PoolUsage is one pool's usage; Free is Total minus InUse.
type PoolUsage struct {
	Name     string
	CIDR     netip.Prefix
	Disabled bool
	Total    int
	InUse    int
	Free     int
	Blocks   []BlockUsage // in etcd key order
}

// BlockUsage is one block's usage and owner.
type BlockUsage struct {
	CIDR  netip.Prefix
	Total int
	InUse int
	Free  int
	// Host is the block's affine host ("" for none); HostState the state of that host's
	// affinity key ("" when the key is missing).
	Host      string
	HostState datastore.AffinityState
}

// Show reports the usage of every pool and, per pool, of every block.
func (a *Allocator) Show(ctx context.Context) (Usage, error) {
	st, err := a.readState(ctx)
	if err != nil {
		return Usage{}, err
	}
	affState := map[datastore.AffinityKey]datastore.AffinityState{}
	for _, sa := range st.affinities {
		affState[datastore.AffinityKey{Host: sa.host, CIDR: sa.cidr}] = sa.state()
	}
	var u Usage
	for _, p := range st.pools {
		u.Pools = append(u.Pools, PoolUsage{Name: p.name, CIDR: p.cidr, Disabled: p.disabled, Total: 1 << (32 - p.cidr.Bits())})
	}
	for _, sb := range st.blocks {
		bu := BlockUsage{CIDR: sb.cidr, Total: blockSizeOf(sb.cidr), InUse: inUse(sb.b), Host: sb.b.AffinityHost()}
		bu.Free = bu.Total - bu.InUse
		if bu.Host != "" {
			bu.HostState = affState[datastore.AffinityKey{Host: bu.Host, CIDR: sb.cidr}]
		}
		i := slices.IndexFunc(u.Pools, func(p PoolUsage) bool { return p.CIDR.Overlaps(sb.cidr) })
		if i < 0 {
			u.Orphans = append(u.Orphans, bu)
			continue
		}
		u.Pools[i].Blocks = append(u.Pools[i].Blocks, bu)
		u.Pools[i].InUse += bu.InUse
	}
	for i := range u.Pools {
		u.Pools[i].Free = u.Pools[i].Total - u.Pools[i].InUse
	}
	return u, nil
}

// Allocation is who holds one address.
type Allocation struct {
	IP    netip.Addr
	Block netip.Prefix
	// BlockHost is the block's affine host; Attrs["node"] differs from it for a borrowed
	// address.
	BlockHost string
	Handle    string
	Attrs     map[string]string
}

// AllocationOf says who holds ip; a free address is ErrNotAssigned.
func (a *Allocator) AllocationOf(ctx context.Context, ip netip.Addr) (Allocation, error) {
	if !ip.IsValid() || !ip.Is4() {
		return Allocation{}, fmt.Errorf("look up address: %v is not an IPv4 address", ip)
	}
	cidr, err := a.blockOf(ctx, ip)
	if err != nil {
		return Allocation{}, fmt.Errorf("look up %s: %w", ip, err)
	}
	sb, err := a.getBlock(ctx, cidr)
	if err != nil {
		if errors.Is(err, datastore.ErrNotFound) {
			return Allocation{}, fmt.Errorf("look up %s: block %s does not exist: %w", ip, cidr, ErrNotAssigned)
		}
		return Allocation{}, fmt.Errorf("look up %s: %w", ip, err)
	}
	ord, err := addrOrdinal(cidr, ip)
	if err != nil {
		return Allocation{}, err
	}
	p := sb.b.Allocations[ord]
	if p == nil {
		return Allocation{}, fmt.Errorf("look up %s: %w", ip, ErrNotAssigned)
	}
	at := sb.b.Attributes[*p]
	return Allocation{IP: ip, Block: cidr, BlockHost: sb.b.AffinityHost(), Handle: handleOf(at), Attrs: at.Secondary}, nil
}
