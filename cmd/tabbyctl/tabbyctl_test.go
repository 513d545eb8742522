package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"

	"github.com/spf13/cobra"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tabby-net/tabby/datastore/etcdtest"
)

const poolKey = "/calico/resources/v3/projectcalico.org/ippools/default-ipv4-ippool"

// result is what one tabbyctl run printed and returned.
type result struct {
	stdout, stderr string
	code           int
}

// ctl runs the real command tree in process against e, with an empty configuration file
// so that the machine's /etc/tabby/tabbyctl.yaml cannot leak in.
func ctl(t *testing.T, e *etcdtest.Etcd, stdin string, args ...string) result {
	t.Helper()
	cfg := filepath.Join(t.TempDir(), "tabbyctl.yaml")
	if err := os.WriteFile(cfg, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	full := append([]string{"--config", cfg}, args...)
	if e != nil {
		full = append([]string{"--endpoints", e.Endpoint}, full...)
	}
	var out, errOut bytes.Buffer
	code := run(context.Background(), full, strings.NewReader(stdin), &out, &errOut)
	return result{stdout: out.String(), stderr: errOut.String(), code: code}
}

func (r result) must(t *testing.T) result {
	t.Helper()
	if r.code != 0 {
		t.Fatalf("exit %d\nstdout: %s\nstderr: %s", r.code, r.stdout, r.stderr)
	}
	return r
}

func writeFile(t *testing.T, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "manifest.yaml")
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// stored returns the raw value of a key, "" when it is absent.
func stored(t *testing.T, e *etcdtest.Etcd, key string) string {
	t.Helper()
	resp, err := e.Raw().Get(context.Background(), key)
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Kvs) == 0 {
		return ""
	}
	return string(resp.Kvs[0].Value)
}

func storedSpec(t *testing.T, e *etcdtest.Etcd, key string) map[string]any {
	t.Helper()
	var doc struct {
		Spec map[string]any `json:"spec"`
	}
	if err := json.Unmarshal([]byte(stored(t, e, key)), &doc); err != nil {
		t.Fatalf("stored %s: %v", key, err)
	}
	return doc.Spec
}

// allKeys lists every key under the root with its revision, to prove a refusal wrote
// nothing.
func allKeys(t *testing.T, e *etcdtest.Etcd) string {
	t.Helper()
	resp, err := e.Raw().Get(context.Background(), "/calico/", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	for _, kv := range resp.Kvs {
		fmt.Fprintf(&b, "%s@%d\n", kv.Key, kv.ModRevision)
	}
	return b.String()
}

// The manifests of the articles, as written there.
const (
	// Article 003: the pool with the metadata removed, in CrossSubnet mode.
	article003 = `apiVersion: projectcalico.org/v3
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
	// Article 000: the output of `calicoctl get ippool default-ipv4-ippool -o yaml`, edited.
	article000 = `apiVersion: projectcalico.org/v3
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
)

var wideHeader = regexp.MustCompile(`^NAME\s+CIDR\s+NAT\s+IPIPMODE\s+VXLANMODE\s+DISABLED\s+DISABLEBGPEXPORT\s+SELECTOR\s+ASSIGNMENTMODE\n`)

func TestArticleWorkflow(t *testing.T) {
	e := etcdtest.Start(t)

	// The example pool (ipipMode Always, natOutgoing), as the clusters of the articles start.
	r := ctl(t, e, "", "apply", "-f", "../../configs/examples/ippool-default.yaml").must(t)
	if r.stdout != "Successfully applied 1 'IPPool' resource(s)\n" {
		t.Errorf("apply said %q", r.stdout)
	}
	r = ctl(t, e, "", "get", "ippool", "-o", "wide").must(t)
	if !wideHeader.MatchString(r.stdout) || !regexp.MustCompile(`\ndefault-ipv4-ippool\s+192\.168\.0\.0/16\s+true\s+Always\s+Never\s+false\s+false\s+all\(\)\s+Automatic\n$`).MatchString(r.stdout) {
		t.Errorf("get -o wide printed\n%s", r.stdout)
	}

	// Article 001: get -o yaml | sed ... | apply -f -
	yamlOut := ctl(t, e, "", "get", "ippool", "default-ipv4-ippool", "-o", "yaml").must(t).stdout
	for _, field := range []string{"creationTimestamp:", "resourceVersion:", "uid:", "ipipMode: Always"} {
		if !strings.Contains(yamlOut, field) {
			t.Errorf("get -o yaml lacks %q:\n%s", field, yamlOut)
		}
	}
	edited := strings.ReplaceAll(yamlOut, "ipipMode: Always", "ipipMode: Never")
	ctl(t, e, edited, "apply", "-f", "-").must(t)
	if got := storedSpec(t, e, poolKey)["ipipMode"]; got != "Never" {
		t.Errorf("after get | sed | apply, stored ipipMode is %v", got)
	}
	// The same manifest again is stale: its resourceVersion is the one before the apply.
	r = ctl(t, e, edited, "apply", "-f", "-")
	if r.code != 1 || !strings.Contains(r.stderr, "is out of date") {
		t.Errorf("stale apply: exit %d, %s", r.code, r.stderr)
	}

	// Article 001: calicoctl patch to CrossSubnet.
	r = ctl(t, e, "", "patch", "ippool", "default-ipv4-ippool", "-p", `{"spec":{"ipipMode":"CrossSubnet"}}`).must(t)
	if r.stdout != "Successfully patched 1 'IPPool' resource\n" {
		t.Errorf("patch said %q", r.stdout)
	}
	if got := storedSpec(t, e, poolKey)["ipipMode"]; got != "CrossSubnet" {
		t.Errorf("after patch, stored ipipMode is %v", got)
	}
	r = ctl(t, e, "", "get", "ippools", "-o", "wide").must(t)
	if !strings.Contains(r.stdout, "CrossSubnet") {
		t.Errorf("get -o wide after patch:\n%s", r.stdout)
	}

	// Article 004: natOutgoing off through the same pipeline.
	yamlOut = ctl(t, e, "", "get", "ippool", "default-ipv4-ippool", "-o", "yaml").must(t).stdout
	ctl(t, e, strings.ReplaceAll(yamlOut, "natOutgoing: true", "natOutgoing: false"), "apply", "-f", "-").must(t)
	if got := storedSpec(t, e, poolKey)["natOutgoing"]; got != nil && got != false {
		t.Errorf("after natOutgoing: false, stored %v", got)
	}

	// Article 003: the manifest without metadata applies over the stored pool unchanged.
	ctl(t, e, "", "apply", "-f", writeFile(t, article003)).must(t)
	if got := storedSpec(t, e, poolKey); got["ipipMode"] != "CrossSubnet" || got["natOutgoing"] != true {
		t.Errorf("after article 003's manifest, stored %v", got)
	}
	// Article 000's manifest carries the resourceVersion of its own cluster: here it is
	// stale, and refused as calicoctl refuses it.
	r = ctl(t, e, "", "apply", "-f", writeFile(t, article000))
	if r.code != 1 || !strings.Contains(r.stderr, "resourceVersion 523311 is out of date") {
		t.Errorf("article 000 over an existing pool: exit %d, %s", r.code, r.stderr)
	}
}

// Article 000's manifest applies unchanged to a cluster where the pool does not exist yet:
// the uid, creationTimestamp and resourceVersion it carries are not stored.
func TestArticleManifestFromGetCreates(t *testing.T) {
	e := etcdtest.Start(t)
	ctl(t, e, "", "apply", "-f", writeFile(t, article000)).must(t)
	value := stored(t, e, poolKey)
	if strings.Contains(value, "e060c782") || strings.Contains(value, "2022-11-21") || strings.Contains(value, "523311") {
		t.Errorf("the manifest's metadata was stored: %s", value)
	}
}

// What tabbyctl stores is the JSON Calico stores (SPEC §2).
func TestStoredJSONIsCalicos(t *testing.T) {
	e := etcdtest.Start(t)
	manifest := `apiVersion: projectcalico.org/v3
kind: IPPool
metadata:
  name: default-ipv4-ippool
spec:
  cidr: 192.168.0.0/16
  ipipMode: Always
  natOutgoing: true
`
	ctl(t, e, manifest, "create", "-f", "-").must(t)
	got := stored(t, e, poolKey)
	want := regexp.MustCompile(`^\{"kind":"IPPool","apiVersion":"projectcalico.org/v3","metadata":\{"name":"default-ipv4-ippool","uid":"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}","creationTimestamp":"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ"\},"spec":\{"cidr":"192.168.0.0/16","ipipMode":"Always","natOutgoing":true,"blockSize":26,"nodeSelector":"all\(\)"\}\}$`)
	if !want.MatchString(got) {
		t.Errorf("stored\n%s\nis not Calico's form", got)
	}
}

// A pool written straight into etcd in Calico's form is read back.
func TestReadsPoolWrittenWithEtcdctl(t *testing.T) {
	e := etcdtest.Start(t)
	const calico = `{"kind":"IPPool","apiVersion":"projectcalico.org/v3","metadata":{"name":"default-ipv4-ippool","uid":"e060c782-2c8f-4a05-84ae-2ca39b0c0038","creationTimestamp":"2022-11-21T02:48:58Z"},"spec":{"cidr":"192.168.0.0/16","ipipMode":"Always","natOutgoing":true,"blockSize":26,"nodeSelector":"all()"}}`
	if _, err := e.Raw().Put(context.Background(), poolKey, calico); err != nil {
		t.Fatal(err)
	}
	r := ctl(t, e, "", "get", "ippool", "-o", "wide").must(t)
	if !regexp.MustCompile(`\ndefault-ipv4-ippool\s+192\.168\.0\.0/16\s+true\s+Always\s+Never\s+false\s+false\s+all\(\)\s+Automatic\n$`).MatchString(r.stdout) {
		t.Errorf("get -o wide:\n%s", r.stdout)
	}
	r = ctl(t, e, "", "get", "ippool", "default-ipv4-ippool", "-o", "json").must(t)
	var p struct {
		Metadata map[string]string `json:"metadata"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &p); err != nil {
		t.Fatalf("get -o json: %v\n%s", err, r.stdout)
	}
	if p.Metadata["uid"] != "e060c782-2c8f-4a05-84ae-2ca39b0c0038" || p.Metadata["creationTimestamp"] != "2022-11-21T02:48:58Z" || p.Metadata["resourceVersion"] == "" {
		t.Errorf("metadata %v", p.Metadata)
	}
}

func TestRefusedManifestsStoreNothing(t *testing.T) {
	e := etcdtest.Start(t)
	ctl(t, e, "", "apply", "-f", "../../configs/examples/ippool-default.yaml").must(t)
	before := allKeys(t, e)
	pool := func(name, spec string) string {
		return "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata:\n  name: " + name + "\nspec:\n" + spec
	}
	tests := []struct {
		name, manifest, want string
		verbs                []string // default: apply, create and replace
	}{
		{"both encapsulations", pool("p1", "  cidr: 10.1.0.0/16\n  ipipMode: Always\n  vxlanMode: Always\n"), `IPPool "p1": spec.vxlanMode: ipipMode (Always) and vxlanMode (Always) cannot both be enabled`, nil},
		{"blockSize 19", pool("p1", "  cidr: 10.1.0.0/16\n  blockSize: 19\n"), `IPPool "p1": spec.blockSize: 19 is outside 20..32`, nil},
		{"blockSize 33", pool("p1", "  cidr: 10.1.0.0/16\n  blockSize: 33\n"), `IPPool "p1": spec.blockSize: 33 is outside 20..32`, nil},
		{"smaller than a block", pool("p1", "  cidr: 10.1.0.0/28\n"), `IPPool "p1": spec.blockSize: the pool 10.1.0.0/28 is smaller than one block (/26)`, nil},
		{"host bits", pool("p1", "  cidr: 10.1.0.1/16\n"), `IPPool "p1": spec.cidr: 10.1.0.1/16 has host bits set`, nil},
		{"overlap with a pool", pool("p1", "  cidr: 192.168.128.0/17\n"), `IPPool "p1": spec.cidr: 192.168.128.0/17 overlaps IPPool "default-ipv4-ippool" (192.168.0.0/16)`, []string{"apply", "create"}},
		{"overlap with link-local", pool("p1", "  cidr: 169.254.0.0/16\n"), `IPPool "p1": spec.cidr: 169.254.0.0/16 overlaps the link-local range`, nil},
		{"cidr change", pool("default-ipv4-ippool", "  cidr: 10.1.0.0/16\n"), `IPPool "default-ipv4-ippool": spec.cidr: cannot change from 192.168.0.0/16 to 10.1.0.0/16`, []string{"apply", "replace"}},
		{"blockSize change", pool("default-ipv4-ippool", "  cidr: 192.168.0.0/16\n  blockSize: 24\n"), `IPPool "default-ipv4-ippool": spec.blockSize: cannot change from 26 to 24`, []string{"apply", "replace"}},
		{"unknown kind", "apiVersion: projectcalico.org/v3\nkind: NetworkPolicy\nmetadata:\n  name: x\n", `unknown kind "NetworkPolicy"`, nil},
		{"malformed YAML", pool("p1", "  cidr: [10.1.0.0/16\n"), "malformed YAML", nil},
		{"bad selector", pool("p1", "  cidr: 10.1.0.0/16\n  nodeSelector: zone = 'a'\n"), `IPPool "p1": spec.nodeSelector: selector "zone = 'a'": at position 6`, nil},
		{"unknown field", pool("p1", "  cidr: 10.1.0.0/16\n  ipipmode: Always\n"), `IPPool "p1": unknown field "spec.ipipmode" (did you mean "ipipMode"?)`, nil},
		{"one bad document of two", pool("p1", "  cidr: 10.1.0.0/16\n") + "---\n" + pool("p2", "  cidr: 10.2.0.0/16\n  blockSize: 19\n"), `IPPool "p2": spec.blockSize: 19 is outside 20..32`, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			verbs := tt.verbs
			if verbs == nil {
				verbs = []string{"apply", "create", "replace"}
			}
			for _, verb := range verbs {
				r := ctl(t, e, tt.manifest, verb, "-f", "-")
				if r.code != 1 || !strings.Contains(r.stderr, tt.want) {
					t.Errorf("%s: exit %d, stderr\n%s\nwant exit 1 and %q", verb, r.code, r.stderr, tt.want)
				}
				if got := allKeys(t, e); got != before {
					t.Fatalf("%s wrote to etcd:\n%s\nwas\n%s", verb, got, before)
				}
			}
		})
	}
	// A patch that breaks the rules is refused too.
	r := ctl(t, e, "", "patch", "ippool", "default-ipv4-ippool", "-p", `{"spec":{"vxlanMode":"CrossSubnet"}}`)
	if r.code != 1 || !strings.Contains(r.stderr, "cannot both be enabled") || allKeys(t, e) != before {
		t.Errorf("patch to both encapsulations: exit %d, %s", r.code, r.stderr)
	}
}

// Two operators apply edits of the same version at once: one wins, the other is told its
// version is out of date, and the stored pool is the winner's.
func TestRacingApplies(t *testing.T) {
	e := etcdtest.Start(t)
	ctl(t, e, "", "apply", "-f", "../../configs/examples/ippool-default.yaml").must(t)
	base := ctl(t, e, "", "get", "ippool", "default-ipv4-ippool", "-o", "yaml").must(t).stdout
	modes := []string{"Never", "CrossSubnet"}
	results := make([]result, len(modes))
	var wg sync.WaitGroup
	for i, mode := range modes {
		manifest := strings.ReplaceAll(base, "ipipMode: Always", "ipipMode: "+mode)
		wg.Go(func() { results[i] = ctl(t, e, manifest, "apply", "-f", "-") })
	}
	wg.Wait()
	winners := 0
	winner := ""
	for i, r := range results {
		switch {
		case r.code == 0:
			winners++
			winner = modes[i]
		case r.code != 1 || !strings.Contains(r.stderr, "out of date"):
			t.Errorf("loser: exit %d, %s", r.code, r.stderr)
		}
	}
	if winners != 1 {
		t.Fatalf("%d applies won: %+v", winners, results)
	}
	if got := storedSpec(t, e, poolKey)["ipipMode"]; got != winner {
		t.Errorf("stored ipipMode %v, the winner wrote %s", got, winner)
	}
}

func TestExampleResources(t *testing.T) {
	e := etcdtest.Start(t)
	examples, err := filepath.Glob("../../configs/examples/*.yaml")
	if err != nil || len(examples) < 3 {
		t.Fatalf("examples: %v %v", examples, err)
	}
	for _, f := range examples {
		ctl(t, e, "", "apply", "-f", f).must(t)
	}
	r := ctl(t, e, "", "get", "bgpconfig").must(t)
	if !regexp.MustCompile(`^NAME\s+LOGSEVERITY\s+MESHENABLED\s+ASNUMBER\s*\ndefault\s+Info\s+true\s+64512\s*\n$`).MatchString(r.stdout) {
		t.Errorf("get bgpconfig:\n%s", r.stdout)
	}
	r = ctl(t, e, "", "get", "bgppeers").must(t)
	if !regexp.MustCompile(`^NAME\s+PEERIP\s+NODE\s+ASN\s*\nrouter-subnet-a\s+10\.30\.0\.1\s+subnet == 'a'\s+65000\s*\nrouter-subnet-b\s+10\.30\.1\.1\s+subnet == 'b'\s+65000\s*\n$`).MatchString(r.stdout) {
		t.Errorf("get bgppeers:\n%s", r.stdout)
	}
	node := `{"apiVersion":"projectcalico.org/v3","kind":"Node","metadata":{"name":"worker-1","labels":{"subnet":"a"}},"spec":{"bgp":{"ipv4Address":"10.30.0.206/24","ipv4IPIPTunnelAddr":"192.168.1.0"}}}`
	ctl(t, e, node, "create", "-f", "-").must(t)
	r = ctl(t, e, "", "get", "nodes", "-o", "wide").must(t)
	// calicoctl v3.30's columns: the IPV6 column is there while empty.
	if !regexp.MustCompile(`^NAME\s+ASN\s+IPV4\s+IPV6\n+worker-1\s+\(64512\)\s+10\.30\.0\.206/24\s*\n$`).MatchString(r.stdout) {
		t.Errorf("get nodes -o wide:\n%s", r.stdout)
	}
	// A list from get -o yaml applies back.
	list := ctl(t, e, "", "get", "bgppeer", "-o", "yaml").must(t).stdout
	if !strings.Contains(list, "kind: BGPPeerList") {
		t.Errorf("get -o yaml of a kind is not a list:\n%s", list)
	}
	r = ctl(t, e, list, "apply", "-f", "-").must(t)
	if r.stdout != "Successfully applied 2 'BGPPeer' resource(s)\n" {
		t.Errorf("apply of the list said %q", r.stdout)
	}

	// Delete by name, by file, and what is missing.
	ctl(t, e, "", "delete", "bgppeer", "router-subnet-a").must(t)
	r = ctl(t, e, "", "delete", "bgppeer", "router-subnet-a")
	if r.code != 1 || !strings.Contains(r.stderr, `BGPPeer "router-subnet-a" does not exist`) {
		t.Errorf("second delete: exit %d %s", r.code, r.stderr)
	}
	r = ctl(t, e, "", "delete", "--skip-not-exists", "-f", "../../configs/examples/bgppeer-router.yaml").must(t)
	if !strings.Contains(r.stdout, "Successfully deleted 1 'BGPPeer' resource(s)") || !strings.Contains(r.stdout, "Skipped 1") {
		t.Errorf("delete -f with one missing:\n%s", r.stdout)
	}
	r = ctl(t, e, "", "get", "bgppeer", "router-subnet-b")
	if r.code != 1 || !strings.Contains(r.stderr, "resource does not exist: BGPPeer(router-subnet-b)") {
		t.Errorf("get of a deleted peer: exit %d %s", r.code, r.stderr)
	}
	r = ctl(t, e, "", "patch", "bgppeer", "gone", "-p", `{}`, "--skip-not-exists").must(t)
	if !strings.Contains(r.stdout, "nothing patched") {
		t.Errorf("patch --skip-not-exists: %q", r.stdout)
	}
	r = ctl(t, e, node, "create", "-f", "-")
	if r.code != 1 || !strings.Contains(r.stderr, "already exists") {
		t.Errorf("second create: exit %d %s", r.code, r.stderr)
	}
	ctl(t, e, node, "create", "--skip-exists", "-f", "-").must(t)
}

func TestUsageErrors(t *testing.T) {
	tests := []struct {
		args []string
		want string
	}{
		{[]string{}, "needs a command"},
		{[]string{"bogus"}, `unknown command "bogus" for "tabbyctl"`},
		{[]string{"gte"}, "did you mean get?"},
		{[]string{"get"}, "requires at least 1 arg"},
		{[]string{"get", "--bogus"}, "unknown flag: --bogus"},
		{[]string{"get", "pods"}, `resource type "pods" is not supported`},
		{[]string{"get", "ippool", "-o", "table"}, `-o "table" is not one of ps, wide, yaml, json`},
		{[]string{"apply"}, "required flag -f"},
		{[]string{"apply", "-f", "x.yaml", "extra"}, `unexpected argument "extra"`},
		{[]string{"delete"}, "give -f FILE, or a kind and at least one name"},
		{[]string{"delete", "ippool"}, "give -f FILE, or a kind and at least one name"},
		{[]string{"patch", "ippool", "p"}, "required flag -p"},
		{[]string{"patch", "ippool"}, "accepts 2 arg(s)"},
		{[]string{"version", "now"}, "unknown command"},
		{[]string{"--endpoints", "10.0.0.1:2379", "get", "ippool"}, `--endpoints: "10.0.0.1:2379" is not an etcd URL`},
		{[]string{"--config", "/nonexistent/tabbyctl.yaml", "get", "ippool"}, "configuration file /nonexistent/tabbyctl.yaml"},
	}
	for _, tt := range tests {
		var out, errOut bytes.Buffer
		code := run(context.Background(), tt.args, strings.NewReader(""), &out, &errOut)
		if code != 2 || !strings.Contains(errOut.String(), tt.want) {
			t.Errorf("tabbyctl %v: exit %d, stderr %q; want exit 2 and %q", tt.args, code, errOut.String(), tt.want)
		}
	}
	r := ctl(t, nil, "", "version").must(t)
	if !strings.HasPrefix(r.stdout, "tabbyctl ") {
		t.Errorf("version: %q", r.stdout)
	}
	r = ctl(t, nil, "", "--help").must(t)
	if !strings.Contains(r.stdout, "apply") || !strings.Contains(r.stdout, "patch") {
		t.Errorf("--help:\n%s", r.stdout)
	}
}

// etcd settings come from the flag, the environment or the configuration file.
func TestEtcdSettings(t *testing.T) {
	e := etcdtest.Start(t)
	ctl(t, e, "", "apply", "-f", "../../configs/examples/ippool-default.yaml").must(t)
	dir := t.TempDir()

	cfg := filepath.Join(dir, "tabbyctl.yaml")
	os.WriteFile(cfg, []byte("etcd:\n  endpoints: [\""+e.Endpoint+"\"]\n  prefix: /calico\n"), 0o600)
	var out, errOut bytes.Buffer
	if code := run(context.Background(), []string{"--config", cfg, "get", "ippool"}, nil, &out, &errOut); code != 0 || !strings.Contains(out.String(), "default-ipv4-ippool") {
		t.Errorf("from the configuration file: exit %d %s %s", code, out.String(), errOut.String())
	}

	// Another prefix is another datastore.
	other := filepath.Join(dir, "other.yaml")
	os.WriteFile(other, []byte("etcd:\n  endpoints: [\""+e.Endpoint+"\"]\n  prefix: /elsewhere\n"), 0o600)
	out.Reset()
	if code := run(context.Background(), []string{"--config", other, "get", "ippool"}, nil, &out, &errOut); code != 0 || strings.Contains(out.String(), "default-ipv4-ippool") {
		t.Errorf("with prefix /elsewhere: exit %d %s", code, out.String())
	}

	bad := filepath.Join(dir, "bad.yaml")
	os.WriteFile(bad, []byte("etcd:\n  endpoint: http://127.0.0.1:2379\n"), 0o600)
	errOut.Reset()
	if code := run(context.Background(), []string{"--config", bad, "get", "ippool"}, nil, &out, &errOut); code != 2 || !strings.Contains(errOut.String(), `unknown key "etcd.endpoint"`) {
		t.Errorf("unknown key: exit %d %s", code, errOut.String())
	}

	empty := filepath.Join(dir, "empty.yaml")
	os.WriteFile(empty, nil, 0o600)
	t.Setenv("TABBY_ETCD_ENDPOINTS", "http://127.0.0.1:1,"+e.Endpoint)
	out.Reset()
	if code := run(context.Background(), []string{"--config", empty, "get", "ippool"}, nil, &out, &errOut); code != 0 || !strings.Contains(out.String(), "default-ipv4-ippool") {
		t.Errorf("from TABBY_ETCD_ENDPOINTS: exit %d %s %s", code, out.String(), errOut.String())
	}
}

// A command group (as "node" and "ipam" are) refuses to run alone or with an unknown
// subcommand, and subcommands see the global options.
func TestGroupCommandAndGlobalOptions(t *testing.T) {
	opts := &globalOptions{}
	root := newRootCommand(opts)
	leaf := &cobra.Command{
		Use:  "leaf",
		Args: usageArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			fmt.Fprintln(cmd.OutOrStdout(), opts.socketPath())
			return nil
		},
	}
	root.AddCommand(newGroupCommand("grp", "a group", leaf))
	for _, tt := range []struct {
		args   []string
		code   int
		output string
	}{
		{[]string{"grp", "leaf"}, 0, "/run/tabby/tabbyd.sock\n"},
		{[]string{"--socket", "/tmp/other.sock", "grp", "leaf"}, 0, "/tmp/other.sock\n"},
		{[]string{"grp"}, 2, "tabbyctl grp needs a command"},
		{[]string{"grp", "lef"}, 2, `unknown command "lef" for "tabbyctl grp" (did you mean leaf?)`},
		{[]string{"grp", "leaf", "extra"}, 2, `unknown command "extra"`},
	} {
		var out, errOut bytes.Buffer
		code := execute(context.Background(), root, tt.args, nil, &out, &errOut)
		if code != tt.code || !strings.Contains(out.String()+errOut.String(), tt.output) {
			t.Errorf("tabbyctl %v: exit %d, output %q %q; want %d and %q", tt.args, code, out.String(), errOut.String(), tt.code, tt.output)
		}
	}
}
