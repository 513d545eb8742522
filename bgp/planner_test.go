package bgp

import (
	"fmt"
	"maps"
	"math/rand/v2"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/tabby-net/tabby/datastore"
	"github.com/tabby-net/tabby/internal/cow"
)

// randomBGPCluster makes random, copy-on-write changes to a small cluster whose names and
// addresses come from small sets, so that duplicate and invalid addresses, route
// reflectors, selectors, reverse peerings, missing password files and borrowed addresses
// are frequent. It also changes password files behind the datastore's back.
type randomBGPCluster struct {
	t       *testing.T
	rng     *rand.Rand
	snap    *datastore.Snapshot
	secrets string
	log     []string
}

var (
	bgpNodeNames = []string{"n0", "n1", "n2", "n3", "n4", "n5"}
	bgpNodeAddrs = []string{"10.0.0.1/24", "10.0.0.2/24", "10.0.0.3", "10.0.0.2/24", "10.0.1.9/24", "", "bogus", "fd00::1/64"}
	bgpBlocks    = []string{"10.244.0.0/26", "10.244.0.64/26", "10.244.1.0/26", "10.99.0.0/26", "10.244.0.0/30"}
	bgpPools     = []string{"10.244.0.0/16", "10.99.0.0/16", "10.244.0.0/24"}
	bgpSecrets   = []string{"mesh", "tor", "missing"}
)

func newRandomBGPCluster(t *testing.T, seed uint64) *randomBGPCluster {
	c := &randomBGPCluster{t: t, rng: rand.New(rand.NewPCG(seed, 0xb9)), snap: datastore.NewSnapshot(), secrets: t.TempDir()}
	c.writeSecret("mesh")
	c.writeSecret("tor")
	for range 15 {
		c.step()
	}
	return c
}

func pick[T any](rng *rand.Rand, from []T) T { return from[rng.IntN(len(from))] }

func (c *randomBGPCluster) writeSecret(name string) {
	if err := os.MkdirAll(filepath.Join(c.secrets, name), 0o700); err != nil {
		c.t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(c.secrets, name, "password"), []byte(fmt.Sprintf("pw-%d\n", c.rng.IntN(3))), 0o600); err != nil {
		c.t.Fatal(err)
	}
}

func (c *randomBGPCluster) ref() *datastore.BGPPassword {
	if c.rng.IntN(2) == 0 {
		return nil
	}
	return secretRef(pick(c.rng, bgpSecrets), "password")
}

func (c *randomBGPCluster) selector() string {
	return pick(c.rng, []string{"", "", "zone == 'a'", "has(rr)", "all()", "zone ==", "!has(zone)"})
}

// step makes one random change: a new Snapshot value whose changed maps are copies.
func (c *randomBGPCluster) step() {
	next := *c.snap
	switch op := c.rng.IntN(24); {
	case op < 6:
		name := pick(c.rng, bgpNodeNames)
		next.Nodes = maps.Clone(next.Nodes)
		if c.rng.IntN(6) == 0 {
			delete(next.Nodes, name)
			c.log = append(c.log, "delete node "+name)
			break
		}
		n := datastore.NewNode(name)
		n.Metadata.Labels = map[string]string{"zone": pick(c.rng, []string{"a", "b"})}
		n.Spec.BGP = &datastore.NodeBGPSpec{IPv4Address: pick(c.rng, bgpNodeAddrs)}
		if c.rng.IntN(4) == 0 {
			n.Spec.BGP.ASNumber = asn(pick(c.rng, []uint32{0, 64512, 65001}))
		}
		if c.rng.IntN(5) == 0 {
			n.Spec.BGP.RouteReflectorClusterID = pick(c.rng, []string{"1.0.0.1", "1.0.0.2"})
			n.Metadata.Labels["rr"] = "yes"
		}
		next.Nodes[name] = n
		c.log = append(c.log, fmt.Sprintf("node %s %v %+v", name, n.Metadata.Labels, *n.Spec.BGP))
	case op < 9:
		name := pick(c.rng, []string{"default", "node.n1", "node.n0"})
		next.BGPConfigs = maps.Clone(next.BGPConfigs)
		if c.rng.IntN(4) == 0 {
			delete(next.BGPConfigs, name)
			c.log = append(c.log, "delete config "+name)
			break
		}
		cfg := datastore.NewBGPConfiguration(name)
		cfg.Spec.ListenPort = pick(c.rng, []uint16{0, 179, 1790})
		if name == "default" {
			cfg.Spec.NodeToNodeMeshEnabled = pick(c.rng, []*bool{nil, boolp(true), boolp(false)})
			cfg.Spec.ASNumber = pick(c.rng, []*datastore.ASNumber{nil, asn(64512), asn(65000)})
			cfg.Spec.NodeMeshPassword = c.ref()
		}
		next.BGPConfigs[name] = cfg
		c.log = append(c.log, fmt.Sprintf("config %s %+v", name, cfg.Spec))
	case op < 13:
		name := pick(c.rng, []string{"p1", "p2", "p3"})
		next.BGPPeers = maps.Clone(next.BGPPeers)
		if c.rng.IntN(4) == 0 {
			delete(next.BGPPeers, name)
			c.log = append(c.log, "delete peer "+name)
			break
		}
		spec := datastore.BGPPeerSpec{Node: pick(c.rng, []string{"", "", "n0", "n2"}), NodeSelector: c.selector(), Password: c.ref(),
			ASNumber: pick(c.rng, []datastore.ASNumber{0, 64512, 65002}), KeepOriginalNextHop: c.rng.IntN(2) == 0}
		if c.rng.IntN(2) == 0 {
			spec.PeerIP = pick(c.rng, []string{"10.0.0.1", "10.0.0.2:1790", "192.0.2.1", "bogus"})
		} else {
			spec.PeerSelector = c.selector()
		}
		next.BGPPeers[name] = &datastore.BGPPeer{Metadata: datastore.ObjectMeta{Name: name}, Spec: spec}
		c.log = append(c.log, fmt.Sprintf("peer %s %+v", name, spec))
	case op < 15:
		name := pick(c.rng, []string{"pa", "pb"})
		next.Pools = maps.Clone(next.Pools)
		if c.rng.IntN(4) == 0 {
			delete(next.Pools, name)
			c.log = append(c.log, "delete pool "+name)
			break
		}
		next.Pools[name] = &datastore.IPPool{Metadata: datastore.ObjectMeta{Name: name}, Spec: datastore.IPPoolSpec{
			CIDR: pick(c.rng, bgpPools), Disabled: c.rng.IntN(4) == 0, DisableBGPExport: c.rng.IntN(4) == 0}}
		c.log = append(c.log, fmt.Sprintf("pool %s %+v", name, next.Pools[name].Spec))
	case op < 19:
		cidr := netip.MustParsePrefix(pick(c.rng, bgpBlocks))
		next.Blocks = maps.Clone(next.Blocks)
		if c.rng.IntN(6) == 0 {
			delete(next.Blocks, cidr)
			c.log = append(c.log, "delete block "+cidr.String())
			break
		}
		host := datastore.AffinityHostPrefix + pick(c.rng, bgpNodeNames)
		blk := &datastore.AllocationBlock{CIDR: cidr.String(), Affinity: &host, Deleted: c.rng.IntN(8) == 0, Allocations: make([]*int, 1<<(32-cidr.Bits()))}
		for ord := range blk.Allocations {
			if c.rng.IntN(4) != 0 {
				continue
			}
			sec := map[string]string{"node": pick(c.rng, bgpNodeNames)}
			if c.rng.IntN(5) == 0 {
				sec["type"] = "vxlanTunnelAddress"
			}
			idx := len(blk.Attributes)
			blk.Attributes = append(blk.Attributes, datastore.AllocationAttribute{Secondary: sec})
			blk.Allocations[ord] = &idx
		}
		next.Blocks[cidr] = blk
		c.log = append(c.log, fmt.Sprintf("block %s %s deleted %v", cidr, host, blk.Deleted))
	case op < 21:
		key := datastore.AffinityKey{Host: pick(c.rng, bgpNodeNames), CIDR: netip.MustParsePrefix(pick(c.rng, bgpBlocks))}
		next.Affinities = maps.Clone(next.Affinities)
		if state := pick(c.rng, []datastore.AffinityState{datastore.AffinityConfirmed, datastore.AffinityPending, ""}); state == "" {
			delete(next.Affinities, key)
			c.log = append(c.log, fmt.Sprintf("delete affinity %v", key))
		} else {
			next.Affinities[key] = datastore.BlockAffinity{State: state}
			c.log = append(c.log, fmt.Sprintf("affinity %v %s", key, state))
		}
	case op < 22:
		// A password file changes, or goes, behind the datastore's back.
		name := pick(c.rng, bgpSecrets[:2])
		if c.rng.IntN(3) == 0 {
			if err := os.RemoveAll(filepath.Join(c.secrets, name)); err != nil {
				c.t.Fatal(err)
			}
			c.log = append(c.log, "secret removed "+name)
		} else {
			c.writeSecret(name)
			c.log = append(c.log, "secret written "+name)
		}
		return
	case op < 23:
		next.Nodes, next.Blocks, next.Affinities, next.BGPPeers = maps.Clone(next.Nodes), maps.Clone(next.Blocks), maps.Clone(next.Affinities), maps.Clone(next.BGPPeers)
		c.log = append(c.log, "copy maps")
	default:
		c.log = append(c.log, "same snapshot")
		return
	}
	next.Revision++
	c.snap = &next
}

// bgpChangeLog plays the syncer's change list for snapshots made by hand: every key that
// differs, some twice, and now and then one that does not.
func bgpChangeLog(rng *rand.Rand) func(snap, old *datastore.Snapshot) (*datastore.Changes, bool) {
	return func(snap, old *datastore.Snapshot) (*datastore.Changes, bool) {
		c := &datastore.Changes{From: old.Revision}
		cow.Changed(old.Nodes, snap.Nodes, func(k string) { c.Nodes = append(c.Nodes, k, k) })
		cow.Changed(old.Blocks, snap.Blocks, func(k netip.Prefix) { c.Blocks = append(c.Blocks, k) })
		cow.Changed(old.Affinities, snap.Affinities, func(k datastore.AffinityKey) { c.Affinities = append(c.Affinities, k) })
		if rng.IntN(3) == 0 {
			c.Nodes = append(c.Nodes, pick(rng, bgpNodeNames))
			c.Blocks = append(c.Blocks, netip.MustParsePrefix(pick(rng, bgpBlocks)))
		}
		return c, true
	}
}

func renderConfig(g Global, peers []Peer, problems []Problem) string {
	return fmt.Sprintf("global %+v\n%s\nproblems:\n%s", g, render(peers), renderProblems(problems))
}

// TestPlannerMatchesConfig runs random sequences of changes through two Planners, one
// that compares maps and one given change lists, and checks each step's Config and
// Advertisements against the pure functions'.
func TestPlannerMatchesConfig(t *testing.T) {
	sequences := 200
	if testing.Short() {
		sequences = 30
	}
	for seed := range uint64(sequences) {
		c := newRandomBGPCluster(t, seed)
		var compared Planner
		listed := Planner{changes: bgpChangeLog(rand.New(rand.NewPCG(seed, 3)))}
		local := "n0"
		for step := range 80 {
			c.step()
			if c.rng.IntN(20) == 0 {
				local = pick(c.rng, bgpNodeNames)
				c.log = append(c.log, "local node "+local)
			}
			wantCfg := renderConfig(Config(c.snap, local, c.secrets))
			wantAdv := Advertisements(c.snap, local)
			for name, p := range map[string]*Planner{"comparing maps": &compared, "given change lists": &listed} {
				fail := func(what, got, want string) {
					t.Fatalf("seed %d, step %d: Planner (%s) %s differs after:\n%s\n\nPlanner:\n%s\nwant:\n%s",
						seed, step, name, what, strings.Join(c.log[max(0, len(c.log)-12):], "\n"), got, want)
				}
				if got := renderConfig(p.Config(c.snap, local, c.secrets)); got != wantCfg {
					fail("Config", got, wantCfg)
				}
				if got := p.Advertisements(c.snap, local); !slices.Equal(got, wantAdv) {
					fail("Advertisements", fmt.Sprint(got), fmt.Sprint(wantAdv))
				}
			}
		}
	}
}

// TestPlannerConfigRecomputes: an unchanged snapshot gives the previous result without
// a new computation (the same peer list); a change of any input gives a new one.
func TestPlannerConfigRecomputes(t *testing.T) {
	dir := t.TempDir()
	writeSecret(t, dir, "mesh", "password", "one")
	base := newSnap().
		bgpConfig("default", func(s *datastore.BGPConfigurationSpec) { s.NodeMeshPassword = secretRef("mesh", "password") }).
		node("n0", "10.0.0.1/24", nil).node("n1", "10.0.0.2/24", nil).snap
	var p Planner
	_, first, _ := p.Config(base, "n0", dir)
	same := func(peers []Peer) bool { return len(peers) > 0 && len(first) > 0 && &peers[0] == &first[0] }

	if _, peers, _ := p.Config(base, "n0", dir); !same(peers) {
		t.Error("the same snapshot: Config computed again")
	}
	copied := *base // a new snapshot whose maps are all the previous ones
	if _, peers, _ := p.Config(&copied, "n0", dir); !same(peers) {
		t.Error("a snapshot with the same maps: Config computed again")
	}
	// Blocks are no input of Config.
	withBlock := copied
	withBlock.Blocks = map[netip.Prefix]*datastore.AllocationBlock{netip.MustParsePrefix("10.244.0.0/26"): {CIDR: "10.244.0.0/26"}}
	if _, peers, _ := p.Config(&withBlock, "n0", dir); !same(peers) {
		t.Error("a change of blocks only: Config computed again")
	}

	changes := map[string]func() (*datastore.Snapshot, string){
		"a node": func() (*datastore.Snapshot, string) {
			s := copied
			s.Nodes = maps.Clone(s.Nodes)
			s.Nodes["n2"] = datastore.NewNode("n2")
			s.Nodes["n2"].Spec.BGP = &datastore.NodeBGPSpec{IPv4Address: "10.0.0.3/24"}
			return &s, "n0"
		},
		"a BGPPeer": func() (*datastore.Snapshot, string) {
			s := copied
			s.BGPPeers = map[string]*datastore.BGPPeer{"tor": {Metadata: datastore.ObjectMeta{Name: "tor"}, Spec: datastore.BGPPeerSpec{PeerIP: "192.0.2.1", ASNumber: 65000}}}
			return &s, "n0"
		},
		"a BGPConfiguration": func() (*datastore.Snapshot, string) {
			s := copied
			s.BGPConfigs = maps.Clone(s.BGPConfigs)
			s.BGPConfigs["node.n1"] = datastore.NewBGPConfiguration("node.n1")
			s.BGPConfigs["node.n1"].Spec.ListenPort = 1790
			return &s, "n0"
		},
		"a pool": func() (*datastore.Snapshot, string) {
			s := copied
			s.Pools = map[string]*datastore.IPPool{"p": {Metadata: datastore.ObjectMeta{Name: "p"}, Spec: datastore.IPPoolSpec{CIDR: "10.244.0.0/16"}}}
			return &s, "n0"
		},
		"the local node": func() (*datastore.Snapshot, string) { return &copied, "n1" },
	}
	for what, change := range changes {
		var p Planner
		_, before, _ := p.Config(&copied, "n0", dir)
		snap, local := change()
		g, peers, problems := p.Config(snap, local, dir)
		if len(peers) > 0 && &peers[0] == &before[0] {
			t.Errorf("a change of %s: Config not computed again", what)
		}
		if got, want := renderConfig(g, peers, problems), renderConfig(Config(snap, local, dir)); got != want {
			t.Errorf("a change of %s:\n%s\nwant\n%s", what, got, want)
		}
	}

	// The mesh password changes on disk, nothing in the datastore does.
	writeSecret(t, dir, "mesh", "password", "two")
	_, peers, _ := p.Config(&copied, "n0", dir)
	if same(peers) || peers[0].Password.Reveal() != "two" {
		t.Errorf("a password file changed: peers %s", render(peers))
	}
}

// BenchmarkPlannerConfig5000 measures Config and Planner.Config for 5,000 nodes, the mesh
// off and no BGPPeer (BGP idle, as in BenchmarkJoinLeave5000), when one node joins and
// leaves again; and a snapshot where no input of Config changed (a block write).
func BenchmarkPlannerConfig5000(b *testing.B) {
	before := newSnap().bgpConfig("default", func(c *datastore.BGPConfigurationSpec) { c.NodeToNodeMeshEnabled = boolp(false) })
	for i := range 5000 {
		before.node(fmt.Sprintf("node-%d", i), fmt.Sprintf("10.30.%d.%d/16", (i+1000)/250, (i+1000)%250+1), map[string]string{"zone": "a"})
	}
	after := *before.snap
	after.Nodes = maps.Clone(after.Nodes)
	after.Nodes["node-5000"] = datastore.NewNode("node-5000")
	after.Nodes["node-5000"].Spec.BGP = &datastore.NodeBGPSpec{IPv4Address: "10.30.200.1/16"}
	snaps := []*datastore.Snapshot{&after, before.snap}
	b.Run("Config/join-leave", func(b *testing.B) {
		i := 0
		for b.Loop() {
			Config(snaps[i%2], "node-0", "")
			i++
		}
	})
	b.Run("Planner/join-leave", func(b *testing.B) {
		var p Planner
		join := &datastore.Changes{Nodes: []string{"node-5000"}}
		p.changes = func(_, _ *datastore.Snapshot) (*datastore.Changes, bool) { return join, true }
		p.Config(before.snap, "node-0", "")
		i := 0
		for b.Loop() {
			p.Config(snaps[i%2], "node-0", "")
			i++
		}
	})
	b.Run("Planner/no-input-changed", func(b *testing.B) {
		var p Planner
		p.Config(before.snap, "node-0", "")
		blocks := *before.snap
		for b.Loop() {
			p.Config(&blocks, "node-0", "")
		}
	})
}
