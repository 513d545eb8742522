package daemon

import (
	"context"
	"fmt"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/tabby-net/tabby/daemon/autodetect"
	"github.com/tabby-net/tabby/internal/backoff"
)

// detectAddress finds the node address the configuration asks for, in the calling
// process's network namespace.
func detectAddress(h *netlink.Handle, cfg IPv4Config) (autodetect.Result, error) {
	if cfg.HasAddress {
		return autodetect.Fixed(h, cfg.Address)
	}
	return autodetect.Detect(h, cfg.Autodetect)
}

// findAddress detects the node address, retrying with backoff while there is none: at
// boot the NIC may get its address after tabbyd starts. Readiness and the systemd status
// say what is missing meanwhile.
func (d *daemon) findAddress(ctx context.Context) (autodetect.Result, error) {
	h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return autodetect.Result{}, fmt.Errorf("netlink: %w", err)
	}
	defer h.Close()
	// Capped at 10 s, not backoff's 30 s: nothing else starts before the address is found,
	// so a NIC that gets its address late should delay the start by seconds at most.
	bo := backoff.Backoff{Max: 10 * time.Second}
	var lastErr string
	for {
		res, err := detectAddress(h, d.cfg.IPv4)
		if err == nil {
			d.health.Set(partAddress, "")
			d.log.Info("node address", "address", res.Address.String(), "interface", res.Interface)
			return res, nil
		}
		if err.Error() != lastErr {
			lastErr = err.Error()
			d.log.Warn("no node address yet; retrying", "err", err)
			d.health.Set(partAddress, "no node address: "+lastErr)
			d.notify.Status("Waiting for the node address: " + lastErr)
		}
		select {
		case <-ctx.Done():
			return autodetect.Result{}, ctx.Err()
		case <-time.After(bo.Next()):
		}
		d.health.Beat(loopMain, 30*time.Second)
	}
}
