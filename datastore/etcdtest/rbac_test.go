package etcdtest_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/tabby-net/tabby/datastore"
	"github.com/tabby-net/tabby/datastore/etcdtest"
	"github.com/tabby-net/tabby/datastore/ipam"
)

// The roles of configs/etcd/rbac.sh on a three-member TLS cluster that requires client
// certificates, set up by the script itself through etcdctl: each component can do what
// it needs, and a write its role lacks is refused with an error naming the key, writing
// nothing.
func TestRBACRoles(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a three-member etcd cluster and runs etcdctl (a few seconds): not with -short; make test runs it, and the single-member etcd tests of datastore still run")
	}
	c := etcdtest.StartCluster(t, 3)
	rbac := etcdtest.RepoFile(t, "configs/etcd/rbac.sh")
	for _, args := range [][]string{{"setup"}, {"node", "n1"}, {"node", "n2"}} {
		if out, err := c.Command(t, "root", nil, rbac, args...); err != nil {
			t.Fatalf("rbac.sh: %v", err)
		} else {
			t.Logf("rbac.sh %s: %s", strings.Join(args, " "), strings.TrimSpace(out))
		}
	}
	// The script is idempotent: an operator may run it again.
	if _, err := c.Command(t, "root", nil, rbac, "setup"); err != nil {
		t.Fatalf("rbac.sh setup a second time: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	res := "/calico/resources/v3/projectcalico.org/"

	admin := c.Client(t, "tabbyctl")
	pool := datastore.NewIPPool("default-ipv4-ippool")
	pool.Spec = datastore.IPPoolSpec{CIDR: "192.168.0.0/16", VXLANMode: "Always", BlockSize: 26}
	if _, err := admin.CreateIPPool(ctx, pool); err != nil {
		t.Fatalf("tabbyctl's role cannot create a pool: %v", err)
	}

	// tabbyd of n1: writes its own Node, reads the whole root, not other Nodes, not pools.
	n1 := c.Client(t, "tabbyd-n1")
	if _, err := n1.ModifyNode(ctx, "n1", func(n *datastore.Node) error {
		n.Metadata.Labels = map[string]string{"rack": "a"}
		return nil
	}); err != nil {
		t.Fatalf("tabbyd-n1 cannot write its own Node: %v", err)
	}
	if _, _, err := n1.List(ctx, "/calico/"); err != nil {
		t.Fatalf("tabbyd-n1 cannot list the key root its syncer reads: %v", err)
	}
	_, err := n1.ModifyNode(ctx, "n2", func(n *datastore.Node) error { return nil })
	wantDenied(t, "tabbyd-n1 writing Node n2", err, res+"nodes/n2")
	_, err = n1.CreateIPPool(ctx, datastore.NewIPPool("other"))
	if err == nil || !strings.Contains(err.Error(), "permission denied") {
		// Validation may refuse the empty pool first; write a valid one.
		p := datastore.NewIPPool("other")
		p.Spec = datastore.IPPoolSpec{CIDR: "10.99.0.0/16"}
		_, err = n1.CreateIPPool(ctx, p)
	}
	wantDenied(t, "tabbyd-n1 creating a pool", err, res+"ippools/other")
	if _, err := admin.GetNode(ctx, "n2"); !errors.Is(err, datastore.ErrNotFound) {
		t.Errorf("a refused write left Node n2 behind: %v", err)
	}
	if _, err := admin.GetIPPool(ctx, "other"); !errors.Is(err, datastore.ErrNotFound) {
		t.Errorf("a refused write left pool other behind: %v", err)
	}

	// tabby-cni: assigns addresses, reads pools and nodes, writes no Node.
	cni := c.Client(t, "tabby-cni")
	ip, err := ipam.New(cni, nil).AssignOne(ctx, ipam.AssignArgs{Handle: "tabby.c1", Node: "n1", Use: datastore.UseWorkload})
	if err != nil {
		t.Fatalf("tabby-cni cannot assign an address: %v", err)
	}
	t.Logf("tabby-cni assigned %s", ip)
	_, err = cni.ModifyNode(ctx, "n1", func(n *datastore.Node) error {
		n.Metadata.Labels = map[string]string{"rack": "b"}
		return nil
	})
	wantDenied(t, "tabby-cni writing a Node", err, res+"nodes/n1")

	// A role that may write blocks and affinities but only read handles: the assignment
	// fails naming the handle, and the block holds no address for it.
	for _, args := range [][]string{
		{"role", "add", "nohandles"},
		{"role", "grant-permission", "--prefix=true", "nohandles", "read", "/calico/"},
		{"role", "grant-permission", "--prefix=true", "nohandles", "readwrite", "/calico/ipam/v2/assignment/"},
		{"role", "grant-permission", "--prefix=true", "nohandles", "readwrite", "/calico/ipam/v2/host/"},
		{"user", "add", "nohandles", "--no-password"},
		{"user", "grant-role", "nohandles", "nohandles"},
	} {
		if _, err := c.Etcdctl(t, "root", nil, args...); err != nil {
			t.Fatal(err)
		}
	}
	restricted := ipam.New(c.Client(t, "nohandles"), nil)
	_, err = restricted.AssignOne(ctx, ipam.AssignArgs{Handle: "tabby.c2", Node: "n1", Use: datastore.UseWorkload})
	wantDenied(t, "assigning without handle permission", err, "/calico/ipam/v2/handle/tabby.c2")
	checker := ipam.New(admin, nil)
	if ips, err := checker.IPsByHandle(ctx, "tabby.c2"); err != nil || len(ips) != 0 {
		t.Errorf("the refused assignment left addresses %v (%v)", ips, err)
	}
	rep, err := checker.Check(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !rep.OK() {
		t.Errorf("ipam check after the refused assignment: %+v", rep)
	}
	if rep.Allocations != 1 {
		t.Errorf("allocations: %d, want 1 (tabby.c1's)", rep.Allocations)
	}
}

// wantDenied checks that err is etcd's refusal, typed and naming key.
func wantDenied(t *testing.T, what string, err error, key string) {
	t.Helper()
	if !errors.Is(err, datastore.ErrPermissionDenied) {
		t.Errorf("%s: got %v, want a permission denied error", what, err)
		return
	}
	if !strings.Contains(err.Error(), key) {
		t.Errorf("%s: %q does not name the key %s", what, err, key)
		return
	}
	t.Logf("%s: %v", what, err)
}
