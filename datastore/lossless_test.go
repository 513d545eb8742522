package datastore_test

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/tabby-net/tabby/datastore"
	"github.com/tabby-net/tabby/datastore/etcdtest"
)

// Documents as Calico's tools (or a newer tabby) might store them: full of fields tabby
// does not model, at the top level, in metadata, in spec and nested inside objects tabby
// does model. Every field tabby fills in with a default on read is stored explicitly, so
// that a write which keeps everything it does not own changes only what the test changes.
var losslessDocs = map[string]string{
	datastore.KindIPPool: `{"kind":"IPPool","apiVersion":"projectcalico.org/v3",
		"metadata":{"name":"p1","uid":"0b7c3c9e-0000-4000-8000-000000000001","creationTimestamp":"2025-01-02T03:04:05Z",
			"labels":{"tier":"a"},"annotations":{"owner":"calicoctl"},"generation":3,"futureMeta":{"list":[1,2]}},
		"spec":{"cidr":"10.70.0.0/16","vxlanMode":"Never","ipipMode":"Always","natOutgoing":true,"blockSize":26,
			"nodeSelector":"all()","allowedUses":["Workload","Tunnel"],"assignmentMode":"Manual",
			"futureSpec":{"big":12345678901234567890,"frac":1.50,"none":null}},
		"status":{"conditions":[{"type":"Ready","status":"True"}]},"futureTop":true}`,
	datastore.KindBGPConfiguration: `{"kind":"BGPConfiguration","apiVersion":"projectcalico.org/v3",
		"metadata":{"name":"default","uid":"0b7c3c9e-0000-4000-8000-000000000002","creationTimestamp":"2025-01-02T03:04:05Z","annotations":{"a":"b"}},
		"spec":{"logSeverityScreen":"Info","nodeToNodeMeshEnabled":true,"asNumber":64512,"listenPort":179,
			"nodeMeshMaxRestartTime":"2m0s","serviceClusterIPs":[{"cidr":"10.96.0.0/12"}],"bindMode":"NodeIP",
			"communities":[{"name":"c","value":"64512:100"}],"prefixAdvertisements":[{"cidr":"10.70.0.0/16","communities":["c"]}]}}`,
	datastore.KindBGPPeer: `{"kind":"BGPPeer","apiVersion":"projectcalico.org/v3",
		"metadata":{"name":"tor","uid":"0b7c3c9e-0000-4000-8000-000000000003","creationTimestamp":"2025-01-02T03:04:05Z"},
		"spec":{"peerIP":"10.0.0.1","asNumber":65001,"password":{"secretKeyRef":{"name":"bgp","key":"tor","optional":true}},
			"sourceAddress":"None","ttlSecurity":1,"numAllowedLocalASNumbers":2,"keepaliveTime":"30s","filters":["f1"],
			"reachableBy":"10.0.0.254"}}`,
	datastore.KindNode: `{"kind":"Node","apiVersion":"projectcalico.org/v3",
		"metadata":{"name":"n1","uid":"0b7c3c9e-0000-4000-8000-000000000004","creationTimestamp":"2025-01-02T03:04:05Z",
			"labels":{"rack":"r1"},"annotations":{"projectcalico.org/kube-labels":"{}"}},
		"spec":{"bgp":{"ipv4Address":"10.0.0.5/24","ipv6Address":"fd00::5/64","ipv4IPIPTunnelAddr":"10.70.0.1"},
			"orchRefs":[{"nodeName":"n1","orchestrator":"k8s"}],"addresses":[{"address":"10.0.0.5/24","type":"CalicoNodeIP"}],
			"wireguard":{"interfaceIPv4Address":"10.70.0.9"}},
		"status":{"podCIDRs":["10.70.0.0/26"],"wireguardPublicKey":"jlkVyQYooZYzI2wFfNhSZez5eWh44yfq1wKVjLvSXgY="}}`,
	datastore.KindIPReservation: `{"kind":"IPReservation","apiVersion":"projectcalico.org/v3",
		"metadata":{"name":"r1","uid":"0b7c3c9e-0000-4000-8000-000000000005","creationTimestamp":"2025-01-02T03:04:05Z"},
		"spec":{"reservedCIDRs":["10.70.0.0/30","10.70.1.7"],"futureSpec":"x"},"futureTop":[1]}`,
}

// A change of each kind, as a merge patch (what the stored document must look like after
// the change: the original with this patch merged in) and the same change made to the
// typed resource.
var losslessChanges = map[string]struct {
	patch  string
	mutate func(r datastore.Resource)
}{
	datastore.KindIPPool: {
		patch: `{"spec":{"ipipMode":"CrossSubnet","natOutgoing":null},"metadata":{"labels":{"tier":"b"}}}`,
		mutate: func(r datastore.Resource) {
			p := r.(*datastore.IPPool)
			p.Spec.IPIPMode, p.Spec.NATOutgoing = datastore.EncapCrossSubnet, false
			p.Metadata.Labels = map[string]string{"tier": "b"}
		},
	},
	datastore.KindBGPConfiguration: {
		patch: `{"spec":{"logSeverityScreen":"Debug","listenPort":1790}}`,
		mutate: func(r datastore.Resource) {
			c := r.(*datastore.BGPConfiguration)
			c.Spec.LogSeverityScreen, c.Spec.ListenPort = "Debug", 1790
		},
	},
	datastore.KindBGPPeer: {
		patch: `{"spec":{"keepOriginalNextHop":true,"password":{"secretKeyRef":{"key":"tor2"}}}}`,
		mutate: func(r datastore.Resource) {
			p := r.(*datastore.BGPPeer)
			p.Spec.KeepOriginalNextHop = true
			p.Spec.Password.SecretKeyRef.Key = "tor2"
		},
	},
	datastore.KindIPReservation: {
		patch: `{"spec":{"reservedCIDRs":["10.70.0.0/30","10.70.1.8"]}}`,
		mutate: func(r datastore.Resource) {
			r.(*datastore.IPReservation).Spec.ReservedCIDRs[1] = "10.70.1.8"
		},
	},
	datastore.KindNode: {
		patch: `{"metadata":{"labels":{"zone":"z1"}},"spec":{"bgp":{"ipv4IPIPTunnelAddr":"10.70.0.2"}}}`,
		mutate: func(r datastore.Resource) {
			n := r.(*datastore.Node)
			n.Metadata.Labels["zone"] = "z1"
			n.Spec.BGP.IPv4IPIPTunnelAddr = "10.70.0.2"
		},
	},
}

// compact removes the layout of a test document.
func compact(t *testing.T, doc string) []byte {
	t.Helper()
	b, err := json.Marshal(json.RawMessage(doc))
	if err != nil {
		t.Fatalf("test document: %v", err)
	}
	return b
}

// expectedAfter is the stored document with a merge patch applied, as JSON.
func expectedAfter(t *testing.T, stored []byte, patch string) []byte {
	t.Helper()
	doc := jsonValue(t, stored)
	p := jsonValue(t, []byte(patch))
	b, err := json.Marshal(datastore.MergePatch(doc, p))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func putRaw(t *testing.T, e *etcdtest.Etcd, key string, value []byte) int64 {
	t.Helper()
	resp, err := e.Raw().Put(context.Background(), key, string(value))
	if err != nil {
		t.Fatal(err)
	}
	return resp.Header.Revision
}

func getRaw(t *testing.T, e *etcdtest.Etcd, key string) ([]byte, int64) {
	t.Helper()
	resp, err := e.Raw().Get(context.Background(), key)
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Kvs) != 1 {
		t.Fatalf("%s is not stored", key)
	}
	return resp.Kvs[0].Value, resp.Kvs[0].ModRevision
}

// Every write path of tabbyctl and tabbyd keeps the fields tabby does not model, of every
// kind: apply (read, edit, write back with the resourceVersion as condition), replace
// (the same without it), patch, and tabbyd's ModifyNode.
func TestWritesKeepUnknownFields(t *testing.T) {
	t.Parallel()
	e := etcdtest.Start(t)
	ctx := context.Background()
	paths := []struct {
		name  string
		write func(kind, name string) error
	}{{
		name: "apply",
		write: func(kind, name string) error {
			r, err := e.Client.GetResource(ctx, kind, name)
			if err != nil {
				return err
			}
			losslessChanges[kind].mutate(r)
			_, err = e.Client.ApplyResource(ctx, r)
			return err
		},
	}, {
		name: "replace",
		write: func(kind, name string) error {
			r, err := e.Client.GetResource(ctx, kind, name)
			if err != nil {
				return err
			}
			losslessChanges[kind].mutate(r)
			r.Meta().ResourceVersion = ""
			_, err = e.Client.UpdateResource(ctx, r)
			return err
		},
	}, {
		name: "patch",
		write: func(kind, name string) error {
			_, err := e.Client.PatchResource(ctx, kind, name, []byte(losslessChanges[kind].patch))
			return err
		},
	}, {
		name: "ModifyNode",
		write: func(kind, name string) error {
			if kind != datastore.KindNode {
				return errSkipPath
			}
			_, err := e.Client.ModifyNode(ctx, name, func(n *datastore.Node) error {
				losslessChanges[kind].mutate(n)
				return nil
			})
			return err
		},
	}}
	for _, kind := range datastore.Kinds() {
		if kind == datastore.KindIPAMConfiguration {
			continue // not a document of its own: see TestIPAMConfigurationKeepsUnknownFields
		}
		doc, ok := losslessDocs[kind]
		if !ok {
			t.Errorf("no lossless test document for %s", kind)
			continue
		}
		for _, path := range paths {
			t.Run(kind+"/"+path.name, func(t *testing.T) {
				stored := compact(t, doc)
				var meta struct {
					Metadata struct{ Name string } `json:"metadata"`
				}
				if err := json.Unmarshal(stored, &meta); err != nil {
					t.Fatal(err)
				}
				key := e.Client.Keys.Resource(kind, meta.Metadata.Name)
				putRaw(t, e, key, stored)
				err := path.write(kind, meta.Metadata.Name)
				if errors.Is(err, errSkipPath) {
					return // this path writes only Nodes
				}
				if err != nil {
					t.Fatalf("%s: %v", path.name, err)
				}
				got, _ := getRaw(t, e, key)
				sameJSON(t, path.name+" of "+kind, got, expectedAfter(t, stored, losslessChanges[kind].patch))
			})
		}
	}
}

var errSkipPath = errors.New("path does not apply to this kind")

// A replace from a manifest owns every field tabby models: the ones the manifest leaves
// out are removed (as calicoctl replace removes them), while those tabby does not model
// stay.
func TestReplaceFromManifestRemovesOnlyModeledFields(t *testing.T) {
	t.Parallel()
	e := etcdtest.Start(t)
	ctx := context.Background()
	stored := compact(t, losslessDocs[datastore.KindIPPool])
	key := e.Client.Keys.Resource(datastore.KindIPPool, "p1")
	putRaw(t, e, key, stored)
	r, err := datastore.DecodeManifest([]byte("apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {name: p1}\nspec: {cidr: 10.70.0.0/16, ipipMode: Always}\n"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.Client.UpdateResource(ctx, r); err != nil {
		t.Fatal(err)
	}
	got, _ := getRaw(t, e, key)
	doc := jsonValue(t, got).(map[string]any)
	spec := doc["spec"].(map[string]any)
	meta := doc["metadata"].(map[string]any)
	for _, gone := range []string{"natOutgoing", "allowedUses", "vxlanMode"} {
		if _, ok := spec[gone]; ok {
			t.Errorf("spec.%s is still stored after a replace without it: %s", gone, got)
		}
	}
	for _, gone := range []string{"labels", "annotations"} {
		if _, ok := meta[gone]; ok {
			t.Errorf("metadata.%s is still stored after a replace without it: %s", gone, got)
		}
	}
	for field, want := range map[string]string{
		"spec.futureSpec":     `{"big":12345678901234567890,"frac":1.50,"none":null}`,
		"metadata.futureMeta": `{"list":[1,2]}`,
		"status":              `{"conditions":[{"type":"Ready","status":"True"}]}`,
		"futureTop":           `true`,
		"metadata.uid":        `"0b7c3c9e-0000-4000-8000-000000000001"`,
		"spec.blockSize":      `26`,
		"spec.nodeSelector":   `"all()"`,
	} {
		var v any = doc
		for _, k := range strings.Split(field, ".") {
			v = v.(map[string]any)[k]
		}
		gotField, _ := json.Marshal(v)
		sameJSON(t, field, gotField, []byte(want))
	}
}

// A write that fails (invalid result, immutable field, unknown field in a patch, a stale
// resourceVersion) leaves the stored document exactly as it was.
func TestFailedWriteLeavesDocumentUntouched(t *testing.T) {
	t.Parallel()
	e := etcdtest.Start(t)
	ctx := context.Background()
	stored := compact(t, losslessDocs[datastore.KindIPPool])
	key := e.Client.Keys.Resource(datastore.KindIPPool, "p1")
	putRaw(t, e, key, stored)
	_, rev := getRaw(t, e, key)
	cases := []struct {
		name     string
		write    func() error
		wantText string
	}{
		{"invalid value by patch", func() error {
			_, err := e.Client.PatchResource(ctx, datastore.KindIPPool, "p1", []byte(`{"spec":{"ipipMode":"Sometimes"}}`))
			return err
		}, "spec.ipipMode"},
		{"wrong type by patch", func() error {
			_, err := e.Client.PatchResource(ctx, datastore.KindIPPool, "p1", []byte(`{"spec":{"blockSize":"big"}}`))
			return err
		}, "spec.blockSize"},
		{"unknown field by patch", func() error {
			_, err := e.Client.PatchResource(ctx, datastore.KindIPPool, "p1", []byte(`{"spec":{"ipipmode":"Always"}}`))
			return err
		}, `"spec.ipipmode"`},
		{"immutable cidr by replace", func() error {
			p := datastore.NewIPPool("p1")
			p.Spec.CIDR = "10.71.0.0/16"
			_, err := e.Client.UpdateResource(ctx, p)
			return err
		}, "spec.cidr"},
		{"stale resourceVersion", func() error {
			p := datastore.NewIPPool("p1")
			p.Spec.CIDR = "10.70.0.0/16"
			p.Metadata.ResourceVersion = "1"
			_, err := e.Client.UpdateResource(ctx, p)
			if !errors.Is(err, datastore.ErrConflict) {
				t.Errorf("stale update: %v, want ErrConflict", err)
			}
			return err
		}, "out of date"},
		{"mutation error", func() error {
			_, err := e.Client.ModifyNode(ctx, "p1", func(*datastore.Node) error { return errors.New("refused by caller") })
			return err
		}, "refused by caller"},
	}
	for _, tc := range cases {
		err := tc.write()
		if err == nil || !strings.Contains(err.Error(), tc.wantText) {
			t.Errorf("%s: error %v, want one naming %s", tc.name, err, tc.wantText)
		}
		got, gotRev := getRaw(t, e, key)
		if string(got) != string(stored) || gotRev != rev {
			t.Errorf("%s: the stored document changed (revision %d → %d):\n%s", tc.name, rev, gotRev, got)
		}
	}
}

// A writer that slips in between tabby's read and its write makes tabby read again and
// apply its change to the new document: neither writer's fields are lost.
func TestConcurrentWriterBetweenReadAndWrite(t *testing.T) {
	t.Parallel()
	e := etcdtest.Start(t)
	ctx := context.Background()
	stored := compact(t, losslessDocs[datastore.KindNode])
	key := e.Client.Keys.Resource(datastore.KindNode, "n1")
	putRaw(t, e, key, stored)
	foreign := expectedAfter(t, stored, `{"spec":{"orchRefs":[{"nodeName":"n1","orchestrator":"other"}]},"status":{"new":1}}`)

	calls := 0
	_, err := e.Client.ModifyNode(ctx, "n1", func(n *datastore.Node) error {
		calls++
		if calls == 1 {
			putRaw(t, e, key, foreign) // calicoctl writes the Node now
		}
		n.Spec.BGP.IPv4IPIPTunnelAddr = "10.70.0.2"
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if calls != 2 {
		t.Errorf("mutate ran %d times, want 2 (once more after the conflict)", calls)
	}
	got, _ := getRaw(t, e, key)
	sameJSON(t, "after the race", got, expectedAfter(t, foreign, `{"spec":{"bgp":{"ipv4IPIPTunnelAddr":"10.70.0.2"}}}`))

	// The same through a patch.
	calls = 0
	_, err = e.Client.Modify(ctx, key, datastore.DefaultRetry, func(cur datastore.KV) (datastore.Edit, error) {
		calls++
		if calls == 1 {
			putRaw(t, e, key, expectedAfter(t, cur.Value, `{"futureTop":"second writer"}`))
		}
		var n datastore.Node
		if err := json.Unmarshal(cur.Value, &n); err != nil {
			return datastore.Edit{}, err
		}
		n.Metadata.Labels["patched"] = "yes"
		v, err := datastore.Overlay(cur.Value, &n)
		return datastore.Edit{Value: v}, err
	})
	if err != nil {
		t.Fatal(err)
	}
	got2, _ := getRaw(t, e, key)
	sameJSON(t, "after the second race", got2, expectedAfter(t, got, `{"futureTop":"second writer","metadata":{"labels":{"patched":"yes"}}}`))
}

// When other writers win every time, Modify gives up after its attempts with an error
// that says so, and what is stored is the other writers' document, not a mix.
func TestModifyGivesUpAfterBoundedConflicts(t *testing.T) {
	t.Parallel()
	e := etcdtest.Start(t)
	ctx := context.Background()
	key := "/calico/test/contended"
	calls := 0
	_, err := e.Client.Modify(ctx, key, datastore.Retry{Attempts: 4}, func(cur datastore.KV) (datastore.Edit, error) {
		calls++
		putRaw(t, e, key, []byte(`{"winner":"other"}`))
		return datastore.Edit{Value: []byte(`{"winner":"us"}`)}, nil
	})
	if !errors.Is(err, datastore.ErrTooManyConflicts) || !errors.Is(err, datastore.ErrConflict) || !strings.Contains(err.Error(), key) {
		t.Errorf("error %v: want ErrTooManyConflicts wrapping ErrConflict and naming the key", err)
	}
	if calls != 4 {
		t.Errorf("edit ran %d times, want 4", calls)
	}
	got, _ := getRaw(t, e, key)
	if string(got) != `{"winner":"other"}` {
		t.Errorf("stored %s, want the other writer's document", got)
	}
}

// ModifyJSON: create when absent (Version 0), change only the owned fields, write nothing
// when nothing changes.
func TestModifyJSON(t *testing.T) {
	t.Parallel()
	e := etcdtest.Start(t)
	ctx := context.Background()
	key := "/calico/ipam/v2/config"
	type cfg struct {
		StrictAffinity bool `json:"strict_affinity"`
		MaxBlocks      int  `json:"maxBlocksPerHost,omitempty"`
	}
	got, kv, err := datastore.ModifyJSON(ctx, e.Client, key, datastore.DefaultRetry, func(c *cfg, exists bool) error {
		if exists {
			t.Error("a missing key was reported as existing")
		}
		c.MaxBlocks = 4
		return nil
	})
	if err != nil || got.MaxBlocks != 4 || string(kv.Value) != `{"strict_affinity":false,"maxBlocksPerHost":4}` {
		t.Fatalf("create: %+v %s %v", got, kv.Value, err)
	}
	putRaw(t, e, key, []byte(`{"strict_affinity":false,"auto_allocate_blocks":false,"maxBlocksPerHost":4}`))
	_, rev := getRaw(t, e, key)
	_, kv, err = datastore.ModifyJSON(ctx, e.Client, key, datastore.DefaultRetry, func(c *cfg, exists bool) error { return nil })
	if err != nil || kv.ModRevision != rev {
		t.Errorf("an unchanged document was written: revision %d → %d (%v)", rev, kv.ModRevision, err)
	}
	_, _, err = datastore.ModifyJSON(ctx, e.Client, key, datastore.DefaultRetry, func(c *cfg, exists bool) error {
		c.StrictAffinity, c.MaxBlocks = true, 0
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	stored, _ := getRaw(t, e, key)
	sameJSON(t, "config", stored, []byte(`{"strict_affinity":true,"auto_allocate_blocks":false}`))
}
