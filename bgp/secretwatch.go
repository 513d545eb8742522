package bgp

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/fsnotify/fsnotify"
)

// How SecretsWatcher turns file events into wake-ups.
const (
	// secretsSettle is how long the secrets directory must be quiet after an event before
	// the watcher tells: an editor that truncates and then writes, or Ansible's write to a
	// temporary file and rename, is one change, and a half-written file is not read as the
	// password (which would drop the session until the next event).
	secretsSettle = 200 * time.Millisecond
	// secretsRetry is how often the watcher tries again to watch a secrets directory that
	// does not exist (yet) or was removed; one connect-retry interval (SPEC §7's default),
	// so that a directory created later still takes effect within one.
	secretsRetry = 5 * time.Second
)

// SecretsWatcher tells when a password file under the secrets directory may have changed
// (SPEC §7: a changed secret file takes effect without a datastore write or a restart).
// It only wakes its reader: the reader computes the BGP configuration again, which reads
// every secret anew (Planner.Config compares them with what it read before), so a wake-up
// too many costs one read of each secret file and changes nothing.
//
// It watches <dir> and every <dir>/<name> directory. A file written in place, a file
// replaced by rename (Ansible, editors) and Kubernetes' secret volume (the "..data"
// symlink swapped by rename inside <dir>/<name>) all give an event there.
type SecretsWatcher struct {
	dir     string
	log     *slog.Logger
	changed chan struct{}
}

// NewSecretsWatcher watches dir once Run runs.
func NewSecretsWatcher(dir string, log *slog.Logger) *SecretsWatcher {
	return &SecretsWatcher{dir: dir, log: log, changed: make(chan struct{}, 1)}
}

// Changed receives a value after a change in the secrets directory has settled. It holds
// at most one: several changes before the reader looks are one wake-up.
func (w *SecretsWatcher) Changed() <-chan struct{} { return w.changed }

// Run watches until ctx ends; it never fails. A missing directory is watched for again
// every secretsRetry; where no inotify watcher can be made (the host's limit of inotify
// instances is reached), it wakes the reader every secretsRetry instead, which reads the
// secrets again: a changed file then takes effect within that interval all the same.
func (w *SecretsWatcher) Run(ctx context.Context) error {
	fw, err := fsnotify.NewWatcher()
	if err != nil {
		w.log.Warn("cannot watch the BGP secrets directory; reading the secrets again at every interval instead", "dir", w.dir, "every", secretsRetry, "err", err)
		w.poll(ctx)
		return nil
	}
	defer fw.Close()

	watching := w.watchAll(fw, false)
	retry := time.NewTicker(secretsRetry)
	defer retry.Stop()
	// Armed by each event; stopped until the first (since Go 1.23 a stopped timer's
	// channel delivers nothing stale).
	settle := time.NewTimer(time.Hour)
	settle.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-fw.Events:
			if !ok {
				return nil
			}
			if ev.Name == w.dir && ev.Has(fsnotify.Remove|fsnotify.Rename) {
				watching = false // the directory itself went: look for it again
			}
			if ev.Has(fsnotify.Create) {
				// A new <name> directory (or the directory replaced by rename): watch it.
				watching = w.watchAll(fw, watching)
			}
			settle.Reset(secretsSettle)
		case err, ok := <-fw.Errors:
			if !ok {
				return nil
			}
			// An overflowed queue lost events: read every secret again to be sure.
			w.log.Warn("watching the BGP secrets directory", "dir", w.dir, "err", err)
			settle.Reset(secretsSettle)
		case <-retry.C:
			if !watching {
				if watching = w.watchAll(fw, false); watching {
					settle.Reset(secretsSettle)
				}
			}
		case <-settle.C:
			w.wake()
		}
	}
}

// poll wakes the reader every secretsRetry until ctx ends.
func (w *SecretsWatcher) poll(ctx context.Context) {
	tick := time.NewTicker(secretsRetry)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			w.wake()
		}
	}
}

// wake tells the reader, unless a wake-up is already waiting for it.
func (w *SecretsWatcher) wake() {
	select {
	case w.changed <- struct{}{}:
	default:
	}
}

// watchAll adds the secrets directory and each directory in it to fw, and reports whether
// the secrets directory is watched. Adding a path already watched changes nothing.
// wasWatching keeps a missing directory from being logged at every retry.
func (w *SecretsWatcher) watchAll(fw *fsnotify.Watcher, wasWatching bool) bool {
	if err := fw.Add(w.dir); err != nil {
		if wasWatching || !errors.Is(err, os.ErrNotExist) {
			w.log.Warn("cannot watch the BGP secrets directory; looking again every interval", "dir", w.dir, "every", secretsRetry, "err", err)
		}
		return false
	}
	entries, err := os.ReadDir(w.dir)
	if err != nil {
		w.log.Warn("reading the BGP secrets directory", "dir", w.dir, "err", err)
		return true
	}
	for _, e := range entries {
		sub := filepath.Join(w.dir, e.Name())
		// A <name> directory, or a symlink to one: Stat follows it.
		if st, err := os.Stat(sub); err != nil || !st.IsDir() {
			continue
		}
		if err := fw.Add(sub); err != nil {
			w.log.Warn("cannot watch a BGP secrets directory", "dir", sub, "err", err)
		}
	}
	return true
}
