package ipam

import (
	"context"
	"fmt"
	"net/netip"
	"slices"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tabby-net/tabby/datastore"
	"github.com/tabby-net/tabby/datastore/selector"
)

// The cluster state an assignment decides on: pools, IPAM config, the asking node's labels,
// its affinities and the handle. It is read in one etcd transaction, so every part of it is
// from the same revision.

// pool is an IPPool as IPAM needs it: parsed, defaulted and validated.
type pool struct {
	name        string
	cidr        netip.Prefix
	blockSize   int
	disabled    bool
	selector    selector.Selector
	allowedUses []string
	// manual: the pool's assignmentMode is Manual, so it is used only when a request names it.
	manual bool
}

// allows reports whether the pool's allowedUses permit use.
func (p pool) allows(use string) bool { return slices.Contains(p.allowedUses, use) }

// decodePool reads a stored IPPool with the datastore's codec (Calico's defaults applied)
// and validation. A pool that fails is not used for allocation (the daemon reports such
// documents).
func (a *Allocator) decodePool(kv datastore.KV) (pool, error) {
	info, err := a.c.Keys.Parse(kv.Key)
	if err != nil || info.Type != datastore.KeyResource || info.Kind != datastore.KindIPPool {
		return pool{}, fmt.Errorf("%s is not an ippool key", kv.Key)
	}
	r, err := datastore.DecodeStored(datastore.KindIPPool, info.Name, kv.Value, kv.ModRevision)
	if err != nil {
		return pool{}, err
	}
	if err := datastore.Validate(r); err != nil {
		return pool{}, err
	}
	doc := r.(*datastore.IPPool)
	cidr, err := datastore.ParsePoolCIDR(doc.Spec.CIDR)
	if err != nil {
		return pool{}, fmt.Errorf("ippool %s: spec.cidr: %w", info.Name, err)
	}
	sel, err := selector.Parse(doc.Spec.NodeSelector)
	if err != nil {
		return pool{}, fmt.Errorf("ippool %s: spec.nodeSelector: %w", info.Name, err)
	}
	return pool{
		name:        info.Name,
		cidr:        cidr,
		blockSize:   doc.Spec.BlockSize,
		disabled:    doc.Spec.Disabled,
		selector:    sel,
		allowedUses: doc.Spec.AllowedUses,
		manual:      !datastore.PoolAssignsAutomatically(doc.Spec),
	}, nil
}

// poolSet is every valid pool, in etcd key (name) order.
type poolSet []pool

// byName adds the CIDRs of the pools named to those requested by CIDR; a name no pool has
// is an error.
func (ps poolSet) byName(cidrs []netip.Prefix, names []string) ([]netip.Prefix, error) {
	out := slices.Clone(cidrs)
	for _, n := range names {
		i := slices.IndexFunc(ps, func(p pool) bool { return p.name == n })
		if i < 0 {
			return nil, fmt.Errorf("requested pool %q does not exist", n)
		}
		out = append(out, ps[i].cidr)
	}
	return out, nil
}

// containing returns the pool whose CIDR holds ip.
func (ps poolSet) containing(ip netip.Addr) (pool, bool) {
	for _, p := range ps {
		if p.cidr.Contains(ip) {
			return p, true
		}
	}
	return pool{}, false
}

// decodePools decodes the listed pools, logging and skipping invalid ones.
func (a *Allocator) decodePools(kvs []datastore.KV) poolSet {
	var ps poolSet
	for _, kv := range kvs {
		p, err := a.decodePool(kv)
		if err != nil {
			a.log.Warn("ignoring invalid IP pool", "key", kv.Key, "error", err)
			continue
		}
		ps = append(ps, p)
	}
	return ps
}

// env is what one assignment reads before it decides.
type env struct {
	rev        int64
	pools      poolSet
	config     datastore.IPAMConfig
	nodeLabels map[string]string
	affinities []storedAffinity // the asking host's, in key order
	handle     *storedHandle    // nil when the handle does not exist
	reserved   reservations     // addresses no assignment may hand out
}

// readEnv reads the pools, the IPAM config, the node's labels and affinities and the handle
// in one transaction.
func (a *Allocator) readEnv(ctx context.Context, host, handle string) (env, error) {
	k := a.c.Keys
	ops := []clientv3.Op{
		clientv3.OpGet(k.ResourcePrefix(datastore.KindIPPool), clientv3.WithPrefix()),
		clientv3.OpGet(k.IPAMConfig()),
		clientv3.OpGet(k.Resource(datastore.KindNode, host)),
		clientv3.OpGet(k.AffinityPrefix(host), clientv3.WithPrefix()),
		clientv3.OpGet(k.ResourcePrefix(datastore.KindIPReservation), clientv3.WithPrefix()),
	}
	if handle != "" {
		ops = append(ops, clientv3.OpGet(k.Handle(handle)))
	}
	resp, err := a.c.Etcd().Txn(ctx).Then(ops...).Commit()
	if err != nil {
		return env{}, fmt.Errorf("read pools, ipam config and affinities of %s: %w", host, datastore.Denied(err, opKeys(ops)...))
	}
	e := env{rev: resp.Header.Revision}
	e.pools = a.decodePools(rangeKVs(resp, 0))
	var cfgValue []byte
	if kvs := rangeKVs(resp, 1); len(kvs) == 1 {
		cfgValue = kvs[0].Value
	}
	if e.config, err = datastore.DecodeIPAMConfig(cfgValue); err != nil {
		return env{}, err
	}
	e.reserved = a.decodeReservations(rangeKVs(resp, 4))
	if kvs := rangeKVs(resp, 2); len(kvs) == 1 {
		node, err := datastore.DecodeStored(datastore.KindNode, host, kvs[0].Value, kvs[0].ModRevision)
		if err != nil {
			return env{}, fmt.Errorf("node %s, whose labels select pools: %w", host, err)
		}
		e.nodeLabels = node.Meta().Labels
	}
	for _, kv := range rangeKVs(resp, 3) {
		sa, err := a.decodeAffinity(kv)
		if err != nil {
			a.log.Warn("ignoring unreadable block affinity", "key", kv.Key, "error", err)
			continue
		}
		e.affinities = append(e.affinities, sa)
	}
	if handle != "" {
		if kvs := rangeKVs(resp, 5); len(kvs) == 1 {
			h, err := decodeHandle(handle, kvs[0])
			if err != nil {
				return env{}, err
			}
			e.handle = &h
		}
	}
	return e, nil
}

// usablePools picks the pools an assignment may draw from, following Calico's
// determinePools: requested pools must exist and be enabled and are then used whatever
// their nodeSelector and assignmentMode; without a request, every enabled pool in
// Automatic assignment mode whose nodeSelector selects the node. Either way a pool must
// allow the use (a LoadBalancer pool allows neither Workload nor Tunnel).
func usablePools(all poolSet, requested []netip.Prefix, nodeLabels map[string]string, use string) (poolSet, error) {
	var out poolSet
	if len(requested) > 0 {
		for _, r := range requested {
			i := slices.IndexFunc(all, func(p pool) bool { return p.cidr == r })
			if i < 0 {
				return nil, fmt.Errorf("requested pool %s does not exist", r)
			}
			if all[i].disabled {
				return nil, fmt.Errorf("requested pool %s (%s) is disabled", r, all[i].name)
			}
			if all[i].allows(use) {
				out = append(out, all[i])
			}
		}
	} else {
		for _, p := range all {
			if !p.disabled && !p.manual && p.selector.Matches(nodeLabels) && p.allows(use) {
				out = append(out, p)
			}
		}
	}
	return out, nil
}

// rangeKVs returns the keys read by the i-th operation (a get) of a transaction.
func rangeKVs(resp *clientv3.TxnResponse, i int) []datastore.KV {
	r := (*clientv3.GetResponse)(resp.Responses[i].GetResponseRange())
	out := make([]datastore.KV, 0, len(r.Kvs))
	for _, kv := range r.Kvs {
		out = append(out, datastore.KV{Key: string(kv.Key), Value: kv.Value, ModRevision: kv.ModRevision})
	}
	return out
}

// reservations are the addresses of every IPReservation (IPv4 only: tabby's pools are
// IPv4), which IPAM never hands out, as Calico's IPAM does not.
type reservations []netip.Prefix

// contains reports whether ip is reserved.
func (r reservations) contains(ip netip.Addr) bool {
	for _, p := range r {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

// decodeReservations reads the stored IPReservations, skipping (and logging) invalid ones
// as the daemon reports them.
func (a *Allocator) decodeReservations(kvs []datastore.KV) reservations {
	var out reservations
	for _, kv := range kvs {
		info, err := a.c.Keys.Parse(kv.Key)
		if err != nil || info.Type != datastore.KeyResource || info.Kind != datastore.KindIPReservation {
			continue
		}
		r, err := datastore.DecodeStored(datastore.KindIPReservation, info.Name, kv.Value, kv.ModRevision)
		if err == nil {
			err = datastore.Validate(r)
		}
		if err != nil {
			a.log.Warn("ignoring invalid IP reservation", "key", kv.Key, "error", err)
			continue
		}
		for _, c := range r.(*datastore.IPReservation).Spec.ReservedCIDRs {
			if p, err := netip.ParsePrefix(c); err == nil && p.Addr().Is4() {
				out = append(out, p.Masked())
			} else if ip, err := netip.ParseAddr(c); err == nil && ip.Is4() {
				out = append(out, netip.PrefixFrom(ip, 32))
			}
		}
	}
	return out
}
