// Package sdnotify tells systemd how tabbyd is doing (SPEC §9): READY=1 once, after the
// first full convergence; STATUS= lines when the one-line summary changes; WATCHDOG=1 at
// half the unit's WatchdogSec, but only while the daemon's loops are alive, so that systemd
// restarts a daemon that hangs rather than one that merely runs.
//
// Outside systemd (no NOTIFY_SOCKET) every call is a no-op.
package sdnotify

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
)

// Notifier sends notifications to the service manager.
type Notifier struct {
	log *slog.Logger

	mu     sync.Mutex
	ready  bool
	status string
}

// New returns a notifier that logs failed notifications to log.
func New(log *slog.Logger) *Notifier { return &Notifier{log: log} }

// Ready sends READY=1 (with the current status) the first time it is called.
func (n *Notifier) Ready() {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.ready {
		return
	}
	n.ready = true
	n.send("READY=1\nSTATUS=" + n.status)
}

// Status sends STATUS=<text> when text differs from the last status sent.
func (n *Notifier) Status(text string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if text == n.status {
		return
	}
	n.status = text
	n.send("STATUS=" + text)
}

// Stopping sends STOPPING=1.
func (n *Notifier) Stopping() {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.send("STOPPING=1")
}

// RunWatchdog sends WATCHDOG=1 at half the interval the unit asks for, each time alive
// says yes, until ctx ends. It returns at once when the unit has no watchdog.
func (n *Notifier) RunWatchdog(ctx context.Context, alive func() bool) {
	interval, err := daemon.SdWatchdogEnabled(false)
	if err != nil {
		n.log.Warn("systemd watchdog settings unreadable", "err", err)
		return
	}
	if interval <= 0 {
		return
	}
	t := time.NewTicker(interval / 2)
	defer t.Stop()
	for {
		if alive() {
			n.mu.Lock()
			n.send("WATCHDOG=1")
			n.mu.Unlock()
		} else {
			n.log.Warn("not feeding the systemd watchdog: a main loop is stuck")
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// send must be called with mu held: notifications stay in the order they were made.
func (n *Notifier) send(state string) {
	if _, err := daemon.SdNotify(false, state); err != nil {
		n.log.Warn("systemd notification failed", "state", state, "err", err)
	}
}
