package main

import (
	"strings"
	"testing"

	"github.com/tabby-net/tabby/datastore/etcdtest"
)

// calicoctl label's three forms and its refusals, with its messages.
func TestLabel(t *testing.T) {
	e := etcdtest.Start(t)
	ctl(t, e, `{"apiVersion":"projectcalico.org/v3","kind":"Node","metadata":{"name":"w1"},"spec":{"bgp":{"ipv4Address":"10.0.0.1/24"}}}`, "create", "-f", "-").must(t)
	for _, step := range []struct {
		args   []string
		code   int
		stdout string
		stderr string
	}{
		{[]string{"label", "nodes", "w1", "rack=r1"}, 0, "Successfully set label rack on nodes w1\n", ""},
		{[]string{"label", "nodes", "w1", "rack=r2"}, 1, "", "key rack is already present. please use '--overwrite'"},
		{[]string{"label", "nodes", "w1", "rack=r2", "--overwrite"}, 0, "Successfully updated label rack on nodes w1\n", ""},
		{[]string{"label", "nodes", "w1", "rack", "--remove"}, 0, "Successfully removed label rack from nodes w1\n", ""},
		{[]string{"label", "nodes", "w1", "rack", "--remove"}, 1, "", "cannot remove label of nodes w1, key rack does not exist"},
		{[]string{"label", "nodes", "w1", "Bad Key=x"}, 1, "", `metadata.labels["Bad Key"]`},
		{[]string{"label", "nodes", "nobody", "a=b"}, 1, "", `does not exist`},
		{[]string{"label", "nodes", "w1", "novalue"}, 2, "", "KEY=VALUE"},
	} {
		r := ctl(t, e, "", step.args...)
		if r.code != step.code || r.stdout != step.stdout || !strings.Contains(r.stderr, step.stderr) {
			t.Errorf("%s: code %d, stdout %q, stderr %q; want code %d, stdout %q, stderr containing %q",
				strings.Join(step.args, " "), r.code, r.stdout, r.stderr, step.code, step.stdout, step.stderr)
		}
	}
	if y := ctl(t, e, "", "get", "node", "w1", "-o", "yaml").must(t).stdout; strings.Contains(y, "rack") {
		t.Errorf("the removed label is still there:\n%s", y)
	}
}

// ipam configure writes Calico's IPAM config key with Calico's checks; the configuration
// reads back as the IPAMConfiguration kind.
func TestIPAMConfigure(t *testing.T) {
	e := etcdtest.Start(t)
	r := ctl(t, e, "", "ipam", "configure", "--strictaffinity=true", "--max-blocks-per-host=21").must(t)
	if r.stdout != "Successfully set StrictAffinity to: true\nSuccessfully set MaxBlocksPerHost to: 21\n" {
		t.Errorf("ipam configure said %q", r.stdout)
	}
	if r := ctl(t, e, "", "get", "ipamconfig", "-o", "wide").must(t); !strings.Contains(r.stdout, "default   true             21                 true") {
		t.Errorf("get ipamconfig -o wide:\n%s", r.stdout)
	}
	const table = `+--------------------+-------+
|      PROPERTY      | VALUE |
+--------------------+-------+
| StrictAffinity     | true  |
| AutoAllocateBlocks | true  |
| MaxBlocksPerHost   |    21 |
+--------------------+-------+
`
	if r := ctl(t, e, "", "ipam", "show", "--show-configuration").must(t); r.stdout != table {
		t.Errorf("ipam show --show-configuration:\n%s\nwant\n%s", r.stdout, table)
	}
	r = ctl(t, e, "", "ipam", "configure", "--strictaffinity=false")
	if r.code != 1 || !strings.Contains(r.stderr, "spec.maxBlocksPerHost") {
		t.Errorf("strict affinity off with a limit: code %d, stderr %q; want a refusal naming spec.maxBlocksPerHost", r.code, r.stderr)
	}
	if r := ctl(t, e, "", "ipam", "configure", "--strictaffinity=maybe"); r.code != 2 {
		t.Errorf("--strictaffinity=maybe: code %d, want 2", r.code)
	}
}

// A field tabby stores but does not act on is reported, one line each, on stderr.
func TestStoredOnlyFieldsAreReported(t *testing.T) {
	e := etcdtest.Start(t)
	peer := `{"apiVersion":"projectcalico.org/v3","kind":"BGPPeer","metadata":{"name":"tor"},"spec":{"peerIP":"10.0.0.1","asNumber":65001,"ttlSecurity":1,"sourceAddress":"None"}}`
	r := ctl(t, e, peer, "apply", "-f", "-").must(t)
	want := "BGPPeer \"tor\": stored; tabby does not act on spec.sourceAddress (None)\nBGPPeer \"tor\": stored; tabby does not act on spec.ttlSecurity\n"
	if r.stderr != want {
		t.Errorf("apply stderr %q, want %q", r.stderr, want)
	}
	if y := ctl(t, e, "", "get", "bgppeer", "tor", "-o", "yaml").must(t).stdout; !strings.Contains(y, "ttlSecurity: 1") || !strings.Contains(y, "sourceAddress: None") {
		t.Errorf("get -o yaml does not show the stored fields:\n%s", y)
	}
	r = ctl(t, e, "", "patch", "bgppeer", "tor", "-p", `{"spec":{"ttlSecurity":null}}`).must(t)
	if r.stderr != "BGPPeer \"tor\": stored; tabby does not act on spec.sourceAddress (None)\n" {
		t.Errorf("patch stderr %q", r.stderr)
	}
	lb := "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {name: lb}\nspec: {cidr: 10.90.0.0/24, allowedUses: [LoadBalancer]}\n"
	if r := ctl(t, e, lb, "create", "-f", "-").must(t); !strings.Contains(r.stderr, `IPPool "lb": stored; tabby does not act on spec.allowedUses (LoadBalancer`) {
		t.Errorf("LoadBalancer pool: stderr %q", r.stderr)
	}
}
