package ipam

import (
	"bytes"
	"encoding/json"
	"maps"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/tabby-net/tabby/datastore"
)

// IPAM writes keep what they do not model (SPEC §2a): members a newer Calico or tabby
// added to blocks, to their attributes, to handles and to affinities survive every write
// path: assign (block and handle writes), the confirmation of a pending affinity, release
// by handle (with the attributes renumbered), release of one address, block claims and
// the release of a whole node (the block kept for another node's address).
func TestIPAMWritesKeepUnknownFields(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	f.pool("p", "10.80.0.0/24", map[string]any{"blockSize": 28})
	f.node("n1", nil)
	f.node("n2", nil)
	a := f.alloc()

	ip1 := f.assign(a, "h1", "n1")
	f.assign(a, "h2", "n1")
	block := blockFor(ip1, 28)
	bkey, akey := f.c.Keys.Block(block), f.c.Keys.Affinity("n1", block)

	// Someone else's members, added by hand: at the top of the block, inside each of its
	// attributes, in each handle and in the affinity (which is put back to pending, as a
	// claim that crashed before confirming leaves it).
	addUnknown(f, bkey, `{"x-block":{"big":12345678901234567890,"list":[1,"two",null]},"x-flag":false}`, func(doc map[string]json.RawMessage) {
		var attrs []map[string]json.RawMessage
		if err := json.Unmarshal(doc["attributes"], &attrs); err != nil {
			t.Fatal(err)
		}
		for _, at := range attrs {
			at["x-attr"] = json.RawMessage(`{"of":` + string(at["handle_id"]) + `}`)
		}
		doc["attributes"] = mustJSON(t, attrs)
	})
	addUnknown(f, f.c.Keys.Handle("h1"), `{"x-handle":"one"}`, nil)
	addUnknown(f, f.c.Keys.Handle("h2"), `{"x-handle":"two"}`, nil)
	addUnknown(f, akey, `{"x-affinity":{"since":"2025"}}`, func(doc map[string]json.RawMessage) {
		doc["state"] = json.RawMessage(`"pending"`)
	})
	want := map[string]map[string]string{
		bkey:                  unknownMembers(t, f, bkey),
		f.c.Keys.Handle("h1"): unknownMembers(t, f, f.c.Keys.Handle("h1")),
		f.c.Keys.Handle("h2"): unknownMembers(t, f, f.c.Keys.Handle("h2")),
		akey:                  unknownMembers(t, f, akey),
	}
	check := func(step string, keys ...string) {
		t.Helper()
		for _, k := range keys {
			got := unknownMembers(t, f, k)
			if !reflect.DeepEqual(got, want[k]) {
				t.Errorf("after %s, the unknown members of %s changed:\n got %v\nwant %v", step, k, got, want[k])
			}
		}
	}

	// Assign: the pending affinity is confirmed (block and affinity written), the block
	// gets a third allocation, h1 a second address.
	ip3 := f.assign(a, "h1", "n1")
	if blockFor(ip3, 28) != block {
		t.Fatalf("the second address of h1 (%s) is not from block %s", ip3, block)
	}
	if st := affinityState(t, f, akey); st != datastore.AffinityConfirmed {
		t.Errorf("affinity is %q after an assignment, want confirmed", st)
	}
	check("assign", bkey, akey, f.c.Keys.Handle("h1"), f.c.Keys.Handle("h2"))

	// Release by handle: h2's attribute goes and the others are renumbered; each keeps
	// its own members.
	if err := a.ReleaseByHandle(f.ctx, "h2"); err != nil {
		t.Fatal(err)
	}
	delete(want[bkey], "attributes[h2].x-attr")
	check("release by handle", bkey, akey)
	if f.exists(f.c.Keys.Handle("h2")) {
		t.Error("handle h2 still exists after its release")
	}

	// Release one address: h1's count goes down, its handle keeps its members.
	if err := a.ReleaseIP(f.ctx, ip3); err != nil {
		t.Fatal(err)
	}
	check("release of one address", bkey, akey, f.c.Keys.Handle("h1"))

	// Claim another block: the existing documents are not disturbed.
	if _, err := a.ClaimBlock(f.ctx, "n1", datastore.UseWorkload, nil); err != nil {
		t.Fatal(err)
	}
	check("claim", bkey, akey, f.c.Keys.Handle("h1"))

	// Release the node: h1's address is freed (its handle goes), and the block, which
	// still holds an address of n2's (a borrowed one, marked by hand), is kept without a
	// host: written, not deleted.
	ipn2, err := a.AssignOne(f.ctx, AssignArgs{Handle: "h-n2", Node: "n2", Use: datastore.UseWorkload, Pools: []netip.Prefix{netip.MustParsePrefix("10.80.0.0/24")}})
	if err != nil {
		t.Fatal(err)
	}
	borrowInto(t, f, bkey, ipn2, block, "h-n2", "n2")
	want[bkey] = unknownMembers(t, f, bkey)
	if _, err := a.ReleaseNode(f.ctx, "n1"); err != nil {
		t.Fatal(err)
	}
	delete(want[bkey], "attributes[h1].x-attr")
	check("release of the node", bkey)
	if host := f.block(block.String()).AffinityHost(); host != "" {
		t.Errorf("block %s still affine to %q after its node was released", block, host)
	}
}

// addUnknown merges members into a stored document and lets edit change it further.
func addUnknown(f *fixture, key, members string, edit func(map[string]json.RawMessage)) {
	f.t.Helper()
	kv, err := f.c.Get(f.ctx, key)
	if err != nil {
		f.t.Fatal(err)
	}
	doc := map[string]json.RawMessage{}
	if len(kv.Value) > 0 {
		if err := json.Unmarshal(kv.Value, &doc); err != nil {
			f.t.Fatal(err)
		}
	}
	var add map[string]json.RawMessage
	if err := json.Unmarshal([]byte(members), &add); err != nil {
		f.t.Fatal(err)
	}
	maps.Copy(doc, add)
	if edit != nil {
		edit(doc)
	}
	if _, err := f.e.Raw().Put(f.ctx, key, string(mustJSON(f.t, doc))); err != nil {
		f.t.Fatal(err)
	}
}

func mustJSON(t testing.TB, v any) json.RawMessage {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// unknownMembers collects the members named "x-…" of a stored document, at the top and
// inside a block's attributes (keyed by the attribute's handle), each as its JSON text
// compacted: what no tabby write may change.
func unknownMembers(t *testing.T, f *fixture, key string) map[string]string {
	t.Helper()
	kv, err := f.c.Get(f.ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	var doc map[string]json.RawMessage
	if err := json.Unmarshal(kv.Value, &doc); err != nil {
		t.Fatalf("%s: %v", key, err)
	}
	out := map[string]string{}
	compact := func(raw json.RawMessage) string {
		var b bytes.Buffer
		if err := json.Compact(&b, raw); err != nil {
			t.Fatal(err)
		}
		return b.String()
	}
	for k, v := range doc {
		if strings.HasPrefix(k, "x-") {
			out[k] = compact(v)
		}
	}
	if raw, ok := doc["attributes"]; ok {
		var attrs []map[string]json.RawMessage
		if err := json.Unmarshal(raw, &attrs); err != nil {
			t.Fatal(err)
		}
		for _, at := range attrs {
			var h string
			_ = json.Unmarshal(at["handle_id"], &h)
			for _, k := range slices.Sorted(maps.Keys(at)) {
				if strings.HasPrefix(k, "x-") {
					out["attributes["+h+"]."+k] = compact(at[k])
				}
			}
		}
	}
	return out
}

func affinityState(t *testing.T, f *fixture, key string) datastore.AffinityState {
	t.Helper()
	kv, err := f.c.Get(f.ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	var aff datastore.BlockAffinity
	if err := json.Unmarshal(kv.Value, &aff); err != nil {
		t.Fatal(err)
	}
	return aff.State
}

// borrowInto moves the allocation of ip (held by handle, in its own block) into a free
// ordinal of block, as if node had borrowed it there: the block gets an attribute naming
// node, with a member of someone else's. The handle is pointed at the block.
func borrowInto(t *testing.T, f *fixture, bkey string, ip netip.Addr, block netip.Prefix, handle, node string) {
	t.Helper()
	a := f.alloc()
	if err := a.ReleaseIP(f.ctx, ip); err != nil {
		t.Fatal(err)
	}
	addUnknown(f, bkey, `{}`, func(doc map[string]json.RawMessage) {
		var allocs []*int
		var unalloc []int
		var attrs []map[string]json.RawMessage
		for k, v := range map[string]any{"allocations": &allocs, "unallocated": &unalloc, "attributes": &attrs} {
			if err := json.Unmarshal(doc[k], v); err != nil {
				t.Fatal(err)
			}
		}
		ord := unalloc[0]
		idx := len(attrs)
		allocs[ord] = &idx
		attrs = append(attrs, map[string]json.RawMessage{
			"handle_id": mustJSON(t, handle),
			"secondary": mustJSON(t, map[string]string{AttrNode: node}),
			"x-attr":    json.RawMessage(`{"borrowed":true}`),
		})
		doc["allocations"], doc["unallocated"], doc["attributes"] = mustJSON(t, allocs), mustJSON(t, unalloc[1:]), mustJSON(t, attrs)
	})
	f.put(f.c.Keys.Handle(handle), datastore.IPAMHandle{Block: map[string]int{block.String(): 1}})
}
