package diagnose

import (
	"bytes"
	"context"
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/tabby-net/tabby/bgp/secret"
	"github.com/tabby-net/tabby/datastore"
	"github.com/tabby-net/tabby/internal/checksum"
	"github.com/tabby-net/tabby/internal/statusapi"
)

// fabric is a fake network between the local host and the articles' nodes, with the
// faults of the lab.
type fabric struct {
	bgpClosed, ipipDropped, vxlanDropped, poolDropped bool
	bgpPassword                                       string // the peers' TCP-MD5 password
	crossSubnetPoolDropped                            bool
	pathMTU                                           int
	tunnels                                           map[netip.Addr]netip.Addr // tunnel address → host
	local                                             netip.Prefix
}

func (f *fabric) TCP(_ context.Context, a netip.AddrPort, key secret.Secret) error {
	if f.bgpClosed || key.Reveal() != f.bgpPassword {
		return ErrNoAnswer // a peer with a TCP-MD5 password drops what is not signed with it
	}
	return nil
}

// sessionsDown puts every BGP session of the input in Active, as when TCP 179 is closed.
func sessionsDown(in *Input) {
	for i := range in.Peers {
		in.Peers[i].State, in.Peers[i].Info, in.Peers[i].Established = "start", "Active: no response (check TCP 179 / MD5 password)", false
	}
}

func (f *fabric) Ping(_ context.Context, dst netip.Addr, size int, df bool) error {
	if host, isTunnel := f.tunnels[dst]; isTunnel {
		_ = host
		if f.ipipDropped || f.vxlanDropped {
			return errors.New("100% packet loss")
		}
		return nil
	}
	if df && f.pathMTU > 0 && size+28 > f.pathMTU {
		return errors.New("100% packet loss")
	}
	return nil
}

func (f *fabric) SpoofedEcho(_ context.Context, _ string, _, dst netip.Addr) error {
	if f.poolDropped || (f.crossSubnetPoolDropped && !f.local.Masked().Contains(dst)) {
		return errors.New("no echo reply")
	}
	return nil
}

func node(name, addr, ipipTunnel string) *datastore.Node {
	return &datastore.Node{Metadata: datastore.ObjectMeta{Name: name}, Spec: datastore.NodeSpec{
		BGP: &datastore.NodeBGPSpec{IPv4Address: addr, IPv4IPIPTunnelAddr: ipipTunnel},
	}}
}

func pool(ipip, vxlan datastore.EncapMode) *datastore.IPPool {
	return &datastore.IPPool{Metadata: datastore.ObjectMeta{Name: "default-ipv4-ippool"},
		Spec: datastore.IPPoolSpec{CIDR: "192.168.0.0/16", IPIPMode: ipip, VXLANMode: vxlan, BlockSize: 26}}
}

func articlesInput(p *datastore.IPPool) Input {
	nodes := []*datastore.Node{
		node("master", "10.30.0.136/24", "192.168.219.64"),
		node("worker-1", "10.30.0.206/24", "192.168.226.64"),
		node("worker-2", "10.30.0.56/24", "192.168.133.192"),
		node("worker-3", "10.30.1.66/24", "192.168.97.192"),
	}
	var peers []statusapi.Peer
	for _, a := range []string{"10.30.0.136", "10.30.0.56", "10.30.1.66"} {
		peers = append(peers, statusapi.Peer{Address: a, Type: statusapi.PeerTypeMesh, State: "up", Info: "Established", Established: true})
	}
	local := netip.MustParsePrefix("10.30.0.206/24")
	return Input{
		Local: Local{Node: "worker-1", Addr: local, NIC: "eth0", NICPrefix: local, HostMTU: 1500,
			Block: netip.MustParsePrefix("192.168.226.64/26")},
		Peers: peers, Nodes: nodes, Pools: []*datastore.IPPool{p},
	}
}

func newFabric() *fabric {
	f := &fabric{tunnels: map[netip.Addr]netip.Addr{}, local: netip.MustParsePrefix("10.30.0.206/24")}
	for _, t := range []string{"192.168.219.64", "192.168.226.64", "192.168.133.192", "192.168.97.192"} {
		f.tunnels[netip.MustParseAddr(t)] = netip.Addr{}
	}
	return f
}

func TestDiagnose(t *testing.T) {
	cases := []struct {
		name      string
		pool      *datastore.IPPool
		fault     func(*fabric, *Input)
		wantFixes []string // each must appear in some finding's fix
		wantPeers []string // the peers named by findings
	}{
		{name: "healthy IPIP", pool: pool(datastore.EncapAlways, datastore.EncapNever), fault: func(*fabric, *Input) {}},
		{name: "healthy Direct", pool: pool(datastore.EncapNever, datastore.EncapNever), fault: func(*fabric, *Input) {}},
		{name: "TCP 179 closed", pool: pool(datastore.EncapAlways, datastore.EncapNever),
			fault:     func(f *fabric, in *Input) { f.bgpClosed = true; sessionsDown(in) },
			wantFixes: []string{"open TCP 179"}, wantPeers: []string{"10.30.0.136", "10.30.0.56", "10.30.1.66"}},
		// The probe's own failure never contradicts an Established session.
		{name: "TCP 179 probe fails, sessions Established", pool: pool(datastore.EncapAlways, datastore.EncapNever),
			fault: func(f *fabric, _ *Input) { f.bgpClosed = true }},
		{name: "mesh password, sessions Established, key not readable here", pool: pool(datastore.EncapAlways, datastore.EncapNever),
			fault: func(f *fabric, in *Input) {
				f.bgpPassword = "s3cret"
				in.Keys = meshKeys(PeerKey{Unreadable: "permission denied"})
			}},
		{name: "mesh password, sessions down, key not readable here", pool: pool(datastore.EncapAlways, datastore.EncapNever),
			fault: func(f *fabric, in *Input) {
				f.bgpPassword = "s3cret"
				sessionsDown(in)
				in.Keys = meshKeys(PeerKey{Unreadable: "permission denied"})
			},
			wantFixes: []string{"run node diagnose as root"}, wantPeers: []string{"10.30.0.136", "10.30.0.56", "10.30.1.66"}},
		{name: "mesh password, sessions down, other password here", pool: pool(datastore.EncapAlways, datastore.EncapNever),
			fault: func(f *fabric, in *Input) {
				f.bgpPassword = "s3cret"
				sessionsDown(in)
				in.Keys = meshKeys(PeerKey{Key: secret.New("other")})
			},
			wantFixes: []string{"check that the peer has the same password"}, wantPeers: []string{"10.30.0.136", "10.30.0.56", "10.30.1.66"}},
		{name: "mesh password, sessions down, right password: TCP is fine", pool: pool(datastore.EncapAlways, datastore.EncapNever),
			fault: func(f *fabric, in *Input) {
				f.bgpPassword = "s3cret"
				sessionsDown(in)
				in.Keys = meshKeys(PeerKey{Key: secret.New("s3cret")})
			},
			wantFixes: []string{"check the AS numbers"}, wantPeers: []string{"10.30.0.136", "10.30.0.56", "10.30.1.66"}},
		{name: "protocol 4 dropped", pool: pool(datastore.EncapAlways, datastore.EncapNever),
			fault:     func(f *fabric, _ *Input) { f.ipipDropped = true },
			wantFixes: []string{"allow IP protocol 4"}, wantPeers: []string{"10.30.0.136", "10.30.0.56", "10.30.1.66"}},
		{name: "UDP 4789 dropped", pool: pool(datastore.EncapNever, datastore.EncapAlways),
			fault: func(f *fabric, in *Input) {
				f.vxlanDropped = true
				for _, n := range in.Nodes {
					n.Spec.IPv4VXLANTunnelAddr = n.Spec.BGP.IPv4IPIPTunnelAddr
				}
			},
			wantFixes: []string{"allow UDP 4789"}, wantPeers: []string{"10.30.0.136", "10.30.0.56", "10.30.1.66"}},
		{name: "source/destination check in Direct", pool: pool(datastore.EncapNever, datastore.EncapNever),
			fault:     func(f *fabric, _ *Input) { f.poolDropped = true },
			wantFixes: []string{"disable the source/destination check", "use CrossSubnet"}, wantPeers: []string{"10.30.0.136", "10.30.0.56", "10.30.1.66"}},
		{name: "Direct across subnets without router integration", pool: pool(datastore.EncapNever, datastore.EncapNever),
			fault:     func(f *fabric, _ *Input) { f.crossSubnetPoolDropped = true },
			wantFixes: []string{"use CrossSubnet"}, wantPeers: []string{"10.30.1.66"}},
		{name: "CrossSubnet: the check is not needed across subnets", pool: pool(datastore.EncapCrossSubnet, datastore.EncapNever),
			fault: func(f *fabric, _ *Input) { f.crossSubnetPoolDropped = true }},
		{name: "fabric MTU 1400", pool: pool(datastore.EncapAlways, datastore.EncapNever),
			fault:     func(f *fabric, _ *Input) { f.pathMTU = 1400 },
			wantFixes: []string{"fix the MTU: set dataplane.mtu to 1400 "}, wantPeers: []string{"10.30.0.136", "10.30.0.56", "10.30.1.66"}},
		{name: "node address with the wrong prefix", pool: pool(datastore.EncapCrossSubnet, datastore.EncapNever),
			fault: func(_ *fabric, in *Input) {
				in.Local.Addr = netip.MustParsePrefix("10.30.0.206/16")
			},
			wantFixes: []string{"set ipv4.address to 10.30.0.206/24"}, wantPeers: []string{""}},
		{name: "no ipip in the kernel", pool: pool(datastore.EncapAlways, datastore.EncapNever),
			fault:     func(_ *fabric, in *Input) { in.Local.NoIPIP = true },
			wantFixes: []string{"load the ipip module"}, wantPeers: []string{""}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			in := articlesInput(tc.pool)
			f := newFabric()
			tc.fault(f, &in)
			r := Run(context.Background(), in, f)
			var out bytes.Buffer
			Print(&out, r)
			if len(tc.wantFixes) == 0 {
				if !r.OK() {
					t.Fatalf("findings on a healthy fabric:\n%s", out.String())
				}
				return
			}
			if r.OK() {
				t.Fatalf("no finding; want fixes %q\n%s", tc.wantFixes, out.String())
			}
			for _, want := range tc.wantFixes {
				if !strings.Contains(out.String(), "fix: "+want) {
					t.Errorf("no fix %q in:\n%s", want, out.String())
				}
			}
			named := map[string]bool{}
			for _, fd := range r.Findings {
				named[fd.Peer] = true
			}
			for _, p := range tc.wantPeers {
				if !named[p] {
					t.Errorf("peer %q not named by any finding:\n%s", p, out.String())
				}
			}
			if len(named) != len(tc.wantPeers) {
				t.Errorf("findings name %v, want exactly %v:\n%s", named, tc.wantPeers, out.String())
			}
		})
	}
}

// meshKeys gives every mesh peer of articlesInput the same key.
func meshKeys(k PeerKey) map[netip.Addr]PeerKey {
	keys := map[netip.Addr]PeerKey{}
	for _, a := range []string{"10.30.0.136", "10.30.0.56", "10.30.1.66"} {
		keys[netip.MustParseAddr(a)] = k
	}
	return keys
}

// TestDiagnoseNamesPasswordNotPort: where the password cannot be read, a silent TCP 179 is
// reported as a password matter, never as a blocked port.
func TestDiagnoseNamesPasswordNotPort(t *testing.T) {
	in := articlesInput(pool(datastore.EncapAlways, datastore.EncapNever))
	sessionsDown(&in)
	in.Keys = meshKeys(PeerKey{Unreadable: "open /etc/tabby/secrets/mesh/password: permission denied"})
	f := newFabric()
	f.bgpPassword = "s3cret"
	r := Run(context.Background(), in, f)
	var out bytes.Buffer
	Print(&out, r)
	if strings.Contains(out.String(), "open TCP 179") {
		t.Errorf("a peer that wants a password reported as a blocked port:\n%s", out.String())
	}
	if !strings.Contains(out.String(), "password required or mismatched") {
		t.Errorf("no \"password required or mismatched\" in:\n%s", out.String())
	}
}

func TestEchoPacketRoundTrip(t *testing.T) {
	src, dst := netip.MustParseAddr("192.168.1.0"), netip.MustParseAddr("10.0.0.2")
	pkt := echoPacket(src, dst, 0x1234, 1)
	if checksum.Internet(pkt[:20]) != 0 {
		t.Error("IP header checksum does not verify")
	}
	if checksum.Internet(pkt[20:]) != 0 {
		t.Error("ICMP checksum does not verify")
	}
	// Turn it into the reply the peer would send.
	reply := append([]byte(nil), pkt...)
	copy(reply[12:16], pkt[16:20])
	copy(reply[16:20], pkt[12:16])
	reply[20] = 0
	if !isEchoReply(reply, dst, src, 0x1234) {
		t.Error("reply not recognised")
	}
	if isEchoReply(reply, dst, src, 0x1235) {
		t.Error("reply with another id recognised")
	}
	if isEchoReply(pkt, dst, src, 0x1234) {
		t.Error("the request itself recognised as a reply")
	}
}
