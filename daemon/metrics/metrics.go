// Package metrics defines tabbyd's Prometheus metrics (SPEC §9) on a registry of its own,
// never the process-wide default one, so that tests and several daemons in one process
// cannot collide.
package metrics

import (
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Subsystems whose reconcile durations are observed.
const (
	SubsystemRoutes = "routes"
	SubsystemNAT    = "nat"
	SubsystemBGP    = "bgp"
)

// RouteKinds are the values of the kind label of tabby_routes, every one always present
// so that a dashboard sees 0 rather than a missing series.
func RouteKinds() []string {
	return []string{"ipip", "vxlan", "direct", "blackhole", "bgp", "borrowed"}
}

// PeerStates are the values of the state label of tabby_bgp_peers (BIRD's words, as
// `tabbyctl node status` prints them).
func PeerStates() []string {
	return []string{"up", "start", "connect", "active", "opensent", "openconfirm", "idle", "passive"}
}

// Metrics are the daemon's metrics and the registry that serves them.
type Metrics struct {
	Registry *prometheus.Registry

	// BGPPeers counts sessions by state.
	BGPPeers *prometheus.GaugeVec
	// Routes counts the routes the daemon wants installed, by kind.
	Routes *prometheus.GaugeVec
	// ReconcileDuration is how long one apply of a subsystem took.
	ReconcileDuration *prometheus.HistogramVec
	// DatastoreErrors counts failed etcd requests and broken watches.
	DatastoreErrors prometheus.Counter
	// InvalidResources is how many stored documents the datastore refuses right now;
	// InvalidResourcesSeen counts each refused document version once.
	InvalidResources     prometheus.Gauge
	InvalidResourcesSeen prometheus.Counter
	// StoredOnlyResources is how many resources in force set fields tabby stores but does
	// not act on.
	StoredOnlyResources prometheus.Gauge
	// Ready mirrors GET /readiness: 1 ready, 0 not.
	Ready prometheus.Gauge
}

// New registers every metric, the Go runtime and process collectors included.
func New() *Metrics {
	m := &Metrics{
		Registry: prometheus.NewRegistry(),
		BGPPeers: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "tabby_bgp_peers", Help: "BGP sessions by state.",
		}, []string{"state"}),
		Routes: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "tabby_routes", Help: "Routes tabby wants in the kernel, by kind.",
		}, []string{"kind"}),
		ReconcileDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "tabby_reconcile_duration_seconds",
			Help:    "Time one reconcile of a subsystem took.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}, []string{"subsystem"}),
		DatastoreErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tabby_datastore_errors_total", Help: "Failed etcd requests and broken watches.",
		}),
		InvalidResources: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "tabby_invalid_resources", Help: "Stored documents refused as invalid right now.",
		}),
		InvalidResourcesSeen: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tabby_invalid_resources_seen_total", Help: "Invalid document versions seen since start.",
		}),
		StoredOnlyResources: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "tabby_stored_only_resources", Help: "Resources in force that set fields tabby stores but does not act on.",
		}),
		Ready: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "tabby_ready", Help: "1 when the daemon is ready (GET /readiness), else 0.",
		}),
	}
	m.Registry.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		m.BGPPeers, m.Routes, m.ReconcileDuration, m.DatastoreErrors,
		m.InvalidResources, m.InvalidResourcesSeen, m.StoredOnlyResources, m.Ready,
	)
	for _, k := range RouteKinds() {
		m.Routes.WithLabelValues(k)
	}
	for _, s := range PeerStates() {
		m.BGPPeers.WithLabelValues(s)
	}
	for _, s := range []string{SubsystemRoutes, SubsystemNAT, SubsystemBGP} {
		m.ReconcileDuration.WithLabelValues(s)
	}
	return m
}

// ObserveReconcile records one reconcile of a subsystem.
func (m *Metrics) ObserveReconcile(subsystem string, d time.Duration) {
	m.ReconcileDuration.WithLabelValues(subsystem).Observe(d.Seconds())
}

// SetRoutes sets the route counts; kinds missing from counts are 0.
func (m *Metrics) SetRoutes(counts map[string]int) {
	for _, k := range RouteKinds() {
		m.Routes.WithLabelValues(k).Set(float64(counts[k]))
	}
	for k, n := range counts {
		m.Routes.WithLabelValues(k).Set(float64(n))
	}
}

// SetPeers sets the session counts; states missing from counts are 0.
func (m *Metrics) SetPeers(counts map[string]int) {
	for _, s := range PeerStates() {
		m.BGPPeers.WithLabelValues(s).Set(float64(counts[s]))
	}
	for s, n := range counts {
		m.BGPPeers.WithLabelValues(s).Set(float64(n))
	}
}

// SetReady mirrors the readiness verdict.
func (m *Metrics) SetReady(ready bool) {
	if ready {
		m.Ready.Set(1)
	} else {
		m.Ready.Set(0)
	}
}

// Handler serves /metrics in the Prometheus text format.
func (m *Metrics) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(m.Registry, promhttp.HandlerOpts{Registry: m.Registry}))
	return mux
}
