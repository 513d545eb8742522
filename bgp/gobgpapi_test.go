package bgp

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

	api "github.com/osrg/gobgp/v3/api"
)

func TestAPIPeer(t *testing.T) {
	g := Global{RouterID: netip.MustParseAddr("10.0.0.1"), ASN: 64512}
	gr := grSettings{restartTime: DefaultRestartTime, deferralTime: DefaultDeferralTime}
	ibgp := Peer{Address: netip.MustParseAddr("10.0.0.2"), ASN: 64512, Passive: true, Password: NewSecret("pw"),
		RouteReflectorClient: true, ClusterID: "224.0.0.1"}
	p := apiPeer(ibgp, g, DefaultTimers(), gr, true)

	if got := p.GetConf(); got.GetNeighborAddress() != "10.0.0.2" || got.GetPeerAsn() != 64512 || got.GetAuthPassword() != "pw" {
		t.Errorf("conf = %v", got)
	}
	if tr := p.GetTransport(); !tr.GetPassiveMode() || tr.GetLocalAddress() != "10.0.0.1" || tr.GetRemotePort() != 179 {
		t.Errorf("transport = %v", tr)
	}
	if tm := p.GetTimers().GetConfig(); tm.GetConnectRetry() != 5 || tm.GetHoldTime() != 90 || tm.GetKeepaliveInterval() != 30 {
		t.Errorf("timers = %v, want SPEC §7's 5/90/30", tm)
	}
	if gr := p.GetGracefulRestart(); !gr.GetEnabled() || gr.GetRestartTime() != 120 || gr.GetDeferralTime() != 60 ||
		!gr.GetNotificationEnabled() || !gr.GetLocalRestarting() {
		t.Errorf("graceful restart = %v", gr)
	}
	if afs := p.GetAfiSafis(); len(afs) != 1 || afs[0].GetConfig().GetFamily().GetAfi() != api.Family_AFI_IP ||
		afs[0].GetConfig().GetFamily().GetSafi() != api.Family_SAFI_UNICAST || !afs[0].GetMpGracefulRestart().GetConfig().GetEnabled() {
		t.Errorf("families = %v, want ipv4-unicast with graceful restart", afs)
	}
	if rr := p.GetRouteReflector(); !rr.GetRouteReflectorClient() || rr.GetRouteReflectorClusterId() != "224.0.0.1" {
		t.Errorf("route reflector = %v", rr)
	}
	if p.GetEbgpMultihop().GetEnabled() {
		t.Error("multihop on an iBGP session")
	}

	ebgp := Peer{Address: netip.MustParseAddr("192.0.2.1"), Port: 1790, ASN: 65000, RestartTime: 2 * time.Hour}
	p = apiPeer(ebgp, g, Timers{ConnectRetry: time.Second, HoldTime: 9 * time.Second}, gr, false)
	if !p.GetEbgpMultihop().GetEnabled() || p.GetEbgpMultihop().GetMultihopTtl() != 255 {
		t.Errorf("eBGP multihop = %v", p.GetEbgpMultihop())
	}
	if p.GetTransport().GetRemotePort() != 1790 || p.GetTransport().GetPassiveMode() {
		t.Errorf("transport = %v", p.GetTransport())
	}
	if got := p.GetGracefulRestart().GetRestartTime(); got != 4095 {
		t.Errorf("restart time = %d, want the capability's maximum 4095", got)
	}
	if tm := p.GetTimers().GetConfig(); tm.GetConnectRetry() != 1 || tm.GetHoldTime() != 9 || tm.GetKeepaliveInterval() != 3 {
		t.Errorf("timers = %v, want 1/9/3 (keepalive a third of hold)", tm)
	}
	if p.GetGracefulRestart().GetLocalRestarting() || p.GetRouteReflector() != nil {
		t.Errorf("unexpected restarting or reflector settings: %v", p)
	}
}

func TestPathRoundTrip(t *testing.T) {
	path, err := apiPath(netip.MustParsePrefix("10.244.1.0/26"), netip.MustParseAddr("10.0.0.1"))
	if err != nil {
		t.Fatal(err)
	}
	r, local, err := pathRoute(path)
	if err != nil {
		t.Fatal(err)
	}
	if !local || r.Prefix != netip.MustParsePrefix("10.244.1.0/26") || r.NextHop != netip.MustParseAddr("10.0.0.1") {
		t.Errorf("pathRoute = %+v local=%v", r, local)
	}
	path.NeighborIp = "192.0.2.1"
	path.Stale = true
	r, local, err = pathRoute(path)
	if err != nil || local || r.Peer != netip.MustParseAddr("192.0.2.1") || !r.Stale {
		t.Errorf("pathRoute = %+v local=%v err=%v", r, local, err)
	}
}

func TestInsideAny(t *testing.T) {
	pools := []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16"), netip.MustParsePrefix("192.168.0.0/24")}
	for p, want := range map[string]bool{
		"10.244.1.0/26":  true,
		"10.244.0.0/16":  true,
		"10.0.0.0/8":     false, // covers a pool: a ToR's aggregate, outside
		"192.168.0.7/32": true,
		"203.0.113.0/24": false,
	} {
		if got := insideAny(netip.MustParsePrefix(p), pools); got != want {
			t.Errorf("insideAny(%s) = %v, want %v", p, got, want)
		}
	}
}

// BenchmarkConfigMesh measures the peer computation of one node in a full mesh.
func BenchmarkConfigMesh(b *testing.B) {
	for _, nodes := range []int{100, 1000} {
		s := newSnap()
		for i := range nodes {
			s.node(fmt.Sprintf("n%04d", i), fmt.Sprintf("10.1.%d.%d/16", (i+1)/256, (i+1)%256), nil)
		}
		b.Run(fmt.Sprintf("nodes=%d", nodes), func(b *testing.B) {
			for b.Loop() {
				_, peers, _ := Config(s.snap, "n0000", "")
				if len(peers) != nodes-1 {
					b.Fatalf("%d peers", len(peers))
				}
			}
		})
	}
}

// BenchmarkAdvertisements measures the export computation over a large IPAM.
func BenchmarkAdvertisements(b *testing.B) {
	s := newIPAMSnap().pool("p", "10.0.0.0/8", nil)
	for i := range 4096 {
		owner := fmt.Sprintf("n%d", i%100)
		s.block(fmt.Sprintf("10.%d.%d.0/26", i/256, i%256), owner, "confirmed", map[int]string{1: owner, 2: owner, 3: "n0"})
	}
	b.ResetTimer()
	for b.Loop() {
		if len(Advertisements(s.snap, "n0")) == 0 {
			b.Fatal("nothing advertised")
		}
	}
}
