// Package autodetect finds the node's own IPv4 address and the interface that carries it
// (the NIC tunnels and CrossSubnet routes use), with the methods Calico users know from
// IP_AUTODETECTION_METHOD (SPEC §4): first-found, interface=REGEX, skip-interface=REGEX,
// can-reach=IP, cidr=CIDR[,CIDR], or a fixed address.
//
// Every function takes a netlink handle, so the caller decides which network namespace is
// looked at; nothing here changes the host.
package autodetect

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"regexp"
	"strings"

	"github.com/vishvananda/netlink"
)

// Kind is an autodetection method.
type Kind int

const (
	// FirstFound takes the first address of the first up interface that is not skipped.
	FirstFound Kind = iota
	// Interface takes the first address of the first interface whose name matches.
	Interface
	// SkipInterface is FirstFound that also skips the interfaces whose names match.
	SkipInterface
	// CanReach takes the source address the kernel picks to reach a target.
	CanReach
	// CIDR takes the first address inside one of the CIDRs.
	CIDR
)

// Method is a parsed autodetection method.
type Method struct {
	Kind Kind
	// Regexes (Interface, SkipInterface) match interface names.
	Regexes []*regexp.Regexp
	// Target (CanReach) is the address to reach.
	Target netip.Addr
	// CIDRs (CIDR) are the ranges the address must lie in.
	CIDRs []netip.Prefix
	text  string
}

// String returns the method as it was written.
func (m Method) String() string {
	if m.text == "" {
		return "first-found"
	}
	return m.text
}

// ParseMethod reads a method in Calico's syntax. Interface and skip-interface take a
// comma-separated list of regular expressions, cidr a comma-separated list of CIDRs.
func ParseMethod(s string) (Method, error) {
	s = strings.TrimSpace(s)
	m := Method{text: s}
	name, arg, hasArg := strings.Cut(s, "=")
	switch name {
	case "first-found":
		if hasArg {
			return Method{}, errors.New("first-found takes no argument")
		}
		m.Kind = FirstFound
	case "interface", "skip-interface":
		m.Kind = Interface
		if name == "skip-interface" {
			m.Kind = SkipInterface
		}
		if arg == "" {
			return Method{}, fmt.Errorf("%s= needs a regular expression", name)
		}
		for _, r := range strings.Split(arg, ",") {
			re, err := regexp.Compile(r)
			if err != nil {
				return Method{}, fmt.Errorf("%s=%s: %v", name, r, err)
			}
			m.Regexes = append(m.Regexes, re)
		}
	case "can-reach":
		a, err := netip.ParseAddr(arg)
		if err != nil || !a.Is4() {
			return Method{}, fmt.Errorf("can-reach=%s: not an IPv4 address", arg)
		}
		m.Kind, m.Target = CanReach, a
	case "cidr":
		m.Kind = CIDR
		for _, c := range strings.Split(arg, ",") {
			p, err := netip.ParsePrefix(strings.TrimSpace(c))
			if err != nil || !p.Addr().Is4() {
				return Method{}, fmt.Errorf("cidr=%s: %q is not an IPv4 CIDR", arg, c)
			}
			m.CIDRs = append(m.CIDRs, p.Masked())
		}
	default:
		return Method{}, fmt.Errorf("%q is not an autodetection method (first-found, interface=REGEX, skip-interface=REGEX, can-reach=IP, cidr=CIDR)", s)
	}
	return m, nil
}

// Result is the node address and the interface that holds it.
type Result struct {
	// Address carries the interface's prefix length: it decides CrossSubnet.
	Address   netip.Prefix
	Interface string
	LinkIndex int
}

func (r Result) String() string { return r.Address.String() + " on " + r.Interface }

// skippedByDefault are the interfaces first-found and skip-interface never pick: loopback,
// container bridges and veths, tunnels (tabby's, Calico's and others'). The list is
// Calico's, plus tabby's own devices.
var skippedByDefault = regexp.MustCompile(`^(lo|docker.*|veth.*|tabby.*|tunl.*|vxlan.*|cali.*|cbr.*|virbr.*|lxcbr.*|flannel.*|kube-ipvs.*|cni.*|nodelocaldns.*|wireguard.*|wg-.*)$`)

// Detect runs a method in the namespace of h.
func Detect(h *netlink.Handle, m Method) (Result, error) {
	switch m.Kind {
	case CanReach:
		return canReach(h, m.Target)
	case CIDR:
		return firstAddress(h, m.String(), func(netlink.Link) bool { return true }, func(p netip.Prefix) bool {
			for _, c := range m.CIDRs {
				if c.Contains(p.Addr()) {
					return true
				}
			}
			return false
		})
	case Interface:
		return firstAddress(h, m.String(), func(l netlink.Link) bool {
			return matchAny(m.Regexes, l.Attrs().Name)
		}, anyAddress)
	case SkipInterface:
		return firstAddress(h, m.String(), func(l netlink.Link) bool {
			return !skippedByDefault.MatchString(l.Attrs().Name) && !matchAny(m.Regexes, l.Attrs().Name)
		}, anyAddress)
	default:
		return firstAddress(h, m.String(), func(l netlink.Link) bool {
			return !skippedByDefault.MatchString(l.Attrs().Name)
		}, anyAddress)
	}
}

// Fixed finds the interface that holds a configured address. An address given without a
// prefix length (Bits() == -1) takes the interface's; one given with a prefix keeps it.
func Fixed(h *netlink.Handle, addr netip.Prefix) (Result, error) {
	links, err := h.LinkList()
	if err != nil {
		return Result{}, fmt.Errorf("list interfaces: %w", err)
	}
	for _, l := range links {
		addrs, err := h.AddrList(l, netlink.FAMILY_V4)
		if err != nil {
			return Result{}, fmt.Errorf("addresses of %s: %w", l.Attrs().Name, err)
		}
		for _, a := range addrs {
			p, ok := prefixOf(a)
			if !ok || p.Addr() != addr.Addr() {
				continue
			}
			if addr.Bits() >= 0 {
				p = addr
			}
			return Result{Address: p, Interface: l.Attrs().Name, LinkIndex: l.Attrs().Index}, nil
		}
	}
	return Result{}, fmt.Errorf("ipv4.address %s is not on any interface of this host", addr.Addr())
}

func canReach(h *netlink.Handle, target netip.Addr) (Result, error) {
	routes, err := h.RouteGet(net.IP(target.AsSlice()))
	if err != nil {
		return Result{}, fmt.Errorf("can-reach=%s: no route: %w", target, err)
	}
	for _, r := range routes {
		src, ok := netip.AddrFromSlice(r.Src)
		if !ok {
			continue
		}
		src = src.Unmap()
		link, err := h.LinkByIndex(r.LinkIndex)
		if err != nil {
			return Result{}, fmt.Errorf("can-reach=%s: interface %d: %w", target, r.LinkIndex, err)
		}
		addrs, err := h.AddrList(link, netlink.FAMILY_V4)
		if err != nil {
			return Result{}, fmt.Errorf("can-reach=%s: addresses of %s: %w", target, link.Attrs().Name, err)
		}
		for _, a := range addrs {
			if p, ok := prefixOf(a); ok && p.Addr() == src {
				return Result{Address: p, Interface: link.Attrs().Name, LinkIndex: link.Attrs().Index}, nil
			}
		}
		// The source may sit on another interface than the route's (a loopback service
		// address, say): fall back to whoever holds it.
		return Fixed(h, netip.PrefixFrom(src, -1))
	}
	return Result{}, fmt.Errorf("can-reach=%s: the kernel picks no source address", target)
}

// firstAddress walks the interfaces in index order and returns the first usable address
// of the first acceptable interface that is up.
func firstAddress(h *netlink.Handle, method string, acceptLink func(netlink.Link) bool, acceptAddr func(netip.Prefix) bool) (Result, error) {
	links, err := h.LinkList()
	if err != nil {
		return Result{}, fmt.Errorf("%s: list interfaces: %w", method, err)
	}
	var looked []string
	for _, l := range links {
		attrs := l.Attrs()
		if !acceptLink(l) || !isUp(attrs) {
			continue
		}
		looked = append(looked, attrs.Name)
		addrs, err := h.AddrList(l, netlink.FAMILY_V4)
		if err != nil {
			return Result{}, fmt.Errorf("%s: addresses of %s: %w", method, attrs.Name, err)
		}
		for _, a := range addrs {
			if p, ok := prefixOf(a); ok && usable(p.Addr()) && acceptAddr(p) {
				return Result{Address: p, Interface: attrs.Name, LinkIndex: attrs.Index}, nil
			}
		}
	}
	if len(looked) == 0 {
		return Result{}, fmt.Errorf("%s: no interface that is up and not skipped", method)
	}
	return Result{}, fmt.Errorf("%s: no usable IPv4 address on %s", method, strings.Join(looked, ", "))
}

func isUp(a *netlink.LinkAttrs) bool {
	if a.Flags&net.FlagUp == 0 {
		return false
	}
	return a.OperState != netlink.OperDown && a.OperState != netlink.OperLowerLayerDown && a.OperState != netlink.OperNotPresent
}

// usable rejects loopback and link-local addresses, which cannot identify a node.
func usable(a netip.Addr) bool {
	return a.Is4() && a.IsGlobalUnicast() && !a.IsLinkLocalUnicast()
}

func anyAddress(netip.Prefix) bool { return true }

func matchAny(res []*regexp.Regexp, s string) bool {
	for _, re := range res {
		if re.MatchString(s) {
			return true
		}
	}
	return false
}

func prefixOf(a netlink.Addr) (netip.Prefix, bool) {
	if a.IPNet == nil {
		return netip.Prefix{}, false
	}
	ip, ok := netip.AddrFromSlice(a.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	ones, _ := a.Mask.Size()
	return netip.PrefixFrom(ip.Unmap(), ones), true
}
