package routing

import (
	"context"
	"fmt"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// CleanupReport says what Cleanup removed.
type CleanupReport struct {
	Routes   int
	Nexthops int
	// VXLANDeleted: vxlan.tabby existed and was deleted.
	VXLANDeleted bool
	// Tunl0 is what happened to tunl0: "absent", "deleted", or "stripped" (the ipip
	// module's fallback device cannot be deleted: its addresses were removed, it was set
	// down and given its default MTU back instead).
	Tunl0 string
}

// Cleanup removes everything tabby installs in the namespace of h (for `tabbyd cleanup`):
// every route with tabby's protocol in any table, every nexthop object with it, vxlan.tabby,
// and tunl0. h must be bound to the caller's namespace. tunl0 is deleted;
// when it is the ipip module's fallback device the kernel ignores the delete, so its IPv4
// addresses (tabby's tunnel address) are removed, it is set down and its MTU goes back to
// the kernel's default (1480). Routes of other
// protocols are never touched.
func Cleanup(ctx context.Context, h *netlink.Handle, protocol int) (CleanupReport, error) {
	nl, err := newRTNL(h, nil)
	if err != nil {
		return CleanupReport{}, err
	}
	defer nl.Close()
	return cleanup(ctx, nl, protocol)
}

func cleanup(ctx context.Context, nl netlinker, protocol int) (CleanupReport, error) {
	if protocol == 0 {
		protocol = DefaultProtocol
	}
	rep := CleanupReport{Tunl0: "absent"}
	var ours []netlink.Route
	filter := &netlink.Route{Table: unix.RT_TABLE_UNSPEC, Protocol: netlink.RouteProtocol(protocol)}
	err := nl.RouteListFilteredIter(netlink.FAMILY_V4, filter, netlink.RT_FILTER_TABLE|netlink.RT_FILTER_PROTOCOL, func(r netlink.Route) bool {
		ours = append(ours, r)
		return true
	})
	if err != nil {
		return rep, fmt.Errorf("list routes: %w", err)
	}
	for i, r := range ours {
		if i%ctxCheckEvery == 0 && ctx.Err() != nil {
			return rep, ctx.Err()
		}
		del := &netlink.Route{Dst: r.Dst, Priority: r.Priority, Table: r.Table, Protocol: r.Protocol, Tos: r.Tos, Scope: netlink.SCOPE_NOWHERE}
		if err := nl.RouteDel(del); err != nil && !isGone(err) {
			return rep, fmt.Errorf("delete route %s: %w", r.Dst, err)
		}
		rep.Routes++
	}
	// After the routes: deleting a nexthop object deletes the routes that use it.
	var ids []uint32
	err = nl.NexthopDump(func(nh nexthop) bool {
		if nh.Protocol == protocol {
			ids = append(ids, nh.ID)
		}
		return true
	})
	if err != nil && !isNexthopUnsupported(err) {
		return rep, fmt.Errorf("list nexthop objects: %w", err)
	}
	for _, id := range ids {
		if err := nl.NexthopDel(id); err != nil && !isGone(err) {
			return rep, fmt.Errorf("delete nexthop %d: %w", id, err)
		}
		rep.Nexthops++
	}

	if link, err := nl.LinkByName(DeviceVXLAN); err == nil {
		if err := nl.LinkDel(link); err != nil && !isGone(err) {
			return rep, fmt.Errorf("delete %s: %w", DeviceVXLAN, err)
		}
		rep.VXLANDeleted = true
	} else if !isNotFound(err) {
		return rep, fmt.Errorf("look up %s: %w", DeviceVXLAN, err)
	}

	link, err := nl.LinkByName(DeviceIPIP)
	if err != nil {
		if isNotFound(err) {
			return rep, nil
		}
		return rep, fmt.Errorf("look up %s: %w", DeviceIPIP, err)
	}
	if err := nl.LinkDel(link); err != nil && !isGone(err) {
		return rep, fmt.Errorf("delete %s: %w", DeviceIPIP, err)
	}
	link, err = nl.LinkByName(DeviceIPIP)
	switch {
	case isNotFound(err):
		rep.Tunl0 = "deleted"
		return rep, nil
	case err != nil:
		return rep, fmt.Errorf("look up %s: %w", DeviceIPIP, err)
	}
	if err := strip(nl, link, nil); err != nil {
		return rep, err
	}
	rep.Tunl0 = "stripped"
	return rep, nil
}
