package datastore_test

import (
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/tabby-net/tabby/datastore"
)

// The manifests of the articles in ../shared/articles, as their authors applied them.
const (
	// From `calicoctl get ippool default-ipv4-ippool -o yaml`, edited for Direct mode
	// (article 000): it carries creationTimestamp, resourceVersion and uid, and a comment.
	articlePoolFromGet = `apiVersion: projectcalico.org/v3
kind: IPPool
metadata:
  creationTimestamp: '2022-11-21T02:48:58Z'
  name: default-ipv4-ippool
  resourceVersion: '523311'
  uid: e060c782-2c8f-4a05-84ae-2ca39b0c0038
spec:
  blockSize: 26
  cidr: 192.168.0.0/16
  ipipMode: Never # Direct 모드를 사용하기 위해 Always > Never 변경
  natOutgoing: true
  nodeSelector: all()
  vxlanMode: Never
`
	// Article 003, with the metadata removed as its comment says.
	articlePoolCrossSubnet = `apiVersion: projectcalico.org/v3
kind: IPPool
metadata:
  # remove creationTimestamp, resourceVersion,
  # and uid if present
  name: default-ipv4-ippool
spec:
  blockSize: 26
  cidr: 192.168.0.0/16
  ipipMode: CrossSubnet
  natOutgoing: true
  nodeSelector: all()
  vxlanMode: Never
`
)

func TestDecodeArticleManifests(t *testing.T) {
	for name, text := range map[string]string{"from get": articlePoolFromGet, "cross subnet": articlePoolCrossSubnet} {
		t.Run(name, func(t *testing.T) {
			r, err := datastore.DecodeManifest([]byte(text))
			if err != nil {
				t.Fatalf("decode: %v", err)
			}
			p, ok := r.(*datastore.IPPool)
			if !ok {
				t.Fatalf("decoded a %T, want *IPPool", r)
			}
			if p.Metadata.Name != "default-ipv4-ippool" || p.Spec.CIDR != "192.168.0.0/16" || !p.Spec.NATOutgoing || p.Spec.BlockSize != 26 {
				t.Errorf("decoded %+v", p)
			}
			if err := datastore.Validate(p); err != nil {
				t.Errorf("validate: %v", err)
			}
		})
	}
	p, _ := datastore.DecodeManifest([]byte(articlePoolFromGet))
	if m := p.Meta(); m.ResourceVersion != "523311" || m.UID != "e060c782-2c8f-4a05-84ae-2ca39b0c0038" || m.CreationTimestamp != "2022-11-21T02:48:58Z" {
		t.Errorf("metadata not kept: %+v", m)
	}
}

func TestDecodeStreams(t *testing.T) {
	pool := func(name, cidr string) string {
		return "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata:\n  name: " + name + "\nspec:\n  cidr: " + cidr + "\n"
	}
	tests := []struct {
		name  string
		in    string
		names []string
	}{
		{"one YAML document", pool("a", "10.1.0.0/16"), []string{"a"}},
		{"several documents", "---\n" + pool("a", "10.1.0.0/16") + "---\n# a comment only\n---\n" + pool("b", "10.2.0.0/16") + "--- # trailing\n", []string{"a", "b"}},
		{"JSON object", `{"kind":"IPPool","apiVersion":"projectcalico.org/v3","metadata":{"name":"a"},"spec":{"cidr":"10.1.0.0/16"}}`, []string{"a"}},
		{"JSON with tabs, two objects", "{\n\t\"kind\": \"IPPool\", \"apiVersion\": \"projectcalico.org/v3\", \"metadata\": {\"name\": \"a\"}}\n{\"kind\": \"Node\", \"apiVersion\": \"projectcalico.org/v3\", \"metadata\": {\"name\": \"n\"}}", []string{"a", "n"}},
		{"JSON array", `[{"kind":"BGPPeer","apiVersion":"projectcalico.org/v3","metadata":{"name":"p"}},{"kind":"Node","apiVersion":"projectcalico.org/v3","metadata":{"name":"n"}}]`, []string{"p", "n"}},
		{"kind List", "apiVersion: v1\nkind: List\nitems:\n- " + strings.ReplaceAll(pool("a", "10.1.0.0/16"), "\n", "\n  ") + "\n", []string{"a"}},
		{"typed list as tabbyctl prints it", "apiVersion: projectcalico.org/v3\nkind: IPPoolList\nmetadata:\n  resourceVersion: \"7\"\nitems:\n- metadata:\n    name: a\n  spec:\n    cidr: 10.1.0.0/16\n- metadata:\n    name: b\n", []string{"a", "b"}},
		{"empty", "\n# nothing here\n", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rs, err := datastore.DecodeManifests([]byte(tt.in))
			if err != nil {
				t.Fatalf("decode: %v", err)
			}
			var names []string
			for _, r := range rs {
				names = append(names, r.Meta().Name)
			}
			if !reflect.DeepEqual(names, tt.names) {
				t.Errorf("decoded %v, want %v", names, tt.names)
			}
		})
	}
}

func TestDecodeErrors(t *testing.T) {
	const head = "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata:\n  name: p1\n"
	tests := []struct {
		name, in string
		want     []string
	}{
		{"unknown kind", "apiVersion: projectcalico.org/v3\nkind: IPPol\nmetadata:\n  name: x\n", []string{`unknown kind "IPPol"`, "IPPool, BGPConfiguration, BGPPeer, Node"}},
		{"no kind", "apiVersion: projectcalico.org/v3\nmetadata:\n  name: x\n", []string{"no kind"}},
		{"other apiVersion", "apiVersion: crd.projectcalico.org/v1\nkind: IPPool\nmetadata:\n  name: x\n", []string{`IPPool "x": apiVersion: "crd.projectcalico.org/v1" is not supported`}},
		{"no apiVersion", "kind: IPPool\nmetadata:\n  name: x\n", []string{`IPPool "x": apiVersion: required`}},
		{"no metadata", "apiVersion: projectcalico.org/v3\nkind: IPPool\n", []string{"metadata: required"}},
		{"unknown field", head + "spec:\n  cidr: 10.0.0.0/16\n  blocksize: 26\n", []string{`IPPool "p1": unknown field "spec.blocksize" (did you mean "blockSize"?)`}},
		{"unknown top-level field", head + "status: {}\n", []string{`unknown field "status"`}},
		{"unknown nested field", head + "spec:\n  nodeMeshPassword: {}\n", []string{`unknown field "spec.nodeMeshPassword"`}},
		{"unknown metadata field", head + "  colour: blue\n", []string{`unknown field "metadata.colour"`}},
		{"wrong type", head + "spec:\n  blockSize: large\n", []string{`IPPool "p1": spec.blockSize: expected a whole number`, "found a string"}},
		{"bad AS number", "apiVersion: projectcalico.org/v3\nkind: BGPPeer\nmetadata:\n  name: r\nspec:\n  asNumber: sixty\n", []string{`BGPPeer "r": spec.asNumber: invalid AS number "sixty"`}},
		{"bad duration", "apiVersion: projectcalico.org/v3\nkind: BGPPeer\nmetadata:\n  name: r\nspec:\n  maxRestartTime: soon\n", []string{`spec.maxRestartTime: time: invalid duration "soon"`}},
		{"malformed YAML", head + "spec:\n  cidr: [10.0.0.0/16\n", []string{"document 1: malformed YAML", "line 5"}},
		{"malformed second document", head + "---\n" + head + "spec: x\n  y: z\n", []string{"document 2: malformed YAML", "line 11"}},
		{"duplicate key", head + "spec:\n  cidr: 10.0.0.0/16\n  cidr: 10.1.0.0/16\n", []string{"line 7", `key "cidr" appears twice`}},
		{"not a mapping", "just a string\n", []string{"expected a resource", "found a string"}},
		{"list item of the wrong kind", "apiVersion: projectcalico.org/v3\nkind: IPPoolList\nitems:\n- apiVersion: projectcalico.org/v3\n  kind: Node\n  metadata:\n    name: n\n", []string{"a IPPoolList holds IPPool resources, not Node"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rs, err := datastore.DecodeManifests([]byte(tt.in))
			if err == nil {
				t.Fatalf("decoded %d resources, want an error", len(rs))
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
}

func TestDecodeStoredTolerantWithDefaults(t *testing.T) {
	// As Calico's own tests store a pool: only cidr, ipipMode and natOutgoing, plus a field
	// tabby does not know.
	value := `{"kind":"IPPool","apiVersion":"projectcalico.org/v3","metadata":{"name":"p"},"spec":{"cidr":"10.5.0.0/16","ipipMode":"Always","natOutgoing":true,"futureField":{"enabled":true},"assignmentMode":"Manual"}}`
	r, err := datastore.DecodeStored(datastore.KindIPPool, "p", []byte(value), 42)
	if err != nil {
		t.Fatalf("decode: %v", err)
	}
	p := r.(*datastore.IPPool)
	manual := datastore.AssignmentManual
	want := datastore.IPPoolSpec{
		CIDR: "10.5.0.0/16", IPIPMode: datastore.EncapAlways, VXLANMode: datastore.EncapNever, NATOutgoing: true,
		BlockSize: 26, NodeSelector: "all()", AllowedUses: []string{"Workload", "Tunnel"}, AssignmentMode: &manual,
	}
	if !reflect.DeepEqual(p.Spec, want) {
		t.Errorf("spec = %+v, want %+v", p.Spec, want)
	}
	if p.Metadata.ResourceVersion != "42" || p.Kind != "IPPool" || p.APIVersion != datastore.APIVersion {
		t.Errorf("meta = %+v %+v", p.TypeMeta, p.Metadata)
	}

	cfg, err := datastore.DecodeStored(datastore.KindBGPConfiguration, "default", []byte(`{"spec":{"logSeverityScreen":"Info"}}`), 3)
	if err != nil {
		t.Fatal(err)
	}
	s := cfg.(*datastore.BGPConfiguration).Spec
	if *s.ASNumber != 64512 || !*s.NodeToNodeMeshEnabled || s.ListenPort != 179 || s.NodeMeshMaxRestartTime.Duration != 120*time.Second {
		t.Errorf("BGPConfiguration defaults not applied: %+v", s)
	}
	nodeCfg, err := datastore.DecodeStored(datastore.KindBGPConfiguration, "node.w1", []byte(`{"spec":{"listenPort":1790}}`), 3)
	if err != nil {
		t.Fatal(err)
	}
	if s := nodeCfg.(*datastore.BGPConfiguration).Spec; s.ASNumber != nil || s.NodeToNodeMeshEnabled != nil || s.ListenPort != 1790 {
		t.Errorf("a node-specific BGPConfiguration must only carry what it sets: %+v", s)
	}

	for _, bad := range []struct{ kind, name, value, want string }{
		{datastore.KindIPPool, "p", `{"spec":`, "not valid"},
		{datastore.KindIPPool, "p", `{"kind":"Node","metadata":{"name":"p"}}`, `says kind "Node"`},
		{datastore.KindIPPool, "p", `{"metadata":{"name":"q"}}`, `says metadata.name "q"`},
		{datastore.KindIPPool, "p", `{"spec":{"blockSize":"26"}}`, "not valid"},
	} {
		if _, err := datastore.DecodeStored(bad.kind, bad.name, []byte(bad.value), 1); err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("DecodeStored(%s) = %v, want an error containing %q", bad.value, err, bad.want)
		}
	}
}

func TestEncodeStoredIsCalicosForm(t *testing.T) {
	p := datastore.NewIPPool("default-ipv4-ippool")
	p.Metadata = datastore.ObjectMeta{Name: "default-ipv4-ippool", UID: "e060c782-2c8f-4a05-84ae-2ca39b0c0038", ResourceVersion: "99", CreationTimestamp: "2022-11-21T02:48:58Z"}
	p.Spec = datastore.IPPoolSpec{CIDR: "192.168.0.0/16", IPIPMode: datastore.EncapAlways, NATOutgoing: true, BlockSize: 26, NodeSelector: "all()"}
	got, err := datastore.EncodeStored(p)
	if err != nil {
		t.Fatal(err)
	}
	const want = `{"kind":"IPPool","apiVersion":"projectcalico.org/v3","metadata":{"name":"default-ipv4-ippool","uid":"e060c782-2c8f-4a05-84ae-2ca39b0c0038","creationTimestamp":"2022-11-21T02:48:58Z"},"spec":{"cidr":"192.168.0.0/16","ipipMode":"Always","natOutgoing":true,"blockSize":26,"nodeSelector":"all()"}}`
	if string(got) != want {
		t.Errorf("stored\n%s\nwant\n%s", got, want)
	}
	if p.Metadata.ResourceVersion != "99" {
		t.Error("EncodeStored modified its argument")
	}
}

func TestMergePatch(t *testing.T) {
	doc := map[string]any{"a": "b", "c": map[string]any{"d": "e", "f": "g"}, "l": []any{1.0}}
	patch := map[string]any{"a": "z", "c": map[string]any{"f": nil, "h": "i"}, "l": []any{2.0}, "n": map[string]any{"x": nil}}
	got := datastore.MergePatch(doc, patch)
	want := map[string]any{"a": "z", "c": map[string]any{"d": "e", "h": "i"}, "l": []any{2.0}, "n": map[string]any{}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("MergePatch = %v, want %v", got, want)
	}
	if doc["a"] != "b" || doc["c"].(map[string]any)["f"] != "g" {
		t.Error("MergePatch modified the document")
	}
}

// FuzzDecodeManifests checks that no input makes the decoder, the validator or the codec
// panic, and that whatever decodes survives a store and read round trip.
func FuzzDecodeManifests(f *testing.F) {
	for _, s := range []string{
		articlePoolFromGet, articlePoolCrossSubnet,
		`{"kind":"IPPool","apiVersion":"projectcalico.org/v3","metadata":{"name":"x","labels":{"a":"b"}},"spec":{"cidr":"10.0.0.0/8","blockSize":20}}`,
		"apiVersion: projectcalico.org/v3\nkind: BGPPeer\nmetadata:\n  name: r\nspec:\n  peerIP: 10.0.0.1:179\n  asNumber: 1.10\n  password:\n    secretKeyRef: {name: s, key: k}\n  maxRestartTime: 2m\n",
		"apiVersion: projectcalico.org/v3\nkind: Node\nmetadata:\n  name: n\nspec:\n  bgp:\n    ipv4Address: 10.0.0.1/24\n  vxlanTunnelMACAddr: 66:00:00:00:00:01\n",
		"apiVersion: projectcalico.org/v3\nkind: BGPConfiguration\nmetadata:\n  name: default\nspec:\n  nodeToNodeMeshEnabled: false\n  asNumber: 65000\n",
		"apiVersion: v1\nkind: List\nitems: [{kind: Node}]\n",
		"[1, 2]", "---\n---\n", "{", "kind: [", "\t{}", "null",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		rs, err := datastore.DecodeManifests(data)
		if err != nil {
			if errors.Is(err, datastore.ErrInvalid) && !strings.Contains(err.Error(), ":") {
				t.Fatalf("a field error without a location: %v", err)
			}
			return
		}
		for _, r := range rs {
			_ = datastore.Validate(r)
			b, err := datastore.EncodeStored(r)
			if err != nil {
				t.Fatalf("EncodeStored(%+v): %v", r, err)
			}
			name := r.Meta().Name
			if name == "" || strings.Contains(name, "/") {
				continue
			}
			back, err := datastore.DecodeStored(r.ResourceKind(), name, b, 1)
			if err != nil {
				t.Fatalf("stored form %s does not decode: %v", b, err)
			}
			if back.Meta().Name != name {
				t.Fatalf("round trip changed the name: %q -> %q", name, back.Meta().Name)
			}
		}
	})
}

// YAML 1.1 reads no, on and y as booleans and 1.10 as a float; a manifest means the name
// "no" and the AS number 1.10 (= 65546).
func TestDecodeYAMLScalarsAsTheirFields(t *testing.T) {
	in := `apiVersion: projectcalico.org/v3
kind: BGPPeer
metadata:
  name: "on"
  resourceVersion: 523311
  creationTimestamp: 2022-11-21T02:48:58Z
  labels:
    rack: no
    unit: 1
spec:
  node: no
  peerIP: 10.0.0.1
  asNumber: 1.10
`
	r, err := datastore.DecodeManifest([]byte(in))
	if err != nil {
		t.Fatalf("decode: %v", err)
	}
	p := r.(*datastore.BGPPeer)
	if p.Spec.Node != "no" || p.Spec.ASNumber != 1<<16+10 || p.Metadata.Labels["rack"] != "no" || p.Metadata.Labels["unit"] != "1" {
		t.Errorf("scalars not read as their fields: %+v", p)
	}
	if p.Metadata.ResourceVersion != "523311" || p.Metadata.CreationTimestamp != "2022-11-21T02:48:58Z" {
		t.Errorf("metadata = %+v", p.Metadata)
	}
	if _, err := datastore.DecodeManifests([]byte("a: &x [1]\nb: *x\n")); err == nil || !strings.Contains(err.Error(), "aliases") {
		t.Errorf("an alias must be refused, got %v", err)
	}
}

// A cluster-wide BGPConfiguration that turns the mesh off, stored as tabby, calicoctl or
// etcdctl write it, is valid after its read-time defaults: were the mesh's restart time
// defaulted beside "nodeToNodeMeshEnabled: false" (which Calico refuses), the document
// would be reported invalid and every host would fall back to a full mesh.
func TestMeshlessBGPConfigurationStaysValidOnRead(t *testing.T) {
	for _, doc := range []string{
		`{"kind":"BGPConfiguration","apiVersion":"projectcalico.org/v3","metadata":{"name":"default"},"spec":{"nodeToNodeMeshEnabled":false}}`,
		`{"kind":"BGPConfiguration","apiVersion":"projectcalico.org/v3","metadata":{"name":"default"},"spec":{"nodeToNodeMeshEnabled":false,"asNumber":64513}}`,
	} {
		r, err := datastore.DecodeStored(datastore.KindBGPConfiguration, "default", []byte(doc), 7)
		if err != nil {
			t.Fatalf("decode %s: %v", doc, err)
		}
		if err := datastore.Validate(r); err != nil {
			t.Errorf("%s is refused after its defaults: %v", doc, err)
		}
		cfg := r.(*datastore.BGPConfiguration)
		if m := cfg.Spec.NodeToNodeMeshEnabled; m == nil || *m {
			t.Errorf("%s: mesh read as %v", doc, m)
		}
	}
	// With the mesh on (absent = on), the restart time still takes its default.
	r, err := datastore.DecodeStored(datastore.KindBGPConfiguration, "default", []byte(`{"metadata":{"name":"default"},"spec":{}}`), 7)
	if err != nil {
		t.Fatal(err)
	}
	if d := r.(*datastore.BGPConfiguration).Spec.NodeMeshMaxRestartTime; d == nil || d.Duration != datastore.DefaultNodeMeshMaxRestartTime {
		t.Errorf("mesh restart time %v, want the default %s", d, datastore.DefaultNodeMeshMaxRestartTime)
	}
}
