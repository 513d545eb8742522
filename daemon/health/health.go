// Package health keeps tabbyd's liveness and readiness verdicts and serves them over HTTP
// (SPEC §9): GET /liveness answers 200 "ok" while every registered loop keeps ticking;
// GET /readiness answers 200 "ready", or 503 with one reason per line.
//
// The parts of the daemon report into it (a condition per part, a heartbeat per loop); it
// never asks them, so a stuck part cannot block a probe.
package health

import (
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"
)

// Health holds the current conditions and heartbeats. The zero value is not usable: New.
type Health struct {
	now func() time.Time

	mu sync.Mutex
	// conditions maps a part of the daemon to why it is not ready ("" = ready); order
	// keeps the reasons in the order the parts first reported, so the text is stable.
	conditions map[string]string
	order      []string
	beats      map[string]beat
	changed    chan struct{}
}

type beat struct {
	last   time.Time
	within time.Duration
}

// New returns an empty Health: ready and alive until told otherwise.
func New() *Health {
	return &Health{
		now:        time.Now,
		conditions: map[string]string{},
		beats:      map[string]beat{},
		changed:    make(chan struct{}, 1),
	}
}

// Set records why part is not ready; reason "" marks it ready. Several reasons of one part
// are joined by newlines and listed one per line.
func (h *Health) Set(part, reason string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	old, known := h.conditions[part]
	if !known {
		h.order = append(h.order, part)
	}
	h.conditions[part] = reason
	if old != reason || !known {
		select {
		case h.changed <- struct{}{}:
		default:
		}
	}
}

// Changed is signalled (coalesced) whenever a condition changes.
func (h *Health) Changed() <-chan struct{} { return h.changed }

// Ready returns the verdict and, when not ready, the reasons.
func (h *Health) Ready() (bool, []string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	var reasons []string
	for _, part := range h.order {
		for line := range strings.SplitSeq(h.conditions[part], "\n") {
			if line != "" && !slices.Contains(reasons, line) {
				reasons = append(reasons, line)
			}
		}
	}
	return len(reasons) == 0, reasons
}

// Beat says that loop is alive and will beat again within the given time.
func (h *Health) Beat(loop string, within time.Duration) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.beats[loop] = beat{last: h.now(), within: within}
}

// Forget stops watching a loop that ended on purpose.
func (h *Health) Forget(loop string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	delete(h.beats, loop)
}

// Alive reports whether every loop beat in time, and names the ones that did not.
func (h *Health) Alive() (bool, []string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	now := h.now()
	var stuck []string
	for loop, b := range h.beats {
		if late := now.Sub(b.last); late > b.within {
			stuck = append(stuck, fmt.Sprintf("%s has not ticked for %s", loop, late.Round(time.Second)))
		}
	}
	slices.Sort(stuck)
	return len(stuck) == 0, stuck
}

// Handler serves /liveness and /readiness.
func (h *Health) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /liveness", func(w http.ResponseWriter, _ *http.Request) {
		ok, stuck := h.Alive()
		write(w, ok, "ok", stuck)
	})
	mux.HandleFunc("GET /readiness", func(w http.ResponseWriter, _ *http.Request) {
		ok, reasons := h.Ready()
		write(w, ok, "ready", reasons)
	})
	return mux
}

func write(w http.ResponseWriter, ok bool, good string, reasons []string) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	if ok {
		w.WriteHeader(http.StatusOK)
		fmt.Fprintln(w, good)
		return
	}
	w.WriteHeader(http.StatusServiceUnavailable)
	for _, r := range reasons {
		fmt.Fprintln(w, r)
	}
}
