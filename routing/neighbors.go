package routing

import (
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// The neighbours and FDB entries of vxlan.tabby: for every remote VTEP, the MAC of its
// tunnel address (a permanent neighbour) and the underlay address that MAC lives at (an
// FDB entry). flannel's order holds: both are written before any route through
// vxlan.tabby needs them, and deleted only after the routes that used them.

// resyncNeighbors replaces the record of vxlan.tabby's neighbours and FDB entries by what
// the kernel holds.
func (k *Kernel) resyncNeighbors() error {
	neighs := map[netip.Addr]string{}
	fdb := map[string]netip.Addr{}
	if k.rec.vxlan.ok {
		idx := k.rec.vxlan.index
		list, err := k.nl.NeighList(idx, netlink.FAMILY_V4)
		if err != nil {
			return fmt.Errorf("list neighbours of %s: %w", DeviceVXLAN, err)
		}
		for _, n := range list {
			ip, ok := netip.AddrFromSlice(n.IP)
			if ok && n.State&netlink.NUD_PERMANENT != 0 && len(n.HardwareAddr) == 6 {
				neighs[ip.Unmap()] = string(n.HardwareAddr)
			}
		}
		list, err = k.nl.NeighList(idx, unix.AF_BRIDGE)
		if err != nil {
			return fmt.Errorf("list FDB entries of %s: %w", DeviceVXLAN, err)
		}
		for _, n := range list {
			ip, ok := netip.AddrFromSlice(n.IP)
			if ok && len(n.HardwareAddr) == 6 {
				fdb[string(n.HardwareAddr)] = ip.Unmap()
			}
		}
	}
	k.neighs.ReplaceInstalled(neighs)
	k.fdb.ReplaceInstalled(fdb)
	return nil
}

// addNeighbors writes the neighbour, then the FDB entry, of every remote VTEP that needs
// it, before any route through vxlan.tabby needs them. It returns false when vxlan.tabby
// is not there to hold them: nothing was visited.
func (k *Kernel) addNeighbors(rep *passReport, want *State) bool {
	if want.VXLAN == nil || !k.rec.vxlan.ok {
		return false
	}
	idx := k.rec.vxlan.index
	k.neighs.Add(func(ip netip.Addr, mac string) error {
		if err := k.nl.NeighSet(neighbor(idx, ip, []byte(mac))); err != nil {
			return fmt.Errorf("neighbour %s: %w", ip, err)
		}
		return nil
	}, rep.fail)
	k.fdb.Add(func(mac string, dst netip.Addr) error {
		if err := k.nl.NeighSet(fdbNeigh(idx, []byte(mac), dst)); err != nil {
			return fmt.Errorf("fdb %s: %w", net.HardwareAddr(mac), err)
		}
		return nil
	}, rep.fail)
	return true
}

// deleteNeighbors removes the FDB entries, then the neighbours, that are no longer wanted.
// When vxlan.tabby itself goes, its entries go with it. It returns false when it did not
// look (the device is not there, or deletes wait for the first full sync).
func (k *Kernel) deleteNeighbors(rep *passReport, want *State, sweep bool) bool {
	if !sweep || !k.rec.vxlan.ok || want.VXLAN == nil {
		return false
	}
	idx := k.rec.vxlan.index
	k.fdb.Delete(func(mac string, dst netip.Addr) error {
		if err := k.nl.NeighDel(fdbNeigh(idx, []byte(mac), dst)); err != nil && !isGone(err) {
			return fmt.Errorf("delete fdb %s: %w", net.HardwareAddr(mac), err)
		}
		return nil
	}, rep.fail)
	k.neighs.Delete(func(ip netip.Addr, _ string) error {
		err := k.nl.NeighDel(&netlink.Neigh{LinkIndex: idx, Family: netlink.FAMILY_V4, IP: ip.AsSlice()})
		if err != nil && !isGone(err) {
			return fmt.Errorf("delete neighbour %s: %w", ip, err)
		}
		return nil
	}, rep.fail)
	return true
}

// neighbor is the permanent neighbour entry that maps a remote VTEP's tunnel address to
// its MAC on vxlan.tabby (index idx).
func neighbor(idx int, ip netip.Addr, mac []byte) *netlink.Neigh {
	return &netlink.Neigh{
		LinkIndex: idx, Family: netlink.FAMILY_V4, State: netlink.NUD_PERMANENT, Type: unix.RTN_UNICAST,
		IP: ip.AsSlice(), HardwareAddr: mac,
	}
}

// fdbNeigh is the FDB entry that sends frames for a remote VTEP's MAC to its underlay
// address dst.
func fdbNeigh(idx int, mac []byte, dst netip.Addr) *netlink.Neigh {
	return &netlink.Neigh{
		LinkIndex: idx, Family: unix.AF_BRIDGE, State: netlink.NUD_PERMANENT, Flags: netlink.NTF_SELF,
		IP: dst.AsSlice(), HardwareAddr: mac,
	}
}
