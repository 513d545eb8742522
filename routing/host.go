package routing

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// ReadUnderlay captures the host's own routes for Local.Underlay: every IPv4 route of the
// main table whose protocol is not tabby's, with device names instead of indexes. Call it
// again when Kernel.UnderlayChanged fires.
func ReadUnderlay(h *netlink.Handle, protocol int) ([]UnderlayRoute, error) {
	return readUnderlay(h, protocol)
}

// hostReader is the part of netlink that reads the host's own links, addresses and routes;
// *netlink.Handle implements it, and so does the tests' fake kernel.
type hostReader interface {
	LinkList() ([]netlink.Link, error)
	AddrList(link netlink.Link, family int) ([]netlink.Addr, error)
	RouteListFilteredIter(family int, filter *netlink.Route, mask uint64, f func(netlink.Route) bool) error
}

func readUnderlay(nl hostReader, protocol int) ([]UnderlayRoute, error) {
	if protocol == 0 {
		protocol = DefaultProtocol
	}
	links, err := nl.LinkList()
	if err != nil {
		return nil, fmt.Errorf("list links: %w", err)
	}
	names := make(map[int]string, len(links))
	for _, l := range links {
		names[l.Attrs().Index] = l.Attrs().Name
	}
	var out []UnderlayRoute
	filter := &netlink.Route{Table: unix.RT_TABLE_MAIN}
	err = nl.RouteListFilteredIter(netlink.FAMILY_V4, filter, netlink.RT_FILTER_TABLE, func(nr netlink.Route) bool {
		if int(nr.Protocol) == protocol {
			return true
		}
		dst := netip.PrefixFrom(netip.IPv4Unspecified(), 0)
		if nr.Dst != nil {
			a, ok := netip.AddrFromSlice(nr.Dst.IP)
			ones, _ := nr.Dst.Mask.Size()
			if !ok || !a.Unmap().Is4() {
				return true
			}
			dst = netip.PrefixFrom(a.Unmap(), ones)
		}
		u := UnderlayRoute{Dst: dst, Metric: nr.Priority}
		switch nr.Type {
		case unix.RTN_UNICAST:
		case unix.RTN_BLACKHOLE, unix.RTN_UNREACHABLE, unix.RTN_PROHIBIT:
			u.Unreachable = true
		default:
			return true
		}
		gw, link := nr.Gw, nr.LinkIndex
		if len(nr.MultiPath) > 0 {
			// ECMP: resolve through the first next hop, as a single path would.
			gw, link = nr.MultiPath[0].Gw, nr.MultiPath[0].LinkIndex
		}
		if g, ok := netip.AddrFromSlice(gw); ok {
			u.Gateway = g.Unmap()
		}
		u.Dev = names[link]
		out = append(out, u)
		return true
	})
	if err != nil {
		return nil, fmt.Errorf("list the main routing table: %w", err)
	}
	return out, nil
}

// HostMTU finds the host MTU: the smallest MTU among the up devices that carry underlay
// traffic, i.e. the device holding the node address and the devices of the default routes.
// It also returns the name of the device holding the node address (Local.NIC). A configured
// MTU overrides this (the daemon's choice).
func HostMTU(h *netlink.Handle, nodeAddr netip.Addr) (mtu int, nic string, err error) {
	return hostMTU(h, nodeAddr)
}

func hostMTU(nl hostReader, nodeAddr netip.Addr) (int, string, error) {
	links, err := nl.LinkList()
	if err != nil {
		return 0, "", fmt.Errorf("list links: %w", err)
	}
	byIndex := make(map[int]netlink.Link, len(links))
	for _, l := range links {
		byIndex[l.Attrs().Index] = l
	}
	carriers := map[int]bool{}
	nic := ""
	addrs, err := nl.AddrList(nil, netlink.FAMILY_V4)
	if err != nil {
		return 0, "", fmt.Errorf("list addresses: %w", err)
	}
	for _, a := range addrs {
		if ip, ok := netip.AddrFromSlice(a.IP); ok && ip.Unmap() == nodeAddr {
			carriers[a.LinkIndex] = true
			if l, ok := byIndex[a.LinkIndex]; ok {
				nic = l.Attrs().Name
			}
		}
	}
	if nic == "" {
		return 0, "", fmt.Errorf("no device holds the node address %s", nodeAddr)
	}
	filter := &netlink.Route{Table: unix.RT_TABLE_MAIN}
	err = nl.RouteListFilteredIter(netlink.FAMILY_V4, filter, netlink.RT_FILTER_TABLE, func(nr netlink.Route) bool {
		if nr.Dst != nil {
			if ones, _ := nr.Dst.Mask.Size(); ones != 0 {
				return true
			}
		}
		carriers[nr.LinkIndex] = true
		for _, nh := range nr.MultiPath {
			carriers[nh.LinkIndex] = true
		}
		return true
	})
	if err != nil {
		return 0, "", fmt.Errorf("list the main routing table: %w", err)
	}
	mtu := 0
	for idx := range carriers {
		l, ok := byIndex[idx]
		if !ok || l.Attrs().Flags&net.FlagUp == 0 || l.Attrs().MTU <= 0 {
			continue
		}
		if mtu == 0 || l.Attrs().MTU < mtu {
			mtu = l.Attrs().MTU
		}
	}
	if mtu == 0 {
		return 0, nic, fmt.Errorf("no up device carries underlay traffic (node address %s on %s)", nodeAddr, nic)
	}
	return mtu, nic, nil
}

// PodMTUFile is the name, under the data directory, of the file holding the pod MTU that
// tabby-cni reads.
const PodMTUFile = "mtu"

// PublishPodMTU writes the pod MTU to <dataDir>/mtu atomically (a temporary file renamed
// over it), so that tabby-cni never reads a half-written number. An unchanged value is not
// rewritten.
func PublishPodMTU(dataDir string, mtu int) error {
	if mtu <= 0 {
		return fmt.Errorf("pod MTU %d is not positive", mtu)
	}
	return writeAtomic(filepath.Join(dataDir, PodMTUFile), []byte(strconv.Itoa(mtu)+"\n"), 0o644)
}

// RegisterProtocol writes the rt_protos.d file that names tabby's route protocol number,
// so that `ip route` prints "proto tabby". path is the file to write, normally
// /etc/iproute2/rt_protos.d/tabby.conf.
func RegisterProtocol(path string, number int, name string) error {
	if number <= 0 || number > 255 {
		return fmt.Errorf("route protocol %d is outside 1–255", number)
	}
	if name == "" {
		return errors.New("route protocol name is empty")
	}
	return writeAtomic(path, fmt.Appendf(nil, "%d\t%s\n", number, name), 0o644)
}

// writeAtomic replaces path by content unless it already holds exactly that.
func writeAtomic(path string, content []byte, perm os.FileMode) error {
	if old, err := os.ReadFile(path); err == nil && bytes.Equal(old, content) {
		return nil
	}
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("create %s: %w", dir, err)
	}
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	defer os.Remove(tmp.Name()) // a no-op once renamed
	if _, err := tmp.Write(content); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := tmp.Chmod(perm); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}
