package health

import (
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"
)

func get(t *testing.T, h http.Handler, path string) (int, string) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
	body, _ := io.ReadAll(rec.Result().Body)
	return rec.Code, string(body)
}

func TestReadiness(t *testing.T) {
	t.Parallel()
	h := New()
	srv := h.Handler()
	if code, body := get(t, srv, "/readiness"); code != 200 || body != "ready\n" {
		t.Errorf("empty health: %d %q", code, body)
	}
	h.Set("startup", "not converged yet")
	h.Set("bgp", "BGP not established with 10.30.0.56,10.30.1.66")
	h.Set("dataplane", "kernel has no ipip support")
	code, body := get(t, srv, "/readiness")
	want := "not converged yet\nBGP not established with 10.30.0.56,10.30.1.66\nkernel has no ipip support\n"
	if code != 503 || body != want {
		t.Errorf("readiness = %d %q, want 503 %q", code, body, want)
	}
	select {
	case <-h.Changed():
	default:
		t.Error("Changed not signalled")
	}
	h.Set("startup", "")
	h.Set("bgp", "")
	if ok, reasons := h.Ready(); ok || len(reasons) != 1 || reasons[0] != "kernel has no ipip support" {
		t.Errorf("Ready() = %v %q", ok, reasons)
	}
	h.Set("dataplane", "")
	if code, body := get(t, srv, "/readiness"); code != 200 || body != "ready\n" {
		t.Errorf("all ready again: %d %q", code, body)
	}
}

func TestLiveness(t *testing.T) {
	t.Parallel()
	h := New()
	now := time.Unix(1000, 0)
	h.now = func() time.Time { return now }
	srv := h.Handler()
	h.Beat("main", 10*time.Second)
	if code, body := get(t, srv, "/liveness"); code != 200 || body != "ok\n" {
		t.Errorf("fresh beat: %d %q", code, body)
	}
	now = now.Add(11 * time.Second)
	if code, body := get(t, srv, "/liveness"); code != 503 || body != "main has not ticked for 11s\n" {
		t.Errorf("late beat: %d %q", code, body)
	}
	h.Beat("main", 10*time.Second)
	if ok, _ := h.Alive(); !ok {
		t.Error("not alive after a new beat")
	}
	now = now.Add(time.Hour)
	h.Forget("main")
	if ok, _ := h.Alive(); !ok {
		t.Error("a forgotten loop still counts")
	}
}
