package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"testing"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tabby-net/tabby/datastore"
)

// clusterSpec describes a synthetic cluster written straight into etcd in Calico's layout.
type clusterSpec struct {
	// nodes is the number of Nodes, each with one /26 block of the pool and its confirmed
	// affinity.
	nodes int
	// perBlock is the number of allocated addresses in each block, each with its handle.
	perBlock int
	// mesh is the BGPConfiguration's nodeToNodeMeshEnabled.
	mesh bool
	// vxlan makes the pool VXLAN Always instead of Direct.
	vxlan bool
	// noPool leaves the pool out (a cluster being built).
	noPool bool
}

// etcd's default --max-txn-ops.
const maxTxnOps = 128

// txnWriter writes puts and deletes in transactions of maxTxnOps: the fastest way to load
// tens of thousands of keys, and each transaction is one revision.
type txnWriter struct {
	tb  testing.TB
	ctx context.Context
	cli *clientv3.Client
	ops []clientv3.Op
}

func (w *txnWriter) put(key string, value []byte) {
	w.ops = append(w.ops, clientv3.OpPut(key, string(value)))
	if len(w.ops) == maxTxnOps {
		w.flush()
	}
}

func (w *txnWriter) del(key string) {
	w.ops = append(w.ops, clientv3.OpDelete(key))
	if len(w.ops) == maxTxnOps {
		w.flush()
	}
}

func (w *txnWriter) flush() {
	if len(w.ops) == 0 {
		return
	}
	if _, err := w.cli.Txn(w.ctx).Then(w.ops...).Commit(); err != nil {
		w.tb.Fatalf("etcd transaction of %d operations: %v", len(w.ops), err)
	}
	w.ops = w.ops[:0]
}

func mustJSON(tb testing.TB, v any) []byte {
	tb.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		tb.Fatal(err)
	}
	return b
}

func mustEncode(tb testing.TB, r datastore.Resource) []byte {
	tb.Helper()
	b, err := datastore.EncodeStored(r)
	if err != nil {
		tb.Fatal(err)
	}
	return b
}

// poolName is the synthetic cluster's only pool.
const poolName = "bench-pool"

// populate writes a synthetic cluster under c's key root: the pool, the BGPConfiguration,
// and spec.nodes Nodes (node-00000 …) each with its block, affinity and handles.
func populate(ctx context.Context, tb testing.TB, c *datastore.Client, spec clusterSpec) {
	tb.Helper()
	w := &txnWriter{tb: tb, ctx: ctx, cli: c.Etcd()}
	k := c.Keys
	if !spec.noPool {
		w.put(k.Resource(datastore.KindIPPool, poolName), mustEncode(tb, benchPool(spec.vxlan)))
	}
	cfg := datastore.NewBGPConfiguration(datastore.DefaultBGPConfigurationName)
	mesh := spec.mesh
	cfg.Spec.NodeToNodeMeshEnabled = &mesh
	w.put(k.Resource(datastore.KindBGPConfiguration, cfg.Metadata.Name), mustEncode(tb, cfg))
	for i := range spec.nodes {
		writeNode(tb, w, k, i, i, spec.perBlock)
	}
	w.flush()
}

// benchPool is the synthetic cluster's pool: Direct (or VXLAN Always), NAT outgoing, as
// Calico's default pool is.
func benchPool(vxlan bool) *datastore.IPPool {
	p := datastore.NewIPPool(poolName)
	p.Spec.CIDR = poolCIDR.String()
	p.Spec.BlockSize = 26
	p.Spec.IPIPMode = datastore.EncapNever
	p.Spec.VXLANMode = datastore.EncapNever
	if vxlan {
		p.Spec.VXLANMode = datastore.EncapAlways
	}
	p.Spec.NATOutgoing = true
	p.Spec.NodeSelector = "all()"
	return p
}

// nodeName names the i-th synthetic node.
func nodeName(i int) string { return fmt.Sprintf("node-%05d", i) }

// writeNode adds the Node of synthetic node i and its block number blk (with perBlock
// allocated addresses, their handles and its confirmed affinity) to w.
func writeNode(tb testing.TB, w *txnWriter, k datastore.Keys, i, blk, perBlock int) {
	name := nodeName(i)
	n := datastore.NewNode(name)
	n.Metadata.UID = fmt.Sprintf("8d2f6a3e-0000-4000-8000-%012d", i)
	n.Metadata.CreationTimestamp = "2026-01-01T00:00:00Z"
	n.Metadata.Labels = map[string]string{"kubernetes.io/hostname": name, "zone": fmt.Sprintf("z%d", i%4)}
	n.Spec.BGP = &datastore.NodeBGPSpec{IPv4Address: netip.PrefixFrom(nodeAddr(i), 16).String()}
	w.put(k.Resource(datastore.KindNode, name), mustEncode(tb, n))
	writeBlock(tb, w, k, name, blk, perBlock)
}

// writeBlock adds block number blk, affine to node, with perBlock allocated addresses
// (and their handles), and the node's confirmed affinity to it.
func writeBlock(tb testing.TB, w *txnWriter, k datastore.Keys, node string, blk, perBlock int) {
	cidr := blockCIDR(blk)
	affinity := datastore.AffinityHostPrefix + node
	b := datastore.AllocationBlock{CIDR: cidr.String(), Affinity: &affinity, Allocations: make([]*int, 64), SequenceNumber: 1}
	for o := range 64 {
		if o < perBlock {
			idx := len(b.Attributes)
			handle := handleID(node, blk, o)
			b.Allocations[o] = &idx
			b.Attributes = append(b.Attributes, datastore.AllocationAttribute{HandleID: &handle, Secondary: map[string]string{"node": node}})
			w.put(k.Handle(handle), mustJSON(tb, datastore.IPAMHandle{Block: map[string]int{cidr.String(): 1}}))
		} else {
			b.Unallocated = append(b.Unallocated, o)
		}
	}
	w.put(k.Block(cidr), mustJSON(tb, b))
	w.put(k.Affinity(node, cidr), mustJSON(tb, datastore.BlockAffinity{State: datastore.AffinityConfirmed}))
}

// deleteBlock adds the deletion of block number blk of node (block, affinity, handles) to w.
func deleteBlock(w *txnWriter, k datastore.Keys, node string, blk, perBlock int) {
	cidr := blockCIDR(blk)
	w.del(k.Block(cidr))
	w.del(k.Affinity(node, cidr))
	for o := range perBlock {
		w.del(k.Handle(handleID(node, blk, o)))
	}
}

// handleID is the IPAM handle of ordinal o of block blk, in Calico's <network>.<id> form.
func handleID(node string, blk, o int) string { return fmt.Sprintf("bench.%s-%d-%d", node, blk, o) }

// datastoreKeys is the key layout under another root, for a second cluster in one etcd.
func datastoreKeys(root string) datastore.Keys { return datastore.NewKeys(root) }
