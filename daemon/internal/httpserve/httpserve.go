// Package httpserve serves an HTTP handler on a listener for as long as a context lives:
// the daemon's health, metrics and status-socket endpoints all stop the same way.
package httpserve

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"time"
)

// shutdownGrace is how long requests in flight may take once ctx ends: the endpoints
// answer from memory, so anything slower is stuck and not worth holding up the exit.
const shutdownGrace = 2 * time.Second

// Serve serves h on l until ctx ends, then shuts the server down (which closes l; a unix
// socket's file goes with it). It returns nil after a shutdown and the server's error
// otherwise. The server's own log lines go to log at debug level.
func Serve(ctx context.Context, l net.Listener, h http.Handler, log *slog.Logger) error {
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second, ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelDebug)}
	stopped := make(chan struct{})
	defer close(stopped)
	go func() {
		select {
		case <-ctx.Done():
		case <-stopped:
			return
		}
		sctx, cancel := context.WithTimeout(context.Background(), shutdownGrace)
		defer cancel()
		srv.Shutdown(sctx) //nolint:errcheck // best effort at exit
	}()
	if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
