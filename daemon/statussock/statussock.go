// Package statussock serves the daemon's status document (daemon/statusapi) on a unix
// socket for `tabbyctl node status`.
package statussock

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/tabby-net/tabby/daemon/internal/httpserve"
	"github.com/tabby-net/tabby/internal/statusapi"
)

// Mode is the socket file's mode: root and the tabby group may read the status.
const Mode = 0o660

// Listen creates the socket at path. A stale socket file left by a daemon that died is
// removed; a socket another daemon still answers on is an error, and so is any other file
// in its place (it is not ours to delete).
func Listen(ctx context.Context, path string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("status socket directory: %w", err)
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode().Type() != fs.ModeSocket {
			return nil, fmt.Errorf("status socket %s: a file that is not a socket is in the way", path)
		}
		dctx, cancel := context.WithTimeout(ctx, time.Second)
		var d net.Dialer
		c, err := d.DialContext(dctx, "unix", path)
		cancel()
		if err == nil {
			c.Close()
			return nil, fmt.Errorf("status socket %s: another tabbyd is serving on it", path)
		}
		if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("remove stale status socket: %w", err)
		}
	}
	var lc net.ListenConfig
	l, err := lc.Listen(ctx, "unix", path)
	if err != nil {
		return nil, fmt.Errorf("status socket: %w", err)
	}
	if err := os.Chmod(path, Mode); err != nil {
		l.Close()
		return nil, fmt.Errorf("status socket mode: %w", err)
	}
	return l, nil
}

// Serve answers GET statusapi.Path with the document status returns, until ctx ends.
// The socket file is removed when it stops.
func Serve(ctx context.Context, l net.Listener, status func() statusapi.Status, log *slog.Logger) error {
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+statusapi.Path, func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		if err := enc.Encode(status()); err != nil {
			log.Debug("status socket write", "err", err)
		}
	})
	if err := httpserve.Serve(ctx, l, mux, log); err != nil {
		return fmt.Errorf("status socket: %w", err)
	}
	return nil
}
