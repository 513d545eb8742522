package routing

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/tabby-net/tabby/datastore"
)

// The articles' topology (articles/003): master, worker-1 and worker-2 in 10.30.0.0/24
// behind gateway 10.30.0.1, worker-3 in 10.30.1.0/24; pool 192.168.0.0/16 in /26 blocks;
// AWS hosts with a 9001-byte MTU. Every node's tunnel address is the first address of its
// block, as Calico allocates it.
type articleNode struct {
	name, addr, block, mac string
}

var articleNodes = []articleNode{
	{"master", "10.30.0.136/24", "192.168.219.64/26", "66:00:00:00:00:01"},
	{"worker-1", "10.30.0.206/24", "192.168.226.64/26", "66:00:00:00:00:02"},
	{"worker-2", "10.30.0.56/24", "192.168.133.192/26", "66:00:00:00:00:03"},
	{"worker-3", "10.30.1.66/24", "192.168.97.192/26", "66:00:00:00:00:04"},
}

// worker1 is the local host of the article tests: ens5 carries 10.30.0.206/24.
var worker1 = Local{
	NodeName: "worker-1",
	NIC:      "ens5",
	HostMTU:  9001,
	Underlay: []UnderlayRoute{
		{Dst: netip.MustParsePrefix("0.0.0.0/0"), Gateway: netip.MustParseAddr("10.30.0.1"), Dev: "ens5", Metric: 100},
		{Dst: netip.MustParsePrefix("10.30.0.0/24"), Dev: "ens5"},
		{Dst: netip.MustParsePrefix("10.30.0.1/32"), Dev: "ens5", Metric: 100},
		{Dst: netip.MustParsePrefix("172.17.0.0/16"), Dev: "docker0"},
	},
}

// snapBuilder assembles snapshots for the tables.
type snapBuilder struct{ s *datastore.Snapshot }

func newSnap() *snapBuilder { return &snapBuilder{s: datastore.NewSnapshot()} }

func (b *snapBuilder) pool(name, cidr string, ipip, vxlan datastore.EncapMode) *snapBuilder {
	b.s.Pools[name] = &datastore.IPPool{
		TypeMeta: datastore.TypeMeta{Kind: datastore.KindIPPool, APIVersion: datastore.APIVersion},
		Metadata: datastore.ObjectMeta{Name: name},
		Spec:     datastore.IPPoolSpec{CIDR: cidr, IPIPMode: ipip, VXLANMode: vxlan, BlockSize: 26, NodeSelector: "all()"},
	}
	return b
}

// node adds a node with its address and, when tunnel is set, IPIP and VXLAN tunnel
// addresses and a VTEP MAC.
func (b *snapBuilder) node(name, addr, tunnel, mac string) *snapBuilder {
	n := &datastore.Node{Metadata: datastore.ObjectMeta{Name: name}}
	n.Spec.BGP = &datastore.NodeBGPSpec{IPv4Address: addr, IPv4IPIPTunnelAddr: tunnel}
	n.Spec.IPv4VXLANTunnelAddr = tunnel
	n.Spec.VXLANTunnelMACAddr = mac
	b.s.Nodes[name] = n
	return b
}

// block adds a block affine to host with the given affinity state ("" = no affinity
// record at all) and allocations: ordinal → node that uses the address.
func (b *snapBuilder) block(cidr, host string, state datastore.AffinityState, users map[int]string) *snapBuilder {
	p := netip.MustParsePrefix(cidr)
	blk := &datastore.AllocationBlock{CIDR: cidr, Allocations: make([]*int, 1<<(32-p.Bits()))}
	if host != "" {
		aff := datastore.AffinityHostPrefix + host
		blk.Affinity = &aff
		if state != "" {
			b.s.Affinities[datastore.AffinityKey{Host: host, CIDR: p}] = datastore.BlockAffinity{State: state}
		}
	}
	for ord := 0; ord < len(blk.Allocations); ord++ {
		user, ok := users[ord]
		if !ok {
			continue
		}
		idx := len(blk.Attributes)
		handle := "h"
		blk.Attributes = append(blk.Attributes, datastore.AllocationAttribute{HandleID: &handle, Secondary: map[string]string{"node": user}})
		blk.Allocations[ord] = &idx
	}
	b.s.Blocks[p] = blk
	return b
}

// article returns the articles' cluster with one pool in the given modes; every node owns
// its block (confirmed) and uses the block's first address as its tunnel address.
func article(ipip, vxlan datastore.EncapMode) *snapBuilder {
	b := newSnap().pool("default-ipv4-ippool", "192.168.0.0/16", ipip, vxlan)
	for _, n := range articleNodes {
		tunnel := netip.MustParsePrefix(n.block).Addr().String()
		b.node(n.name, n.addr, tunnel, n.mac)
		b.block(n.block, n.name, datastore.AffinityConfirmed, map[int]string{0: n.name})
	}
	return b
}

func lines(s ...string) string { return strings.Join(s, "\n") + "\n" }

func TestDesiredArticleTopology(t *testing.T) {
	const (
		tunl0 = "link tunl0 ipip mtu 8981 up addr 192.168.226.64/32"
		vxdev = "link vxlan.tabby vxlan id 4096 local 10.30.0.206 dev ens5 dstport 4789 nolearning lladdr 66:00:00:00:00:02 mtu 8951 up addr 192.168.226.64/32"
		local = "blackhole 192.168.226.64/26 proto tabby"
	)
	tests := []struct {
		name        string
		ipip, vxlan datastore.EncapMode
		want        string
	}{
		{
			// articles/003 "run on master", here from worker-1: every block via tunl0.
			name: "ipip", ipip: datastore.EncapAlways, vxlan: datastore.EncapNever,
			want: lines(
				tunl0,
				"192.168.97.192/26 via 10.30.1.66 dev tunl0 proto tabby onlink mtu 8981",
				"192.168.133.192/26 via 10.30.0.56 dev tunl0 proto tabby onlink mtu 8981",
				"192.168.219.64/26 via 10.30.0.136 dev tunl0 proto tabby onlink mtu 8981",
				local,
				"podmtu 8981",
			),
		},
		{
			// The article's Direct table: worker-3 goes to the gateway, which does not know
			// the pod network unless it peers over BGP.
			name: "direct", ipip: datastore.EncapNever, vxlan: datastore.EncapNever,
			want: lines(
				"192.168.97.192/26 via 10.30.0.1 dev ens5 proto tabby",
				"192.168.133.192/26 via 10.30.0.56 dev ens5 proto tabby",
				"192.168.219.64/26 via 10.30.0.136 dev ens5 proto tabby",
				local,
				"podmtu 9001",
			),
		},
		{
			// CrossSubnet: "the tunl0 interface is reintroduced for routing to worker-3".
			name: "crosssubnet", ipip: datastore.EncapCrossSubnet, vxlan: datastore.EncapNever,
			want: lines(
				tunl0,
				"192.168.97.192/26 via 10.30.1.66 dev tunl0 proto tabby onlink mtu 8981",
				"192.168.133.192/26 via 10.30.0.56 dev ens5 proto tabby onlink",
				"192.168.219.64/26 via 10.30.0.136 dev ens5 proto tabby onlink",
				local,
				"podmtu 8981",
			),
		},
		{
			name: "vxlan", ipip: datastore.EncapNever, vxlan: datastore.EncapAlways,
			want: lines(
				vxdev,
				"neigh 192.168.97.192 dev vxlan.tabby lladdr 66:00:00:00:00:04 PERMANENT",
				"neigh 192.168.133.192 dev vxlan.tabby lladdr 66:00:00:00:00:03 PERMANENT",
				"neigh 192.168.219.64 dev vxlan.tabby lladdr 66:00:00:00:00:01 PERMANENT",
				"fdb 66:00:00:00:00:01 dev vxlan.tabby dst 10.30.0.136 self permanent",
				"fdb 66:00:00:00:00:03 dev vxlan.tabby dst 10.30.0.56 self permanent",
				"fdb 66:00:00:00:00:04 dev vxlan.tabby dst 10.30.1.66 self permanent",
				"192.168.97.192/26 via 192.168.97.192 dev vxlan.tabby proto tabby onlink mtu 8951",
				"192.168.133.192/26 via 192.168.133.192 dev vxlan.tabby proto tabby onlink mtu 8951",
				"192.168.219.64/26 via 192.168.219.64 dev vxlan.tabby proto tabby onlink mtu 8951",
				local,
				"podmtu 8951",
			),
		},
		{
			name: "vxlan-crosssubnet", ipip: datastore.EncapNever, vxlan: datastore.EncapCrossSubnet,
			want: lines(
				vxdev,
				"neigh 192.168.97.192 dev vxlan.tabby lladdr 66:00:00:00:00:04 PERMANENT",
				"fdb 66:00:00:00:00:04 dev vxlan.tabby dst 10.30.1.66 self permanent",
				"192.168.97.192/26 via 192.168.97.192 dev vxlan.tabby proto tabby onlink mtu 8951",
				"192.168.133.192/26 via 10.30.0.56 dev ens5 proto tabby",
				"192.168.219.64/26 via 10.30.0.136 dev ens5 proto tabby",
				local,
				"podmtu 8951",
			),
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := Desired(article(tt.ipip, tt.vxlan).s, worker1, nil).String()
			if got != tt.want {
				t.Errorf("Desired from worker-1:\n got:\n%s\nwant:\n%s", got, tt.want)
			}
		})
	}
}

// TestDesiredRules covers the rows of SPEC §5 one at a time, and the awkward cases.
func TestDesiredRules(t *testing.T) {
	always, cross, never := datastore.EncapAlways, datastore.EncapCrossSubnet, datastore.EncapNever
	tests := []struct {
		name    string
		snap    *snapBuilder
		local   Local
		learned []LearnedRoute
		want    string
	}{
		{
			name: "ipip always: via the node, dev tunl0 onlink, tunnel mtu",
			snap: newSnap().pool("p", "10.244.0.0/16", always, never).
				node("worker-1", "10.30.0.206/24", "10.244.1.0", "").
				node("n", "10.30.0.56/24", "10.244.2.0", "").
				block("10.244.2.0/26", "n", datastore.AffinityConfirmed, nil),
			local: worker1,
			want: lines(
				"link tunl0 ipip mtu 8981 up addr 10.244.1.0/32",
				"10.244.2.0/26 via 10.30.0.56 dev tunl0 proto tabby onlink mtu 8981",
				"podmtu 8981",
			),
		},
		{
			name: "ipip crosssubnet: inside the local prefix via the NIC onlink, outside via tunl0",
			snap: newSnap().pool("p", "10.244.0.0/16", cross, never).
				node("worker-1", "10.30.0.206/24", "10.244.1.0", "").
				node("in", "10.30.0.56/24", "10.244.2.0", "").
				node("out", "10.30.1.66/24", "10.244.3.0", "").
				block("10.244.2.0/26", "in", datastore.AffinityConfirmed, nil).
				block("10.244.3.0/26", "out", datastore.AffinityConfirmed, nil),
			local: worker1,
			want: lines(
				"link tunl0 ipip mtu 8981 up addr 10.244.1.0/32",
				"10.244.2.0/26 via 10.30.0.56 dev ens5 proto tabby onlink",
				"10.244.3.0/26 via 10.30.1.66 dev tunl0 proto tabby onlink mtu 8981",
				"podmtu 8981",
			),
		},
		{
			// The CrossSubnet decision follows the ipv4Address prefix, not the underlay: a
			// /16 node address puts 10.30.1.66 in the same subnet.
			name: "ipip crosssubnet: the node's prefix length decides",
			snap: newSnap().pool("p", "10.244.0.0/16", cross, never).
				node("worker-1", "10.30.0.206/16", "10.244.1.0", "").
				node("out", "10.30.1.66/24", "10.244.3.0", "").
				block("10.244.3.0/26", "out", datastore.AffinityConfirmed, nil),
			local: worker1,
			want: lines(
				"link tunl0 ipip mtu 8981 up addr 10.244.1.0/32",
				"10.244.3.0/26 via 10.30.1.66 dev ens5 proto tabby onlink",
				"podmtu 8981",
			),
		},
		{
			name: "direct: on-link via the node, else via the gateway the host uses to reach it",
			snap: newSnap().pool("p", "10.244.0.0/16", never, never).
				node("worker-1", "10.30.0.206/24", "", "").
				node("in", "10.30.0.56/24", "", "").
				node("out", "10.30.1.66/24", "", "").
				block("10.244.2.0/26", "in", datastore.AffinityConfirmed, nil).
				block("10.244.3.0/26", "out", datastore.AffinityConfirmed, nil),
			local: worker1,
			want: lines(
				"10.244.2.0/26 via 10.30.0.56 dev ens5 proto tabby",
				"10.244.3.0/26 via 10.30.0.1 dev ens5 proto tabby",
				"podmtu 9001",
			),
		},
		{
			// Longest prefix wins over the default route; among equals the lowest metric.
			name: "direct: recursive next hop by longest prefix match, then metric",
			snap: newSnap().pool("p", "10.244.0.0/16", never, never).
				node("worker-1", "10.30.0.206/24", "", "").
				node("far", "172.31.5.5/24", "", "").
				block("10.244.3.0/26", "far", datastore.AffinityConfirmed, nil),
			local: Local{NodeName: "worker-1", NIC: "ens5", Underlay: []UnderlayRoute{
				{Dst: netip.MustParsePrefix("0.0.0.0/0"), Gateway: netip.MustParseAddr("10.30.0.1"), Dev: "ens5"},
				{Dst: netip.MustParsePrefix("172.31.0.0/16"), Gateway: netip.MustParseAddr("10.30.0.9"), Dev: "ens5", Metric: 200},
				{Dst: netip.MustParsePrefix("172.31.0.0/16"), Gateway: netip.MustParseAddr("10.31.0.1"), Dev: "ens6", Metric: 50},
				{Dst: netip.MustParsePrefix("10.30.0.0/24"), Dev: "ens5"},
			}},
			want: lines("10.244.3.0/26 via 10.31.0.1 dev ens6 proto tabby"),
		},
		{
			name: "direct: no underlay route to the node",
			snap: newSnap().pool("p", "10.244.0.0/16", never, never).
				node("worker-1", "10.30.0.206/24", "", "").
				node("far", "172.31.5.5/24", "", "").
				block("10.244.3.0/26", "far", datastore.AffinityConfirmed, nil),
			local: Local{NodeName: "worker-1", NIC: "ens5", Underlay: []UnderlayRoute{
				{Dst: netip.MustParsePrefix("10.30.0.0/24"), Dev: "ens5"},
				{Dst: netip.MustParsePrefix("172.31.0.0/16"), Unreachable: true},
			}},
			want: lines(`problem: no underlay route to node "far" (172.31.5.5): 1 route not installed`),
		},
		{
			name: "vxlan always: neighbour, fdb and route per remote VTEP, once per node",
			snap: newSnap().pool("p", "10.244.0.0/16", never, always).
				node("worker-1", "10.30.0.206/24", "10.244.1.0", "66:00:00:00:00:02").
				node("n", "10.30.0.56/24", "10.244.2.0", "66:00:00:00:00:03").
				block("10.244.2.0/26", "n", datastore.AffinityConfirmed, nil).
				block("10.244.2.64/26", "n", datastore.AffinityConfirmed, nil),
			local: worker1,
			want: lines(
				"link vxlan.tabby vxlan id 4096 local 10.30.0.206 dev ens5 dstport 4789 nolearning lladdr 66:00:00:00:00:02 mtu 8951 up addr 10.244.1.0/32",
				"neigh 10.244.2.0 dev vxlan.tabby lladdr 66:00:00:00:00:03 PERMANENT",
				"fdb 66:00:00:00:00:03 dev vxlan.tabby dst 10.30.0.56 self permanent",
				"10.244.2.0/26 via 10.244.2.0 dev vxlan.tabby proto tabby onlink mtu 8951",
				"10.244.2.64/26 via 10.244.2.0 dev vxlan.tabby proto tabby onlink mtu 8951",
				"podmtu 8951",
			),
		},
		{
			name: "vxlan crosssubnet: same subnet direct, other subnet through the tunnel",
			snap: newSnap().pool("p", "10.244.0.0/16", never, cross).
				node("worker-1", "10.30.0.206/24", "10.244.1.0", "66:00:00:00:00:02").
				node("in", "10.30.0.56/24", "10.244.2.0", "66:00:00:00:00:03").
				node("out", "10.30.1.66/24", "10.244.3.0", "66:00:00:00:00:04").
				block("10.244.2.0/26", "in", datastore.AffinityConfirmed, nil).
				block("10.244.3.0/26", "out", datastore.AffinityConfirmed, nil),
			local: worker1,
			want: lines(
				"link vxlan.tabby vxlan id 4096 local 10.30.0.206 dev ens5 dstport 4789 nolearning lladdr 66:00:00:00:00:02 mtu 8951 up addr 10.244.1.0/32",
				"neigh 10.244.3.0 dev vxlan.tabby lladdr 66:00:00:00:00:04 PERMANENT",
				"fdb 66:00:00:00:00:04 dev vxlan.tabby dst 10.30.1.66 self permanent",
				"10.244.2.0/26 via 10.30.0.56 dev ens5 proto tabby",
				"10.244.3.0/26 via 10.244.3.0 dev vxlan.tabby proto tabby onlink mtu 8951",
				"podmtu 8951",
			),
		},
		{
			name: "vxlan: a remote node without VTEP MAC gets no route",
			snap: newSnap().pool("p", "10.244.0.0/16", never, always).
				node("worker-1", "10.30.0.206/24", "10.244.1.0", "66:00:00:00:00:02").
				node("n", "10.30.0.56/24", "10.244.2.0", "").
				block("10.244.2.0/26", "n", datastore.AffinityConfirmed, nil),
			local: worker1,
			want: lines(
				"link vxlan.tabby vxlan id 4096 local 10.30.0.206 dev ens5 dstport 4789 nolearning lladdr 66:00:00:00:00:02 mtu 8951 up addr 10.244.1.0/32",
				"podmtu 8951",
				`problem: node "n" has no VXLAN tunnel address or VTEP MAC: 1 route not installed`,
			),
		},
		{
			name: "vxlan: the local node without VTEP MAC has no device and no tunnel routes",
			snap: newSnap().pool("p", "10.244.0.0/16", never, always).
				node("worker-1", "10.30.0.206/24", "10.244.1.0", "").
				node("n", "10.30.0.56/24", "10.244.2.0", "66:00:00:00:00:03").
				block("10.244.2.0/26", "n", datastore.AffinityConfirmed, nil),
			local: worker1,
			want: lines(
				"podmtu 8951",
				`problem: local node "worker-1" has no VXLAN tunnel address or VTEP MAC: vxlan.tabby is not configured`,
				"problem: vxlan.tabby is not configured on the local node, routes via vxlan.tabby: 1 route not installed",
			),
		},
		{
			name: "ipip: the local node without tunnel address has no tunl0 and no tunnel routes",
			snap: newSnap().pool("p", "10.244.0.0/16", always, never).
				node("worker-1", "10.30.0.206/24", "", "").
				node("n", "10.30.0.56/24", "10.244.2.0", "").
				block("10.244.2.0/26", "n", datastore.AffinityConfirmed, nil),
			local: worker1,
			want: lines(
				"podmtu 8981",
				`problem: local node "worker-1" has no IPIP tunnel address, routes via tunl0: 1 route not installed`,
				`problem: local node "worker-1" has no IPIP tunnel address: tunl0 is not configured`,
			),
		},
		{
			name: "blackhole for each confirmed block of the local node; pending ones are absent",
			snap: newSnap().pool("p", "10.244.0.0/16", never, never).
				node("worker-1", "10.30.0.206/24", "", "").
				node("n", "10.30.0.56/24", "", "").
				block("10.244.1.0/26", "worker-1", datastore.AffinityConfirmed, nil).
				block("10.244.1.64/26", "worker-1", "", nil). // empty affinity value = confirmed
				block("10.244.1.128/26", "worker-1", datastore.AffinityPending, nil).
				block("10.244.2.0/26", "n", datastore.AffinityPending, nil).
				block("10.244.2.64/26", "n", datastore.AffinityPendingDeletion, nil),
			local: worker1,
			want: lines(
				"blackhole 10.244.1.0/26 proto tabby",
				"podmtu 9001",
			),
		},
		{
			// Ordinal 5 of n's block is used by m (a remote borrower), ordinal 6 by the local
			// node (the CNI routes it), ordinal 0 by n itself.
			name: "borrowed: a /32 towards a remote borrower, none for a local one",
			snap: newSnap().pool("p", "10.244.0.0/16", always, never).
				node("worker-1", "10.30.0.206/24", "10.244.1.0", "").
				node("n", "10.30.0.56/24", "10.244.2.0", "").
				node("m", "10.30.1.66/24", "10.244.3.0", "").
				block("10.244.2.0/26", "n", datastore.AffinityConfirmed, map[int]string{0: "n", 5: "m", 6: "worker-1"}),
			local: worker1,
			want: lines(
				"link tunl0 ipip mtu 8981 up addr 10.244.1.0/32",
				"10.244.2.0/26 via 10.30.0.56 dev tunl0 proto tabby onlink mtu 8981",
				"10.244.2.5/32 via 10.30.1.66 dev tunl0 proto tabby onlink mtu 8981",
				"podmtu 8981",
			),
		},
		{
			name: "borrowed: an address of the local block used by a remote node, in the pool's mode",
			snap: newSnap().pool("p", "10.244.0.0/16", never, cross).
				node("worker-1", "10.30.0.206/24", "10.244.1.0", "66:00:00:00:00:02").
				node("in", "10.30.0.56/24", "10.244.2.0", "66:00:00:00:00:03").
				node("out", "10.30.1.66/24", "10.244.3.0", "66:00:00:00:00:04").
				block("10.244.1.0/26", "worker-1", datastore.AffinityConfirmed, map[int]string{0: "worker-1", 7: "in", 8: "out"}),
			local: worker1,
			want: lines(
				"link vxlan.tabby vxlan id 4096 local 10.30.0.206 dev ens5 dstport 4789 nolearning lladdr 66:00:00:00:00:02 mtu 8951 up addr 10.244.1.0/32",
				"neigh 10.244.3.0 dev vxlan.tabby lladdr 66:00:00:00:00:04 PERMANENT",
				"fdb 66:00:00:00:00:04 dev vxlan.tabby dst 10.30.1.66 self permanent",
				"blackhole 10.244.1.0/26 proto tabby",
				"10.244.1.7/32 via 10.30.0.56 dev ens5 proto tabby",
				"10.244.1.8/32 via 10.244.3.0 dev vxlan.tabby proto tabby onlink mtu 8951",
				"podmtu 8951",
			),
		},
		{
			// A block whose affinity is pending has no block route, but an address in it used
			// by another node still gets its /32.
			name: "borrowed: from a block with no confirmed owner",
			snap: newSnap().pool("p", "10.244.0.0/16", never, never).
				node("worker-1", "10.30.0.206/24", "", "").
				node("n", "10.30.0.56/24", "", "").
				block("10.244.2.0/26", "gone", datastore.AffinityPending, map[int]string{3: "n"}),
			local: worker1,
			want: lines(
				"10.244.2.3/32 via 10.30.0.56 dev ens5 proto tabby",
				"podmtu 9001",
			),
		},
		{
			name: "disabled pools keep their routes",
			snap: func() *snapBuilder {
				b := newSnap().pool("p", "10.244.0.0/16", always, never).
					node("worker-1", "10.30.0.206/24", "10.244.1.0", "").
					node("n", "10.30.0.56/24", "10.244.2.0", "").
					block("10.244.2.0/26", "n", datastore.AffinityConfirmed, nil)
				b.s.Pools["p"].Spec.Disabled = true
				return b
			}(),
			local: worker1,
			want: lines(
				"link tunl0 ipip mtu 8981 up addr 10.244.1.0/32",
				"10.244.2.0/26 via 10.30.0.56 dev tunl0 proto tabby onlink mtu 8981",
				"podmtu 8981",
			),
		},
		{
			name: "a node without an address gets no route; a node that left gets none either",
			snap: newSnap().pool("p", "10.244.0.0/16", never, never).
				node("worker-1", "10.30.0.206/24", "", "").
				node("noaddr", "", "", "").
				block("10.244.2.0/26", "noaddr", datastore.AffinityConfirmed, nil).
				block("10.244.3.0/26", "left", datastore.AffinityConfirmed, nil).
				block("10.244.3.64/26", "left", datastore.AffinityConfirmed, nil),
			local: worker1,
			want: lines(
				"podmtu 9001",
				`problem: node "left" is not in the datastore: 2 routes not installed`,
				`problem: node "noaddr" has no valid spec.bgp.ipv4Address: 1 route not installed`,
			),
		},
		{
			name: "blocks outside every pool are ignored and reported",
			snap: newSnap().pool("p", "10.244.0.0/16", never, never).
				node("worker-1", "10.30.0.206/24", "", "").
				node("n", "10.30.0.56/24", "", "").
				block("10.99.0.0/26", "n", datastore.AffinityConfirmed, nil),
			local: worker1,
			want: lines(
				"podmtu 9001",
				"problem: block 10.99.0.0/26 is outside every pool: ignored",
			),
		},
		{
			name: "the local node missing from the snapshot holds the previous state",
			snap: newSnap().pool("p", "10.244.0.0/16", never, never).
				node("n", "10.30.0.56/24", "", "").
				block("10.244.2.0/26", "n", datastore.AffinityConfirmed, nil),
			local: worker1,
			want:  lines(`hold: local node "worker-1" is not in the datastore`),
		},
		{
			name: "the local node without an address: every node counts as outside its subnet",
			snap: newSnap().pool("p", "10.244.0.0/16", cross, never).
				node("worker-1", "", "10.244.1.0", "").
				node("n", "10.30.0.56/24", "10.244.2.0", "").
				block("10.244.2.0/26", "n", datastore.AffinityConfirmed, nil),
			local: worker1,
			want: lines(
				"link tunl0 ipip mtu 8981 up addr 10.244.1.0/32",
				"10.244.2.0/26 via 10.30.0.56 dev tunl0 proto tabby onlink mtu 8981",
				"podmtu 8981",
				`problem: local node "worker-1" has no valid spec.bgp.ipv4Address: CrossSubnet treats every node as outside its subnet and vxlan.tabby cannot be configured`,
			),
		},
		{
			name: "unknown host MTU: no mtu attributes and no pod MTU",
			snap: newSnap().pool("p", "10.244.0.0/16", always, never).
				node("worker-1", "10.30.0.206/24", "10.244.1.0", "").
				node("n", "10.30.0.56/24", "10.244.2.0", "").
				block("10.244.2.0/26", "n", datastore.AffinityConfirmed, nil),
			local: Local{NodeName: "worker-1", NIC: "ens5", Underlay: worker1.Underlay},
			want: lines(
				"link tunl0 ipip up addr 10.244.1.0/32",
				"10.244.2.0/26 via 10.30.0.56 dev tunl0 proto tabby onlink",
			),
		},
		{
			name: "two pools: each block follows its own pool's mode; the pod MTU takes the largest overhead",
			snap: newSnap().pool("a", "10.244.0.0/16", always, never).pool("b", "10.245.0.0/16", never, always).
				node("worker-1", "10.30.0.206/24", "10.244.1.0", "66:00:00:00:00:02").
				node("n", "10.30.0.56/24", "10.244.2.0", "66:00:00:00:00:03").
				block("10.244.2.0/26", "n", datastore.AffinityConfirmed, nil).
				block("10.245.2.0/26", "n", datastore.AffinityConfirmed, nil),
			local: worker1,
			want: lines(
				"link tunl0 ipip mtu 8981 up addr 10.244.1.0/32",
				"link vxlan.tabby vxlan id 4096 local 10.30.0.206 dev ens5 dstport 4789 nolearning lladdr 66:00:00:00:00:02 mtu 8951 up addr 10.244.1.0/32",
				"neigh 10.244.2.0 dev vxlan.tabby lladdr 66:00:00:00:00:03 PERMANENT",
				"fdb 66:00:00:00:00:03 dev vxlan.tabby dst 10.30.0.56 self permanent",
				"10.244.2.0/26 via 10.30.0.56 dev tunl0 proto tabby onlink mtu 8981",
				"10.245.2.0/26 via 10.244.2.0 dev vxlan.tabby proto tabby onlink mtu 8951",
				"podmtu 8951",
			),
		},
		{
			name: "bgp-learned routes outside every pool, recursive through the underlay",
			snap: newSnap().pool("p", "10.244.0.0/16", never, never).
				node("worker-1", "10.30.0.206/24", "", ""),
			local: worker1,
			learned: []LearnedRoute{
				{Prefix: netip.MustParsePrefix("10.99.0.0/16"), NextHop: netip.MustParseAddr("10.30.0.1")},   // on-link next hop
				{Prefix: netip.MustParsePrefix("10.98.0.0/16"), NextHop: netip.MustParseAddr("10.40.0.7")},   // resolved via the default gateway
				{Prefix: netip.MustParsePrefix("10.98.0.0/16"), NextHop: netip.MustParseAddr("10.40.0.9")},   // a second path: the first stays
				{Prefix: netip.MustParsePrefix("10.244.7.0/26"), NextHop: netip.MustParseAddr("10.30.0.1")},  // inside a pool: the datastore decides
				{Prefix: netip.MustParsePrefix("10.97.0.0/16"), NextHop: netip.MustParseAddr("10.30.0.206")}, // our own address
			},
			want: lines(
				"10.98.0.0/16 via 10.30.0.1 dev ens5 proto tabby",
				"10.99.0.0/16 via 10.30.0.1 dev ens5 proto tabby",
				"podmtu 9001",
			),
		},
		{
			name: "bgp-learned route with an unreachable next hop",
			snap: newSnap().pool("p", "10.244.0.0/16", never, never).
				node("worker-1", "10.30.0.206/24", "", ""),
			local: Local{NodeName: "worker-1", NIC: "ens5", Underlay: []UnderlayRoute{{Dst: netip.MustParsePrefix("10.30.0.0/24"), Dev: "ens5"}}},
			learned: []LearnedRoute{
				{Prefix: netip.MustParsePrefix("10.99.0.0/16"), NextHop: netip.MustParseAddr("10.40.0.7")},
			},
			want: lines("problem: BGP next hop 10.40.0.7 is unreachable through the underlay: 1 route not installed"),
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := Desired(tt.snap.s, tt.local, tt.learned).String()
			if got != tt.want {
				t.Errorf("got:\n%s\nwant:\n%s", got, tt.want)
			}
		})
	}
}

func TestDesiredNilSnapshotHolds(t *testing.T) {
	if s := Desired(nil, worker1, nil); s.Hold == "" {
		t.Fatalf("Desired(nil) = %q, want a Hold", s)
	}
}

// TestDesiredDeterministic: map iteration order must not leak into the result.
func TestDesiredDeterministic(t *testing.T) {
	snap := article(datastore.EncapNever, datastore.EncapCrossSubnet).s
	first := Desired(snap, worker1, nil).String()
	for range 20 {
		if got := Desired(snap, worker1, nil).String(); got != first {
			t.Fatalf("Desired is not deterministic:\n%s\nvs\n%s", got, first)
		}
	}
}
