package ipam

import (
	"context"
	"errors"
	"fmt"
	"net/netip"

	"github.com/tabby-net/tabby/datastore"
)

// TunnelKind says which tunnel device an address is for.
type TunnelKind int

const (
	TunnelIPIP TunnelKind = iota + 1
	TunnelVXLAN
)

func (k TunnelKind) String() string {
	switch k {
	case TunnelIPIP:
		return "IPIP"
	case TunnelVXLAN:
		return "VXLAN"
	}
	return fmt.Sprintf("TunnelKind(%d)", int(k))
}

// Handle is the IPAM handle of node's tunnel address, as Calico names it.
func (k TunnelKind) Handle(node string) string {
	switch k {
	case TunnelIPIP:
		return "ipip-tunnel-addr-" + node
	case TunnelVXLAN:
		return "vxlan-tunnel-addr-" + node
	}
	return ""
}

// attrType is the "type" attribute Calico stores with a tunnel address.
func (k TunnelKind) attrType() string {
	switch k {
	case TunnelIPIP:
		return AttrTypeIPIPTunnel
	case TunnelVXLAN:
		return AttrTypeVXLANTunnel
	}
	return ""
}

func (k TunnelKind) validate() error {
	if k != TunnelIPIP && k != TunnelVXLAN {
		return fmt.Errorf("tunnel kind %d is neither IPIP nor VXLAN", int(k))
	}
	return nil
}

// EnsureTunnelAddr makes sure node has exactly one tunnel address of this kind inside one of
// pools and returns it. It is idempotent: an address the handle already holds inside the
// pools is kept; addresses the handle holds outside them (their pool stopped needing a
// tunnel, say) are released, and a new one is assigned when none is left. The first
// assignment claims the node's first block. Writing the address into the Node resource is
// the caller's job.
func (a *Allocator) EnsureTunnelAddr(ctx context.Context, node string, kind TunnelKind, pools []netip.Prefix) (netip.Addr, error) {
	if err := kind.validate(); err != nil {
		return netip.Addr{}, fmt.Errorf("ensure tunnel address: %w", err)
	}
	if err := validName("node name", node); err != nil {
		return netip.Addr{}, fmt.Errorf("ensure %s tunnel address: %w", kind, err)
	}
	if len(pools) == 0 {
		return netip.Addr{}, fmt.Errorf("ensure %s tunnel address of %s: no pools given (use ReleaseTunnelAddr when no pool needs one)", kind, node)
	}
	if err := validPools(pools); err != nil {
		return netip.Addr{}, fmt.Errorf("ensure %s tunnel address of %s: %w", kind, node, err)
	}
	unlock, err := a.lockHost(ctx, node)
	if err != nil {
		return netip.Addr{}, err
	}
	defer unlock()

	handle := kind.Handle(node)
	held, err := a.IPsByHandle(ctx, handle)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("ensure %s tunnel address of %s: %w", kind, node, err)
	}
	var keep netip.Addr
	for _, ip := range held {
		if !keep.IsValid() && inAny(ip, pools) {
			keep = ip
			continue
		}
		if err := a.releaseAddr(ctx, ip, handle); err != nil && !errors.Is(err, ErrNotAssigned) {
			return netip.Addr{}, fmt.Errorf("ensure %s tunnel address of %s: release %s: %w", kind, node, ip, err)
		}
		a.log.Info("released tunnel address outside the tunnel pools", "node", node, "kind", kind, "ip", ip)
	}
	if keep.IsValid() {
		return keep, nil
	}
	ip, err := a.assign(ctx, AssignArgs{
		Handle: handle,
		Node:   node,
		Attrs:  map[string]string{AttrType: kind.attrType()},
		Use:    datastore.UseTunnel,
		Pools:  pools,
	})
	if err != nil {
		return netip.Addr{}, fmt.Errorf("assign %s tunnel address to %s: %w", kind, node, err)
	}
	a.log.Info("assigned tunnel address", "node", node, "kind", kind, "ip", ip)
	return ip, nil
}

// ReleaseTunnelAddr releases node's tunnel address of this kind (no pool needs one any
// more). Releasing an address that is not there is not an error.
func (a *Allocator) ReleaseTunnelAddr(ctx context.Context, node string, kind TunnelKind) error {
	if err := kind.validate(); err != nil {
		return fmt.Errorf("release tunnel address: %w", err)
	}
	if err := validName("node name", node); err != nil {
		return fmt.Errorf("release %s tunnel address: %w", kind, err)
	}
	unlock, err := a.lockHost(ctx, node)
	if err != nil {
		return err
	}
	defer unlock()
	return a.ReleaseByHandle(ctx, kind.Handle(node))
}

func inAny(ip netip.Addr, pools []netip.Prefix) bool {
	for _, p := range pools {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}
