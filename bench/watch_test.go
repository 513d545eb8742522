package bench

import (
	"fmt"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// routeWatch timestamps, through a netlink route subscription inside a namespace, the
// first arrival and the last removal of every route with tabby's protocol to a
// destination inside the pool. The subscription sees the kernel's own notifications, so
// a route counts once the kernel has it, whoever asked for it.
type routeWatch struct {
	stop     chan struct{}
	stopOnce sync.Once

	mu      sync.Mutex
	added   map[netip.Prefix]time.Time
	removed map[netip.Prefix]time.Time
	present int
	total   uint64        // every notification counted, additions and removals
	changed chan struct{} // closed and replaced on every change
	err     error
}

// watchRoutes subscribes to route changes in a namespace. The receive buffer is made
// large (as root, forced) so that a burst of 100,000 routes is not lost to ENOBUFS; a
// lost notification is reported, never silently ignored.
func watchRoutes(tb testing.TB, ns string) *routeWatch {
	tb.Helper()
	h, err := netns.GetFromName(ns)
	if err != nil {
		tb.Fatal(err)
	}
	defer h.Close()
	w := &routeWatch{
		stop:    make(chan struct{}),
		added:   map[netip.Prefix]time.Time{},
		removed: map[netip.Prefix]time.Time{},
		changed: make(chan struct{}),
	}
	ch := make(chan netlink.RouteUpdate, 4096)
	err = netlink.RouteSubscribeWithOptions(ch, w.stop, netlink.RouteSubscribeOptions{
		Namespace:              &h,
		ReceiveBufferSize:      64 << 20,
		ReceiveBufferForceSize: true,
		ErrorCallback: func(err error) {
			w.mu.Lock()
			if w.err == nil {
				w.err = fmt.Errorf("route subscription in %s: %w", ns, err)
			}
			w.mu.Unlock()
		},
	})
	if err != nil {
		tb.Fatalf("route subscription in %s: %v", ns, err)
	}
	tb.Cleanup(w.close)
	go w.loop(ch)
	return w
}

func (w *routeWatch) loop(ch <-chan netlink.RouteUpdate) {
	for u := range ch {
		now := time.Now()
		if u.Protocol != routeProto || u.Dst == nil || (u.Table != 0 && u.Table != unix.RT_TABLE_MAIN) {
			continue
		}
		ones, _ := u.Dst.Mask.Size()
		a, ok := netip.AddrFromSlice(u.Dst.IP)
		if !ok {
			continue
		}
		dst := netip.PrefixFrom(a.Unmap(), ones)
		if !poolCIDR.Contains(dst.Addr()) {
			continue
		}
		w.mu.Lock()
		w.total++
		switch u.Type {
		case unix.RTM_NEWROUTE:
			if _, seen := w.added[dst]; !seen {
				w.added[dst] = now
				w.present++
			}
		case unix.RTM_DELROUTE:
			if _, seen := w.added[dst]; seen {
				delete(w.added, dst)
				w.present--
			}
			w.removed[dst] = now
		}
		close(w.changed)
		w.changed = make(chan struct{})
		w.mu.Unlock()
	}
}

// close ends the subscription.
func (w *routeWatch) close() { w.stopOnce.Do(func() { close(w.stop) }) }

// events is the number of route notifications seen so far.
func (w *routeWatch) events() uint64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.total
}

// waitPresent waits until n routes are present and returns the time the last of them
// arrived.
func (w *routeWatch) waitPresent(n int, timeout time.Duration) (time.Time, error) {
	return w.waitCond(timeout, fmt.Sprintf("%d routes", n), func() (time.Time, bool) {
		if w.present < n {
			return time.Time{}, false
		}
		var last time.Time
		for _, t := range w.added {
			if t.After(last) {
				last = t
			}
		}
		return last, true
	})
}

// waitAdded waits until every prefix in dsts has arrived and returns their arrival times.
func (w *routeWatch) waitAdded(dsts []netip.Prefix, timeout time.Duration) (map[netip.Prefix]time.Time, error) {
	out := map[netip.Prefix]time.Time{}
	_, err := w.waitCond(timeout, fmt.Sprintf("%d new routes", len(dsts)), func() (time.Time, bool) {
		for _, d := range dsts {
			t, ok := w.added[d]
			if !ok {
				return time.Time{}, false
			}
			out[d] = t
		}
		return time.Time{}, true
	})
	return out, err
}

// waitRemoved waits until none of dsts is present and returns their removal times.
func (w *routeWatch) waitRemoved(dsts []netip.Prefix, timeout time.Duration) (map[netip.Prefix]time.Time, error) {
	out := map[netip.Prefix]time.Time{}
	_, err := w.waitCond(timeout, fmt.Sprintf("%d routes removed", len(dsts)), func() (time.Time, bool) {
		for _, d := range dsts {
			if _, ok := w.added[d]; ok {
				return time.Time{}, false
			}
			t, ok := w.removed[d]
			if !ok {
				return time.Time{}, false
			}
			out[d] = t
		}
		return time.Time{}, true
	})
	return out, err
}

func (w *routeWatch) waitCond(timeout time.Duration, what string, cond func() (time.Time, bool)) (time.Time, error) {
	deadline := time.After(timeout)
	for {
		w.mu.Lock()
		if w.err != nil {
			err := w.err
			w.mu.Unlock()
			return time.Time{}, err
		}
		t, ok := cond()
		changed := w.changed
		present := w.present
		w.mu.Unlock()
		if ok {
			return t, nil
		}
		select {
		case <-changed:
		case <-deadline:
			return time.Time{}, fmt.Errorf("waiting for %s: %d routes present after %s", what, present, timeout)
		}
	}
}
