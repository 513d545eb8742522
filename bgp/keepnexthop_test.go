package bgp

import (
	"context"
	"net/netip"
	"testing"

	api "github.com/osrg/gobgp/v3/api"
	"github.com/osrg/gobgp/v3/pkg/server"
)

// TestKeepNextHopPolicyCanBeRemovedAndReinstalled: a BGPPeer with keepOriginalNextHop is
// added, deleted and added again (tabbylab bird on, off, on). Each time GoBGP must hold
// exactly the policy that is wanted; a policy left behind once kept its neighbor set in
// use and the option never worked again.
func TestKeepNextHopPolicyCanBeRemovedAndReinstalled(t *testing.T) {
	ctx := context.Background()
	srv := server.NewBgpServer()
	go srv.Serve()
	if err := srv.StartBgp(ctx, &api.StartBgpRequest{Global: &api.Global{Asn: 64512, RouterId: "10.0.0.1", ListenPort: -1}}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.StopBgp(context.Background(), &api.StopBgpRequest{}) })

	router := netip.MustParseAddr("10.0.0.254")
	if err := srv.AddPeer(ctx, &api.AddPeerRequest{Peer: &api.Peer{
		Conf:      &api.PeerConf{NeighborAddress: router.String(), PeerAsn: 64513},
		Transport: &api.Transport{PassiveMode: true},
	}}); err != nil {
		t.Fatal(err)
	}
	s := &Speaker{cur: &running{srv: srv, peers: map[netip.Addr]Peer{}, keepNextHop: map[netip.Addr]bool{}}}
	set := func(keep bool) {
		t.Helper()
		s.cur.peers = map[netip.Addr]Peer{router: {Address: router, KeepOriginalNextHop: keep}}
		if err := s.applyKeepNextHop(ctx); err != nil {
			t.Fatalf("keepOriginalNextHop=%v: %v", keep, err)
		}
	}
	policies := func() (policies, sets int) {
		t.Helper()
		if err := srv.ListPolicy(ctx, &api.ListPolicyRequest{Name: keepNextHopPolicy}, func(*api.Policy) { policies++ }); err != nil && policies > 0 {
			t.Fatal(err)
		}
		_ = srv.ListDefinedSet(ctx, &api.ListDefinedSetRequest{DefinedType: api.DefinedType_NEIGHBOR, Name: keepNextHopSet}, func(*api.DefinedSet) { sets++ })
		return policies, sets
	}
	for i, keep := range []bool{true, false, true, false, true} {
		set(keep)
		p, d := policies()
		want := 0
		if keep {
			want = 1
		}
		if p != want || d != want {
			t.Fatalf("step %d (keep=%v): GoBGP holds %d policies and %d neighbor sets, want %d of each", i, keep, p, d, want)
		}
	}
}
