package datastore

import (
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"slices"
	"testing"

	"github.com/tabby-net/tabby/internal/cow"
)

// randomChange is a put or delete of one of a few keys of every kind, now and then an
// invalid document (refused: the last valid version stays).
func randomChange(rng *rand.Rand, k Keys, rev int64) rawKV {
	i := rng.IntN(4)
	block := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 200, byte(i), 0}), 30)
	var key, value string
	switch rng.IntN(8) {
	case 0:
		key, value = k.Resource(KindNode, fmt.Sprintf("node-%d", i)), fmt.Sprintf(`{"metadata":{"name":"node-%d","labels":{"rev":"%d"}},"spec":{"bgp":{"ipv4Address":"10.0.0.%d/24"}}}`, i, rev, i+1)
	case 1:
		key, value = k.Resource(KindBGPPeer, fmt.Sprintf("peer-%d", i)), fmt.Sprintf(`{"metadata":{"name":"peer-%d"},"spec":{"peerIP":"10.9.0.%d","asNumber":%d}}`, i, i+1, 64000+rev%100)
	case 2:
		key, value = k.Resource(KindBGPConfiguration, []string{"default", "node.node-1"}[i%2]), fmt.Sprintf(`{"metadata":{"name":%q},"spec":{"listenPort":%d}}`, []string{"default", "node.node-1"}[i%2], 1000+rev%100)
	case 3:
		key, value = k.Block(block), fmt.Sprintf(`{"cidr":%q,"affinity":"host:node-%d","allocations":[null,null,null,null],"unallocated":[0,1,2,3],"attributes":[],"sequenceNumber":%d}`, block, i, rev)
	case 4:
		key, value = k.Affinity(fmt.Sprintf("node-%d", i), block), []string{`{"state":"confirmed"}`, `{"state":"pending"}`, ""}[rng.IntN(3)]
	case 5:
		key, value = k.Handle(fmt.Sprintf("h-%d", i)), fmt.Sprintf(`{"block":{%q:%d}}`, block, rev)
	case 6:
		key, value = k.Resource(KindIPPool, fmt.Sprintf("pool-%d", i)), fmt.Sprintf(`{"metadata":{"name":"pool-%d"},"spec":{"cidr":"10.%d.0.0/16","natOutgoing":%v}}`, i, 100+i, rev%2 == 0)
	default:
		key, value = k.Resource(KindNode, fmt.Sprintf("node-%d", i)), `{"spec":{"vxlanTunnelMACAddr":"nope"}}`
	}
	if rng.IntN(4) == 0 {
		return rawKV{key: key, modRev: rev, deleted: true}
	}
	return rawKV{key: key, value: []byte(value), modRev: rev, createRev: rev}
}

// listed reports every key of one map that differs between two snapshots but is not in
// the changes.
func unlisted[M ~map[K]V, K, V comparable](old, new M, listed []K) []K {
	var missing []K
	cow.Changed(old, new, func(k K) {
		if !slices.Contains(listed, k) {
			missing = append(missing, k)
		}
	})
	return missing
}

// TestChangesSince: every entry that differs between an earlier snapshot and a later one
// is listed, whether the later one was made from the earlier directly or through others.
func TestChangesSince(t *testing.T) {
	for seed := range uint64(50) {
		rng := rand.New(rand.NewPCG(seed, 1))
		st := newSyncState(NewKeys(""), slog.New(slog.DiscardHandler))
		var history []*Snapshot
		rev := int64(1)
		first, changed := st.relist([]rawKV{randomChange(rng, st.keys, rev)}, rev)
		if !changed {
			// As Syncer.list does: an empty root is published at the list's revision.
			empty := *first
			empty.Revision = rev
			first, st.snap = &empty, &empty
		}
		if first.changes != nil {
			t.Fatal("the first list has changes: it should have none, there is nothing before it")
		}
		history = append(history, first)
		for range 60 {
			var batch []rawKV
			for range 1 + rng.IntN(3) {
				rev++
				batch = append(batch, randomChange(rng, st.keys, rev))
			}
			snap, changed := st.apply(batch, rev)
			if !changed {
				continue
			}
			prev := history[len(history)-1]
			if _, ok := snap.ChangesSince(prev); !ok {
				t.Fatalf("seed %d: a snapshot does not know the changes from the one it was made from", seed)
			}
			history = append(history, snap)
			for _, old := range history[max(0, len(history)-8):] {
				c, ok := snap.ChangesSince(old)
				if !ok {
					t.Fatalf("seed %d: changes from %d to %d unknown", seed, old.Revision, snap.Revision)
				}
				for what, missing := range map[string]int{
					"nodes":      len(unlisted(old.Nodes, snap.Nodes, c.Nodes)),
					"peers":      len(unlisted(old.BGPPeers, snap.BGPPeers, c.BGPPeers)),
					"configs":    len(unlisted(old.BGPConfigs, snap.BGPConfigs, c.BGPConfigs)),
					"blocks":     len(unlisted(old.Blocks, snap.Blocks, c.Blocks)),
					"affinities": len(unlisted(old.Affinities, snap.Affinities, c.Affinities)),
					"handles":    len(unlisted(old.Handles, snap.Handles, c.Handles)),
				} {
					if missing > 0 {
						t.Fatalf("seed %d: %s changed from %d to %d but %d not listed", seed, what, old.Revision, snap.Revision, missing)
					}
				}
			}
		}
		last := history[len(history)-1]
		if _, ok := last.ChangesSince(NewSnapshot()); ok {
			t.Error("changes since a snapshot of no syncer are known")
		}
		// Another syncer's snapshot at the same revision as an ancestor: not of this lineage.
		stranger := *history[len(history)-2]
		stranger.Nodes, stranger.BGPPeers, stranger.BGPConfigs = map[string]*Node{}, map[string]*BGPPeer{}, map[string]*BGPConfiguration{}
		stranger.Blocks, stranger.Affinities, stranger.Handles = map[netip.Prefix]*AllocationBlock{}, map[AffinityKey]BlockAffinity{}, map[string]*IPAMHandle{}
		if _, ok := last.ChangesSince(&stranger); ok {
			t.Error("changes since another lineage's snapshot of the same revision are known")
		}
	}
}

// TestChangesChainIsBounded: a long run of changes keeps a bounded chain; a subscriber
// that fell further behind is told to compare the maps.
func TestChangesChainIsBounded(t *testing.T) {
	st := newSyncState(NewKeys(""), slog.New(slog.DiscardHandler))
	first, _ := st.relist([]rawKV{{key: st.keys.Handle("h"), value: []byte(`{"block":{}}`), modRev: 1, createRev: 1}}, 1)
	var snap *Snapshot
	for rev := int64(2); rev < 2+2*changeChainKeys; rev++ {
		snap, _ = st.apply([]rawKV{{key: st.keys.Handle(fmt.Sprint("h", rev%7)), value: []byte(fmt.Sprintf(`{"block":{"x":%d}}`, rev)), modRev: rev, createRev: rev}}, rev)
	}
	if snap.changes.keys > changeChainKeys {
		t.Errorf("the chain holds %d keys, at most %d wanted", snap.changes.keys, changeChainKeys)
	}
	if _, ok := snap.ChangesSince(first); ok {
		t.Error("changes since a snapshot older than the chain are known")
	}
}
