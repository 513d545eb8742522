// Package diagnose checks, from one host, what the articles found by hand when Calico did
// not work on AWS: BGP's TCP 179 closed between hosts, IP-in-IP (protocol 4) or VXLAN
// (UDP 4789) dropped by a security group, a fabric that drops packets whose addresses are
// not host addresses (EC2's source/destination check, or a router that doesn't know the
// pool), an MTU smaller than the hosts think, and a node address with the wrong prefix.
// Every finding comes with its fix in the articles' words.
package diagnose

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sort"
	"strings"

	"github.com/tabby-net/tabby/bgp/secret"
	"github.com/tabby-net/tabby/datastore"
	"github.com/tabby-net/tabby/internal/statusapi"
)

// Local is what the diagnosing host knows about itself.
type Local struct {
	Node string
	// Addr is the Node's ipv4Address (with its prefix) as stored in the datastore.
	Addr netip.Prefix
	// NIC is the interface that holds Addr, and NICPrefix the prefix it has there.
	NIC       string
	NICPrefix netip.Prefix
	HostMTU   int
	// Block is one of the node's blocks: its first address is the source of the probe
	// that tells whether the fabric carries pool addresses.
	Block netip.Prefix
	// NoIPIP is set when the kernel has no ipip module.
	NoIPIP bool
}

// Input is everything a diagnosis needs.
type Input struct {
	Local Local
	Peers []statusapi.Peer
	Nodes []*datastore.Node
	Pools []*datastore.IPPool
	// Keys holds, by peer address, the TCP-MD5 password of each peer that has one.
	Keys map[netip.Addr]PeerKey
}

// PeerKey is what this host knows of a peer's BGP password.
type PeerKey struct {
	// Key is the password, read from the secret file tabbyd reads (SPEC §7); zero when
	// it could not be read here.
	Key secret.Secret
	// Unreadable says why the password could not be read here (not root, missing file).
	Unreadable string
}

// Prober sends the probes. The real one uses the kernel; tests use a fake fabric.
type Prober interface {
	// TCP connects to addr:port, signing with key (TCP-MD5) unless it is zero. A SYN
	// that gets no answer fails with ErrNoAnswer, a refused one with ErrRefused.
	TCP(ctx context.Context, addr netip.AddrPort, key secret.Secret) error
	// Ping sends ICMP echo requests of size bytes of payload to dst, with the DF bit
	// when df, and reports whether a reply came back.
	Ping(ctx context.Context, dst netip.Addr, size int, df bool) error
	// SpoofedEcho sends an echo request to dst with source src out of nic and watches
	// nic for the reply: it proves that packets with a non-host address cross the fabric
	// both ways.
	SpoofedEcho(ctx context.Context, nic string, src, dst netip.Addr) error
}

// Check names one kind of probe.
type Check string

const (
	CheckBGP       Check = "BGP (TCP 179)"
	CheckReach     Check = "host reachable"
	CheckIPIP      Check = "IP-in-IP (protocol 4)"
	CheckVXLAN     Check = "VXLAN (UDP 4789)"
	CheckPoolAddrs Check = "pool addresses (src/dst check)"
	CheckMTU       Check = "MTU"
	CheckPrefix    Check = "node address prefix"
)

// Result is one probe's outcome for one peer.
type Result struct {
	Check Check
	// Status is "ok", "FAIL", or why it was not run ("n/a", "skipped: ...").
	Status string
}

// Finding is a problem and what to do about it.
type Finding struct {
	Peer    string // the peer's address, or "" for a problem of this host
	Check   Check
	Problem string
	Fix     string
}

// PeerReport is every check against one peer.
type PeerReport struct {
	Node    string // the tabby node, or "" for a BGPPeer that is not a node
	Address netip.Addr
	Results []Result
}

// Report is a whole diagnosis.
type Report struct {
	Local    Local
	Peers    []PeerReport
	Findings []Finding

	// pathMTU is the path MTU found for an earlier peer, 0 if none.
	pathMTU int
}

// OK reports whether nothing was found.
func (r *Report) OK() bool { return len(r.Findings) == 0 }

// encapsulation says how traffic to a peer is carried under the pools in force.
type encapsulation struct {
	ipip, vxlan, bare bool
}

func peerEncap(local Local, peerAddr netip.Addr, pools []*datastore.IPPool) encapsulation {
	var e encapsulation
	sameSubnet := local.Addr.Masked().Contains(peerAddr)
	for _, p := range pools {
		switch {
		case p.Spec.IPIPMode == datastore.EncapAlways || (p.Spec.IPIPMode == datastore.EncapCrossSubnet && !sameSubnet):
			e.ipip = true
		case p.Spec.VXLANMode == datastore.EncapAlways || (p.Spec.VXLANMode == datastore.EncapCrossSubnet && !sameSubnet):
			e.vxlan = true
		default:
			e.bare = true
		}
	}
	return e
}

// Run diagnoses. It never fails as a whole: a probe that cannot run says so in its result.
func Run(ctx context.Context, in Input, p Prober) *Report {
	r := &Report{Local: in.Local}
	if in.Local.NICPrefix.IsValid() && in.Local.Addr.IsValid() && in.Local.NICPrefix.Bits() != in.Local.Addr.Bits() {
		r.Findings = append(r.Findings, Finding{
			Check:   CheckPrefix,
			Problem: fmt.Sprintf("the node address is %s but %s has %s: CrossSubnet decides by the node's prefix, so it encapsulates the wrong peers", in.Local.Addr, in.Local.NIC, in.Local.NICPrefix),
			Fix:     fmt.Sprintf("set ipv4.address to %s (or use an autodetection method that reads the interface)", in.Local.NICPrefix),
		})
	}
	bgpPeers := map[netip.Addr]statusapi.Peer{}
	for _, bp := range in.Peers {
		if a, err := parsePeerAddr(bp.Address); err == nil {
			bgpPeers[a.Addr()] = bp
		}
	}
	seen := map[netip.Addr]bool{}
	nodes := append([]*datastore.Node(nil), in.Nodes...)
	sort.Slice(nodes, func(i, j int) bool { return nodes[i].Metadata.Name < nodes[j].Metadata.Name })
	for _, n := range nodes {
		if n.Metadata.Name == in.Local.Node || n.Spec.BGP == nil {
			continue
		}
		addr, err := netip.ParsePrefix(n.Spec.BGP.IPv4Address)
		if err != nil {
			continue
		}
		seen[addr.Addr()] = true
		bp, isPeer := bgpPeers[addr.Addr()]
		r.diagnoseNode(ctx, in, p, n, addr.Addr(), bp, isPeer)
	}
	for addr, bp := range bgpPeers {
		if seen[addr] {
			continue
		}
		pr := PeerReport{Address: addr}
		pr.Results = append(pr.Results, r.checkBGP(ctx, p, addr, bp, in.Keys[addr]))
		r.Peers = append(r.Peers, pr)
	}
	sort.SliceStable(r.Peers, func(i, j int) bool { return r.Peers[i].Address.Less(r.Peers[j].Address) })
	return r
}

func (r *Report) diagnoseNode(ctx context.Context, in Input, p Prober, n *datastore.Node, addr netip.Addr, bp statusapi.Peer, isPeer bool) {
	pr := PeerReport{Node: n.Metadata.Name, Address: addr}
	defer func() { r.Peers = append(r.Peers, pr) }()
	add := func(c Check, status string) { pr.Results = append(pr.Results, Result{Check: c, Status: status}) }

	if err := p.Ping(ctx, addr, 56, false); err != nil {
		add(CheckReach, "FAIL")
		r.Findings = append(r.Findings, Finding{Peer: addr.String(), Check: CheckReach, Problem: fmt.Sprintf("%s (%s) does not answer ping", addr, n.Metadata.Name),
			Fix: "allow ICMP between the hosts in the security group, and check that the host is up"})
		return
	}
	add(CheckReach, "ok")
	if isPeer {
		add(CheckBGP, r.checkBGP(ctx, p, addr, bp, in.Keys[addr]).Status)
	} else {
		add(CheckBGP, "n/a")
	}

	enc := peerEncap(in.Local, addr, in.Pools)
	switch {
	case enc.ipip && in.Local.NoIPIP:
		add(CheckIPIP, "skipped: kernel has no ipip support")
		r.hostFinding(Finding{Check: CheckIPIP, Problem: "the pool uses IP-in-IP but this kernel has no ipip support",
			Fix: "load the ipip module, or use VXLAN (vxlanMode) instead"})
	case enc.ipip:
		add(CheckIPIP, r.tunnelProbe(ctx, p, n, addr, n.Spec.BGP.IPv4IPIPTunnelAddr, CheckIPIP,
			"IP-in-IP packets (IP protocol 4) to %s are dropped", "allow IP protocol 4 (IP-in-IP) between the hosts in the security group"))
	default:
		add(CheckIPIP, "n/a")
	}
	if enc.vxlan {
		add(CheckVXLAN, r.tunnelProbe(ctx, p, n, addr, n.Spec.IPv4VXLANTunnelAddr, CheckVXLAN,
			"VXLAN packets (UDP 4789) to %s are dropped", "allow UDP 4789 (VXLAN) between the hosts in the security group"))
	} else {
		add(CheckVXLAN, "n/a")
	}
	if enc.bare {
		add(CheckPoolAddrs, r.poolAddrProbe(ctx, in, p, addr))
	} else {
		add(CheckPoolAddrs, "n/a")
	}
	add(CheckMTU, r.mtuProbe(ctx, in, p, addr))
}

// hostFinding records a problem of this host once, however many peers show it.
func (r *Report) hostFinding(f Finding) {
	for _, have := range r.Findings {
		if have.Peer == "" && have.Check == f.Check && have.Problem == f.Problem {
			return
		}
	}
	r.Findings = append(r.Findings, f)
}

// checkBGP checks TCP to the peer's BGP port as BGP connects: with the peer's password
// when it has one. An Established session is proof enough: TCP works, password included,
// and a probe that fails for a reason of its own (no key here) must not say otherwise.
func (r *Report) checkBGP(ctx context.Context, p Prober, addr netip.Addr, bp statusapi.Peer, key PeerKey) Result {
	port := uint16(179)
	if ap, err := parsePeerAddr(bp.Address); err == nil && ap.Port() != 0 {
		port = ap.Port()
	}
	if bp.Established {
		return Result{Check: CheckBGP, Status: "ok (session Established)"}
	}
	ap := netip.AddrPortFrom(addr, port)
	fail := func(status, problem, fix string) Result {
		r.Findings = append(r.Findings, Finding{Peer: addr.String(), Check: CheckBGP, Problem: problem, Fix: fix})
		return Result{Check: CheckBGP, Status: status}
	}
	session := ""
	if bp.Address != "" {
		session = fmt.Sprintf(" (BGP session: %s)", bp.Info)
	}
	err := p.TCP(ctx, ap, key.Key)
	switch {
	case err == nil && bp.Address != "":
		return fail("FAIL", fmt.Sprintf("TCP %d to %s is open but the BGP session is %s (%s)", port, addr, bp.State, bp.Info),
			"check the AS numbers and the BGP password of both sides")
	case err == nil:
		return Result{Check: CheckBGP, Status: "ok"}
	case errors.Is(err, ErrNoAnswer) && !key.Key.IsZero():
		// A peer with another password drops the signed SYN as a firewall would; the
		// same SYN unsigned tells them apart when it is answered.
		if plain := p.TCP(ctx, ap, secret.Secret{}); plain == nil || errors.Is(plain, ErrRefused) {
			return fail("FAIL (password not expected by the peer)",
				fmt.Sprintf("TCP %d to %s answers without a password but not with this host's TCP-MD5 password: the peer has no password for this host%s", port, addr, session),
				"set the same password on the peer, or remove it from the BGPPeer / nodeMeshPassword")
		}
		return fail("FAIL (password mismatched or port blocked)",
			fmt.Sprintf("TCP %d to %s with this host's TCP-MD5 password gets no answer: the peer's password differs (it drops wrongly signed packets silently), or TCP %d is blocked%s", port, addr, port, session),
			fmt.Sprintf("check that the peer has the same password as this host's secret file, and open TCP %d between the hosts", port))
	case errors.Is(err, ErrNoAnswer) && key.Unreadable != "":
		return fail("FAIL (password required or mismatched)",
			fmt.Sprintf("TCP %d to %s without a password gets no answer, as a peer with a TCP-MD5 password answers none; the password could not be read here (%s), so a blocked port cannot be told apart%s", port, addr, key.Unreadable, session),
			"run node diagnose as root so that it probes with the password, and check that both sides have the same password")
	}
	return fail("FAIL", fmt.Sprintf("TCP %d to %s fails (%v): BGP cannot establish, so routes are not exchanged%s", port, addr, err, session),
		fmt.Sprintf("open TCP %d between the hosts in the security group", port))
}

// tunnelProbe pings the peer's tunnel address: the route to it goes through the tunnel,
// so the echo travels encapsulated both ways while the plain ping above proved the host
// itself answers.
func (r *Report) tunnelProbe(ctx context.Context, p Prober, n *datastore.Node, addr netip.Addr, tunnelAddr string, c Check, problem, fix string) string {
	ta, err := netip.ParseAddr(strings.TrimSuffix(tunnelAddr, "/32"))
	if err != nil {
		return "skipped: " + n.Metadata.Name + " has no tunnel address yet"
	}
	if err := p.Ping(ctx, ta, 56, false); err != nil {
		r.Findings = append(r.Findings, Finding{Peer: addr.String(), Check: c, Problem: fmt.Sprintf(problem, addr) + fmt.Sprintf(" (ping of its tunnel address %s fails while the host answers)", ta), Fix: fix})
		return "FAIL"
	}
	return "ok"
}

// poolAddrProbe checks that the fabric carries packets whose source is a pool address,
// which is what unencapsulated (Direct) traffic looks like on the wire.
func (r *Report) poolAddrProbe(ctx context.Context, in Input, p Prober, addr netip.Addr) string {
	if !in.Local.Block.IsValid() {
		return "skipped: this node has no block yet"
	}
	src := in.Local.Block.Addr()
	if err := p.SpoofedEcho(ctx, in.Local.NIC, src, addr); err != nil {
		f := Finding{Peer: addr.String(), Check: CheckPoolAddrs}
		if in.Local.Addr.Masked().Contains(addr) {
			f.Problem = fmt.Sprintf("packets between %s and %s with pool addresses (%s) are dropped although the hosts share a subnet: the fabric checks source and destination addresses", in.Local.Addr.Addr(), addr, src)
			f.Fix = "disable the source/destination check on the instances (EC2: Change source/destination check → Stop), or use IP-in-IP or VXLAN"
		} else {
			f.Problem = fmt.Sprintf("packets with pool addresses (%s) do not reach %s in another subnet: the router between the subnets does not know the pool's blocks, or checks source and destination addresses", src, addr)
			f.Fix = "use CrossSubnet (ipipMode or vxlanMode) so traffic between subnets is encapsulated, or peer the router with BGP so it learns the blocks, and disable the source/destination check"
		}
		r.Findings = append(r.Findings, f)
		return "FAIL"
	}
	return "ok"
}

// mtuProbe sends a full-size packet (the host MTU) with DF set: a tunnel packet carrying a
// pod packet of the tunnel MTU is that big on the wire.
func (r *Report) mtuProbe(ctx context.Context, in Input, p Prober, addr netip.Addr) string {
	if in.Local.HostMTU < 576 {
		return "skipped: host MTU unknown"
	}
	size := in.Local.HostMTU - 28
	if err := p.Ping(ctx, addr, size, true); err == nil {
		return fmt.Sprintf("ok (%d)", in.Local.HostMTU)
	}
	// Find the largest packet that passes, to say what the MTU should be. Peers behind
	// the same fabric share its MTU: try the one found for an earlier peer first.
	lo, hi := 548, size
	if r.pathMTU > 0 && p.Ping(ctx, addr, r.pathMTU-28, true) == nil && p.Ping(ctx, addr, r.pathMTU-27, true) != nil {
		lo, hi = r.pathMTU-28, r.pathMTU-27
	} else if p.Ping(ctx, addr, lo, true) != nil {
		r.Findings = append(r.Findings, Finding{Peer: addr.String(), Check: CheckMTU,
			Problem: fmt.Sprintf("even %d-byte packets with DF set do not reach %s", lo+28, addr), Fix: "fix the MTU of the path between the hosts"})
		return "FAIL"
	}
	for hi-lo > 1 {
		mid := (lo + hi) / 2
		if p.Ping(ctx, addr, mid, true) == nil {
			lo = mid
		} else {
			hi = mid
		}
	}
	pathMTU := lo + 28
	r.pathMTU = pathMTU
	r.Findings = append(r.Findings, Finding{Peer: addr.String(), Check: CheckMTU,
		Problem: fmt.Sprintf("the path to %s carries about %d bytes, but this host sends up to %d (tunnel MTU %d for IP-in-IP, %d for VXLAN): large packets vanish", addr, pathMTU, in.Local.HostMTU, in.Local.HostMTU-20, in.Local.HostMTU-50),
		Fix:     fmt.Sprintf("fix the MTU: set dataplane.mtu to %d (the fabric's MTU) in tabbyd.yaml, or raise the fabric's MTU", pathMTU)})
	return "FAIL"
}

// parsePeerAddr reads a status address, "10.0.0.1" or "10.0.0.1:1790".
func parsePeerAddr(s string) (netip.AddrPort, error) {
	if ap, err := netip.ParseAddrPort(s); err == nil {
		return ap, nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.AddrPort{}, err
	}
	return netip.AddrPortFrom(a, 0), nil
}
