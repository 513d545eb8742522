package daemon

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"

	"github.com/tabby-net/tabby/daemon/metrics"
	"github.com/tabby-net/tabby/datastore"
	"github.com/tabby-net/tabby/routing"
)

// routesSub feeds the kernel route reconciler (routes, tunnel devices, VXLAN neighbours
// and FDB, SPEC §5) and publishes the pod MTU for tabby-cni.
type routesSub struct {
	d    *daemon
	k    routeReconciler
	host hostReader

	// What Desired needs to know about the host, read again when the kernel reports a
	// change of the underlay.
	hostRead     bool
	hostMTU      int
	nic          string
	underlay     []routing.UnderlayRoute
	hostProblems []string

	// planner computes the desired state at the cost of what changed since the last
	// snapshot: a full computation per change is most of the daemon's CPU at scale.
	planner      routing.Planner
	state        routing.State
	publishedMTU int
}

func newRoutesSub(d *daemon) (*routesSub, error) {
	k, host, err := d.dataplane.routes(d)
	if err != nil {
		return nil, err
	}
	return &routesSub{d: d, k: k, host: host}, nil
}

func (s *routesSub) run(ctx context.Context) error { return s.k.Run(ctx) }

// underlayChanged fires when the host's own routes or devices change: Direct and
// BGP-learned routes resolve through them, and the host MTU may have changed.
func (s *routesSub) underlayChanged() <-chan struct{} { return s.k.UnderlayChanged() }

// readHost reads the underlay routes, the NIC and the host MTU.
func (s *routesSub) readHost() {
	var problems []string
	underlay, err := s.host.Underlay()
	if err != nil {
		problems = append(problems, "cannot read the host's routes: "+err.Error())
	} else {
		s.underlay = underlay
	}
	mtu, nic, err := s.host.MTU(s.d.addr.Address.Addr())
	switch {
	case err != nil:
		problems = append(problems, "host MTU: "+err.Error())
		if s.nic == "" {
			s.nic = s.d.addr.Interface
		}
	default:
		s.hostMTU, s.nic = mtu, nic
	}
	if s.d.cfg.Data.MTU > 0 {
		s.hostMTU = s.d.cfg.Data.MTU
	}
	s.hostProblems = problems
	s.hostRead = true
}

// update computes the desired kernel state and hands it to the reconciler. underlay says
// whether the host's routes must be read again first.
func (s *routesSub) update(snap *datastore.Snapshot, learned []routing.LearnedRoute, underlay bool) {
	if underlay || !s.hostRead {
		s.readHost()
	}
	st := s.planner.Desired(snap, routing.Local{
		NodeName: s.d.nodeName,
		NIC:      s.nic,
		HostMTU:  s.hostMTU,
		Underlay: s.underlay,
	}, learned)
	s.k.Set(st)
	if st.Hold == "" {
		s.state = st
	}
	if st.PodMTU > 0 && st.PodMTU != s.publishedMTU {
		if err := routing.PublishPodMTU(s.d.cfg.DataDir, st.PodMTU); err != nil {
			s.d.log.Error("pod MTU not published; tabby-cni will use its default", "err", err)
		} else {
			s.publishedMTU = st.PodMTU
			s.d.log.Info("pod MTU published", "mtu", st.PodMTU, "file", filepath.Join(s.d.cfg.DataDir, routing.PodMTUFile))
		}
	}
}

// report says whether a desired state has been applied in full once, and why the
// dataplane is not ready: a missing kernel feature or failing operations.
func (s *routesSub) report() (synced bool, notReady string) {
	st := s.k.Status()
	var reasons []string
	if st.Tunl0 == routing.DeviceUnsupported {
		reasons = append(reasons, "kernel has no ipip support")
	}
	if st.VXLAN == routing.DeviceUnsupported {
		reasons = append(reasons, "kernel has no vxlan support")
	}
	if st.LastError != "" && st.Failures > 0 {
		reasons = append(reasons, fmt.Sprintf("routes not applied: %d operations failing: %s", st.Failures, st.LastError))
	}
	return st.Synced, joinLines(reasons)
}

// count sets the route metrics and returns the number of routes installed.
func (s *routesSub) count(m *metrics.Metrics) int {
	st := s.k.Status()
	counts := map[string]int{}
	total := 0
	for kind, n := range st.Routes {
		counts[string(kind)] = n
		total += n
	}
	m.SetRoutes(counts)
	return total
}

// problems lists what the dataplane could not honour, one line each.
func (s *routesSub) problems() []string {
	out := slices.Clone(s.hostProblems)
	out = append(out, s.state.Problems...)
	out = append(out, s.k.Status().Problems...)
	return out
}

// mtus returns the host MTU in use and the pod MTU of the last desired state.
func (s *routesSub) mtus() (host, pod int) { return s.hostMTU, s.state.PodMTU }
