package diagnose

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"os/exec"
	"strconv"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/tabby-net/tabby/bgp/secret"
	"github.com/tabby-net/tabby/internal/checksum"
)

// KernelProber probes with the host's own network stack: ping(8) for echo requests, TCP
// connects, and raw sockets for the spoofed-source echo.
type KernelProber struct {
	// Timeout bounds each probe.
	Timeout time.Duration
}

func (k KernelProber) timeout() time.Duration {
	if k.Timeout == 0 {
		return 2 * time.Second
	}
	return k.Timeout
}

// Why a TCP probe failed, for the diagnosis to tell a dropped SYN (a blocked port, or a
// peer that wants another TCP-MD5 key) from a refused one.
var (
	ErrNoAnswer = errors.New("no answer (packets dropped)")
	ErrRefused  = errors.New("connection refused")
)

// TCP connects to addr and closes at once. With a key it connects as BGP does with a
// password: the socket carries the peer's TCP-MD5 key (TCP_MD5SIG) before the SYN leaves,
// since a peer with a password drops every segment without the right signature.
func (k KernelProber) TCP(ctx context.Context, addr netip.AddrPort, key secret.Secret) error {
	d := net.Dialer{Timeout: k.timeout()}
	if !key.IsZero() {
		d.Control = func(_, _ string, c syscall.RawConn) error {
			var serr error
			if err := c.Control(func(fd uintptr) { serr = setTCPMD5Key(int(fd), addr.Addr(), key) }); err != nil {
				return err
			}
			return serr
		}
	}
	c, err := d.DialContext(ctx, "tcp", addr.String())
	if err != nil {
		var errno unix.Errno
		if errors.As(err, &errno) && errno == unix.ECONNREFUSED {
			return ErrRefused
		}
		if ctx.Err() == nil && errors.Is(err, context.DeadlineExceeded) || isTimeout(err) {
			return ErrNoAnswer
		}
		return err
	}
	return c.Close()
}

// setTCPMD5Key sets the TCP-MD5 key for segments to and from peer on the socket fd
// (RFC 2385, Linux's TCP_MD5SIG): on a dialling socket it signs the connection, on a
// listening one it accepts peer's signed connections.
func setTCPMD5Key(fd int, peer netip.Addr, key secret.Secret) error {
	text := key.Reveal()
	if len(text) > unix.TCP_MD5SIG_MAXKEYLEN {
		return fmt.Errorf("the TCP-MD5 key for %s is longer than %d bytes", peer, unix.TCP_MD5SIG_MAXKEYLEN)
	}
	sig := unix.TCPMD5Sig{Keylen: uint16(len(text))}
	copy(sig.Key[:], text)
	peer = peer.Unmap()
	if peer.Is4() {
		// sockaddr_in after the family: port (2 bytes, unused here), then the address.
		sig.Addr.Family = unix.AF_INET
		a := peer.As4()
		copy(sig.Addr.Data[2:], a[:])
	} else {
		// sockaddr_in6 after the family: port (2), flow info (4), then the address.
		sig.Addr.Family = unix.AF_INET6
		a := peer.As16()
		copy(sig.Addr.Data[6:], a[:])
	}
	if err := unix.SetsockoptTCPMD5Sig(fd, unix.IPPROTO_TCP, unix.TCP_MD5SIG, &sig); err != nil {
		return fmt.Errorf("set the TCP-MD5 key for %s: %w", peer, err)
	}
	return nil
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// Ping sends up to three echo requests and succeeds on the first reply.
func (k KernelProber) Ping(ctx context.Context, dst netip.Addr, size int, df bool) error {
	wait := int(k.timeout().Seconds())
	if wait < 1 {
		wait = 1
	}
	args := []string{"-n", "-q", "-c", "3", "-i", "0.2", "-W", "1", "-w", strconv.Itoa(wait), "-s", strconv.Itoa(size)}
	if df {
		args = append(args, "-M", "do")
	}
	args = append(args, dst.String())
	out, err := exec.CommandContext(ctx, "ping", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ping %s: %w: %s", dst, err, lastLine(out))
	}
	return nil
}

func lastLine(b []byte) string {
	s := string(b)
	for len(s) > 0 && (s[len(s)-1] == '\n' || s[len(s)-1] == ' ') {
		s = s[:len(s)-1]
	}
	for i := len(s) - 1; i >= 0; i-- {
		if s[i] == '\n' {
			return s[i+1:]
		}
	}
	return s
}

// SpoofedEcho sends an ICMP echo request from src (a pool address, not this host's) to
// dst, and watches nic for the reply. The request leaves through a packet socket addressed
// to the next hop's MAC, so it bypasses netfilter: the host's own NAT outgoing rule would
// otherwise masquerade a pool source to the host's address. The reply is addressed to a
// pool address, so the host's own stack would drop it (blackhole route); the packet
// socket sees it first.
func (k KernelProber) SpoofedEcho(ctx context.Context, nic string, src, dst netip.Addr) error {
	ifi, err := net.InterfaceByName(nic)
	if err != nil {
		return fmt.Errorf("interface %s: %w", nic, err)
	}
	nextHopMAC, err := k.nextHopMAC(ctx, ifi, dst)
	if err != nil {
		return err
	}
	capFd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_DGRAM, int(htons(unix.ETH_P_IP)))
	if err != nil {
		return fmt.Errorf("packet socket: %w", err)
	}
	defer unix.Close(capFd)
	if err := unix.Bind(capFd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_IP), Ifindex: ifi.Index}); err != nil {
		return fmt.Errorf("bind packet socket to %s: %w", nic, err)
	}
	tv := unix.NsecToTimeval((200 * time.Millisecond).Nanoseconds())
	if err := unix.SetsockoptTimeval(capFd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		return err
	}
	to := &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_IP), Ifindex: ifi.Index, Halen: uint8(len(nextHopMAC))}
	copy(to.Addr[:], nextHopMAC)

	id := uint16(rand.IntN(0xffff))
	deadline := time.Now().Add(k.timeout())
	buf := make([]byte, 2048)
	for seq := uint16(1); seq <= 3; seq++ {
		pkt := echoPacket(src, dst, id, seq)
		if err := unix.Sendto(capFd, pkt, 0, to); err != nil {
			return fmt.Errorf("send echo %s → %s: %w", src, dst, err)
		}
		until := time.Now().Add(k.timeout() / 3)
		for time.Now().Before(until) && time.Now().Before(deadline) {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			n, _, err := unix.Recvfrom(capFd, buf, 0)
			if err != nil {
				continue
			}
			if isEchoReply(buf[:n], dst, src, id) {
				return nil
			}
		}
	}
	return fmt.Errorf("no echo reply from %s to %s", dst, src)
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// nextHopMAC finds the link-layer address a packet to dst leaves nic for: dst's own when it
// is on the link, else the gateway's. The ordinary pings before this probe have resolved
// it; if not, a UDP datagram to the next hop makes the kernel resolve it.
func (k KernelProber) nextHopMAC(ctx context.Context, ifi *net.Interface, dst netip.Addr) (net.HardwareAddr, error) {
	routes, err := netlink.RouteGet(dst.AsSlice())
	if err != nil || len(routes) == 0 {
		return nil, fmt.Errorf("no route to %s: %v", dst, err)
	}
	hop := dst
	if gw, ok := netip.AddrFromSlice(routes[0].Gw); ok && routes[0].Gw != nil {
		hop = gw.Unmap()
	}
	if routes[0].LinkIndex != ifi.Index {
		return nil, fmt.Errorf("%s is not reached through %s", dst, ifi.Name)
	}
	for attempt := 0; attempt < 10; attempt++ {
		neighs, err := netlink.NeighList(ifi.Index, netlink.FAMILY_V4)
		if err != nil {
			return nil, fmt.Errorf("neighbours of %s: %w", ifi.Name, err)
		}
		for _, n := range neighs {
			usable := n.State&(netlink.NUD_REACHABLE|netlink.NUD_STALE|netlink.NUD_DELAY|netlink.NUD_PROBE|netlink.NUD_PERMANENT) != 0
			if a, ok := netip.AddrFromSlice(n.IP); ok && a.Unmap() == hop && usable && len(n.HardwareAddr) == 6 {
				return n.HardwareAddr, nil
			}
		}
		if c, err := net.Dial("udp4", netip.AddrPortFrom(hop, 9).String()); err == nil {
			_, _ = c.Write([]byte{0})
			c.Close()
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	return nil, fmt.Errorf("the link-layer address of %s (next hop to %s) did not resolve", hop, dst)
}

// echoPacket builds an IPv4 packet carrying an ICMP echo request.
func echoPacket(src, dst netip.Addr, id, seq uint16) []byte {
	icmp := make([]byte, 8+32)
	icmp[0] = 8 // echo request
	binary.BigEndian.PutUint16(icmp[4:], id)
	binary.BigEndian.PutUint16(icmp[6:], seq)
	copy(icmp[8:], "tabby node diagnose probe......")
	binary.BigEndian.PutUint16(icmp[2:], checksum.Internet(icmp))
	ip := make([]byte, 20)
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:], uint16(20+len(icmp)))
	binary.BigEndian.PutUint16(ip[4:], id)
	ip[8] = 64 // TTL
	ip[9] = unix.IPPROTO_ICMP
	s, d := src.As4(), dst.As4()
	copy(ip[12:], s[:])
	copy(ip[16:], d[:])
	binary.BigEndian.PutUint16(ip[10:], checksum.Internet(ip))
	return append(ip, icmp...)
}

// isEchoReply reports whether pkt (an IPv4 packet) is the echo reply from → to with id.
func isEchoReply(pkt []byte, from, to netip.Addr, id uint16) bool {
	if len(pkt) < 28 || pkt[0]>>4 != 4 || pkt[9] != unix.IPPROTO_ICMP {
		return false
	}
	ihl := int(pkt[0]&0x0f) * 4
	if len(pkt) < ihl+8 {
		return false
	}
	f, t := from.As4(), to.As4()
	if [4]byte(pkt[12:16]) != f || [4]byte(pkt[16:20]) != t {
		return false
	}
	icmp := pkt[ihl:]
	return icmp[0] == 0 && binary.BigEndian.Uint16(icmp[4:]) == id
}
