package daemon

import (
	"context"
	"time"

	"github.com/tabby-net/tabby/daemon/metrics"
	"github.com/tabby-net/tabby/datastore"
	"github.com/tabby-net/tabby/nat"
)

// natSub feeds the NAT-outgoing reconciler (ipsets and iptables, SPEC §6).
type natSub struct {
	n       natReconciler
	metrics *metrics.Metrics
	// lastSync is the end of the last sync already observed in the duration histogram.
	lastSync time.Time
}

func newNATSub(d *daemon) (*natSub, error) {
	n, err := d.dataplane.nat(d)
	if err != nil {
		return nil, err
	}
	return &natSub{n: n, metrics: d.metrics}, nil
}

func (s *natSub) run(ctx context.Context) error   { return s.n.Run(ctx) }
func (s *natSub) update(snap *datastore.Snapshot) { s.n.Set(nat.FromSnapshot(snap)) }

// report says whether the desired NAT state has been applied once, and why NAT is not
// ready. It also records the duration of a sync it has not seen yet.
func (s *natSub) report() (synced bool, notReady string) {
	st := s.n.Status()
	if st.LastSync.After(s.lastSync) {
		s.lastSync = st.LastSync
		s.metrics.ObserveReconcile(metrics.SubsystemNAT, st.LastSyncDuration)
	}
	if st.LastError != "" {
		return st.Synced, "NAT not applied: " + st.LastError
	}
	return st.Synced, ""
}

// problems lists what NAT reports without being unready (leftovers it could not sweep).
func (s *natSub) problems() []string {
	if w := s.n.Status().Warning; w != "" {
		return []string{"NAT: " + w}
	}
	return nil
}
