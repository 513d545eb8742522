package daemon

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"

	"github.com/tabby-net/tabby/daemon/internal/httpserve"
	"github.com/tabby-net/tabby/daemon/statussock"
)

// listenHTTP opens a TCP listener for one of the daemon's HTTP endpoints. It is done at
// start, before anything else, so that a port already taken is a clear start-up failure.
func listenHTTP(ctx context.Context, what, addr string) (net.Listener, error) {
	var lc net.ListenConfig
	l, err := lc.Listen(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("%s listener on %s: %w", what, addr, err)
	}
	return l, nil
}

// serveHTTP serves h on l until ctx ends.
func serveHTTP(ctx context.Context, l net.Listener, h http.Handler, log *slog.Logger) error {
	if err := httpserve.Serve(ctx, l, h, log); err != nil {
		return fmt.Errorf("serve %s: %w", l.Addr(), err)
	}
	return nil
}

// startServers opens the health, metrics and status endpoints and serves them in g. They
// come up before the datastore is reached, so that a daemon waiting for etcd says so.
func (d *daemon) startServers(ctx context.Context, g *group) error {
	if d.cfg.HealthListen != "" {
		l, err := listenHTTP(ctx, "health", d.cfg.HealthListen)
		if err != nil {
			return err
		}
		d.log.Info("health endpoint listening", "addr", l.Addr().String())
		g.Go("health server", func(ctx context.Context) error { return serveHTTP(ctx, l, d.health.Handler(), d.log) })
	}
	if d.cfg.MetricsListen != "" {
		l, err := listenHTTP(ctx, "metrics", d.cfg.MetricsListen)
		if err != nil {
			return err
		}
		d.log.Info("metrics endpoint listening", "addr", l.Addr().String())
		g.Go("metrics server", func(ctx context.Context) error { return serveHTTP(ctx, l, d.metrics.Handler(), d.log) })
	}
	l, err := statussock.Listen(ctx, d.cfg.StatusSocket)
	if err != nil {
		return err
	}
	d.log.Info("status socket listening", "path", d.cfg.StatusSocket)
	g.Go("status socket", func(ctx context.Context) error { return statussock.Serve(ctx, l, d.statusDoc, d.log) })
	return nil
}
