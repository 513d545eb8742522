package bgp

import (
	"maps"
	"net/netip"
	"slices"

	"github.com/tabby-net/tabby/datastore"
	"github.com/tabby-net/tabby/internal/cow"
	"github.com/tabby-net/tabby/internal/ipprefix"
)

// Planner computes Config and Advertisements for a succession of snapshots at the cost of
// what changed between them: the daemon asks for both on every snapshot, and at 5,000
// nodes Config alone takes about 2 ms even with no BGP session to configure.
//
//   - Config returns its previous result when none of its inputs changed: the Nodes,
//     BGPPeers, BGPConfigs and Pools maps (unchanged maps of consecutive snapshots are the
//     same maps), the local node's name, the secrets directory and the content of every
//     secret file it read. When only nodes changed, it updates its digest of the nodes
//     for those nodes instead of building it again.
//   - Advertisements keeps each block's share and redoes the blocks whose block or
//     affinity changed, or all of them when the local node or the exporting pools change.
//
// Which keys changed comes from the syncer's change lists (Snapshot.ChangesSince), or from
// comparing the maps of snapshots that have none. The results equal Config's and
// Advertisements' for the same snapshot; they are shared with later calls: treat them as
// read-only. A Planner is not safe for concurrent use.
type Planner struct {
	// changes says what changed from one snapshot (old) to another; nil means
	// Snapshot.ChangesSince. Tests give change lists to snapshots made by hand with it.
	changes func(snap, old *datastore.Snapshot) (*datastore.Changes, bool)

	cfg     lastConfig
	index   liveIndex
	adverts liveAdverts
}

// lastConfig is Config's previous call: inputs and result.
type lastConfig struct {
	snap                  *datastore.Snapshot // nil: none
	localNode, secretsDir string
	secrets               map[datastore.SecretKeyRef]secretResult

	global   Global
	peers    []Peer
	problems []Problem
}

// changesSince is p.changes or Snapshot.ChangesSince, with a zero Changes when unknown.
func (p *Planner) changesSince(snap, old *datastore.Snapshot) (datastore.Changes, bool) {
	f := (*datastore.Snapshot).ChangesSince
	if p.changes != nil {
		f = p.changes
	}
	if c, ok := f(snap, old); ok {
		return *c, true
	}
	return datastore.Changes{}, false
}

// Config returns what Config(snap, localNode, secretsDir) returns.
func (p *Planner) Config(snap *datastore.Snapshot, localNode, secretsDir string) (Global, []Peer, []Problem) {
	last := &p.cfg
	if last.snap != nil && last.localNode == localNode && last.secretsDir == secretsDir &&
		cow.Same(last.snap.Nodes, snap.Nodes) && cow.Same(last.snap.BGPPeers, snap.BGPPeers) &&
		cow.Same(last.snap.BGPConfigs, snap.BGPConfigs) && cow.Same(last.snap.Pools, snap.Pools) &&
		secretsUnchanged(secretsDir, last.secrets) {
		last.snap = snap
		return last.global, last.peers, last.problems
	}
	idx := p.index.update(p, snap)
	c := &cluster{nodeIndex: &idx.nodeIndex, snap: snap, defaultCfg: snap.BGPConfigs["default"], problems: idx.problems()}
	global, peers, problems, secrets := configure(c, localNode, secretsDir)
	*last = lastConfig{snap: snap, localNode: localNode, secretsDir: secretsDir, secrets: secrets,
		global: global, peers: peers, problems: problems}
	return global, peers, problems
}

// secretsUnchanged reads every secret again and reports whether each gives what it gave
// before: a password file may change while nothing in the datastore does, and Config has
// always read the files anew.
func secretsUnchanged(secretsDir string, read map[datastore.SecretKeyRef]secretResult) bool {
	for ref, before := range read {
		s, err := readSecret(secretsDir, ref.Name, ref.Key)
		if s != before.secret || errText(err) != errText(before.err) {
			return false
		}
	}
	return true
}

func errText(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// liveIndex is a nodeIndex kept up to date node by node. Among nodes with one address the
// first by name holds it, as newCluster decides; when a node with an address comes or
// goes, the holder of that address is chosen again.
type liveIndex struct {
	nodeIndex
	snap        *datastore.Snapshot // the snapshot whose Nodes and BGPConfigs it reflects
	defaultASN  uint32
	defaultPort uint16
}

// update brings the index to snap: node by node when only nodes changed, else from scratch.
func (x *liveIndex) update(p *Planner, snap *datastore.Snapshot) *liveIndex {
	switch {
	case x.snap == nil || !cow.Same(x.snap.BGPConfigs, snap.BGPConfigs):
		x.rebuild(snap)
	case !cow.Same(x.snap.Nodes, snap.Nodes):
		c, known := p.changesSince(snap, x.snap)
		cow.Each(known, c.Nodes, x.snap.Nodes, snap.Nodes, func(name string) {
			x.remove(name)
			if n, ok := snap.Nodes[name]; ok {
				x.add(name, n, snap.BGPConfigs)
			}
		})
	}
	x.snap = snap
	return x
}

func (x *liveIndex) rebuild(snap *datastore.Snapshot) {
	*x = liveIndex{
		nodeIndex: nodeIndex{
			nodes:       make(map[string]*nodeInfo, len(snap.Nodes)),
			nodeByAddr:  make(map[netip.Addr]*nodeInfo, len(snap.Nodes)),
			sortedNodes: make([]*nodeInfo, 0, len(snap.Nodes)),
		},
	}
	x.defaultASN, x.defaultPort = nodeDefaults(snap.BGPConfigs["default"])
	for _, name := range slices.Sorted(maps.Keys(snap.Nodes)) {
		info := newNodeInfo(name, snap.Nodes[name], x.defaultASN, x.defaultPort, snap.BGPConfigs)
		x.nodes[name] = info
		x.sortedNodes = append(x.sortedNodes, info)
		if !info.own.IsValid() {
			continue
		}
		if _, taken := x.nodeByAddr[info.own]; taken {
			info.addr = netip.Addr{} // a node before it by name has the address
		} else {
			x.nodeByAddr[info.own] = info
		}
	}
}

func compareName(n *nodeInfo, name string) int {
	switch {
	case n.name < name:
		return -1
	case n.name > name:
		return 1
	}
	return 0
}

func (x *liveIndex) remove(name string) {
	info, ok := x.nodes[name]
	if !ok {
		return
	}
	delete(x.nodes, name)
	if i, found := slices.BinarySearchFunc(x.sortedNodes, name, compareName); found {
		x.sortedNodes = slices.Delete(x.sortedNodes, i, i+1)
	}
	if info.own.IsValid() {
		x.resolve(info.own)
	}
}

func (x *liveIndex) add(name string, n *datastore.Node, configs map[string]*datastore.BGPConfiguration) {
	info := newNodeInfo(name, n, x.defaultASN, x.defaultPort, configs)
	x.nodes[name] = info
	i, _ := slices.BinarySearchFunc(x.sortedNodes, name, compareName)
	x.sortedNodes = slices.Insert(x.sortedNodes, i, info)
	if info.own.IsValid() {
		x.resolve(info.own)
	}
}

// resolve gives addr to the first node by name whose own address it is; the others with
// it have none. It looks at every node: addresses that change are few, and an index of
// them by address would cost more memory than the look costs time (~10 µs at 5,000).
func (x *liveIndex) resolve(addr netip.Addr) {
	var holder *nodeInfo
	for _, n := range x.sortedNodes {
		switch {
		case n.own != addr:
		case holder == nil:
			holder, n.addr = n, addr
		default:
			n.addr = netip.Addr{}
		}
	}
	if holder == nil {
		delete(x.nodeByAddr, addr)
	} else {
		x.nodeByAddr[addr] = holder
	}
}

// problems lists the nodes' problems in name order, as newCluster finds them.
func (x *liveIndex) problems() []Problem {
	var out []Problem
	for _, n := range x.sortedNodes {
		switch {
		case n.problem != "":
			out = append(out, Problem{Resource: "Node/" + n.name, Message: n.problem})
		case n.own.IsValid() && !n.addr.IsValid():
			out = append(out, Problem{Resource: "Node/" + n.name, Message: sameAddress(n.own, x.nodeByAddr[n.own].name)})
		}
	}
	return out
}

// liveAdverts is Advertisements kept up to date block by block.
type liveAdverts struct {
	snap      *datastore.Snapshot // nil: nothing kept
	localNode string
	exporting []netip.Prefix // sorted

	perBlock map[netip.Prefix][]netip.Prefix // what each block adds, where it adds something
	counts   map[netip.Prefix]int            // prefix → blocks that add it
	changed  []netip.Prefix                  // prefixes whose count changed since the last list
	sorted   []netip.Prefix
}

// Advertisements returns what Advertisements(snap, localNode) returns.
func (p *Planner) Advertisements(snap *datastore.Snapshot, localNode string) []netip.Prefix {
	a := &p.adverts
	exporting := exportingPools(snap)
	slices.SortFunc(exporting, ipprefix.Compare)
	switch {
	case a.snap == nil || a.localNode != localNode || !slices.Equal(a.exporting, exporting):
		*a = liveAdverts{localNode: localNode, exporting: exporting, perBlock: map[netip.Prefix][]netip.Prefix{}, counts: map[netip.Prefix]int{}}
		for cidr, block := range snap.Blocks {
			a.plan(snap, cidr, block)
		}
	case !cow.Same(a.snap.Blocks, snap.Blocks) || !cow.Same(a.snap.Affinities, snap.Affinities):
		c, known := p.changesSince(snap, a.snap)
		dirty := map[netip.Prefix]struct{}{}
		cow.Each(known, c.Blocks, a.snap.Blocks, snap.Blocks, func(cidr netip.Prefix) { dirty[cidr] = struct{}{} })
		cow.Each(known, c.Affinities, a.snap.Affinities, snap.Affinities, func(k datastore.AffinityKey) { dirty[k.CIDR] = struct{}{} })
		for cidr := range dirty {
			a.withdraw(cidr)
			if block, ok := snap.Blocks[cidr]; ok {
				a.plan(snap, cidr, block)
			}
		}
	}
	a.snap = snap
	keys := slices.SortedFunc(slices.Values(a.changed), ipprefix.Compare)
	a.changed = a.changed[:0]
	a.sorted = cow.Patch(a.sorted, slices.Compact(keys), func(p netip.Prefix) netip.Prefix { return p }, ipprefix.Compare,
		func(p netip.Prefix) (netip.Prefix, bool) { return p, a.counts[p] > 0 })
	return a.sorted
}

func (a *liveAdverts) plan(snap *datastore.Snapshot, cidr netip.Prefix, block *datastore.AllocationBlock) {
	adds := blockAdverts(snap, cidr, block, a.localNode, a.exporting)
	if len(adds) == 0 {
		return
	}
	a.perBlock[cidr] = adds
	for _, p := range adds {
		a.counts[p]++
		a.changed = append(a.changed, p)
	}
}

func (a *liveAdverts) withdraw(cidr netip.Prefix) {
	for _, p := range a.perBlock[cidr] {
		if a.counts[p]--; a.counts[p] <= 0 {
			delete(a.counts, p)
		}
		a.changed = append(a.changed, p)
	}
	delete(a.perBlock, cidr)
}
