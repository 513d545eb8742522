package daemon

import (
	"context"

	"github.com/tabby-net/tabby/daemon/nodereg"
	"github.com/tabby-net/tabby/datastore"
	"github.com/tabby-net/tabby/datastore/ipam"
)

// nodeSub feeds the Node registrar.
type nodeSub struct {
	reg *nodereg.Registrar
}

func newNodeSub(d *daemon, client *datastore.Client) (*nodeSub, error) {
	log := d.log.With("subsystem", "node")
	id := nodereg.Identity{Name: d.nodeName, Address: d.addr.Address, Labels: d.cfg.Labels}
	return &nodeSub{reg: nodereg.New(client, ipam.New(client, log), id, log)}, nil
}

func (n *nodeSub) run(ctx context.Context) error   { return n.reg.Run(ctx) }
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
