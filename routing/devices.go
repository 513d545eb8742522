package routing

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// ensureDevices brings tunl0 and vxlan.tabby to the desired configuration when the record
// cannot vouch for them (first pass, full resync, a link event, a changed wish). A kernel
// without the driver is reported once per full resync, and the rest is programmed anyway.
func (k *Kernel) ensureDevices(rep *passReport, want *State, full bool) {
	if d := want.Tunl0; d != nil && (!k.rec.ipip.ok || k.rec.ipip.ipip != *d) && !k.rec.ipip.unsupported {
		idx, err := k.ensureIPIP(*d)
		switch {
		case errors.Is(err, ErrNoIPIP):
			k.rec.ipip = devRecord{unsupported: true}
			if full || k.passes == 0 {
				k.log.Error("cannot create tunl0; IPIP routes are not installed", "err", err)
			}
		case err != nil:
			k.rec.ipip.ok = false
			rep.fail(err)
		default:
			if k.rec.ipip.index != 0 && k.rec.ipip.index != idx {
				k.forgetLink(k.rec.ipip.index)
			}
			k.rec.ipip = devRecord{ok: true, index: idx, ipip: *d}
		}
	}
	if k.rec.ipip.unsupported && want.Tunl0 != nil {
		rep.problem("%v", ErrNoIPIP)
	}

	if d := want.VXLAN; d != nil && (!k.rec.vxlan.ok || !vxlanEqual(&k.rec.vxlan.vxlan, d)) && !k.rec.vxlan.unsupported {
		idx, err := k.ensureVXLAN(rep, *d)
		switch {
		case errors.Is(err, ErrNoVXLAN):
			k.rec.vxlan = devRecord{unsupported: true}
			k.log.Error("cannot create vxlan.tabby; VXLAN routes are not installed", "err", err)
		case err != nil:
			k.rec.vxlan.ok = false
			rep.fail(err)
		default:
			if k.rec.vxlan.index != 0 && k.rec.vxlan.index != idx {
				k.forgetLink(k.rec.vxlan.index)
				rep.redoDevices = true
			}
			k.rec.vxlan = devRecord{ok: true, index: idx, vxlan: *d}
		}
	}
	if k.rec.vxlan.unsupported && want.VXLAN != nil {
		rep.problem("%v", ErrNoVXLAN)
	}
}

func vxlanEqual(a, b *VXLANDevice) bool {
	return a.VNI == b.VNI && a.Port == b.Port && a.Source == b.Source && a.Parent == b.Parent &&
		bytes.Equal(a.MAC, b.MAC) && a.Address == b.Address && a.MTU == b.MTU
}

// ensureIPIP creates or adopts tunl0 and gives it its address, MTU and the up flag. Once the
// ipip module is loaded every namespace has a tunl0 (the fallback device), so creating it
// usually ends in EEXIST and adoption. A kernel without the module answers the create with
// "operation not supported": that is ErrNoIPIP.
func (k *Kernel) ensureIPIP(d IPIPDevice) (int, error) {
	link, err := k.nl.LinkByName(DeviceIPIP)
	if err != nil {
		if !isNotFound(err) {
			return 0, fmt.Errorf("look up %s: %w", DeviceIPIP, err)
		}
		err = k.nl.LinkAdd(&netlink.Iptun{LinkAttrs: netlink.LinkAttrs{Name: DeviceIPIP, MTU: d.MTU}})
		switch {
		case err == nil || errors.Is(err, unix.EEXIST):
		case isUnsupportedKind(err):
			k.log.Debug("creating tunl0 failed", "err", err)
			return 0, ErrNoIPIP
		default:
			return 0, fmt.Errorf("create %s: %w", DeviceIPIP, err)
		}
		if link, err = k.nl.LinkByName(DeviceIPIP); err != nil {
			return 0, fmt.Errorf("look up %s after creating it: %w", DeviceIPIP, err)
		}
	}
	if link.Type() != "ipip" {
		return 0, fmt.Errorf("%s exists and is a %s device, not ipip: leaving it alone", DeviceIPIP, link.Type())
	}
	if err := k.configure(link, d.MTU, d.Address); err != nil {
		return 0, err
	}
	return link.Attrs().Index, nil
}

// ensureVXLAN creates vxlan.tabby, or checks the existing one and recreates it when an
// attribute that cannot be changed in place differs (VNI, port, learning, source, parent).
func (k *Kernel) ensureVXLAN(rep *passReport, d VXLANDevice) (int, error) {
	parent, err := k.devIndex(d.Parent)
	if err != nil {
		return 0, fmt.Errorf("parent of %s: %w", DeviceVXLAN, err)
	}
	link, err := k.nl.LinkByName(DeviceVXLAN)
	switch {
	case err == nil:
		if v, ok := link.(*netlink.Vxlan); !ok || v.VxlanId != d.VNI || v.Port != d.Port || v.Learning ||
			!v.SrcAddr.Equal(d.Source.AsSlice()) || v.VtepDevIndex != parent {
			k.log.Info("recreating vxlan.tabby: its attributes differ from the wanted ones")
			if err := k.nl.LinkDel(link); err != nil && !isGone(err) {
				return 0, fmt.Errorf("delete mismatched %s: %w", DeviceVXLAN, err)
			}
			k.forgetLink(link.Attrs().Index)
			rep.redoDevices = true
			link = nil
		}
	case !isNotFound(err):
		return 0, fmt.Errorf("look up %s: %w", DeviceVXLAN, err)
	default:
		link = nil
	}
	if link == nil {
		err := k.nl.LinkAdd(&netlink.Vxlan{
			LinkAttrs:    netlink.LinkAttrs{Name: DeviceVXLAN, MTU: d.MTU, HardwareAddr: d.MAC},
			VxlanId:      d.VNI,
			VtepDevIndex: parent,
			SrcAddr:      d.Source.AsSlice(),
			Port:         d.Port,
			Learning:     false,
		})
		switch {
		case err == nil || errors.Is(err, unix.EEXIST):
		case isUnsupportedKind(err):
			k.log.Debug("creating vxlan.tabby failed", "err", err)
			return 0, ErrNoVXLAN
		default:
			return 0, fmt.Errorf("create %s: %w", DeviceVXLAN, err)
		}
		if link, err = k.nl.LinkByName(DeviceVXLAN); err != nil {
			return 0, fmt.Errorf("look up %s after creating it: %w", DeviceVXLAN, err)
		}
	}
	if !bytes.Equal(link.Attrs().HardwareAddr, d.MAC) {
		if err := k.nl.LinkSetHardwareAddr(link, d.MAC); err != nil {
			return 0, fmt.Errorf("set the MAC of %s: %w", DeviceVXLAN, err)
		}
	}
	if err := k.configure(link, d.MTU, d.Address); err != nil {
		return 0, err
	}
	return link.Attrs().Index, nil
}

// configure gives a tunnel device its MTU, its one address (a /32; any other is removed)
// and the up flag. Routes through a device that is down fail with "network is down".
func (k *Kernel) configure(link netlink.Link, mtu int, addr netip.Addr) error {
	a := link.Attrs()
	if mtu > 0 && a.MTU != mtu {
		if err := k.nl.LinkSetMTU(link, mtu); err != nil {
			return fmt.Errorf("set the MTU of %s to %d: %w", a.Name, mtu, err)
		}
	}
	addrs, err := k.nl.AddrList(link, netlink.FAMILY_V4)
	if err != nil {
		return fmt.Errorf("list the addresses of %s: %w", a.Name, err)
	}
	found := false
	for _, have := range addrs {
		ip, _ := netip.AddrFromSlice(have.IP)
		ones, _ := have.Mask.Size()
		if ip.Unmap() == addr && ones == 32 {
			found = true
			continue
		}
		if err := k.nl.AddrDel(link, &have); err != nil && !isGone(err) {
			return fmt.Errorf("remove address %s from %s: %w", have.IPNet, a.Name, err)
		}
	}
	if !found {
		want := &netlink.Addr{IPNet: &net.IPNet{IP: addr.AsSlice(), Mask: net.CIDRMask(32, 32)}}
		if err := k.nl.AddrReplace(link, want); err != nil {
			return fmt.Errorf("add address %s/32 to %s: %w", addr, a.Name, err)
		}
	}
	if a.Flags&net.FlagUp == 0 {
		if err := k.nl.LinkSetUp(link); err != nil {
			return fmt.Errorf("set %s up: %w", a.Name, err)
		}
	}
	return nil
}

// removeDevices takes away the tunnel devices the state no longer wants, after the routes
// through them are gone. It looks when the record says a device was configured and on
// every full resync (a previous run may have left one).
func (k *Kernel) removeDevices(rep *passReport, want *State, full bool) {
	if want.Tunl0 == nil && (full || k.rec.ipip.ok) {
		if err := k.releaseIPIP(want.Pools); err != nil {
			rep.fail(err)
		} else {
			k.rec.ipip = devRecord{}
		}
	}
	if want.VXLAN == nil && (full || k.rec.vxlan.ok) {
		link, err := k.nl.LinkByName(DeviceVXLAN)
		switch {
		case err == nil:
			if err := k.nl.LinkDel(link); err != nil && !isGone(err) {
				rep.fail(fmt.Errorf("delete %s: %w", DeviceVXLAN, err))
				return
			}
			k.forgetLink(link.Attrs().Index)
		case !isNotFound(err):
			rep.fail(fmt.Errorf("look up %s: %w", DeviceVXLAN, err))
			return
		}
		k.rec.vxlan = devRecord{}
	}
}

// releaseIPIP undoes tunl0 when no pool needs it. A tunl0 counts as tabby's only if it
// carries an address from one of the pools (the tunnel address). It is deleted; when it
// survives the delete (the ipip module's fallback device cannot be deleted: the kernel
// ignores the request) it is stripped: its pool addresses are removed, it is set down and
// gets its default MTU back, so that it neither answers for the old tunnel address nor
// takes part in routing.
func (k *Kernel) releaseIPIP(pools []netip.Prefix) error {
	link, err := k.nl.LinkByName(DeviceIPIP)
	if err != nil {
		if isNotFound(err) {
			return nil
		}
		return fmt.Errorf("look up %s: %w", DeviceIPIP, err)
	}
	ours, err := poolAddrs(k.nl, link, pools)
	if err != nil || len(ours) == 0 {
		return err
	}
	if err := k.nl.LinkDel(link); err != nil && !isGone(err) {
		return fmt.Errorf("delete %s: %w", DeviceIPIP, err)
	}
	k.forgetLink(link.Attrs().Index)
	link, err = k.nl.LinkByName(DeviceIPIP)
	if err != nil {
		if isNotFound(err) {
			return nil
		}
		return fmt.Errorf("look up %s: %w", DeviceIPIP, err)
	}
	return strip(k.nl, link, pools)
}

// poolAddrs returns the addresses of link that lie inside one of pools (all of them when
// pools is nil).
func poolAddrs(nl netlinker, link netlink.Link, pools []netip.Prefix) ([]netlink.Addr, error) {
	addrs, err := nl.AddrList(link, netlink.FAMILY_V4)
	if err != nil {
		return nil, fmt.Errorf("list the addresses of %s: %w", link.Attrs().Name, err)
	}
	var ours []netlink.Addr
	for _, a := range addrs {
		ip, _ := netip.AddrFromSlice(a.IP)
		ip = ip.Unmap()
		in := pools == nil
		for _, p := range pools {
			in = in || p.Contains(ip)
		}
		if in {
			ours = append(ours, a)
		}
	}
	return ours, nil
}

// fallbackIPIPMTU is the MTU the kernel gives the ipip fallback device (1500 − 20).
const fallbackIPIPMTU = 1480

// strip returns a device that cannot be deleted (the ipip fallback tunl0) to the state the
// kernel created it in: its pool addresses removed, down, and its default MTU.
func strip(nl netlinker, link netlink.Link, pools []netip.Prefix) error {
	name := link.Attrs().Name
	ours, err := poolAddrs(nl, link, pools)
	if err != nil {
		return err
	}
	for _, a := range ours {
		if err := nl.AddrDel(link, &a); err != nil && !isGone(err) {
			return fmt.Errorf("remove address %s from %s: %w", a.IPNet, name, err)
		}
	}
	if link.Attrs().Flags&net.FlagUp != 0 {
		if err := nl.LinkSetDown(link); err != nil {
			return fmt.Errorf("set %s down: %w", name, err)
		}
	}
	if link.Type() == "ipip" && link.Attrs().MTU != fallbackIPIPMTU {
		if err := nl.LinkSetMTU(link, fallbackIPIPMTU); err != nil {
			return fmt.Errorf("reset the MTU of %s: %w", name, err)
		}
	}
	return nil
}
