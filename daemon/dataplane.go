package daemon

import (
	"context"
	"fmt"
	"net/netip"
	"path/filepath"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/tabby-net/tabby/bgp"
	"github.com/tabby-net/tabby/daemon/metrics"
	"github.com/tabby-net/tabby/internal/statusapi"
	"github.com/tabby-net/tabby/nat"
	"github.com/tabby-net/tabby/routing"
)

// The subsystems that program the host, as the wiring uses them. They are interfaces so
// that the wiring (readiness, the status document, READY=1) is tested with fakes, without
// root; the host's implementations are routing.Kernel, nat.NAT and bgp.Speaker.

// routeReconciler applies desired kernel states: routes, tunnel devices, neighbours, FDB.
type routeReconciler interface {
	Run(ctx context.Context) error
	Set(routing.State)
	// Synced is closed after the first desired state was applied in full.
	Synced() <-chan struct{}
	// UnderlayChanged fires when the host's own routes or devices change.
	UnderlayChanged() <-chan struct{}
	Status() routing.KernelStatus
}

// hostReader reads what the desired routing state needs to know about the host.
type hostReader interface {
	// Underlay returns the routes of other protocols that tabby's routes resolve through.
	Underlay() ([]routing.UnderlayRoute, error)
	// MTU returns the MTU of the interface holding the node address, and its name.
	MTU(nodeAddr netip.Addr) (mtu int, nic string, err error)
}

// natReconciler applies the desired NAT-outgoing state.
type natReconciler interface {
	Run(ctx context.Context) error
	Set(nat.Desired)
	// FirstSync is closed after the first desired state was applied in full.
	FirstSync() <-chan struct{}
	Status() nat.Status
}

// bgpSpeaker runs the BGP sessions.
type bgpSpeaker interface {
	Run(ctx context.Context) error
	Set(global bgp.Global, peers []bgp.Peer, adverts []netip.Prefix)
	// Learned delivers the latest best paths outside every pool.
	Learned() <-chan []bgp.LearnedRoute
	// Status is the session table. It may block while the speaker is busy; the caller
	// bounds it (see bgpSub.peers).
	Status(ctx context.Context) []statusapi.Peer
}

// dataplane builds the subsystems. hostDataplane is the real one; tests build fakes.
type dataplane struct {
	routes  func(d *daemon) (routeReconciler, hostReader, error)
	nat     func(d *daemon) (natReconciler, error)
	speaker func(d *daemon) bgpSpeaker
}

// hostDataplane programs the network namespace tabbyd runs in.
func hostDataplane() dataplane {
	return dataplane{routes: newKernelRoutes, nat: newHostNAT, speaker: newGoBGPSpeaker}
}

// kernelRoutes is routing.Kernel on a netlink handle that it closes when it stops.
type kernelRoutes struct {
	*routing.Kernel
	h *netlink.Handle
}

func (k kernelRoutes) Run(ctx context.Context) error {
	defer k.h.Close()
	return k.Kernel.Run(ctx)
}

// netlinkHost reads the host through the route reconciler's netlink handle.
type netlinkHost struct {
	h     *netlink.Handle
	proto int
}

func (n netlinkHost) Underlay() ([]routing.UnderlayRoute, error) {
	return routing.ReadUnderlay(n.h, n.proto)
}

func (n netlinkHost) MTU(nodeAddr netip.Addr) (int, string, error) {
	return routing.HostMTU(n.h, nodeAddr)
}

func newKernelRoutes(d *daemon) (routeReconciler, hostReader, error) {
	h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return nil, nil, fmt.Errorf("netlink: %w", err)
	}
	proto := d.cfg.Data.RouteProtocol
	// Only a convenience for `ip route` readers: a failure is reported, not fatal.
	if err := routing.RegisterProtocol(filepath.Join(d.opts.RTProtosDir, routing.ProtocolName+".conf"), proto, routing.ProtocolName); err != nil {
		d.log.Warn("route protocol name not registered; `ip route` shows the number", "err", err)
	}
	refresh := d.cfg.Data.RouteRefreshInterval
	if refresh == 0 {
		// 0 switches the periodic resync off; the reconciler has no such setting, so
		// it gets a period long enough never to matter.
		refresh = 1 << 62
	}
	k, err := routing.NewKernel(routing.KernelOptions{
		Handle:          h,
		Protocol:        proto,
		RefreshInterval: refresh,
		Logger:          d.log,
		ObservePass: func(took time.Duration) {
			d.metrics.ObserveReconcile(metrics.SubsystemRoutes, took)
		},
	})
	if err != nil {
		h.Close()
		return nil, nil, err
	}
	return kernelRoutes{Kernel: k, h: h}, netlinkHost{h: h, proto: proto}, nil
}

func newHostNAT(d *daemon) (natReconciler, error) {
	return nat.New(nat.Options{Backend: d.cfg.Data.IPTablesBackend, Logger: d.log})
}

func newGoBGPSpeaker(d *daemon) bgpSpeaker {
	cfg := d.cfg
	return bgp.NewSpeaker(bgp.SpeakerOptions{
		Logger: d.log,
		RunDir: cfg.RunDir,
		Timers: bgp.Timers{ConnectRetry: cfg.BGP.ConnectRetry, HoldTime: cfg.BGP.HoldTime, KeepaliveInterval: cfg.BGP.Keepalive},
		ObserveReconcile: func(took time.Duration) {
			d.metrics.ObserveReconcile(metrics.SubsystemBGP, took)
		},
	})
}
