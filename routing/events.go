package routing

import (
	"bytes"
	"net"
	"net/netip"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// handleRoute folds one route or nexthop notification into the record. The kernel also
// echoes the reconciler's own changes; those match the record and cost nothing. Anything
// else that touches a route of tabby's (someone deleted or rewrote it), a nexthop object of
// tabby's, or a prefix tabby wants schedules a repair.
func (k *Kernel) handleRoute(u routeUpdate) {
	switch u.Type {
	case unix.RTM_NEWNEXTHOP, unix.RTM_DELNEXTHOP:
		k.handleNexthop(u)
		return
	}
	if u.Route.Table != unix.RT_TABLE_MAIN {
		return
	}
	kr, ok := k.fromKernel(u.Route)
	if !ok {
		return
	}
	key := kr.key()
	now := time.Now()
	if int(u.Route.Protocol) != k.proto {
		if !k.inPools(kr.dst) {
			k.signalUnderlay()
		}
		switch u.Type {
		case unix.RTM_DELROUTE:
			if _, ok := k.rec.conflicts[key]; ok {
				// The route that held a wanted prefix is gone: tabby's can go in.
				delete(k.rec.conflicts, key)
				k.routes.Mark(key)
				k.askRepair(now)
			}
		case unix.RTM_NEWROUTE:
			if _, ours := k.routes.Installed(key); ours && u.NlFlags&unix.NLM_F_REPLACE != 0 {
				// Someone replaced tabby's route with their own: theirs stays.
				k.delRoute(key)
				k.rec.conflicts[key] = int(u.Route.Protocol)
				k.routes.Mark(key)
				k.askRepair(now)
			}
		}
		return
	}
	have, known := k.routes.Installed(key)
	switch u.Type {
	case unix.RTM_DELROUTE:
		if known && sameNextHop(have.kr, kr) {
			k.delRoute(key)
			k.routes.Mark(key)
			k.askRepair(now)
		}
	case unix.RTM_NEWROUTE:
		if known && have.kr == kr {
			return // the echo of our own change
		}
		k.putRoute(key, routeEntry{kr: kr, kind: have.kind, adopted: !known || have.adopted})
		k.routes.Mark(key)
		k.askRepair(now)
	}
}

// sameNextHop compares what identifies a route in a delete notification.
func sameNextHop(a, b kroute) bool {
	return a.dst == b.dst && a.metric == b.metric && a.blackhole == b.blackhole && a.gw == b.gw && a.link == b.link && a.nhid == b.nhid
}

// handleNexthop follows the nexthop objects of the namespace. Deleting one of tabby's
// deletes the routes that use it, which the kernel does not announce: they are forgotten
// and repaired. One of tabby's ids rewritten by someone else is taken for what it now is,
// so that its routes move to an object that holds what they need. Other ids are noted so
// that they are never allocated.
func (k *Kernel) handleNexthop(u routeUpdate) {
	nh := u.Nexthop
	e, ours := k.rec.nexthops[nh.ID]
	switch u.Type {
	case unix.RTM_DELNEXTHOP:
		delete(k.rec.nhForeign, nh.ID)
		if ours {
			k.dropNexthop(nh.ID)
			k.askRepair(time.Now())
		}
	case unix.RTM_NEWNEXTHOP:
		key := nhKey{gw: nh.Gw, link: nh.LinkIndex, onlink: nh.OnLink}
		switch {
		case !ours:
			k.rec.nhForeign[nh.ID] = struct{}{}
		case e.key == key && nh.Protocol == k.proto && !nh.Other:
			// the echo of tabby's own add
		default:
			k.dropNexthop(nh.ID)
			k.rec.nhForeign[nh.ID] = struct{}{}
			k.askRepair(time.Now())
		}
	}
}

func (k *Kernel) inPools(p netip.Prefix) bool {
	for _, pool := range k.pools {
		if pool.Bits() <= p.Bits() && pool.Contains(p.Addr()) {
			return true
		}
	}
	return false
}

// handleLink reacts to a change of a device tabby's routes use (tunl0, vxlan.tabby, the
// NIC, any device a route names). IPv4 silently drops the routes of a device that goes down
// or away, so anything but the echo of tabby's own settings leads to a full resync, which
// reads the table again and re-adds what is missing.
func (k *Kernel) handleLink(u netlink.LinkUpdate) {
	a := u.Link.Attrs()
	if a == nil {
		return
	}
	var dev *devRecord
	switch {
	case a.Name == DeviceIPIP || (k.rec.ipip.index != 0 && a.Index == k.rec.ipip.index):
		dev = &k.rec.ipip
	case a.Name == DeviceVXLAN || (k.rec.vxlan.index != 0 && a.Index == k.rec.vxlan.index):
		dev = &k.rec.vxlan
	}
	cached, isCached := k.rec.links[a.Name]
	if dev == nil && !isCached && !k.linkCached(a.Index) {
		return
	}
	up := a.Flags&net.FlagUp != 0
	if u.Header.Type == unix.RTM_NEWLINK && up {
		switch {
		case dev == &k.rec.ipip && dev.ok && dev.index == a.Index && (dev.ipip.MTU == 0 || dev.ipip.MTU == a.MTU):
			return
		case dev == &k.rec.vxlan && dev.ok && dev.index == a.Index && (dev.vxlan.MTU == 0 || dev.vxlan.MTU == a.MTU) &&
			bytes.Equal(dev.vxlan.MAC, a.HardwareAddr):
			return
		case dev == nil && isCached && cached == a.Index:
			// The NIC or another device routes use, still there and up; its MTU may have
			// changed, which the host MTU follows.
			k.signalUnderlay()
			return
		}
	}
	if u.Header.Type == unix.RTM_DELLINK {
		// Gone, with its routes, neighbours and FDB entries. Indexes are not reused, so this
		// is safe to act on even when the notification is late (the echo of a recreation
		// names the old index, whose routes are gone already).
		if dev != nil && dev.index == a.Index {
			dev.ok = false
		}
		if isCached && cached == a.Index {
			k.rec.dropLink(a.Name)
		}
		k.forgetLink(a.Index)
		k.signalUnderlay()
		k.askRepair(time.Now())
		return
	}
	// Down, or changed: IPv4 has dropped the device's routes if it went down, but this
	// notification may be the late echo of tabby's own creation of the device, so only a
	// fresh dump can tell what is missing.
	k.signalUnderlay()
	k.askFull(time.Now())
}

// linkCached reports whether a device with this index is one whose index routes use.
func (k *Kernel) linkCached(index int) bool {
	for _, idx := range k.rec.links {
		if idx == index {
			return true
		}
	}
	return false
}
