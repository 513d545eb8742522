package datastore

import (
	"log/slog"
	"strings"
	"testing"
)

// A resource with fields tabby does not act on is accepted and listed once per stored
// version; a version without them, or a delete, takes it off the list.
func TestSyncerReportsStoredOnlyFields(t *testing.T) {
	st := newSyncState(NewKeys(""), slog.New(slog.DiscardHandler))
	key := st.keys.Resource(KindBGPPeer, "tor")
	put := func(rev int64, spec string) *Snapshot {
		value := `{"kind":"BGPPeer","apiVersion":"projectcalico.org/v3","metadata":{"name":"tor"},"spec":` + spec + `}`
		snap, _ := st.apply([]rawKV{{key: key, value: []byte(value), modRev: rev, createRev: 2}}, rev)
		return snap
	}
	snap := put(2, `{"peerIP":"10.0.0.1","asNumber":65001,"sourceAddress":"None","ttlSecurity":1,"filters":["f"]}`)
	if snap.BGPPeers["tor"] == nil || len(snap.Problems) != 0 {
		t.Fatalf("peer not in force: problems %v", snap.Problems)
	}
	if len(snap.StoredOnly) != 1 {
		t.Fatalf("StoredOnly = %v, want one notice", snap.StoredOnly)
	}
	n := snap.StoredOnly[0]
	for _, f := range []string{"spec.sourceAddress (None)", "spec.ttlSecurity", "spec.filters"} {
		if !strings.Contains(n.Fields, f) {
			t.Errorf("notice %q does not name %s", n, f)
		}
	}
	if n.Key != key || n.ModRevision != 2 {
		t.Errorf("notice %+v: want key %s revision 2", n, key)
	}
	if snap = put(3, `{"peerIP":"10.0.0.1","asNumber":65001,"sourceAddress":"UseNodeIP"}`); len(snap.StoredOnly) != 0 {
		t.Errorf("StoredOnly = %v after the fields were removed", snap.StoredOnly)
	}
	put(4, `{"peerIP":"10.0.0.1","asNumber":65001,"ttlSecurity":2}`)
	snap, _ = st.apply([]rawKV{{key: key, modRev: 5, deleted: true}}, 5)
	if len(snap.StoredOnly) != 0 {
		t.Errorf("StoredOnly = %v after the delete", snap.StoredOnly)
	}
}

func TestStoredOnlyFields(t *testing.T) {
	lb := NewIPPool("lb")
	lb.Spec.AllowedUses = []string{UseLoadBalancer}
	if got := StoredOnly(lb); len(got) != 1 || got[0].Field != "spec.allowedUses" {
		t.Errorf("StoredOnly(LoadBalancer pool) = %v", got)
	}
	plain := NewIPPool("p")
	plain.Spec.AllowedUses = DefaultAllowedUses()
	if got := StoredOnly(plain); got != nil {
		t.Errorf("StoredOnly(plain pool) = %v, want none", got)
	}
	nodeCfg := NewBGPConfiguration("node.w1")
	as := ASNumber(65000)
	nodeCfg.Spec.ASNumber = &as
	nodeCfg.Spec.ListenPort = 1790
	if got := StoredOnly(nodeCfg); len(got) != 1 || got[0].Field != "spec.asNumber" {
		t.Errorf("StoredOnly(node-specific config with asNumber) = %v", got)
	}
	n := NewNode("n")
	n.Spec.OrchRefs = []OrchRef{{NodeName: "k", Orchestrator: "k8s"}}
	n.Status.PodCIDRs = []string{"10.0.0.0/24"}
	if got := StoredOnly(n); len(got) != 2 || got[0].String() != "stored; tabby does not act on spec.orchRefs" {
		t.Errorf("StoredOnly(node) = %v", got)
	}
}
