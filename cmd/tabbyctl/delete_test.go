package main

import (
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/tabby-net/tabby/datastore/ipam"
)

// createNode stores a Node the way an operator (or tabbyd) would.
func createNode(t *testing.T, env *ipamEnv, name, addr string) {
	t.Helper()
	node := `{"apiVersion":"projectcalico.org/v3","kind":"Node","metadata":{"name":"` + name + `"},"spec":{"bgp":{"ipv4Address":"` + addr + `"}}}`
	ctl(t, env.e, node, "create", "-f", "-").must(t)
}

// Deleting a Node releases its addresses and blocks first, as calicoctl does, and leaves
// the other nodes' alone.
func TestDeleteNodeReleasesItsIPAM(t *testing.T) {
	env := newIPAMEnv(t)
	createNode(t, env, "worker-1", "10.30.0.11/24")
	createNode(t, env, "worker-2", "10.30.0.12/24")
	w1 := []netip.Addr{env.assign(t, "tabby.a", "worker-1", nil), env.assign(t, "tabby.b", "worker-1", nil)}
	tunnel, err := env.alloc.EnsureTunnelAddr(env.ctx, "worker-1", ipam.TunnelIPIP, []netip.Prefix{netip.MustParsePrefix("10.96.0.0/24")})
	if err != nil {
		t.Fatal(err)
	}
	w1 = append(w1, tunnel)
	w2 := env.assign(t, "tabby.c", "worker-2", nil)

	r := ctl(t, env.e, "", "delete", "node", "worker-1").must(t)
	if want := "Released 3 addresses and 2 blocks of node worker-1.\nSuccessfully deleted 1 'Node' resource(s)\n"; r.stdout != want {
		t.Errorf("delete node printed\n%q\nwant\n%q", r.stdout, want)
	}
	if stored(t, env.e, env.e.Client.Keys.Resource("Node", "worker-1")) != "" {
		t.Error("the Node is still stored")
	}
	for _, ip := range w1 {
		if al, err := env.alloc.AllocationOf(env.ctx, ip); !errors.Is(err, ipam.ErrNotAssigned) {
			t.Errorf("worker-1's address %s still allocated: %+v, %v", ip, al, err)
		}
	}
	if al, err := env.alloc.AllocationOf(env.ctx, w2); err != nil || al.Handle != "tabby.c" || al.BlockHost != "worker-2" {
		t.Errorf("worker-2's address %s: %+v, %v", w2, al, err)
	}
	if r := ctl(t, env.e, "", "ipam", "check"); r.code != 0 || !strings.Contains(r.stdout, "Found 1 blocks, 1 allocations, 1 handles, 1 block affinities.") {
		t.Errorf("ipam check after delete node: exit %d\n%s", r.code, r.stdout)
	}

	// The Node is gone: an error naming it, and nothing released.
	r = ctl(t, env.e, "", "delete", "node", "worker-1")
	if r.code != 1 || r.stdout != "" || !strings.Contains(r.stderr, `Failed to delete 'Node' resource: Node "worker-1" does not exist`) {
		t.Errorf("delete of a missing node: exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
	r = ctl(t, env.e, "", "delete", "--skip-not-exists", "node", "worker-1").must(t)
	if !strings.Contains(r.stdout, "Skipped 1 resource(s)") || strings.Contains(r.stdout, "Released") {
		t.Errorf("delete --skip-not-exists of a missing node:\n%s", r.stdout)
	}
}

// delete -f with a Node: a stale resourceVersion is refused before any IPAM is touched.
func TestDeleteNodeFromFile(t *testing.T) {
	env := newIPAMEnv(t)
	createNode(t, env, "worker-2", "10.30.0.12/24")
	ip := env.assign(t, "tabby.c", "worker-2", nil)
	manifest := ctl(t, env.e, "", "get", "node", "worker-2", "-o", "yaml").must(t).stdout
	if !strings.Contains(manifest, "resourceVersion:") {
		t.Fatalf("get -o yaml has no resourceVersion:\n%s", manifest)
	}
	ctl(t, env.e, "", "patch", "node", "worker-2", "-p", `{"metadata":{"labels":{"rack":"r1"}}}`).must(t)

	before := allKeys(t, env.e)
	r := ctl(t, env.e, manifest, "delete", "-f", "-")
	if r.code != 1 || !strings.Contains(r.stderr, `Node "worker-2": resourceVersion`) || !strings.Contains(r.stderr, "is out of date") {
		t.Fatalf("delete -f of a stale Node: exit %d, stderr %q", r.code, r.stderr)
	}
	if after := allKeys(t, env.e); after != before {
		t.Fatalf("a refused delete wrote to etcd:\n%s\nwas\n%s", after, before)
	}

	manifest = ctl(t, env.e, "", "get", "node", "worker-2", "-o", "yaml").must(t).stdout
	r = ctl(t, env.e, manifest, "delete", "-f", "-").must(t)
	if want := "Released 1 address and 1 block of node worker-2.\nSuccessfully deleted 1 'Node' resource(s)\n"; r.stdout != want {
		t.Errorf("delete -f printed\n%q\nwant\n%q", r.stdout, want)
	}
	if _, err := env.alloc.AllocationOf(env.ctx, ip); !errors.Is(err, ipam.ErrNotAssigned) {
		t.Errorf("worker-2's address %s still allocated: %v", ip, err)
	}
	if r := ctl(t, env.e, "", "ipam", "check"); r.code != 0 || !strings.Contains(r.stdout, "Found 0 blocks, 0 allocations, 0 handles, 0 block affinities.") {
		t.Errorf("ipam check: exit %d\n%s", r.code, r.stdout)
	}
	r = ctl(t, env.e, manifest, "delete", "-f", "-")
	if r.code != 1 || !strings.Contains(r.stderr, `Node "worker-2" does not exist`) {
		t.Errorf("second delete -f: exit %d, stderr %q", r.code, r.stderr)
	}
}

func TestDescribeNodeRelease(t *testing.T) {
	for _, tc := range []struct {
		r    ipam.NodeRelease
		want string
	}{
		{ipam.NodeRelease{}, "Released 0 addresses and 0 blocks of node n."},
		{ipam.NodeRelease{Addresses: 1, BlocksDeleted: 1}, "Released 1 address and 1 block of node n."},
		{ipam.NodeRelease{Addresses: 5, BlocksDeleted: 1, BlocksKept: 1},
			"Released 5 addresses and 2 blocks of node n. 1 block still holds addresses other nodes borrowed and stays, affine to no node."},
		{ipam.NodeRelease{Addresses: 2, BlocksKept: 2},
			"Released 2 addresses and 2 blocks of node n. 2 blocks still hold addresses other nodes borrowed and stay, affine to no node."},
	} {
		if got := describeNodeRelease("n", tc.r); got != tc.want {
			t.Errorf("describeNodeRelease(%+v) = %q, want %q", tc.r, got, tc.want)
		}
	}
}
