package lab

import (
	"errors"
	"fmt"
	"net/netip"
	"sort"
	"strings"

	"github.com/vishvananda/netlink"

	"github.com/tabby-net/tabby/internal/namedns"
)

// Segment is one subnet of the fabric: a bridge in the router's namespace that carries the
// router's address in that subnet.
type Segment struct {
	Name   string       // short name, used in link names ("s1")
	Router netip.Prefix // the router's address and the subnet's prefix (10.30.0.1/24)
}

// Host is one machine that runs tabbyd.
type Host struct {
	Name    string       // node name ("worker-1")
	Addr    netip.Prefix // address on eth0 with the subnet's prefix (10.30.0.206/24)
	Segment string       // the Segment it is plugged into
}

// Outside is a machine beyond the router that knows only the hosts' network, as a server
// on the internet knows only an instance's public address.
type Outside struct {
	Addr   netip.Prefix // 198.51.100.10/24
	Router netip.Prefix // the router's address on that link, 198.51.100.1/24
	// Knows is the one prefix the outside host routes back through the router.
	Knows netip.Prefix
}

// Topology is a complete lab network.
type Topology struct {
	// Prefix starts the name of every namespace of the lab ("tabbylab" → "tabbylab-master").
	Prefix   string
	Segments []Segment
	Hosts    []Host
	// Outside is built when its Addr is set.
	Outside Outside
	// MTU of every link, as on the hosts' NICs.
	MTU int
}

// Articles returns the topology of the articles: master, worker-1 and worker-2 in
// 10.30.0.0/24, worker-3 in 10.30.1.0/24, a router at .1 of each subnet, and an outside
// host in 198.51.100.0/24 (TEST-NET-2) that routes only 10.30.0.0/16 back.
func Articles(prefix string) *Topology {
	return &Topology{
		Prefix: prefix,
		Segments: []Segment{
			{Name: "s1", Router: netip.MustParsePrefix("10.30.0.1/24")},
			{Name: "s2", Router: netip.MustParsePrefix("10.30.1.1/24")},
		},
		Hosts: []Host{
			{Name: "master", Addr: netip.MustParsePrefix("10.30.0.136/24"), Segment: "s1"},
			{Name: "worker-1", Addr: netip.MustParsePrefix("10.30.0.206/24"), Segment: "s1"},
			{Name: "worker-2", Addr: netip.MustParsePrefix("10.30.0.56/24"), Segment: "s1"},
			{Name: "worker-3", Addr: netip.MustParsePrefix("10.30.1.66/24"), Segment: "s2"},
		},
		Outside: Outside{
			Addr:   netip.MustParsePrefix("198.51.100.10/24"),
			Router: netip.MustParsePrefix("198.51.100.1/24"),
			Knows:  netip.MustParsePrefix("10.30.0.0/16"),
		},
		MTU: 1500,
	}
}

// NIC is the name of every host's underlay interface.
const NIC = "eth0"

// RouterNS is the router's namespace.
func (t *Topology) RouterNS() string { return t.Prefix + "-router" }

// HasOutside reports whether the topology has an outside host.
func (t *Topology) HasOutside() bool { return t.Outside.Addr.IsValid() }

// OutsideNS is the outside host's namespace.
func (t *Topology) OutsideNS() string { return t.Prefix + "-outside" }

// HostNS is a host's namespace.
func (t *Topology) HostNS(host string) string { return t.Prefix + "-" + host }

// Host returns the host with this name.
func (t *Topology) Host(name string) (Host, bool) {
	for _, h := range t.Hosts {
		if h.Name == name {
			return h, true
		}
	}
	return Host{}, false
}

// Gateway returns the router's address in a host's subnet.
func (t *Topology) Gateway(h Host) netip.Addr {
	for _, s := range t.Segments {
		if s.Name == h.Segment {
			return s.Router.Addr()
		}
	}
	return netip.Addr{}
}

// bridgeName is the router's bridge for a segment.
func bridgeName(segment string) string { return "br-" + segment }

// portName is the router's end of a host's link. Interface names have 15 characters at
// most; host names are cut to fit.
func portName(host string) string {
	n := "p-" + host
	if len(n) > 15 {
		n = n[:15]
	}
	return n
}

// Ports returns the router-side link of every host, sorted by host name.
func (t *Topology) Ports() map[string]string {
	out := map[string]string{}
	for _, h := range t.Hosts {
		out[h.Name] = portName(h.Name)
	}
	return out
}

// Build creates the namespaces and links. It refuses to run over a lab that exists
// already: call Destroy first.
func (t *Topology) Build() (err error) {
	if err := t.validate(); err != nil {
		return err
	}
	existing, err := namedns.List(t.Prefix + "-")
	if err != nil {
		return err
	}
	if len(existing) > 0 {
		return fmt.Errorf("lab %s exists already (namespaces %s): tear it down first", t.Prefix, strings.Join(existing, ", "))
	}
	defer func() {
		if err != nil {
			_ = t.Destroy()
		}
	}()
	for _, ns := range t.namespaces() {
		if err := namedns.Create(ns); err != nil {
			return err
		}
	}
	if err := t.buildRouter(); err != nil {
		return fmt.Errorf("router: %w", err)
	}
	for _, h := range t.Hosts {
		if err := t.buildHost(h); err != nil {
			return fmt.Errorf("host %s: %w", h.Name, err)
		}
	}
	if t.HasOutside() {
		if err := t.buildOutside(); err != nil {
			return fmt.Errorf("outside host: %w", err)
		}
	}
	return nil
}

// Destroy removes every namespace whose name starts with the lab's prefix. Links die with
// their namespaces. It is safe to call on a half-built or absent lab.
func (t *Topology) Destroy() error {
	names, err := namedns.List(t.Prefix + "-")
	if err != nil {
		return err
	}
	var errs []error
	for _, n := range names {
		if err := namedns.Delete(n); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Exists reports whether any namespace of the lab is present.
func (t *Topology) Exists() (bool, error) {
	names, err := namedns.List(t.Prefix + "-")
	return len(names) > 0, err
}

func (t *Topology) namespaces() []string {
	out := []string{t.RouterNS()}
	if t.HasOutside() {
		out = append(out, t.OutsideNS())
	}
	for _, h := range t.Hosts {
		out = append(out, t.HostNS(h.Name))
	}
	sort.Strings(out)
	return out
}

func (t *Topology) validate() error {
	if t.Prefix == "" || strings.ContainsAny(t.Prefix, "/ ") {
		return fmt.Errorf("lab prefix %q must be a non-empty name without slashes or spaces", t.Prefix)
	}
	segs := map[string]bool{}
	for _, s := range t.Segments {
		segs[s.Name] = true
	}
	seen := map[string]bool{}
	for _, h := range t.Hosts {
		if seen[h.Name] {
			return fmt.Errorf("host %s appears twice", h.Name)
		}
		seen[h.Name] = true
		if !segs[h.Segment] {
			return fmt.Errorf("host %s: unknown segment %q", h.Name, h.Segment)
		}
	}
	return nil
}

func (t *Topology) buildRouter() error {
	ns := t.RouterNS()
	h, err := namedns.Handle(ns)
	if err != nil {
		return err
	}
	defer h.Close()
	if err := linkUp(h, "lo"); err != nil {
		return err
	}
	for _, s := range t.Segments {
		br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: bridgeName(s.Name), MTU: t.MTU}}
		if err := h.LinkAdd(br); err != nil {
			return fmt.Errorf("bridge %s: %w", br.Name, err)
		}
		if err := addAddr(h, br.Name, s.Router); err != nil {
			return err
		}
		if err := linkUp(h, br.Name); err != nil {
			return err
		}
	}
	// A VPC router forwards between its subnets and drops what it has no route for: it
	// has only its connected routes, no default.
	return namedns.WriteSysctl(ns, "net.ipv4.ip_forward", "1")
}

func (t *Topology) buildHost(host Host) error {
	hostNS := t.HostNS(host.Name)
	if err := t.veth(t.RouterNS(), portName(host.Name), hostNS, NIC, bridgeName(host.Segment)); err != nil {
		return err
	}
	h, err := namedns.Handle(hostNS)
	if err != nil {
		return err
	}
	defer h.Close()
	for _, l := range []string{"lo", NIC} {
		if err := linkUp(h, l); err != nil {
			return err
		}
	}
	if err := addAddr(h, NIC, host.Addr); err != nil {
		return err
	}
	link, err := h.LinkByName(NIC)
	if err != nil {
		return err
	}
	gw := t.Gateway(host)
	if err := h.RouteAdd(&netlink.Route{LinkIndex: link.Attrs().Index, Gw: gw.AsSlice(), Dst: nil}); err != nil {
		return fmt.Errorf("default route via %s: %w", gw, err)
	}
	// A host that routes workloads forwards packets, as Felix configures it.
	return namedns.WriteSysctl(hostNS, "net.ipv4.ip_forward", "1")
}

func (t *Topology) buildOutside() error {
	if err := t.veth(t.RouterNS(), "p-outside", t.OutsideNS(), NIC, ""); err != nil {
		return err
	}
	rh, err := namedns.Handle(t.RouterNS())
	if err != nil {
		return err
	}
	defer rh.Close()
	if err := addAddr(rh, "p-outside", t.Outside.Router); err != nil {
		return err
	}
	if err := linkUp(rh, "p-outside"); err != nil {
		return err
	}
	h, err := namedns.Handle(t.OutsideNS())
	if err != nil {
		return err
	}
	defer h.Close()
	for _, l := range []string{"lo", NIC} {
		if err := linkUp(h, l); err != nil {
			return err
		}
	}
	if err := addAddr(h, NIC, t.Outside.Addr); err != nil {
		return err
	}
	link, err := h.LinkByName(NIC)
	if err != nil {
		return err
	}
	known := t.Outside.Knows
	if err := h.RouteAdd(&netlink.Route{LinkIndex: link.Attrs().Index, Dst: prefixNet(known), Gw: t.Outside.Router.Addr().AsSlice()}); err != nil {
		return fmt.Errorf("route %s via the router: %w", known, err)
	}
	return nil
}

// veth creates a veth pair with one end (aName) in namespace a, enslaved to bridge when
// bridge is not empty, and the other end (bName) in namespace b.
func (t *Topology) veth(a, aName, b, bName, bridge string) error {
	ah, err := namedns.Handle(a)
	if err != nil {
		return err
	}
	defer ah.Close()
	bfd, err := namedns.Open(b)
	if err != nil {
		return err
	}
	defer bfd.Close()
	v := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: aName, MTU: t.MTU},
		PeerName:      bName,
		PeerNamespace: netlink.NsFd(int(bfd)),
	}
	if err := ah.LinkAdd(v); err != nil {
		return fmt.Errorf("veth %s (%s) - %s (%s): %w", aName, a, bName, b, err)
	}
	if bridge != "" {
		br, err := ah.LinkByName(bridge)
		if err != nil {
			return fmt.Errorf("bridge %s: %w", bridge, err)
		}
		link, err := ah.LinkByName(aName)
		if err != nil {
			return err
		}
		if err := ah.LinkSetMaster(link, br); err != nil {
			return fmt.Errorf("enslave %s to %s: %w", aName, bridge, err)
		}
	}
	return linkUp(ah, aName)
}

func linkUp(h *netlink.Handle, name string) error {
	l, err := h.LinkByName(name)
	if err != nil {
		return fmt.Errorf("link %s: %w", name, err)
	}
	if err := h.LinkSetUp(l); err != nil {
		return fmt.Errorf("set %s up: %w", name, err)
	}
	return nil
}

func addAddr(h *netlink.Handle, link string, p netip.Prefix) error {
	l, err := h.LinkByName(link)
	if err != nil {
		return fmt.Errorf("link %s: %w", link, err)
	}
	a := &netlink.Addr{IPNet: prefixIPNet(p)}
	if err := h.AddrAdd(l, a); err != nil {
		return fmt.Errorf("address %s on %s: %w", p, link, err)
	}
	return nil
}
