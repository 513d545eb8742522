package datastore

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"reflect"
	"strings"
	"testing"
)

// blockDoc is a /26 block document as Calico and tabby write it, with the given
// allocations and attributes.
func blockDoc(allocs map[int]int, attrs string) string {
	a := make([]string, 64)
	var free []string
	for i := range a {
		if v, ok := allocs[i]; ok {
			a[i] = fmt.Sprint(v)
		} else {
			a[i] = "null"
			free = append(free, fmt.Sprint(i))
		}
	}
	return `{"cidr":"10.244.1.0/26","affinity":"host:worker-1","strictAffinity":false,"allocations":[` +
		strings.Join(a, ",") + `],"unallocated":[` + strings.Join(free, ",") + `],"attributes":` + attrs +
		`,"deleted":false,"sequenceNumber":7,"sequenceNumberForAllocation":{"0":6}}`
}

// decodeBlockV1 is decodeBlock's JSON step with encoding/json, the reference.
func decodeBlockV1(value []byte) (AllocationBlock, error) {
	b := AllocationBlock{Allocations: make([]*int, 0, 64), Unallocated: make([]int, 0, 64)}
	err := json.Unmarshal(value, &b)
	return b, err
}

// FuzzBlockJSON: decodeBlock (JSON v2 with encoding/json's leniency) accepts exactly the
// block documents encoding/json accepts, and reads them the same. The seeds run in every
// `go test`; `go test -fuzz FuzzBlockJSON ./datastore` searches further.
func FuzzBlockJSON(f *testing.F) {
	attrs := `[{"handle_id":"tabby.c1","secondary":{"node":"worker-1"}},{"handle_id":null,"secondary":null}]`
	for _, seed := range []string{
		blockDoc(map[int]int{0: 0, 5: 1}, attrs),
		blockDoc(nil, `[]`),
		blockDoc(nil, `null`),
		strings.Replace(blockDoc(map[int]int{0: 0}, attrs), `"cidr"`, `"CIDR"`, 1),                  // names in any case
		strings.Replace(blockDoc(map[int]int{0: 0}, attrs), `"handle_id"`, `"Handle_ID"`, 1),        // in nested objects too
		strings.Replace(blockDoc(map[int]int{0: 0}, attrs), `"handle_id"`, `"handleid"`, 1),         // but not without the underscore
		strings.Replace(blockDoc(map[int]int{0: 0}, attrs), `{"cidr"`, `{"deleted":true,"cidr"`, 1), // the last duplicate wins
		strings.Replace(blockDoc(map[int]int{0: 0}, attrs), `worker-1"}`, "worker-\xff\"}", 1),      // invalid UTF-8
		strings.Replace(blockDoc(map[int]int{0: 0}, attrs), `"deleted":false`, `"deleted":false,"unknown":[1,{"a":2}]`, 1),
		strings.Replace(blockDoc(map[int]int{0: 0}, attrs), `"allocations":[0,`, `"allocations":[0.5,`, 1),
		strings.Replace(blockDoc(map[int]int{0: 0}, attrs), `"allocations":[0,`, `"allocations":["0",`, 1),
		strings.Replace(blockDoc(map[int]int{0: 0}, attrs), `"allocations":[0,`, `"allocations":[99999999999999999999,`, 1),
		strings.Replace(blockDoc(map[int]int{0: 0}, attrs), `"deleted":false`, `"deleted":"no"`, 1),
		strings.Replace(blockDoc(map[int]int{0: 0}, attrs), `"sequenceNumber":7`, `"sequenceNumber":-7`, 1),
		blockDoc(nil, `[]`) + ` {}`,
		`{"cidr":"10.244.1.0/26",}`,
		`{"cidr":"10.244.1.0/26"`,
		`[]`,
		`null`,
		``,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, doc []byte) {
		want, wantErr := decodeBlockV1(doc)
		got, gotErr := decodeBlock(doc, netip.MustParsePrefix("10.244.1.0/26"))
		if wantErr != nil {
			if gotErr == nil {
				t.Fatalf("encoding/json refuses %q (%v), decodeBlock accepts it", doc, wantErr)
			}
			return
		}
		if gotErr != nil {
			if strings.HasPrefix(gotErr.Error(), "block 10.244.1.0/26: json:") || strings.Contains(gotErr.Error(), "jsontext:") {
				t.Fatalf("encoding/json accepts %q, decodeBlock's JSON step refuses it: %v", doc, gotErr)
			}
			return // refused by decodeBlock's own checks, after the JSON step
		}
		shareSecondaries(&want)
		if !reflect.DeepEqual(*got, want) {
			t.Fatalf("%q reads differently:\n got %+v\nwant %+v", doc, *got, want)
		}
	})
}
