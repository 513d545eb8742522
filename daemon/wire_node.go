package daemon

import (
	"context"
	"time"

	"github.com/tabby-net/tabby/daemon/nodereg"
	"github.com/tabby-net/tabby/datastore"
	"github.com/tabby-net/tabby/datastore/ipam"
)

// pendingAffinityAge is how long a block claim may sit half-done before any tabbyd
// finishes or undoes it. A live claimer takes milliseconds; one that is older crashed.
const pendingAffinityAge = 5 * time.Minute

// nodeSub feeds the Node registrar, and repairs block claims that crashed claimers left
// half-done anywhere in the cluster (Calico's kube-controllers do this; without Kubernetes
// every tabbyd does, safely, since each step is a compare-and-swap).
type nodeSub struct {
	reg   *nodereg.Registrar
	alloc *ipam.Allocator
	d     *daemon
}

func newNodeSub(d *daemon, client *datastore.Client) (*nodeSub, error) {
	log := d.log.With("subsystem", "node")
	id := nodereg.Identity{Name: d.nodeName, Address: d.addr.Address, Labels: d.cfg.Labels}
	alloc := ipam.New(client, log)
	return &nodeSub{reg: nodereg.New(client, alloc, id, log), alloc: alloc, d: d}, nil
}

func (n *nodeSub) run(ctx context.Context) error {
	go n.repairPendingClaims(ctx)
	return n.reg.Run(ctx)
}

// repairPendingClaims runs ipam.CleanupPending periodically. An affinity is touched only
// once it has been seen unchanged for pendingAffinityAge, so claims in progress are safe.
func (n *nodeSub) repairPendingClaims(ctx context.Context) {
	t := time.NewTicker(pendingAffinityAge / 2)
	defer t.Stop()
	log := n.d.log.With("subsystem", "ipam")
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		res, err := n.alloc.CleanupPending(ctx, pendingAffinityAge)
		if err != nil {
			log.Warn("repair of half-done block claims failed; will retry", "err", err)
			continue
		}
		if len(res.Confirmed)+len(res.Removed)+len(res.Released) > 0 {
			log.Info("repaired block claims left half-done by a crashed claimer",
				"confirmed", len(res.Confirmed), "removed", len(res.Removed), "released", len(res.Released))
		}
	}
}

func (n *nodeSub) update(snap *datastore.Snapshot) { n.reg.Set(snap) }
func (n *nodeSub) changed() <-chan struct{}        { return n.reg.Changed() }

// report says whether etcd holds the Node this host wants, and why not.
func (n *nodeSub) report() (synced bool, notReady string) {
	st := n.reg.Status()
	if st.Err != nil {
		return st.Synced, "node registration: " + st.Err.Error()
	}
	return st.Synced, ""
}
