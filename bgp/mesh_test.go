package bgp_test

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tabby-net/tabby/datastore"
	"github.com/tabby-net/tabby/internal/netnstest"
)

// cluster builds snapshots for the integration tests: one pool 10.244.0.0/16 (Direct),
// nodes with one confirmed /26 each, workloads in their blocks.
type cluster struct {
	nodes  []clusterNode
	peers  map[string]datastore.BGPPeerSpec
	config func(*datastore.BGPConfigurationSpec)
	// borrowed: address → node that uses it from another node's block.
	borrowed map[string]string
}

type clusterNode struct {
	name, addr, block string
	labels            map[string]string
	bgp               func(*datastore.NodeBGPSpec)
}

func (c *cluster) snapshot() *datastore.Snapshot {
	s := datastore.NewSnapshot()
	pool := datastore.NewIPPool("default-ipv4-ippool")
	pool.Spec.CIDR = "10.244.0.0/16"
	pool.Spec.BlockSize = 26
	pool.Spec.IPIPMode = datastore.EncapNever
	pool.Spec.VXLANMode = datastore.EncapNever
	s.Pools[pool.Metadata.Name] = pool
	for _, n := range c.nodes {
		node := datastore.NewNode(n.name)
		node.Metadata.Labels = n.labels
		node.Spec.BGP = &datastore.NodeBGPSpec{IPv4Address: n.addr + "/24"}
		if n.bgp != nil {
			n.bgp(node.Spec.BGP)
		}
		s.Nodes[n.name] = node

		cidr := netip.MustParsePrefix(n.block)
		aff := datastore.AffinityHostPrefix + n.name
		block := &datastore.AllocationBlock{CIDR: n.block, Affinity: &aff, Allocations: make([]*int, 64)}
		// Three workloads of the node itself: never advertised on their own.
		for ordinal := 1; ordinal <= 3; ordinal++ {
			allocate(block, ordinal, n.name)
		}
		for addr, user := range c.borrowed {
			a := netip.MustParseAddr(addr)
			if cidr.Contains(a) {
				allocate(block, int(a.As4()[3])-int(cidr.Addr().As4()[3]), user)
			}
		}
		s.Blocks[cidr] = block
		s.Affinities[datastore.AffinityKey{Host: n.name, CIDR: cidr}] = datastore.BlockAffinity{State: datastore.AffinityConfirmed}
	}
	for name, spec := range c.peers {
		p := datastore.NewBGPPeer(name)
		p.Spec = spec
		s.BGPPeers[name] = p
	}
	if c.config != nil {
		cfg := datastore.NewBGPConfiguration("default")
		c.config(&cfg.Spec)
		s.BGPConfigs["default"] = cfg
	}
	return s
}

func allocate(b *datastore.AllocationBlock, ordinal int, node string) {
	idx := len(b.Attributes)
	handle := fmt.Sprintf("tabby.%s-%d", node, ordinal)
	b.Attributes = append(b.Attributes, datastore.AllocationAttribute{HandleID: &handle, Secondary: map[string]string{"node": node}})
	b.Allocations[ordinal] = &idx
}

func (c *cluster) without(name string) *cluster {
	out := *c
	out.nodes = slices.DeleteFunc(slices.Clone(c.nodes), func(n clusterNode) bool { return n.name == name })
	return &out
}

// bgpConns lists the established TCP connections to or from port 179 in a namespace, as
// "local peer" address pairs.
func bgpConns(ns *netnstest.NS) ([][2]netip.AddrPort, error) {
	out, err := ns.Try("ss", "-tnH", "state", "established")
	if err != nil {
		return nil, err
	}
	var conns [][2]netip.AddrPort
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		f := strings.Fields(line)
		if len(f) < 4 {
			continue
		}
		local, err1 := netip.ParseAddrPort(f[2])
		peer, err2 := netip.ParseAddrPort(f[3])
		if err1 != nil || err2 != nil {
			continue
		}
		if local.Port() == 179 || peer.Port() == 179 {
			conns = append(conns, [2]netip.AddrPort{local, peer})
		}
	}
	return conns, nil
}

// onePerPeer checks that a namespace has exactly one BGP connection with each peer and
// none with anyone else, and returns them by peer address.
func onePerPeer(ns *netnstest.NS, peers ...string) (map[string][2]netip.AddrPort, error) {
	conns, err := bgpConns(ns)
	if err != nil {
		return nil, err
	}
	byPeer := map[string][2]netip.AddrPort{}
	for _, c := range conns {
		p := c[1].Addr().String()
		if _, dup := byPeer[p]; dup {
			return nil, fmt.Errorf("%s: two connections with %s: %v", ns, p, conns)
		}
		byPeer[p] = c
	}
	if len(byPeer) != len(peers) {
		return nil, fmt.Errorf("%s: connections %v, want one with each of %v", ns, conns, peers)
	}
	for _, p := range peers {
		if _, ok := byPeer[p]; !ok {
			return nil, fmt.Errorf("%s: no connection with %s: %v", ns, p, conns)
		}
	}
	return byPeer, nil
}

// TestMeshThreeNodes: three tabby speakers in three namespaces build the node-to-node
// mesh from a snapshot; a fourth joins without disturbing the existing sessions, then
// leaves and is torn down.
func TestMeshThreeNodes(t *testing.T) {
	netnstest.RequireRoot(t)
	t.Parallel()

	lan := netnstest.NewLAN(t, "meshlan")
	all := []clusterNode{
		{name: "node-a", addr: "10.99.0.1", block: "10.244.1.0/26"},
		{name: "node-b", addr: "10.99.0.2", block: "10.244.2.0/26"},
		{name: "node-c", addr: "10.99.0.3", block: "10.244.3.0/26"},
		{name: "node-d", addr: "10.99.0.4", block: "10.244.4.0/26"},
	}
	ns := map[string]*netnstest.NS{}
	addr := map[string]string{}
	for _, n := range all {
		ns[n.name] = netnstest.New(t, "mesh"+n.name[len(n.name)-1:])
		lan.Attach(t, ns[n.name], "eth0", n.addr+"/24")
		addr[n.name] = n.addr
	}
	// node-c uses 10.244.1.10 from node-a's block: it advertises that /32.
	four := &cluster{nodes: all, borrowed: map[string]string{"10.244.1.10": "node-c"}}
	three := four.without("node-d")
	abc := []string{"node-a", "node-b", "node-c"}
	others := func(self string, among []string) []string {
		var out []string
		for _, n := range among {
			if n != self {
				out = append(out, addr[n])
			}
		}
		return out
	}

	sp := map[string]*speaker{}
	for _, n := range abc {
		sp[n] = newSpeaker(t, ns[n], n, three.snapshot(), speakerOptions{})
	}
	before := map[string]map[string]time.Time{}
	for _, n := range abc {
		st := sp[n].waitEstablished(30*time.Second, others(n, abc)...)
		before[n] = map[string]time.Time{}
		for a, p := range st {
			if p.Type != "node-to-node mesh" || p.State != "up" || p.Info != "Established" {
				t.Errorf("%s: peer %+v", n, p)
			}
			before[n][a] = p.Since
		}
	}

	// Exactly one TCP session per pair: each namespace has one connection with each peer.
	conns := map[string]map[string][2]netip.AddrPort{}
	for _, n := range abc {
		netnstest.Eventually(t, 10*time.Second, n+": one TCP connection per peer", func() error {
			c, err := onePerPeer(ns[n], others(n, abc)...)
			conns[n] = c
			return err
		})
	}

	// Each node's RIB holds the others' blocks with the owner as next hop, and node-c's
	// borrowed address; never a workload /32. Learned() reports none of them: they are
	// inside the pool, and routing computes those from the datastore.
	wantRIB := func(self string, nodes []clusterNode) []string {
		var want []string
		for _, n := range nodes {
			if n.name != self {
				want = append(want, n.block+" via "+n.addr)
			}
		}
		if self != "node-c" {
			want = append(want, "10.244.1.10/32 via 10.99.0.3")
		}
		return want
	}
	checkRIB := func(n string, nodes []clusterNode) {
		t.Helper()
		netnstest.Eventually(t, 20*time.Second, n+" RIB", func() error {
			routes, err := sp[n].routes()
			if err != nil {
				return err
			}
			got := routeSet(routes)
			for _, w := range wantRIB(n, nodes) {
				if !got[w] {
					return fmt.Errorf("missing %s in %v", w, got)
				}
			}
			for _, r := range routes {
				if r.Prefix.Bits() == 32 && r.Prefix.Addr() != netip.MustParseAddr("10.244.1.10") {
					return fmt.Errorf("workload /32 %v in the RIB", r)
				}
				if r.Prefix == netip.MustParsePrefix("10.244.4.0/26") && len(nodes) == 3 {
					return fmt.Errorf("node-d's block still in the RIB: %v", r)
				}
			}
			return nil
		})
	}
	for _, n := range abc {
		checkRIB(n, three.nodes)
		learned, err := sp[n].learned()
		if err != nil || len(learned) != 0 {
			t.Errorf("%s: Learned() = %v, %v; want nothing (every route is inside the pool)", n, learned, err)
		}
	}

	// node-d joins: everyone gets a session with it; the existing ones are untouched.
	abcd := append(slices.Clone(abc), "node-d")
	for _, n := range abc {
		sp[n].update(four.snapshot())
	}
	sp["node-d"] = newSpeaker(t, ns["node-d"], "node-d", four.snapshot(), speakerOptions{})
	for _, n := range abcd {
		st := sp[n].waitEstablished(30*time.Second, others(n, abcd)...)
		for a, since := range before[n] {
			if !st[a].Since.Equal(since) {
				t.Errorf("%s: session with %s was reset when node-d joined (since %v, now %v)", n, a, since, st[a].Since)
			}
		}
	}
	for _, n := range abc {
		netnstest.Eventually(t, 10*time.Second, n+": one TCP connection per peer with node-d", func() error {
			c, err := onePerPeer(ns[n], others(n, abcd)...)
			if err != nil {
				return err
			}
			for peer, conn := range conns[n] {
				if c[peer] != conn {
					return fmt.Errorf("connection with %s changed from %v to %v", peer, conn, c[peer])
				}
			}
			return nil
		})
		checkRIB(n, all)
	}

	// node-d leaves: its sessions are torn down everywhere and its block is gone.
	for _, n := range abc {
		sp[n].update(three.snapshot())
	}
	for _, n := range abc {
		st := sp[n].waitEstablished(30*time.Second, others(n, abc)...)
		for a, since := range before[n] {
			if !st[a].Since.Equal(since) {
				t.Errorf("%s: session with %s was reset when node-d left", n, a)
			}
		}
		netnstest.Eventually(t, 20*time.Second, n+": node-d's connection closed", func() error {
			_, err := onePerPeer(ns[n], others(n, abc)...)
			return err
		})
		checkRIB(n, three.nodes)
	}
}

// TestTabbyRouteReflector: with the mesh off, a tabby node with routeReflectorClusterID
// reflects between the nodes a BGPPeer's peerSelector points at it; each client learns the
// other's block with the other client as next hop.
func TestTabbyRouteReflector(t *testing.T) {
	netnstest.RequireRoot(t)
	t.Parallel()

	lan := netnstest.NewLAN(t, "trrlan")
	c := &cluster{
		nodes: []clusterNode{
			{name: "node-a", addr: "10.99.0.1", block: "10.244.1.0/26"},
			{name: "node-b", addr: "10.99.0.2", block: "10.244.2.0/26"},
			{name: "node-rr", addr: "10.99.0.3", block: "10.244.3.0/26", labels: map[string]string{"route-reflector": "true"},
				bgp: func(s *datastore.NodeBGPSpec) { s.RouteReflectorClusterID = "224.0.0.1" }},
		},
		config: func(s *datastore.BGPConfigurationSpec) { f := false; s.NodeToNodeMeshEnabled = &f },
		peers: map[string]datastore.BGPPeerSpec{
			"peer-with-rr": {NodeSelector: "all()", PeerSelector: "route-reflector == 'true'"},
		},
	}
	sp := map[string]*speaker{}
	for _, n := range c.nodes {
		ns := netnstest.New(t, "trr"+n.name[len(n.name)-1:])
		lan.Attach(t, ns, "eth0", n.addr+"/24")
		sp[n.name] = newSpeaker(t, ns, n.name, c.snapshot(), speakerOptions{})
	}
	sp["node-a"].waitEstablished(30*time.Second, "10.99.0.3")
	sp["node-b"].waitEstablished(30*time.Second, "10.99.0.3")
	sp["node-rr"].waitEstablished(30*time.Second, "10.99.0.1", "10.99.0.2")

	want := map[string][]string{
		"node-a":  {"10.244.2.0/26 via 10.99.0.2", "10.244.3.0/26 via 10.99.0.3"},
		"node-b":  {"10.244.1.0/26 via 10.99.0.1", "10.244.3.0/26 via 10.99.0.3"},
		"node-rr": {"10.244.1.0/26 via 10.99.0.1", "10.244.2.0/26 via 10.99.0.2"},
	}
	for name, routes := range want {
		netnstest.Eventually(t, 20*time.Second, name+" RIB through the tabby reflector", func() error {
			got, err := sp[name].routes()
			if err != nil {
				return err
			}
			set := routeSet(got)
			for _, w := range routes {
				if !set[w] {
					return fmt.Errorf("no %s in %v", w, set)
				}
			}
			return nil
		})
	}
}

// TestMeshPassword: the node-to-node mesh with nodeMeshPassword. The passive side accepts
// the session only through the TCP-MD5 key on its listener, which needs Go's MPTCP default
// off (godebug multipathtcp=0 in go.mod).
func TestMeshPassword(t *testing.T) {
	netnstest.RequireRoot(t)
	t.Parallel()

	lan := netnstest.NewLAN(t, "md5lan")
	secrets := t.TempDir()
	writeSecretFile(t, secrets, "bgp-secrets", "mesh", "m3sh-passw0rd")
	c := &cluster{
		nodes: []clusterNode{
			{name: "node-a", addr: "10.99.0.1", block: "10.244.1.0/26"},
			{name: "node-b", addr: "10.99.0.2", block: "10.244.2.0/26"},
		},
		config: func(s *datastore.BGPConfigurationSpec) { s.NodeMeshPassword = secretRef("bgp-secrets", "mesh") },
	}
	sp := map[string]*speaker{}
	for _, n := range c.nodes {
		ns := netnstest.New(t, "md5"+n.name[len(n.name)-1:])
		lan.Attach(t, ns, "eth0", n.addr+"/24")
		sp[n.name] = newSpeaker(t, ns, n.name, c.snapshot(), speakerOptions{secretsDir: secrets})
	}
	sp["node-a"].waitEstablished(30*time.Second, "10.99.0.2")
	sp["node-b"].waitEstablished(30*time.Second, "10.99.0.1")
	for name, log := range map[string]string{"node-a": sp["node-a"].log(), "node-b": sp["node-b"].log()} {
		if strings.Contains(log, "m3sh-passw0rd") {
			t.Errorf("%s logged the mesh password:\n%s", name, log)
		}
	}
}

// TestIdentityChange: a node's AS number changes; its speaker restarts its BGP server with
// the new identity, the other node updates the session, and the mesh comes back as eBGP.
// Changed twice more, the speaker still runs one GoBGP server: a stopped server is
// started again with the new identity, since GoBGP v3's management loop never ends.
func TestIdentityChange(t *testing.T) {
	netnstest.RequireRoot(t)
	t.Parallel()

	lan := netnstest.NewLAN(t, "idlan")
	c := &cluster{nodes: []clusterNode{
		{name: "node-a", addr: "10.99.0.1", block: "10.244.1.0/26"},
		{name: "node-b", addr: "10.99.0.2", block: "10.244.2.0/26"},
	}}
	sp := map[string]*speaker{}
	for _, n := range c.nodes {
		ns := netnstest.New(t, "id"+n.name[len(n.name)-1:])
		lan.Attach(t, ns, "eth0", n.addr+"/24")
		sp[n.name] = newSpeaker(t, ns, n.name, c.snapshot(), speakerOptions{})
	}
	before := sp["node-a"].waitEstablished(30*time.Second, "10.99.0.2")
	sp["node-b"].waitEstablished(30*time.Second, "10.99.0.1")

	c.nodes[1].bgp = func(s *datastore.NodeBGPSpec) { as := datastore.ASNumber(65002); s.ASNumber = &as }
	for _, s := range sp {
		s.update(c.snapshot())
	}
	netnstest.Eventually(t, 30*time.Second, "node-b restarts its BGP server in AS 65002", func() error {
		if !strings.Contains(sp["node-b"].log(), `BGP server started" subsystem=bgp router_id=10.99.0.2 as=65002`) {
			return fmt.Errorf("no restart in the log yet")
		}
		return nil
	})
	after := sp["node-a"].waitEstablished(30*time.Second, "10.99.0.2")
	if !after["10.99.0.2"].Since.After(before["10.99.0.2"].Since) {
		t.Errorf("the session with node-b was not re-established: since %v, before %v", after["10.99.0.2"].Since, before["10.99.0.2"].Since)
	}
	sp["node-b"].waitEstablished(30*time.Second, "10.99.0.1")
	netnstest.Eventually(t, 20*time.Second, "node-a learns node-b's block over eBGP", func() error {
		routes, err := sp["node-a"].routes()
		if err != nil {
			return err
		}
		if !routeSet(routes)["10.244.2.0/26 via 10.99.0.2"] {
			return fmt.Errorf("RIB %v", routeSet(routes))
		}
		return nil
	})

	for _, as := range []datastore.ASNumber{65003, 65004} {
		c.nodes[1].bgp = func(s *datastore.NodeBGPSpec) { s.ASNumber = &as }
		for _, s := range sp {
			s.update(c.snapshot())
		}
		netnstest.Eventually(t, 30*time.Second, fmt.Sprintf("node-b restarts its BGP server in AS %d", as), func() error {
			if !strings.Contains(sp["node-b"].log(), fmt.Sprintf(`BGP server started" subsystem=bgp router_id=10.99.0.2 as=%d`, as)) {
				return fmt.Errorf("no restart in the log yet")
			}
			return nil
		})
		sp["node-a"].waitEstablished(30*time.Second, "10.99.0.2")
	}
	if n, err := sp["node-b"].serveLoops(); err != nil || n != 1 {
		t.Errorf("node-b runs %d GoBGP servers after three identity changes (err %v), want 1", n, err)
	}
}
