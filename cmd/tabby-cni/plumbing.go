package main

import (
	"crypto/sha1"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// The fixed parts of Calico's point-to-point workload plumbing (SPEC §8): every host-side
// veth answers ARP for the gateway 169.254.1.1 by proxy ARP, with one MAC shared by all of
// them, so a workload never learns anything about the host's real L2.
const (
	gateway     = "169.254.1.1"
	hostVethMAC = "ee:ee:ee:ee:ee:ee"
)

var gatewayAddr = netip.MustParseAddr(gateway)

func hostVethHardwareAddr() net.HardwareAddr {
	mac, _ := net.ParseMAC(hostVethMAC) // a constant that parses
	return mac
}

// sysctl is one setting written for every host-side veth (%s is the veth's name).
type sysctl struct{ key, value string }

// hostSysctls are written for every host-side veth, in the netns the plugin runs in:
// proxy_arp answers the workload's ARP for 169.254.1.1, proxy_delay=0 answers at once
// instead of after up to 0.8 s, forwarding routes what the workload sends, route_localnet
// lets it reach host services bound to 127.0.0.1 through DNAT.
func hostSysctls() []sysctl {
	return []sysctl{
		{"net/ipv4/conf/%s/proxy_arp", "1"},
		{"net/ipv4/neigh/%s/proxy_delay", "0"},
		{"net/ipv4/conf/%s/forwarding", "1"},
		{"net/ipv4/conf/%s/route_localnet", "1"},
	}
}

// hostVethName is the host side of a workload's veth: "tabby" and the first 10 hex digits
// of sha1(containerID), 15 characters, the kernel's limit. Deterministic, so DEL finds the
// interface from the container ID alone, even after the netns is gone.
func hostVethName(containerID string) string {
	sum := sha1.Sum([]byte(containerID))
	return "tabby" + hex.EncodeToString(sum[:])[:10]
}

// tempPeerName is the container side's name between its creation and its rename to the
// requested name inside the container. 't' is not a hex digit, so it never equals any
// workload's host-side name.
func tempPeerName(containerID string) string {
	sum := sha1.Sum([]byte(containerID))
	return "tabbyt" + hex.EncodeToString(sum[:])[:9]
}

// workload is what the plumbing of one container needs to know.
type workload struct {
	ContainerID string
	Netns       string // path of the container's network namespace
	IfName      string // the container-side interface, e.g. eth0
	Addr        netip.Addr
	MTU         int
}

func (w workload) hostVeth() string { return hostVethName(w.ContainerID) }

func (w workload) addrPrefix() netip.Prefix { return netip.PrefixFrom(w.Addr, w.Addr.BitLen()) }

// plumbed describes the interfaces set up for a workload, for the CNI result.
type plumbed struct {
	HostVeth     string
	HostMAC      net.HardwareAddr
	ContainerMAC net.HardwareAddr
}

// netnsError marks a problem with CNI_NETNS itself, which CNI reports with its own code.
type netnsError struct{ err error }

func (e *netnsError) Error() string { return e.err.Error() }
func (e *netnsError) Unwrap() error { return e.err }

// openNetns opens the container's network namespace and a netlink handle inside it. The
// plugin's threads never enter that namespace: the handle's socket lives there instead, so
// no goroutine can end up running in the wrong namespace. The caller closes both.
func openNetns(path string) (*netlink.Handle, netns.NsHandle, error) {
	nsh, err := netns.GetFromPath(path)
	if err != nil {
		return nil, netns.None(), &netnsError{fmt.Errorf("container netns %s: %w", path, err)}
	}
	h, err := netlink.NewHandleAt(nsh, unix.NETLINK_ROUTE)
	if err != nil {
		nsh.Close()
		return nil, netns.None(), &netnsError{fmt.Errorf("netlink in container netns %s: %w", path, err)}
	}
	return h, nsh, nil
}

// setUpWorkload builds the veth pair, the addresses and the routes of one workload. On any
// failure it removes what it built before returning, so the caller only has to undo its
// own steps (the IPAM allocation).
func setUpWorkload(w workload, log *slog.Logger) (_ plumbed, err error) {
	host, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return plumbed{}, fmt.Errorf("netlink in host netns: %w", err)
	}
	defer host.Close()
	cont, contNS, err := openNetns(w.Netns)
	if err != nil {
		return plumbed{}, err
	}
	defer cont.Close()
	defer contNS.Close()

	hostName := w.hostVeth()
	// A veth of this container left by an earlier ADD (the runtime retried) or by a crash:
	// it is ours by name, and rebuilding it from scratch is simpler than repairing it.
	if err := deleteLinkIfExists(host, hostName); err != nil {
		return plumbed{}, fmt.Errorf("remove stale host veth: %w", err)
	}

	peer := tempPeerName(w.ContainerID)
	attrs := netlink.NewLinkAttrs()
	attrs.Name = hostName
	attrs.MTU = w.MTU
	attrs.HardwareAddr = hostVethHardwareAddr()
	veth := &netlink.Veth{
		LinkAttrs:     attrs,
		PeerName:      peer,
		PeerMTU:       uint32(w.MTU),
		PeerNamespace: netlink.NsFd(int(contNS)),
	}
	if err := host.LinkAdd(veth); err != nil {
		return plumbed{}, fmt.Errorf("create veth %s (peer %s in %s): %w", hostName, peer, w.Netns, err)
	}
	defer func() {
		if err == nil {
			return
		}
		// Deleting the host end deletes the container end and every route through it.
		if derr := deleteLinkIfExists(host, hostName); derr != nil {
			log.Error("rollback: cannot delete host veth", "veth", hostName, "err", derr)
			err = fmt.Errorf("%w (and rollback failed: %v)", err, derr)
		} else {
			log.Info("rollback: deleted host veth", "veth", hostName)
		}
	}()

	hostLink, err := host.LinkByName(hostName)
	if err != nil {
		return plumbed{}, fmt.Errorf("look up new veth %s: %w", hostName, err)
	}
	for _, s := range hostSysctls() {
		if err := writeSysctl(fmt.Sprintf(s.key, hostName), s.value); err != nil {
			return plumbed{}, err
		}
	}
	if err := host.LinkSetUp(hostLink); err != nil {
		return plumbed{}, fmt.Errorf("set %s up: %w", hostName, err)
	}

	contLink, err := setUpContainerSide(cont, w, peer)
	if err != nil {
		return plumbed{}, err
	}

	// The kernel's default protocol (boot, as `ip route` writes), not tabby's: tabbyd sweeps
	// routes of its own protocol that it did not compute, and workload routes belong to
	// the plugin.
	hostRoute := &netlink.Route{
		LinkIndex: hostLink.Attrs().Index,
		Dst:       prefixIPNet(w.addrPrefix()),
		Scope:     netlink.SCOPE_LINK,
		Protocol:  unix.RTPROT_BOOT,
	}
	if err := host.RouteReplace(hostRoute); err != nil {
		return plumbed{}, fmt.Errorf("add host route %s dev %s: %w", w.addrPrefix(), hostName, err)
	}

	return plumbed{
		HostVeth:     hostName,
		HostMAC:      hostLink.Attrs().HardwareAddr,
		ContainerMAC: contLink.Attrs().HardwareAddr,
	}, nil
}

// setUpContainerSide names, addresses and routes the container end of the veth. It leaves
// cleanup to the caller, who deletes the whole pair.
func setUpContainerSide(cont *netlink.Handle, w workload, peer string) (netlink.Link, error) {
	if _, err := cont.LinkByName(w.IfName); err == nil {
		return nil, fmt.Errorf("interface %s already exists in container netns %s", w.IfName, w.Netns)
	} else if !isLinkNotFound(err) {
		return nil, fmt.Errorf("look up %s in container netns %s: %w", w.IfName, w.Netns, err)
	}
	link, err := cont.LinkByName(peer)
	if err != nil {
		return nil, fmt.Errorf("look up veth peer %s in container netns %s: %w", peer, w.Netns, err)
	}
	if err := cont.LinkSetName(link, w.IfName); err != nil {
		return nil, fmt.Errorf("rename %s to %s in container netns %s: %w", peer, w.IfName, w.Netns, err)
	}
	addr := &netlink.Addr{IPNet: prefixIPNet(w.addrPrefix())}
	if err := cont.AddrAdd(link, addr); err != nil {
		return nil, fmt.Errorf("add address %s to %s in container netns %s: %w", w.addrPrefix(), w.IfName, w.Netns, err)
	}
	if err := cont.LinkSetUp(link); err != nil {
		return nil, fmt.Errorf("set %s up in container netns %s: %w", w.IfName, w.Netns, err)
	}
	idx := link.Attrs().Index
	gwRoute := &netlink.Route{
		LinkIndex: idx,
		Dst:       prefixIPNet(netip.PrefixFrom(gatewayAddr, gatewayAddr.BitLen())),
		Scope:     netlink.SCOPE_LINK,
	}
	if err := cont.RouteAdd(gwRoute); err != nil {
		return nil, fmt.Errorf("add route %s dev %s in container netns %s: %w", gatewayAddr, w.IfName, w.Netns, err)
	}
	defRoute := &netlink.Route{
		LinkIndex: idx,
		Dst:       prefixIPNet(netip.MustParsePrefix("0.0.0.0/0")),
		Gw:        gatewayAddr.AsSlice(),
		Scope:     netlink.SCOPE_UNIVERSE,
	}
	if err := cont.RouteAdd(defRoute); err != nil {
		return nil, fmt.Errorf("add route default via %s dev %s in container netns %s: %w", gatewayAddr, w.IfName, w.Netns, err)
	}
	// Re-read: the rename and up changed the attributes the result reports.
	link, err = cont.LinkByName(w.IfName)
	if err != nil {
		return nil, fmt.Errorf("look up %s in container netns %s: %w", w.IfName, w.Netns, err)
	}
	return link, nil
}

// tearDownWorkload deletes a workload's veth pair by its host-side name, in the netns the
// plugin runs in: that works whether or not the container netns still exists, and the
// kernel removes the peer and the host route with it. A missing veth is success.
func tearDownWorkload(containerID string) (deleted bool, err error) {
	host, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return false, fmt.Errorf("netlink in host netns: %w", err)
	}
	defer host.Close()
	name := hostVethName(containerID)
	if _, err := host.LinkByName(name); isLinkNotFound(err) {
		return false, nil
	}
	if err := deleteLinkIfExists(host, name); err != nil {
		return false, err
	}
	return true, nil
}

// checkWorkload verifies the plumbing of one workload and returns every discrepancy it
// finds, each phrased as what is wrong. An empty list means the workload is as ADD left it.
func checkWorkload(w workload) ([]string, error) {
	host, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("netlink in host netns: %w", err)
	}
	defer host.Close()
	var problems []string
	hostName := w.hostVeth()
	want := w.addrPrefix()

	hostIndex := 0
	hostLink, err := host.LinkByName(hostName)
	switch {
	case isLinkNotFound(err):
		problems = append(problems, fmt.Sprintf("host veth %s does not exist", hostName))
	case err != nil:
		return nil, fmt.Errorf("look up host veth %s: %w", hostName, err)
	default:
		hostIndex = hostLink.Attrs().Index
		if hostLink.Type() != "veth" {
			problems = append(problems, fmt.Sprintf("host interface %s is a %s, not a veth", hostName, hostLink.Type()))
		}
		if mac := hostLink.Attrs().HardwareAddr; mac.String() != hostVethMAC {
			problems = append(problems, fmt.Sprintf("host veth %s has MAC %s, want %s", hostName, mac, hostVethMAC))
		}
		if hostLink.Attrs().Flags&net.FlagUp == 0 {
			problems = append(problems, fmt.Sprintf("host veth %s is down", hostName))
		}
		if w.MTU != 0 && hostLink.Attrs().MTU != w.MTU {
			problems = append(problems, fmt.Sprintf("host veth %s has MTU %d, want %d", hostName, hostLink.Attrs().MTU, w.MTU))
		}
		routes, err := retryDump(func() ([]netlink.Route, error) {
			return host.RouteListFiltered(unix.AF_INET, &netlink.Route{Dst: prefixIPNet(want), Table: unix.RT_TABLE_MAIN},
				netlink.RT_FILTER_DST|netlink.RT_FILTER_TABLE)
		})
		if err != nil {
			return nil, fmt.Errorf("list host routes to %s: %w", want, err)
		}
		if !slices.ContainsFunc(routes, func(r netlink.Route) bool {
			return r.LinkIndex == hostIndex && r.Gw == nil && r.Scope == netlink.SCOPE_LINK
		}) {
			problems = append(problems, fmt.Sprintf("host route %s dev %s scope link is missing%s", want, hostName, describeRoutes(host, routes)))
		}
		for _, s := range hostSysctls() {
			key := fmt.Sprintf(s.key, hostName)
			got, err := readSysctl(key)
			if err != nil {
				problems = append(problems, err.Error())
			} else if got != s.value {
				problems = append(problems, fmt.Sprintf("sysctl %s is %s, want %s", strings.ReplaceAll(key, "/", "."), got, s.value))
			}
		}
	}

	cont, contNS, err := openNetns(w.Netns)
	if err != nil {
		return append(problems, err.Error()), nil
	}
	defer cont.Close()
	defer contNS.Close()
	contLink, err := cont.LinkByName(w.IfName)
	switch {
	case isLinkNotFound(err):
		return append(problems, fmt.Sprintf("interface %s does not exist in container netns %s", w.IfName, w.Netns)), nil
	case err != nil:
		return nil, fmt.Errorf("look up %s in container netns %s: %w", w.IfName, w.Netns, err)
	}
	where := fmt.Sprintf("%s in container netns %s", w.IfName, w.Netns)
	if contLink.Type() != "veth" {
		problems = append(problems, fmt.Sprintf("%s is a %s, not a veth", where, contLink.Type()))
	} else if hostIndex != 0 && contLink.Attrs().ParentIndex != hostIndex {
		problems = append(problems, fmt.Sprintf("%s is not the peer of host veth %s", where, hostName))
	}
	if contLink.Attrs().Flags&net.FlagUp == 0 {
		problems = append(problems, where+" is down")
	}
	addrs, err := retryDump(func() ([]netlink.Addr, error) { return cont.AddrList(contLink, unix.AF_INET) })
	if err != nil {
		return nil, fmt.Errorf("list addresses of %s: %w", where, err)
	}
	var have []string
	found := false
	for _, a := range addrs {
		p, ok := ipNetPrefix(a.IPNet)
		if ok && p == want {
			found = true
		}
		have = append(have, a.IPNet.String())
	}
	if !found {
		problems = append(problems, fmt.Sprintf("%s lacks address %s (has: %s)", where, want, orNone(have)))
	}
	routes, err := retryDump(func() ([]netlink.Route, error) { return cont.RouteList(contLink, unix.AF_INET) })
	if err != nil {
		return nil, fmt.Errorf("list routes of %s: %w", where, err)
	}
	gw := net.IP(gatewayAddr.AsSlice())
	if !slices.ContainsFunc(routes, func(r netlink.Route) bool {
		return r.Dst != nil && r.Dst.String() == gatewayAddr.String()+"/32" && r.Scope == netlink.SCOPE_LINK
	}) {
		problems = append(problems, fmt.Sprintf("route %s dev %s scope link is missing in container netns %s", gatewayAddr, w.IfName, w.Netns))
	}
	if !slices.ContainsFunc(routes, func(r netlink.Route) bool {
		return isDefault(r.Dst) && r.Gw.Equal(gw)
	}) {
		problems = append(problems, fmt.Sprintf("route default via %s dev %s is missing in container netns %s", gatewayAddr, w.IfName, w.Netns))
	}
	return problems, nil
}

func isDefault(dst *net.IPNet) bool {
	if dst == nil {
		return true // the kernel reports 0.0.0.0/0 as no destination
	}
	ones, _ := dst.Mask.Size()
	return ones == 0
}

// describeRoutes renders the routes found instead of the wanted one, for CHECK's message.
func describeRoutes(h *netlink.Handle, routes []netlink.Route) string {
	if len(routes) == 0 {
		return ""
	}
	var s []string
	for _, r := range routes {
		dev := fmt.Sprintf("ifindex %d", r.LinkIndex)
		if l, err := h.LinkByIndex(r.LinkIndex); err == nil {
			dev = l.Attrs().Name
		}
		s = append(s, fmt.Sprintf("%s dev %s", r.Dst, dev))
	}
	return " (found instead: " + strings.Join(s, ", ") + ")"
}

func orNone(s []string) string {
	if len(s) == 0 {
		return "none"
	}
	return strings.Join(s, ", ")
}

func deleteLinkIfExists(h *netlink.Handle, name string) error {
	link, err := h.LinkByName(name)
	if isLinkNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("look up %s: %w", name, err)
	}
	if err := h.LinkDel(link); err != nil && !errors.Is(err, unix.ENODEV) {
		return fmt.Errorf("delete %s: %w", name, err)
	}
	return nil
}

func isLinkNotFound(err error) bool {
	var nf netlink.LinkNotFoundError
	return errors.As(err, &nf)
}

// writeSysctl writes one sysctl of the netns the plugin runs in: /proc/sys/net resolves to
// the network namespace of the thread that opens it, and the plugin never moves a thread.
func writeSysctl(key, value string) error {
	path := filepath.Join("/proc/sys", key)
	if err := os.WriteFile(path, []byte(value), 0o644); err != nil {
		return fmt.Errorf("sysctl %s=%s: %w", strings.ReplaceAll(key, "/", "."), value, err)
	}
	return nil
}

func readSysctl(key string) (string, error) {
	data, err := os.ReadFile(filepath.Join("/proc/sys", key))
	if err != nil {
		return "", fmt.Errorf("sysctl %s: %w", strings.ReplaceAll(key, "/", "."), err)
	}
	return strings.TrimSpace(string(data)), nil
}

func prefixIPNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

func ipNetPrefix(n *net.IPNet) (netip.Prefix, bool) {
	if n == nil {
		return netip.Prefix{}, false
	}
	a, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	ones, _ := n.Mask.Size()
	return netip.PrefixFrom(a.Unmap(), ones), true
}

// retryDump repeats a netlink dump the kernel interrupted because the table changed while
// it was being read: the partial answer is not safe to judge by.
func retryDump[T any](dump func() (T, error)) (T, error) {
	var (
		v   T
		err error
	)
	for range 5 {
		if v, err = dump(); !errors.Is(err, netlink.ErrDumpInterrupted) {
			return v, err
		}
	}
	return v, err
}
