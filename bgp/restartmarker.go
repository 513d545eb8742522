package bgp

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"time"
)

// RestartMarkerName is the graceful-restart marker's file name in the run directory.
const RestartMarkerName = "bgp-restart"

// restartMarker is the file that tells a starting tabbyd whether it is restarting. It is
// written as soon as the BGP server runs and removed only by a deliberate, non-graceful
// Stop; a tabbyd that exits any other way (SIGTERM, a crash, kill -9) leaves it, so the next
// one sets the Restart State bit and its peers keep its routes until it has resent them.
// The run directory is a tmpfs (/run/tabby), so a reboot is a cold start.
type restartMarker struct {
	path string // empty: no marker, every start is a cold start
}

func newRestartMarker(runDir string) restartMarker {
	if runDir == "" {
		return restartMarker{}
	}
	return restartMarker{path: filepath.Join(runDir, RestartMarkerName)}
}

// exists reports whether a previous tabbyd left the marker.
func (m restartMarker) exists() (bool, error) {
	if m.path == "" {
		return false, nil
	}
	_, err := os.Stat(m.path)
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, fs.ErrNotExist):
		return false, nil
	}
	return false, fmt.Errorf("graceful-restart marker: %w", err)
}

// write records that a BGP server runs in this process.
func (m restartMarker) write() error {
	if m.path == "" {
		return nil
	}
	if err := os.MkdirAll(filepath.Dir(m.path), 0o755); err != nil {
		return fmt.Errorf("graceful-restart marker: %w", err)
	}
	content := "pid " + strconv.Itoa(os.Getpid()) + " started " + time.Now().UTC().Format(time.RFC3339) + "\n"
	if err := os.WriteFile(m.path, []byte(content), 0o644); err != nil {
		return fmt.Errorf("graceful-restart marker: %w", err)
	}
	return nil
}

// remove deletes the marker after a deliberate stop; an absent marker is fine.
func (m restartMarker) remove() error {
	if m.path == "" {
		return nil
	}
	if err := os.Remove(m.path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("graceful-restart marker: %w", err)
	}
	return nil
}
