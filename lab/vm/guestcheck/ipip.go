package main

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"runtime"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"
	"golang.org/x/sys/unix"
)

// tabbyProto is tabby's route protocol number (SPEC §5); the check's routes carry it so that
// they look exactly like the ones tabbyd writes.
const tabbyProto = netlink.RouteProtocol(95)

// ipipHost is one side of the check: a network namespace standing for a tabby node whose
// underlay NIC is one end of a veth pair.
type ipipHost struct {
	name     string
	ns       netns.NsHandle
	nl       *netlink.Handle
	nic      string
	underlay *net.IPNet // the node's address on its NIC
	tunnelIP net.IP     // the node's IPIP tunnel address, on tunl0
	block    *net.IPNet // the node's IPAM block, routed to it by its peer
	adopted  bool       // tunl0 existed already (the kernel's fallback device)
}

// ipipCheck builds two "nodes" in their own network namespaces, joined by a veth pair, and
// programs them the way tabbyd does in IPIP Always mode: tunl0 adopted (the ipip module gives
// every namespace a tunl0, so creating one returns EEXIST), brought up with its /32 tunnel
// address and MTU 1480, then `<peer block> via <peer NIC ip> dev tunl0 onlink`. It pings the
// far node's tunnel address from the near one and proves, from a packet socket on the far
// NIC, that the echo crossed the underlay as IP protocol 4 (IP-in-IP) between the NIC
// addresses, and that the far tunl0 decapsulated it. Nothing outside the two namespaces is
// touched; they vanish with their last file descriptor.
func ipipCheck() (string, error) {
	runtime.LockOSThread()
	origin, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return "", fmt.Errorf("get the current netns: %w", err)
	}
	defer func() {
		// Only a thread back in its own namespace may serve other goroutines again; one that
		// cannot return stays locked, and Go ends it with this goroutine.
		if netns.Set(origin) == nil {
			runtime.UnlockOSThread()
		}
		origin.Close()
	}()

	a := &ipipHost{name: "node-a", nic: "eth-a",
		underlay: mustCIDR("10.99.0.1/24"), tunnelIP: net.ParseIP("192.168.10.1"), block: mustNet("192.168.10.0/26")}
	b := &ipipHost{name: "node-b", nic: "eth-b",
		underlay: mustCIDR("10.99.0.2/24"), tunnelIP: net.ParseIP("192.168.20.1"), block: mustNet("192.168.20.0/26")}
	for _, h := range []*ipipHost{a, b} {
		if h.ns, err = netns.New(); err != nil { // New also moves this thread into it
			return "", fmt.Errorf("%s: new netns: %w", h.name, err)
		}
		defer h.ns.Close()
		// Only NETLINK_ROUTE: the default list also opens netfilter/xfrm sockets, which a
		// minimal guest without those modules refuses.
		if h.nl, err = netlink.NewHandleAt(h.ns, unix.NETLINK_ROUTE); err != nil {
			return "", fmt.Errorf("%s: netlink handle: %w", h.name, err)
		}
		defer h.nl.Close()
	}
	if err := netns.Set(origin); err != nil {
		return "", err
	}

	veth := netlink.NewVeth(netlink.LinkAttrs{Name: a.nic})
	veth.PeerName = b.nic
	veth.PeerNamespace = netlink.NsFd(b.ns)
	if err := a.nl.LinkAdd(veth); err != nil {
		return "", fmt.Errorf("veth %s/%s: %w", a.nic, b.nic, err)
	}
	for _, h := range []*ipipHost{a, b} {
		if err := h.setUp(); err != nil {
			return "", fmt.Errorf("%s: %w", h.name, err)
		}
	}
	for _, pair := range [][2]*ipipHost{{a, b}, {b, a}} {
		if err := pair[0].routeTo(pair[1]); err != nil {
			return "", fmt.Errorf("%s: %w", pair[0].name, err)
		}
	}

	// The packet socket is opened before the ping so that it queues what crosses the wire.
	sniff, err := openSniffer(b)
	if err != nil {
		return "", fmt.Errorf("%s: %w", b.name, err)
	}
	defer unix.Close(sniff)
	before, err := b.tunlRxPackets()
	if err != nil {
		return "", err
	}
	rtt, err := ping(a, b.tunnelIP)
	if err != nil {
		return "", err
	}
	after, err := b.tunlRxPackets()
	if err != nil {
		return "", err
	}
	if after <= before {
		return "", fmt.Errorf("%s: tunl0 rx_packets stayed at %d although the echo was answered: it did not come through the tunnel", b.name, after)
	}
	if err := expectIPIP(sniff, a.underlay.IP, b.underlay.IP, a.tunnelIP, b.tunnelIP); err != nil {
		return "", fmt.Errorf("%s on %s: %w", b.name, b.nic, err)
	}
	return fmt.Sprintf("ipip: PASS: tunl0 adopted (EEXIST) in %s=%t %s=%t; ping %s -> %s answered in %s; "+
		"%s saw IP proto 4 %s -> %s carrying ICMP to %s; %s tunl0 rx_packets %d -> %d",
		a.name, a.adopted, b.name, b.adopted, a.tunnelIP, b.tunnelIP, rtt.Round(time.Microsecond),
		b.nic, a.underlay.IP, b.underlay.IP, b.tunnelIP, b.name, before, after), nil
}

// setUp brings up lo and the NIC with its underlay address, then adopts tunl0 as tabbyd must:
// create it, take EEXIST as "the kernel made it already", and configure whatever is there.
func (h *ipipHost) setUp() error {
	for _, name := range []string{"lo", h.nic} {
		link, err := h.nl.LinkByName(name)
		if err != nil {
			return fmt.Errorf("find %s: %w", name, err)
		}
		if name == h.nic {
			if err := h.nl.AddrAdd(link, &netlink.Addr{IPNet: h.underlay}); err != nil {
				return fmt.Errorf("address %s on %s: %w", h.underlay, name, err)
			}
		}
		if err := h.nl.LinkSetUp(link); err != nil {
			return fmt.Errorf("set %s up: %w", name, err)
		}
	}

	err := h.nl.LinkAdd(&netlink.Iptun{LinkAttrs: netlink.LinkAttrs{Name: "tunl0"}})
	switch {
	case errors.Is(err, unix.EEXIST):
		h.adopted = true
	case errors.Is(err, unix.EOPNOTSUPP):
		return errors.New("create tunl0: kernel has no ipip support")
	case err != nil:
		return fmt.Errorf("create tunl0: %w", err)
	}
	tunl, err := h.nl.LinkByName("tunl0")
	if err != nil {
		return fmt.Errorf("find tunl0: %w", err)
	}
	if tunl.Type() != "ipip" {
		return fmt.Errorf("tunl0 is a %q device, want ipip", tunl.Type())
	}
	if err := h.nl.LinkSetMTU(tunl, 1480); err != nil {
		return fmt.Errorf("tunl0 mtu: %w", err)
	}
	if err := h.nl.AddrAdd(tunl, &netlink.Addr{IPNet: &net.IPNet{IP: h.tunnelIP, Mask: net.CIDRMask(32, 32)}}); err != nil {
		return fmt.Errorf("tunl0 address %s/32: %w", h.tunnelIP, err)
	}
	// Up before routing: the kernel refuses onlink routes through a down device ("network is down").
	if err := h.nl.LinkSetUp(tunl); err != nil {
		return fmt.Errorf("set tunl0 up: %w", err)
	}
	return nil
}

// routeTo installs the IPIP Always route towards peer's block (SPEC §5).
func (h *ipipHost) routeTo(peer *ipipHost) error {
	tunl, err := h.nl.LinkByName("tunl0")
	if err != nil {
		return err
	}
	r := &netlink.Route{
		Dst:       peer.block,
		Gw:        peer.underlay.IP,
		LinkIndex: tunl.Attrs().Index,
		Flags:     int(netlink.FLAG_ONLINK),
		Protocol:  tabbyProto,
	}
	if err := h.nl.RouteAdd(r); err != nil {
		return fmt.Errorf("route %s via %s dev tunl0 onlink: %w", peer.block, peer.underlay.IP, err)
	}
	return nil
}

func (h *ipipHost) tunlRxPackets() (uint64, error) {
	tunl, err := h.nl.LinkByName("tunl0")
	if err != nil {
		return 0, fmt.Errorf("%s: %w", h.name, err)
	}
	if tunl.Attrs().Statistics == nil {
		return 0, fmt.Errorf("%s: tunl0 has no statistics", h.name)
	}
	return tunl.Attrs().Statistics.RxPackets, nil
}

// inNetns runs f with this (locked) thread inside ns, so that sockets f opens belong to ns.
func inNetns(ns netns.NsHandle, f func() error) error {
	origin, err := netns.Get()
	if err != nil {
		return err
	}
	defer origin.Close()
	if err := netns.Set(ns); err != nil {
		return err
	}
	ferr := f()
	if err := netns.Set(origin); err != nil {
		return fmt.Errorf("return to the original netns: %w", err)
	}
	return ferr
}

// ping sends ICMP echo requests from from's tunnel address to dst until one is answered.
func ping(from *ipipHost, dst net.IP) (time.Duration, error) {
	var conn *icmp.PacketConn
	err := inNetns(from.ns, func() (err error) {
		conn, err = icmp.ListenPacket("ip4:icmp", from.tunnelIP.String())
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("%s: icmp socket: %w", from.name, err)
	}
	defer conn.Close()

	id := os.Getpid() & 0xffff
	buf := make([]byte, 1500)
	for seq := 1; seq <= 5; seq++ {
		msg := icmp.Message{Type: ipv4.ICMPTypeEcho, Body: &icmp.Echo{ID: id, Seq: seq, Data: []byte("tabby-vm ipip")}}
		wire, err := msg.Marshal(nil)
		if err != nil {
			return 0, err
		}
		start := time.Now()
		if _, err := conn.WriteTo(wire, &net.IPAddr{IP: dst}); err != nil {
			return 0, fmt.Errorf("%s: send echo to %s: %w", from.name, dst, err)
		}
		deadline := start.Add(time.Second)
		for {
			if err := conn.SetReadDeadline(deadline); err != nil {
				return 0, err
			}
			n, peer, err := conn.ReadFrom(buf)
			if errors.Is(err, os.ErrDeadlineExceeded) {
				break // next sequence number
			}
			if err != nil {
				return 0, fmt.Errorf("%s: read: %w", from.name, err)
			}
			reply, err := icmp.ParseMessage(1, buf[:n])
			if err != nil || reply.Type != ipv4.ICMPTypeEchoReply {
				continue
			}
			echo, ok := reply.Body.(*icmp.Echo)
			if ok && echo.ID == id && echo.Seq == seq && peer.(*net.IPAddr).IP.Equal(dst) {
				return time.Since(start), nil
			}
		}
	}
	return 0, fmt.Errorf("%s: 5 echo requests to %s through tunl0 got no reply", from.name, dst)
}

// openSniffer opens, inside h's namespace, a packet socket that receives the IPv4 packets
// arriving on h's NIC, headers included, so the outer header of the tunnel can be read.
func openSniffer(h *ipipHost) (int, error) {
	link, err := h.nl.LinkByName(h.nic)
	if err != nil {
		return -1, err
	}
	proto := htons(unix.ETH_P_IP)
	fd := -1
	err = inNetns(h.ns, func() (err error) {
		fd, err = unix.Socket(unix.AF_PACKET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, int(proto))
		return err
	})
	if err != nil {
		return -1, fmt.Errorf("packet socket: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: proto, Ifindex: link.Attrs().Index}); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("bind packet socket to %s: %w", h.nic, err)
	}
	tv := unix.NsecToTimeval((200 * time.Millisecond).Nanoseconds())
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		unix.Close(fd)
		return -1, err
	}
	return fd, nil
}

// expectIPIP reads what the sniffer queued and looks for an IPv4 packet of protocol 4 from
// outerSrc to outerDst whose inner packet is ICMP from innerSrc to innerDst.
func expectIPIP(fd int, outerSrc, outerDst, innerSrc, innerDst net.IP) error {
	buf := make([]byte, 65536)
	var seen []string
	for {
		n, _, err := unix.Recvfrom(fd, buf, 0)
		if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EWOULDBLOCK) {
			break
		}
		if err != nil {
			return fmt.Errorf("read packet socket: %w", err)
		}
		outer, err := parseIPv4(buf[:n])
		if err != nil {
			continue
		}
		seen = append(seen, fmt.Sprintf("%s->%s proto %d", outer.src, outer.dst, outer.proto))
		if outer.proto != unix.IPPROTO_IPIP || !outer.src.Equal(outerSrc) || !outer.dst.Equal(outerDst) {
			continue
		}
		inner, err := parseIPv4(outer.payload)
		if err == nil && inner.proto == unix.IPPROTO_ICMP && inner.src.Equal(innerSrc) && inner.dst.Equal(innerDst) {
			return nil
		}
	}
	return fmt.Errorf("no IP-in-IP packet %s -> %s carrying ICMP %s -> %s; saw %v", outerSrc, outerDst, innerSrc, innerDst, seen)
}

type ipv4Packet struct {
	src, dst net.IP
	proto    int
	payload  []byte
}

func parseIPv4(b []byte) (ipv4Packet, error) {
	if len(b) < 20 || b[0]>>4 != 4 {
		return ipv4Packet{}, errors.New("not IPv4")
	}
	ihl := int(b[0]&0x0f) * 4
	total := int(binary.BigEndian.Uint16(b[2:4]))
	if ihl < 20 || total < ihl || total > len(b) {
		return ipv4Packet{}, errors.New("truncated IPv4 packet")
	}
	return ipv4Packet{src: net.IP(b[12:16]), dst: net.IP(b[16:20]), proto: int(b[9]), payload: b[ihl:total]}, nil
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

func mustCIDR(s string) *net.IPNet {
	ip, n, err := net.ParseCIDR(s)
	if err != nil {
		panic(err)
	}
	n.IP = ip
	return n
}

func mustNet(s string) *net.IPNet {
	_, n, err := net.ParseCIDR(s)
	if err != nil {
		panic(err)
	}
	return n
}
