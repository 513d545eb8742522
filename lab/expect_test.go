package lab

import (
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/tabby-net/tabby/datastore"
)

// articlesState is the articles' cluster as etcd holds it: worker-1..3 each own a block,
// worker-3 in the other subnet; the pool's modes are set per case.
func articlesState(ipip, vxlan datastore.EncapMode) *ClusterState {
	node := func(name, addr, vxlanTun, mac string) *datastore.Node {
		n := &datastore.Node{}
		n.Metadata.Name = name
		n.Spec.BGP = &datastore.NodeBGPSpec{IPv4Address: addr}
		n.Spec.IPv4VXLANTunnelAddr = vxlanTun
		n.Spec.VXLANTunnelMACAddr = mac
		return n
	}
	pool := &datastore.IPPool{}
	pool.Metadata.Name = PoolName
	pool.Spec = datastore.IPPoolSpec{CIDR: PoolCIDR, BlockSize: 26, IPIPMode: ipip, VXLANMode: vxlan}
	st := &ClusterState{
		Nodes: []*datastore.Node{
			node("worker-1", "10.30.0.206/24", "192.168.226.64", "66:aa:00:00:00:01"),
			node("worker-2", "10.30.0.56/24", "192.168.133.192", "66:aa:00:00:00:02"),
			node("worker-3", "10.30.1.66/24", "192.168.97.192", "66:aa:00:00:00:03"),
		},
		Pools:      []*datastore.IPPool{pool},
		Blocks:     map[netip.Prefix]*datastore.AllocationBlock{},
		Affinities: map[netip.Prefix]string{},
	}
	for cidr, host := range map[string]string{
		"192.168.226.64/26":  "worker-1",
		"192.168.133.192/26": "worker-2",
		"192.168.97.192/26":  "worker-3",
	} {
		p := netip.MustParsePrefix(cidr)
		aff := "host:" + host
		st.Blocks[p] = &datastore.AllocationBlock{CIDR: cidr, Affinity: &aff}
		st.Affinities[p] = host
	}
	return st
}

func TestExpectedRoutesPerMode(t *testing.T) {
	topo := Articles("x")
	w1, err := topo.RouteHost("worker-1")
	if err != nil {
		t.Fatal(err)
	}
	own := "blackhole 192.168.226.64/26 proto 95"
	cases := []struct {
		name        string
		ipip, vxlan datastore.EncapMode
		want        []string
	}{
		{"ipip", datastore.EncapAlways, datastore.EncapNever, []string{
			"192.168.133.192/26 via 10.30.0.56 dev tunl0 proto 95 onlink mtu 1480",
			"192.168.97.192/26 via 10.30.1.66 dev tunl0 proto 95 onlink mtu 1480",
			own,
		}},
		{"crosssubnet", datastore.EncapCrossSubnet, datastore.EncapNever, []string{
			"192.168.133.192/26 via 10.30.0.56 dev eth0 proto 95 onlink",
			"192.168.97.192/26 via 10.30.1.66 dev tunl0 proto 95 onlink mtu 1480",
			own,
		}},
		{"direct", datastore.EncapNever, datastore.EncapNever, []string{
			"192.168.133.192/26 via 10.30.0.56 dev eth0 proto 95",
			// worker-3 is in another subnet: via the router, as the articles' route -n shows.
			"192.168.97.192/26 via 10.30.0.1 dev eth0 proto 95",
			own,
		}},
		{"vxlan", datastore.EncapNever, datastore.EncapAlways, []string{
			"192.168.133.192/26 via 192.168.133.192 dev vxlan.tabby proto 95 onlink mtu 1450",
			"192.168.97.192/26 via 192.168.97.192 dev vxlan.tabby proto 95 onlink mtu 1450",
			own,
		}},
		{"vxlan-crosssubnet", datastore.EncapNever, datastore.EncapCrossSubnet, []string{
			"192.168.133.192/26 via 10.30.0.56 dev eth0 proto 95",
			"192.168.97.192/26 via 192.168.97.192 dev vxlan.tabby proto 95 onlink mtu 1450",
			own,
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ExpectedRoutes(articlesState(tc.ipip, tc.vxlan), w1)
			if err != nil {
				t.Fatal(err)
			}
			want := slices.Clone(tc.want)
			slices.Sort(want)
			if !slices.Equal(got, want) {
				t.Errorf("routes on worker-1:\n%s", RouteDiff(want, got))
			}
		})
	}
}

func TestExpectedRoutesPendingAffinityAndBorrowed(t *testing.T) {
	st := articlesState(datastore.EncapNever, datastore.EncapNever)
	// worker-2's affinity is not confirmed yet: its block has no route.
	delete(st.Affinities, netip.MustParsePrefix("192.168.133.192/26"))
	// worker-3 uses an address of worker-1's block (borrowed): a /32 towards worker-3.
	blk := st.Blocks[netip.MustParsePrefix("192.168.226.64/26")]
	zero, one := 0, 1
	blk.Allocations = []*int{nil, nil, &zero, &one}
	blk.Attributes = []datastore.AllocationAttribute{
		{Secondary: map[string]string{"node": "worker-3"}},
		{Secondary: map[string]string{"node": "worker-1"}},
	}
	w2, _ := Articles("x").RouteHost("worker-2")
	got, err := ExpectedRoutes(st, w2)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"192.168.226.64/26 via 10.30.0.206 dev eth0 proto 95",
		"192.168.226.66/32 via 10.30.0.1 dev eth0 proto 95",
		"192.168.97.192/26 via 10.30.0.1 dev eth0 proto 95",
	}
	if !slices.Equal(got, want) {
		t.Errorf("routes on worker-2:\n%s", RouteDiff(want, got))
	}
}

func TestExpectedRoutesWaitsForTunnelAddresses(t *testing.T) {
	st := articlesState(datastore.EncapNever, datastore.EncapAlways)
	st.Nodes[2].Spec.IPv4VXLANTunnelAddr = ""
	w1, _ := Articles("x").RouteHost("worker-1")
	if _, err := ExpectedRoutes(st, w1); err == nil || !strings.Contains(err.Error(), "worker-3 has no VXLAN tunnel address") {
		t.Errorf("err = %v, want one naming worker-3's missing tunnel address", err)
	}
}
