package daemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/tabby-net/tabby/bgp"
	"github.com/tabby-net/tabby/internal/statusapi"
	"github.com/tabby-net/tabby/nat"
	"github.com/tabby-net/tabby/routing"
)

// Cleanup removes everything tabby installed on this host, in the calling process's
// network namespace (`tabbyd cleanup`): every route with tabby's protocol, vxlan.tabby and
// tunl0, tabby's iptables chains and rules and its ipsets, and the BGP graceful-restart
// marker (the next start is a cold one). Routes, rules and sets of others are left alone.
// It refuses to run while a tabbyd answers on the status socket: that daemon would put
// everything back. What was removed is written to out.
func Cleanup(ctx context.Context, cfg *Config, log *slog.Logger, out io.Writer) error {
	fctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	_, err := statusapi.Fetch(fctx, cfg.StatusSocket)
	cancel()
	if err == nil {
		return fmt.Errorf("tabbyd is running (its status socket %s answers): stop it first", cfg.StatusSocket)
	}

	h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return fmt.Errorf("netlink: %w", err)
	}
	defer h.Close()
	var errs []error
	rep, err := routing.Cleanup(ctx, h, cfg.Data.RouteProtocol)
	fmt.Fprintf(out, "routes with protocol %d removed: %d\n", cfg.Data.RouteProtocol, rep.Routes)
	fmt.Fprintf(out, "nexthop objects with protocol %d removed: %d\n", cfg.Data.RouteProtocol, rep.Nexthops)
	if rep.VXLANDeleted {
		fmt.Fprintf(out, "device %s removed\n", routing.DeviceVXLAN)
	}
	switch rep.Tunl0 {
	case "deleted":
		fmt.Fprintf(out, "device %s removed\n", routing.DeviceIPIP)
	case "stripped":
		fmt.Fprintf(out, "device %s (the ipip module's own) set down and its tunnel address removed\n", routing.DeviceIPIP)
	}
	if err != nil {
		errs = append(errs, fmt.Errorf("routes and devices: %w", err))
	}

	if err := nat.Cleanup(ctx, nat.Options{Backend: cfg.Data.IPTablesBackend, Logger: log}); err != nil {
		errs = append(errs, fmt.Errorf("NAT: %w", err))
	} else {
		fmt.Fprintln(out, "iptables chains and rules of tabby and its ipsets removed")
	}

	marker := filepath.Join(cfg.RunDir, bgp.RestartMarkerName)
	switch err := os.Remove(marker); {
	case err == nil:
		fmt.Fprintf(out, "BGP graceful-restart marker %s removed\n", marker)
	case !errors.Is(err, fs.ErrNotExist):
		errs = append(errs, fmt.Errorf("BGP graceful-restart marker: %w", err))
	}
	return errors.Join(errs...)
}
