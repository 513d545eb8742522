package datastore_test

import (
	"bytes"
	"encoding/json"
	"reflect"
	"testing"

	"github.com/tabby-net/tabby/datastore"
)

// jsonValue decodes a JSON document for comparison as a JSON value, numbers exactly as
// written (a big integer must not lose digits on the way through tabby).
func jsonValue(t *testing.T, b []byte) any {
	t.Helper()
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		t.Fatalf("not JSON: %v\n%s", err, b)
	}
	return v
}

func sameJSON(t *testing.T, what string, got, want []byte) {
	t.Helper()
	if !reflect.DeepEqual(jsonValue(t, got), jsonValue(t, want)) {
		t.Errorf("%s:\n got %s\nwant %s", what, got, want)
	}
}

type overlayInner struct {
	A string            `json:"a,omitempty"`
	M map[string]string `json:"m,omitempty"`
}

type overlayItem struct {
	ID   string `json:"id"`
	Note string `json:"note,omitempty"`
}

type overlayDoc struct {
	datastore.TypeMeta
	Name     string                  `json:"name"`
	Count    int                     `json:"count,omitempty"`
	Flag     bool                    `json:"flag,omitempty"`
	Inner    *overlayInner           `json:"inner,omitempty"`
	Items    []overlayItem           `json:"items"`
	ByKey    map[string]overlayInner `json:"byKey,omitempty"`
	Scalars  []int                   `json:"scalars,omitempty"`
	Duration *datastore.Duration     `json:"duration,omitempty"`
	Skipped  string                  `json:"-"`
}

func TestOverlay(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name   string
		stored string
		change func(d *overlayDoc)
		want   string
	}{{
		name:   "unchanged keeps every unknown member, at every depth, as stored",
		stored: `{"kind":"K","apiVersion":"v","zTop":{"deep":[1,2.50,{"n":12345678901234567890}]},"name":"x","inner":{"a":"1","unknownInner":true,"m":{"k":"v"}},"items":[{"id":"i1","extra":"e1"}],"byKey":{"q":{"a":"qa","more":[null]}},"status":{"phase":"Up"}}`,
		change: func(d *overlayDoc) {},
		want:   `{"kind":"K","apiVersion":"v","zTop":{"deep":[1,2.50,{"n":12345678901234567890}]},"name":"x","inner":{"a":"1","unknownInner":true,"m":{"k":"v"}},"items":[{"id":"i1","extra":"e1"}],"byKey":{"q":{"a":"qa","more":[null]}},"status":{"phase":"Up"}}`,
	}, {
		name:   "a changed owned field changes, unknown neighbours stay",
		stored: `{"name":"x","count":1,"unknown":"u","inner":{"a":"1","unknownInner":7},"items":null}`,
		change: func(d *overlayDoc) { d.Count = 2; d.Inner.A = "2" },
		want:   `{"name":"x","count":2,"unknown":"u","inner":{"a":"2","unknownInner":7},"items":null,"kind":"","apiVersion":""}`,
	}, {
		name:   "an owned omitempty field the caller cleared is removed; an unknown one stays",
		stored: `{"name":"x","count":5,"flag":true,"inner":{"a":"1","keep":1},"scalars":[1,2],"unknownFlag":false,"items":[]}`,
		change: func(d *overlayDoc) { d.Count, d.Flag, d.Scalars = 0, false, nil; d.Inner.A = "" },
		want:   `{"name":"x","inner":{"keep":1},"unknownFlag":false,"items":[],"kind":"","apiVersion":""}`,
	}, {
		name:   "a cleared owned object goes with everything in it",
		stored: `{"name":"x","inner":{"a":"1","keep":1},"items":[]}`,
		change: func(d *overlayDoc) { d.Inner = nil },
		want:   `{"name":"x","items":[],"kind":"","apiVersion":""}`,
	}, {
		name:   "map values keep their unknown members; removed keys go",
		stored: `{"name":"x","items":[],"byKey":{"a":{"a":"1","ua":1},"b":{"a":"2","ub":2}}}`,
		change: func(d *overlayDoc) {
			delete(d.ByKey, "a")
			d.ByKey["b"] = overlayInner{A: "22"}
			d.ByKey["c"] = overlayInner{A: "3"}
		},
		want: `{"name":"x","items":[],"byKey":{"b":{"a":"22","ub":2},"c":{"a":"3"}},"kind":"","apiVersion":""}`,
	}, {
		name:   "slice elements keep their own unknown members when others are removed or added",
		stored: `{"name":"x","items":[{"id":"1","u":"one"},{"id":"2","u":"two"},{"id":"3","u":"three"}]}`,
		change: func(d *overlayDoc) {
			d.Items = append([]overlayItem{d.Items[0]}, d.Items[2:]...)
			d.Items = append(d.Items, overlayItem{ID: "4"})
		},
		want: `{"name":"x","items":[{"id":"1","u":"one"},{"id":"3","u":"three"},{"id":"4"}],"kind":"","apiVersion":""}`,
	}, {
		name:   "a slice element changed in place keeps its unknown members",
		stored: `{"name":"x","items":[{"id":"1","u":"one"},{"id":"2","u":"two"}]}`,
		change: func(d *overlayDoc) { d.Items[1].Note = "n" },
		want:   `{"name":"x","items":[{"id":"1","u":"one"},{"id":"2","u":"two","note":"n"}],"kind":"","apiVersion":""}`,
	}, {
		name:   "names match as encoding/json decodes them",
		stored: `{"NAME":"x","Count":3,"items":[]}`,
		change: func(d *overlayDoc) { d.Count = 4 },
		want:   `{"name":"x","count":4,"items":[],"kind":"","apiVersion":""}`,
	}, {
		name:   "types with their own encoding are written whole",
		stored: `{"name":"x","items":[],"duration":"1m0s"}`,
		change: func(d *overlayDoc) { d.Duration.Duration *= 2 },
		want:   `{"name":"x","items":[],"duration":"2m0s","kind":"","apiVersion":""}`,
	}}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var d overlayDoc
			if err := json.Unmarshal([]byte(tc.stored), &d); err != nil {
				t.Fatal(err)
			}
			tc.change(&d)
			got, err := datastore.Overlay([]byte(tc.stored), &d)
			if err != nil {
				t.Fatal(err)
			}
			sameJSON(t, "overlay", got, []byte(tc.want))
		})
	}
}

// With nothing stored (or something that is not an object), Overlay is json.Marshal.
func TestOverlayWithoutStoredIsMarshal(t *testing.T) {
	t.Parallel()
	d := overlayDoc{Name: "x", Count: 2, Inner: &overlayInner{A: "a", M: map[string]string{"z": "1", "a": "2"}},
		Items: []overlayItem{{ID: "1"}}, ByKey: map[string]overlayInner{"k": {}}, Scalars: []int{3}, Skipped: "no"}
	want, err := json.Marshal(&d)
	if err != nil {
		t.Fatal(err)
	}
	for _, stored := range []string{"", "null", `"text"`, `[1]`, `{}`} {
		got, err := datastore.Overlay([]byte(stored), &d)
		if err != nil {
			t.Fatal(err)
		}
		if stored == "{}" {
			sameJSON(t, "over {}", got, want)
			continue
		}
		if !bytes.Equal(got, want) {
			t.Errorf("over %q:\n got %s\nwant %s", stored, got, want)
		}
	}
}

// Overlaying the resources tabby stores on their own encoding changes nothing: the
// encoding of a resource is unchanged by the move to Overlay.
func TestOverlayOfStoredResourceIsIdentity(t *testing.T) {
	t.Parallel()
	for _, doc := range []string{calicoStoredPool, calicoStoredBlock} {
		var v any
		if doc == calicoStoredPool {
			v = &datastore.IPPool{}
		} else {
			v = &datastore.AllocationBlock{}
		}
		if err := json.Unmarshal([]byte(doc), v); err != nil {
			t.Fatal(err)
		}
		got, err := datastore.Overlay([]byte(doc), v)
		if err != nil {
			t.Fatal(err)
		}
		if string(got) != doc {
			t.Errorf("overlay of an unchanged document:\n got %s\nwant %s", got, doc)
		}
	}
}

// A block as Calico writes it.
const calicoStoredBlock = `{"cidr":"10.65.0.0/30","affinity":"host:n1","strictAffinity":false,"allocations":[0,null,1,null],"unallocated":[1,3],"attributes":[{"handle_id":"h1","secondary":{"node":"n1"}},{"handle_id":"h2","secondary":null}],"deleted":false,"sequenceNumber":3,"sequenceNumberForAllocation":{"0":1,"2":2}}`
