package metrics

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

func TestMetricsExposition(t *testing.T) {
	t.Parallel()
	m := New()
	m.SetRoutes(map[string]int{"vxlan": 3, "blackhole": 1})
	m.SetPeers(map[string]int{"up": 2, "active": 1})
	m.ObserveReconcile(SubsystemRoutes, 3*time.Millisecond)
	m.DatastoreErrors.Inc()
	m.InvalidResources.Set(2)
	m.InvalidResourcesSeen.Add(2)
	m.SetReady(true)

	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	body, _ := io.ReadAll(rec.Result().Body)
	text := string(body)
	for _, want := range []string{
		`tabby_routes{kind="vxlan"} 3`,
		`tabby_routes{kind="blackhole"} 1`,
		`tabby_routes{kind="ipip"} 0`,
		`tabby_bgp_peers{state="up"} 2`,
		`tabby_bgp_peers{state="idle"} 0`,
		`tabby_reconcile_duration_seconds_count{subsystem="routes"} 1`,
		`tabby_reconcile_duration_seconds_count{subsystem="nat"} 0`,
		`tabby_datastore_errors_total 1`,
		`tabby_invalid_resources 2`,
		`tabby_invalid_resources_seen_total 2`,
		`tabby_ready 1`,
		`go_goroutines `,
		`process_start_time_seconds `,
	} {
		if !strings.Contains(text, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	// Two daemons in one process must not share a registry.
	if New().Registry == m.Registry {
		t.Error("registries are shared")
	}
}
