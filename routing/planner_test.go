package routing

import (
	"fmt"
	"maps"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/tabby-net/tabby/datastore"
	"github.com/tabby-net/tabby/internal/cow"
)

// randomCluster makes random, copy-on-write changes to a small cluster whose names and
// addresses are drawn from small sets, so that the corners of SPEC §5 are hit often:
// nodes without addresses or tunnels, two nodes with one VTEP MAC or tunnel address,
// overlapping blocks, blocks outside every pool, pending affinities, addresses borrowed
// from other nodes' blocks, the local node itself changing or disappearing.
type randomCluster struct {
	rng  *rand.Rand
	snap *datastore.Snapshot
	log  []string
}

var (
	randomNodeNames = []string{"worker-1", "n1", "n2", "n3", "n4", "n5"}
	randomNodeAddrs = []string{"10.30.0.206/24", "10.30.0.7/24", "10.30.0.8/24", "10.30.1.9/24", "10.40.0.5/16", "10.30.0.7/24", "", "bogus", "10.30.1.10"}
	randomTunnels   = []string{"192.168.0.1", "192.168.0.65", "192.168.0.129", "192.168.1.1", "192.168.0.65", ""}
	randomMACs      = []string{"66:00:00:00:00:01", "66:00:00:00:00:02", "66:00:00:00:00:03", "66:00:00:00:00:02", "", "zz"}
	randomBlocks    = []string{"192.168.0.0/26", "192.168.0.64/26", "192.168.0.128/26", "192.168.1.0/26", "192.168.1.0/30", "192.168.0.66/32", "172.31.0.0/26", "192.168.2.0/26"}
	randomPools     = []string{"192.168.0.0/16", "192.168.0.0/24", "192.168.1.0/24", "172.31.0.0/16"}
	randomModes     = []datastore.EncapMode{datastore.EncapNever, datastore.EncapAlways, datastore.EncapCrossSubnet, ""}
	randomAffinity  = []datastore.AffinityState{datastore.AffinityConfirmed, datastore.AffinityConfirmed, datastore.AffinityPending, ""}
)

func newRandomCluster(seed uint64) *randomCluster {
	c := &randomCluster{rng: rand.New(rand.NewPCG(seed, seed^0x5eed)), snap: datastore.NewSnapshot()}
	c.snap.Pools["p0"] = &datastore.IPPool{Metadata: datastore.ObjectMeta{Name: "p0"}, Spec: datastore.IPPoolSpec{CIDR: "192.168.0.0/16"}}
	for range 12 {
		c.step()
	}
	return c
}

func pick[T any](rng *rand.Rand, from []T) T { return from[rng.IntN(len(from))] }

// step makes one random change: a new Snapshot value whose changed maps are copies.
func (c *randomCluster) step() {
	next := *c.snap
	switch op := c.rng.IntN(20); {
	case op < 5:
		name := pick(c.rng, randomNodeNames)
		if c.rng.IntN(6) == 0 {
			next.Nodes = maps.Clone(next.Nodes)
			delete(next.Nodes, name)
			c.log = append(c.log, "delete node "+name)
			break
		}
		n := &datastore.Node{Metadata: datastore.ObjectMeta{Name: name}}
		n.Spec.BGP = &datastore.NodeBGPSpec{IPv4Address: pick(c.rng, randomNodeAddrs), IPv4IPIPTunnelAddr: pick(c.rng, randomTunnels)}
		n.Spec.IPv4VXLANTunnelAddr = pick(c.rng, randomTunnels)
		n.Spec.VXLANTunnelMACAddr = pick(c.rng, randomMACs)
		next.Nodes = maps.Clone(next.Nodes)
		next.Nodes[name] = n
		c.log = append(c.log, fmt.Sprintf("node %s %+v %s %s", name, *n.Spec.BGP, n.Spec.IPv4VXLANTunnelAddr, n.Spec.VXLANTunnelMACAddr))
	case op < 11:
		cidr := netip.MustParsePrefix(pick(c.rng, randomBlocks))
		next.Blocks = maps.Clone(next.Blocks)
		if c.rng.IntN(6) == 0 {
			delete(next.Blocks, cidr)
			c.log = append(c.log, "delete block "+cidr.String())
			break
		}
		host := pick(c.rng, randomNodeNames)
		aff := datastore.AffinityHostPrefix + host
		blk := &datastore.AllocationBlock{CIDR: cidr.String(), Affinity: &aff, Deleted: c.rng.IntN(10) == 0, Allocations: make([]*int, 1<<(32-cidr.Bits()))}
		if c.rng.IntN(8) == 0 {
			blk.Affinity = nil
		}
		users := []string{}
		for ord := range blk.Allocations {
			if c.rng.IntN(3) != 0 {
				continue
			}
			user := pick(c.rng, slices.Concat(randomNodeNames, []string{"", "gone"}))
			idx := len(blk.Attributes)
			blk.Attributes = append(blk.Attributes, datastore.AllocationAttribute{Secondary: map[string]string{"node": user}})
			blk.Allocations[ord] = &idx
			users = append(users, fmt.Sprintf("%d:%s", ord, user))
		}
		next.Blocks[cidr] = blk
		c.log = append(c.log, fmt.Sprintf("block %s host %s deleted %v users %v", cidr, host, blk.Deleted, users))
	case op < 15:
		cidr := netip.MustParsePrefix(pick(c.rng, randomBlocks))
		host := pick(c.rng, randomNodeNames)
		next.Affinities = maps.Clone(next.Affinities)
		key := datastore.AffinityKey{Host: host, CIDR: cidr}
		if state := pick(c.rng, randomAffinity); state == "" {
			delete(next.Affinities, key)
			c.log = append(c.log, fmt.Sprintf("delete affinity %s %s", host, cidr))
		} else {
			next.Affinities[key] = datastore.BlockAffinity{State: state}
			c.log = append(c.log, fmt.Sprintf("affinity %s %s %s", host, cidr, state))
		}
	case op < 17:
		name := fmt.Sprintf("p%d", c.rng.IntN(3))
		next.Pools = maps.Clone(next.Pools)
		if c.rng.IntN(4) == 0 {
			delete(next.Pools, name)
			c.log = append(c.log, "delete pool "+name)
			break
		}
		p := &datastore.IPPool{Metadata: datastore.ObjectMeta{Name: name}, Spec: datastore.IPPoolSpec{
			CIDR: pick(c.rng, randomPools), IPIPMode: pick(c.rng, randomModes), VXLANMode: pick(c.rng, randomModes)}}
		next.Pools[name] = p
		c.log = append(c.log, fmt.Sprintf("pool %s %+v", name, p.Spec))
	case op < 18:
		// Every map copied, nothing changed: the diff must find nothing.
		next.Nodes, next.Blocks, next.Affinities, next.Pools = maps.Clone(next.Nodes), maps.Clone(next.Blocks), maps.Clone(next.Affinities), maps.Clone(next.Pools)
		c.log = append(c.log, "copy every map")
	default:
		c.log = append(c.log, "same snapshot")
		return
	}
	next.Revision++
	c.snap = &next
}

// randomLocal varies the host's facts now and then.
func randomLocal(rng *rand.Rand) Local {
	l := worker1
	l.Underlay = worker1.Underlay[:2+rng.IntN(len(worker1.Underlay)-1)]
	l.NIC = pick(rng, []string{"ens5", "ens5", ""})
	l.HostMTU = pick(rng, []int{9001, 9001, 1500, 0})
	return l
}

func randomLearned(rng *rand.Rand) []LearnedRoute {
	var out []LearnedRoute
	for range rng.IntN(4) {
		out = append(out, LearnedRoute{
			Prefix:  netip.MustParsePrefix(pick(rng, []string{"203.0.113.0/24", "192.168.0.0/26", "10.99.0.0/16", "192.168.1.0/26", "198.51.100.7/32"})),
			NextHop: netip.MustParseAddr(pick(rng, []string{"10.30.0.7", "10.30.0.8", "10.30.0.206", "10.50.0.1", "172.17.0.2"})),
		})
	}
	return out
}

// changeLog plays the syncer's change list for snapshots made by hand: every key that
// differs, some twice, and a few that do not (a change list may hold more than changed).
func changeLog(rng *rand.Rand) func(snap, old *datastore.Snapshot) (*datastore.Changes, bool) {
	return func(snap, old *datastore.Snapshot) (*datastore.Changes, bool) {
		c := &datastore.Changes{From: old.Revision}
		cow.Changed(old.Nodes, snap.Nodes, func(k string) { c.Nodes = append(c.Nodes, k, k) })
		cow.Changed(old.Blocks, snap.Blocks, func(k netip.Prefix) { c.Blocks = append(c.Blocks, k) })
		cow.Changed(old.Affinities, snap.Affinities, func(k datastore.AffinityKey) { c.Affinities = append(c.Affinities, k) })
		if rng.IntN(3) == 0 {
			c.Nodes = append(c.Nodes, pick(rng, randomNodeNames))
			c.Blocks = append(c.Blocks, netip.MustParsePrefix(pick(rng, randomBlocks)))
			c.Affinities = append(c.Affinities, datastore.AffinityKey{Host: pick(rng, randomNodeNames), CIDR: netip.MustParsePrefix(pick(rng, randomBlocks))})
		}
		return c, true
	}
}

// checkCounts verifies the Planner's bookkeeping: the numbers of keys in conflict, which
// decide whether it falls back to Desired, agree with the counts themselves.
func (p *Planner) checkCounts() error {
	collided := 0
	for _, n := range p.routes {
		if n >= 2 {
			collided++
		}
	}
	if collided != p.collided {
		return fmt.Errorf("%d destinations with two routes, %d counted", collided, p.collided)
	}
	if err := p.neighbors.check(); err != nil {
		return fmt.Errorf("neighbours: %w", err)
	}
	if err := p.fdb.check(); err != nil {
		return fmt.Errorf("FDB: %w", err)
	}
	return nil
}

func (t *tally[K, V]) check() error {
	conflicts := 0
	for _, w := range t.m {
		if w.n <= 0 {
			return fmt.Errorf("a value counted %d times", w.n)
		}
		if len(w.others) > 0 {
			conflicts++
		}
	}
	if conflicts != t.conflicts {
		return fmt.Errorf("%d keys with two values, %d counted", conflicts, t.conflicts)
	}
	return nil
}

// TestPlannerMatchesDesired runs random sequences of snapshot changes through two
// Planners, one that compares the maps and one given change lists, and checks every
// step's results against Desired's.
func TestPlannerMatchesDesired(t *testing.T) {
	sequences, steps := 300, 80
	if testing.Short() {
		sequences = 50
	}
	for seed := range uint64(sequences) {
		c := newRandomCluster(seed)
		var p Planner
		logged := Planner{changes: changeLog(rand.New(rand.NewPCG(seed, 7)))}
		local, learned := worker1, []LearnedRoute(nil)
		for step := range steps {
			c.step()
			switch c.rng.IntN(12) {
			case 0:
				local = randomLocal(c.rng)
				c.log = append(c.log, fmt.Sprintf("local %+v", local))
			case 1:
				learned = randomLearned(c.rng)
				c.log = append(c.log, fmt.Sprintf("learned %v", learned))
			}
			want := Desired(c.snap, local, learned).String()
			for name, p := range map[string]*Planner{"comparing maps": &p, "given change lists": &logged} {
				if got := p.Desired(c.snap, local, learned).String(); got != want {
					t.Fatalf("seed %d, step %d: Planner (%s) and Desired differ after:\n%s\n\nPlanner:\n%s\nDesired:\n%s",
						seed, step, name, strings.Join(tail(c.log, 12), "\n"), got, want)
				}
				if err := p.checkCounts(); err != nil {
					t.Fatalf("seed %d, step %d: Planner (%s): %v", seed, step, name, err)
				}
			}
		}
	}
}

// TestPlannerLargeCluster checks joins and leaves among many nodes, in every mode, and that
// an unchanged snapshot hands back the very same lists.
func TestPlannerLargeCluster(t *testing.T) {
	for _, mode := range scaleModes {
		t.Run(mode.name, func(t *testing.T) {
			big := bigClusterIn(300, mode)
			local := worker1
			local.Underlay = append(local.Underlay, UnderlayRoute{Dst: netip.MustParsePrefix("10.30.0.0/16"), Dev: "ens5"})
			var p Planner
			snap := big.s
			check := func(what string) State {
				t.Helper()
				got := p.Desired(snap, local, nil)
				if want := Desired(snap, local, nil).String(); got.String() != want {
					t.Fatalf("%s: Planner and Desired differ:\n%s\nvs\n%s", what, got, want)
				}
				return got
			}
			first := check("start")
			if again := check("same snapshot"); &again.Routes[0] != &first.Routes[0] {
				t.Error("an unchanged snapshot built new route lists")
			}
			joined := bigCluster(301, mode.vxlan)
			for i := 300; i < 301; i++ {
				name := fmt.Sprintf("node-%d", i)
				next := *snap
				next.Nodes, next.Blocks, next.Affinities = maps.Clone(snap.Nodes), maps.Clone(snap.Blocks), maps.Clone(snap.Affinities)
				next.Nodes[name] = joined.s.Nodes[name]
				for cidr, blk := range joined.s.Blocks {
					if blk.AffinityHost() == name {
						next.Blocks[cidr] = blk
						next.Affinities[datastore.AffinityKey{Host: name, CIDR: cidr}] = joined.s.Affinities[datastore.AffinityKey{Host: name, CIDR: cidr}]
					}
				}
				snap = &next
				if got := check("join " + name); len(got.Routes) != len(first.Routes)+1 {
					t.Fatalf("join: %d routes, want %d", len(got.Routes), len(first.Routes)+1)
				}
			}
			snap = big.s
			check("leave")
		})
	}
}

// BenchmarkPlannerJoinLeave measures Planner.Desired for 5,000 nodes when one node joins
// (its Node, block and affinity in one snapshot) and leaves again: what the daemon computes
// per change. Each operation is one join or one leave. "changes" snapshots carry the
// syncer's change list; "compared" ones do not, and the Planner compares their maps.
func BenchmarkPlannerJoinLeave(b *testing.B) {
	for _, mode := range scaleModes {
		for _, listed := range []bool{true, false} {
			name := "nodes=5000/" + mode.name + "/compared"
			if listed {
				name = "nodes=5000/" + mode.name + "/changes"
			}
			b.Run(name, func(b *testing.B) {
				before, after := bigClusterIn(5000, mode).s, bigCluster(5001, mode.vxlan).s
				// after shares every object of before but the new node's, and the pools
				// map, as consecutive snapshots of the syncer do.
				after.Pools = before.Pools
				maps.Copy(after.Nodes, before.Nodes)
				maps.Copy(after.Blocks, before.Blocks)
				before.Revision, after.Revision = 1, 2
				var p Planner
				if listed {
					// The lists the syncer would make: the new node's three keys.
					var join datastore.Changes
					cow.Changed(before.Nodes, after.Nodes, func(k string) { join.Nodes = append(join.Nodes, k) })
					cow.Changed(before.Blocks, after.Blocks, func(k netip.Prefix) { join.Blocks = append(join.Blocks, k) })
					cow.Changed(before.Affinities, after.Affinities, func(k datastore.AffinityKey) { join.Affinities = append(join.Affinities, k) })
					p.changes = func(_, _ *datastore.Snapshot) (*datastore.Changes, bool) { return &join, true }
				}
				local := worker1
				local.Underlay = append(local.Underlay, UnderlayRoute{Dst: netip.MustParsePrefix("10.30.0.0/16"), Dev: "ens5"})
				p.Desired(before, local, nil)
				b.ReportAllocs()
				i := 0
				for b.Loop() {
					snap, want := after, 5001
					if i%2 == 1 {
						snap, want = before, 5000
					}
					i++
					if s := p.Desired(snap, local, nil); len(s.Routes) != want {
						b.Fatalf("%d routes, want %d", len(s.Routes), want)
					}
				}
			})
		}
	}
}
