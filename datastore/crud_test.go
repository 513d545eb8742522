package datastore_test

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tabby-net/tabby/datastore"
	"github.com/tabby-net/tabby/datastore/etcdtest"
)

// The pool of SPEC §2, exactly as Calico stores it.
const calicoStoredPool = `{"kind":"IPPool","apiVersion":"projectcalico.org/v3","metadata":{"name":"default-ipv4-ippool","uid":"e060c782-2c8f-4a05-84ae-2ca39b0c0038","creationTimestamp":"2022-11-21T02:48:58Z"},"spec":{"cidr":"192.168.0.0/16","ipipMode":"Always","natOutgoing":true,"blockSize":26,"nodeSelector":"all()"}}`

// keysUnder returns every key under the root, to prove that a refused write stored nothing.
func keysUnder(t *testing.T, e *etcdtest.Etcd) []string {
	t.Helper()
	resp, err := e.Raw().Get(context.Background(), "/calico/", clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		t.Fatal(err)
	}
	var keys []string
	for _, kv := range resp.Kvs {
		keys = append(keys, string(kv.Key))
	}
	return keys
}

func TestCreateStoresCalicosJSON(t *testing.T) {
	t.Parallel()
	e := etcdtest.Start(t)
	ctx := context.Background()
	p := pool("default-ipv4-ippool", "192.168.0.0/16", func(s *datastore.IPPoolSpec) {
		s.IPIPMode = datastore.EncapAlways
		s.NATOutgoing = true
	})
	p.Metadata.ResourceVersion = "523311" // ignored on create, as calicoctl does
	before := time.Now().UTC().Add(-time.Second)
	got, err := e.Client.CreateIPPool(ctx, p)
	if err != nil {
		t.Fatalf("create: %v", err)
	}
	uid, ts := got.Metadata.UID, got.Metadata.CreationTimestamp
	if !regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`).MatchString(uid) {
		t.Errorf("uid %q is not a random UUID", uid)
	}
	created, err := time.Parse(time.RFC3339, ts)
	if err != nil || created.Before(before.Truncate(time.Second)) || created.After(time.Now().Add(time.Second)) || !strings.HasSuffix(ts, "Z") {
		t.Errorf("creationTimestamp %q is not now in RFC 3339 UTC", ts)
	}
	raw, err := e.Raw().Get(ctx, "/calico/resources/v3/projectcalico.org/ippools/default-ipv4-ippool")
	if err != nil || len(raw.Kvs) != 1 {
		t.Fatalf("raw get: %v", err)
	}
	want := `{"kind":"IPPool","apiVersion":"projectcalico.org/v3","metadata":{"name":"default-ipv4-ippool","uid":"` + uid +
		`","creationTimestamp":"` + ts + `"},"spec":{"cidr":"192.168.0.0/16","ipipMode":"Always","natOutgoing":true,"blockSize":26,"nodeSelector":"all()"}}`
	if string(raw.Kvs[0].Value) != want {
		t.Errorf("stored\n%s\nwant\n%s", raw.Kvs[0].Value, want)
	}
	if got.Metadata.ResourceVersion != fmt.Sprint(raw.Kvs[0].ModRevision) {
		t.Errorf("resourceVersion %q, want the ModRevision %d", got.Metadata.ResourceVersion, raw.Kvs[0].ModRevision)
	}
	if got.Spec.VXLANMode != datastore.EncapNever || len(got.Spec.AllowedUses) != 2 {
		t.Errorf("the result has no defaults applied: %+v", got.Spec)
	}
}

func TestReadPoolsWrittenByCalico(t *testing.T) {
	t.Parallel()
	e := etcdtest.Start(t)
	ctx := context.Background()
	put := func(name, value string) int64 {
		resp, err := e.Raw().Put(ctx, "/calico/resources/v3/projectcalico.org/ippools/"+name, value)
		if err != nil {
			t.Fatal(err)
		}
		return resp.Header.Revision
	}
	rev := put("default-ipv4-ippool", calicoStoredPool)
	// As Calico's own tests store one: three fields.
	put("minimal", `{"kind":"IPPool","apiVersion":"projectcalico.org/v3","metadata":{"name":"minimal"},"spec":{"cidr":"10.10.0.0/16","ipipMode":"CrossSubnet","natOutgoing":true}}`)

	p, err := e.Client.GetIPPool(ctx, "default-ipv4-ippool")
	if err != nil {
		t.Fatalf("get: %v", err)
	}
	if p.Metadata.UID != "e060c782-2c8f-4a05-84ae-2ca39b0c0038" || p.Metadata.ResourceVersion != fmt.Sprint(rev) ||
		p.Spec.IPIPMode != datastore.EncapAlways || p.Spec.VXLANMode != datastore.EncapNever || !p.Spec.NATOutgoing {
		t.Errorf("read %+v", p)
	}
	pools, err := e.Client.ListIPPools(ctx)
	if err != nil || len(pools) != 2 {
		t.Fatalf("list: %v %v", pools, err)
	}
	m := pools[1]
	if m.Metadata.Name != "minimal" || m.Spec.BlockSize != 26 || m.Spec.NodeSelector != "all()" || m.Spec.IPIPMode != datastore.EncapCrossSubnet {
		t.Errorf("minimal pool read as %+v", m)
	}
}

func TestRefusedWritesStoreNothing(t *testing.T) {
	t.Parallel()
	e := etcdtest.Start(t)
	ctx := context.Background()
	if _, err := e.Client.CreateIPPool(ctx, pool("existing", "10.1.0.0/16", nil)); err != nil {
		t.Fatal(err)
	}
	stored := keysUnder(t, e)
	tests := []struct {
		name string
		r    datastore.Resource
		want string
	}{
		{"both encapsulations", pool("p1", "10.2.0.0/16", func(s *datastore.IPPoolSpec) { s.IPIPMode = "Always"; s.VXLANMode = "Always" }), "spec.vxlanMode: ipipMode (Always) and vxlanMode (Always) cannot both be enabled"},
		{"blockSize 19", pool("p1", "10.2.0.0/16", func(s *datastore.IPPoolSpec) { s.BlockSize = 19 }), "spec.blockSize: 19 is outside 20..32"},
		{"blockSize 33", pool("p1", "10.2.0.0/16", func(s *datastore.IPPoolSpec) { s.BlockSize = 33 }), "spec.blockSize: 33 is outside 20..32"},
		{"smaller than a block", pool("p1", "10.2.0.0/28", nil), "smaller than one block"},
		{"host bits", pool("p1", "10.2.0.1/16", nil), "has host bits set"},
		{"overlaps another pool", pool("p1", "10.1.128.0/17", nil), `IPPool "p1": spec.cidr: 10.1.128.0/17 overlaps IPPool "existing" (10.1.0.0/16)`},
		{"contains another pool", pool("p1", "10.0.0.0/8", nil), `overlaps IPPool "existing"`},
		{"link-local", pool("p1", "169.254.0.0/16", nil), "overlaps the link-local range"},
		{"bad selector", pool("p1", "10.2.0.0/16", func(s *datastore.IPPoolSpec) { s.NodeSelector = "has(" }), "spec.nodeSelector: selector"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, write := range []func() error{
				func() error { _, err := e.Client.CreateResource(ctx, tt.r); return err },
				func() error { _, err := e.Client.ApplyResource(ctx, tt.r); return err },
			} {
				err := write()
				if err == nil || !errors.Is(err, datastore.ErrInvalid) || !strings.Contains(err.Error(), tt.want) {
					t.Errorf("got %v, want an ErrInvalid containing %q", err, tt.want)
				}
			}
			if got := keysUnder(t, e); fmt.Sprint(got) != fmt.Sprint(stored) {
				t.Errorf("keys after a refused write: %v, want %v", got, stored)
			}
		})
	}
}

func TestImmutablePoolFields(t *testing.T) {
	t.Parallel()
	e := etcdtest.Start(t)
	ctx := context.Background()
	if _, err := e.Client.CreateIPPool(ctx, pool("p", "10.1.0.0/16", nil)); err != nil {
		t.Fatal(err)
	}
	before, _ := e.Client.GetIPPool(ctx, "p")
	for _, tt := range []struct {
		edit func(*datastore.IPPoolSpec)
		want string
	}{
		{func(s *datastore.IPPoolSpec) { s.CIDR = "10.2.0.0/16" }, `IPPool "p": spec.cidr: cannot change from 10.1.0.0/16 to 10.2.0.0/16`},
		{func(s *datastore.IPPoolSpec) { s.BlockSize = 24 }, `IPPool "p": spec.blockSize: cannot change from 26 to 24`},
	} {
		_, err := e.Client.ApplyIPPool(ctx, pool("p", "10.1.0.0/16", tt.edit))
		if err == nil || !errors.Is(err, datastore.ErrInvalid) || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("got %v, want %q", err, tt.want)
		}
	}
	after, _ := e.Client.GetIPPool(ctx, "p")
	if after.Metadata.ResourceVersion != before.Metadata.ResourceVersion {
		t.Error("a refused update wrote the pool")
	}
	// An explicit blockSize equal to the default is no change.
	if _, err := e.Client.ApplyIPPool(ctx, pool("p", "10.1.0.0/16", func(s *datastore.IPPoolSpec) { s.BlockSize = 26; s.NATOutgoing = true })); err != nil {
		t.Errorf("apply with the same blockSize: %v", err)
	}
}

func TestUpdateKeepsIdentityAndChecksResourceVersion(t *testing.T) {
	t.Parallel()
	e := etcdtest.Start(t)
	ctx := context.Background()
	created, err := e.Client.CreateIPPool(ctx, pool("p", "10.1.0.0/16", nil))
	if err != nil {
		t.Fatal(err)
	}
	edit := pool("p", "10.1.0.0/16", func(s *datastore.IPPoolSpec) { s.IPIPMode = "CrossSubnet" })
	edit.Metadata.UID = "someone-else"
	edit.Metadata.CreationTimestamp = "2000-01-01T00:00:00Z"
	edit.Metadata.ResourceVersion = created.Metadata.ResourceVersion
	updated, err := e.Client.UpdateIPPool(ctx, edit)
	if err != nil {
		t.Fatalf("update: %v", err)
	}
	if updated.Metadata.UID != created.Metadata.UID || updated.Metadata.CreationTimestamp != created.Metadata.CreationTimestamp {
		t.Errorf("identity not kept: %+v vs %+v", updated.Metadata, created.Metadata)
	}
	if updated.Spec.IPIPMode != "CrossSubnet" {
		t.Errorf("not updated: %+v", updated.Spec)
	}
	// The same manifest again carries a resourceVersion that is now stale.
	_, err = e.Client.UpdateIPPool(ctx, edit)
	if !errors.Is(err, datastore.ErrConflict) || !strings.Contains(err.Error(), "is out of date") {
		t.Errorf("stale update: got %v, want ErrConflict", err)
	}
	_, err = e.Client.ApplyIPPool(ctx, edit)
	if !errors.Is(err, datastore.ErrConflict) {
		t.Errorf("stale apply: got %v, want ErrConflict", err)
	}
	if _, err := e.Client.UpdateIPPool(ctx, pool("missing", "10.9.0.0/16", nil)); !errors.Is(err, datastore.ErrNotFound) {
		t.Errorf("update of a missing pool: got %v, want ErrNotFound", err)
	}
	if _, err := e.Client.CreateIPPool(ctx, pool("p", "10.1.0.0/16", nil)); !errors.Is(err, datastore.ErrAlreadyExists) {
		t.Errorf("second create: got %v, want ErrAlreadyExists", err)
	}
	if _, err := e.Client.DeleteIPPool(ctx, "p", created.Metadata.ResourceVersion); !errors.Is(err, datastore.ErrConflict) {
		t.Errorf("stale delete: got %v, want ErrConflict", err)
	}
	deleted, err := e.Client.DeleteIPPool(ctx, "p", "")
	if err != nil || deleted.Spec.IPIPMode != "CrossSubnet" {
		t.Errorf("delete: %v %+v", err, deleted)
	}
	if _, err := e.Client.DeleteIPPool(ctx, "p", ""); !errors.Is(err, datastore.ErrNotFound) {
		t.Errorf("second delete: got %v, want ErrNotFound", err)
	}
}

// Two writers read the same version and both update it: exactly one wins, the other gets a
// conflict, and the stored pool is the winner's (no lost update).
func TestRacingWritersOneWins(t *testing.T) {
	t.Parallel()
	e := etcdtest.Start(t)
	ctx := context.Background()
	for round := range 20 {
		name := fmt.Sprintf("p%d", round)
		cur, err := e.Client.CreateIPPool(ctx, pool(name, fmt.Sprintf("10.%d.0.0/16", round), nil))
		if err != nil {
			t.Fatal(err)
		}
		modes := []datastore.EncapMode{datastore.EncapAlways, datastore.EncapCrossSubnet}
		errs := make([]error, 2)
		var wg sync.WaitGroup
		start := make(chan struct{})
		for i, mode := range modes {
			wg.Go(func() {
				edit := datastore.Clone(cur)
				edit.Spec.IPIPMode = mode
				<-start
				_, errs[i] = e.Client.UpdateIPPool(ctx, edit)
			})
		}
		close(start)
		wg.Wait()
		winners := 0
		var winner datastore.EncapMode
		for i, err := range errs {
			switch {
			case err == nil:
				winners++
				winner = modes[i]
			case !errors.Is(err, datastore.ErrConflict):
				t.Fatalf("round %d: loser got %v, want ErrConflict", round, err)
			}
		}
		if winners != 1 {
			t.Fatalf("round %d: %d winners (%v)", round, winners, errs)
		}
		got, _ := e.Client.GetIPPool(ctx, name)
		if got.Spec.IPIPMode != winner {
			t.Fatalf("round %d: stored %s, the winner wrote %s", round, got.Spec.IPIPMode, winner)
		}
	}
}

// Writers racing to create overlapping pools under different names: the overlap check and
// the write are one transaction, so exactly one pool is stored.
func TestRacingOverlappingPools(t *testing.T) {
	t.Parallel()
	e := etcdtest.Start(t)
	ctx := context.Background()
	const writers = 6
	errs := make([]error, writers)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range writers {
		wg.Go(func() {
			<-start
			_, errs[i] = e.Client.CreateIPPool(ctx, pool(fmt.Sprintf("racer-%d", i), fmt.Sprintf("10.0.%d.0/24", i*16), func(s *datastore.IPPoolSpec) {
				s.BlockSize = 28
				if i%2 == 0 {
					s.CIDR = "10.0.0.0/16" // overlaps every other racer
				}
			}))
		})
	}
	close(start)
	wg.Wait()
	pools, err := e.Client.ListIPPools(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for i, a := range pools {
		for _, b := range pools[i+1:] {
			if strings.HasPrefix(a.Spec.CIDR, "10.0.0.0/16") || strings.HasPrefix(b.Spec.CIDR, "10.0.0.0/16") {
				t.Errorf("overlapping pools stored: %s %s and %s %s", a.Metadata.Name, a.Spec.CIDR, b.Metadata.Name, b.Spec.CIDR)
			}
		}
	}
	if len(pools) == 0 {
		t.Fatalf("no pool stored: %v", errs)
	}
	for i, err := range errs {
		if err != nil && !errors.Is(err, datastore.ErrInvalid) {
			t.Errorf("writer %d: %v", i, err)
		}
	}
}

func TestPatch(t *testing.T) {
	t.Parallel()
	e := etcdtest.Start(t)
	ctx := context.Background()
	if _, err := e.Client.CreateIPPool(ctx, pool("default-ipv4-ippool", "192.168.0.0/16", func(s *datastore.IPPoolSpec) { s.IPIPMode = "Always"; s.NATOutgoing = true })); err != nil {
		t.Fatal(err)
	}
	p, err := e.Client.PatchResource(ctx, datastore.KindIPPool, "default-ipv4-ippool", []byte(`{"spec":{"ipipMode":"CrossSubnet"}}`))
	if err != nil {
		t.Fatalf("patch: %v", err)
	}
	if s := p.(*datastore.IPPool).Spec; s.IPIPMode != "CrossSubnet" || !s.NATOutgoing || s.CIDR != "192.168.0.0/16" {
		t.Errorf("patched to %+v", s)
	}
	for _, bad := range []struct{ patch, want string }{
		{`{"spec":{"vxlanMode":"Always"}}`, "cannot both be enabled"},
		{`{"spec":{"cidr":"10.0.0.0/16"}}`, "spec.cidr: cannot change"},
		{`{"spec":{"ipipmode":"Never"}}`, `unknown field "spec.ipipmode"`},
		{`{"spec":{"blockSize":"26"}}`, "spec.blockSize: expected a whole number"},
		{`{"metadata":{"name":"other"}}`, "cannot change the kind or name"},
		{`{"metadata":{"resourceVersion":"1"}}`, "is out of date"},
		{`[1]`, "must be a JSON object"},
		{`{`, "not valid JSON"},
	} {
		if _, err := e.Client.PatchResource(ctx, datastore.KindIPPool, "default-ipv4-ippool", []byte(bad.patch)); err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("patch %s: got %v, want %q", bad.patch, err, bad.want)
		}
	}
	if _, err := e.Client.PatchResource(ctx, datastore.KindIPPool, "missing", []byte(`{}`)); !errors.Is(err, datastore.ErrNotFound) {
		t.Errorf("patch of a missing pool: %v", err)
	}
}

// Many tabbyd-like writers each set one label on the same Node through ModifyNode: every
// label survives.
func TestModifyNodeLosesNoUpdate(t *testing.T) {
	t.Parallel()
	e := etcdtest.Start(t)
	ctx := context.Background()
	const writers = 8
	var wg sync.WaitGroup
	errs := make([]error, writers)
	for i := range writers {
		wg.Go(func() {
			_, errs[i] = e.Client.ModifyNode(ctx, "worker-1", func(n *datastore.Node) error {
				if n.Metadata.Labels == nil {
					n.Metadata.Labels = map[string]string{}
				}
				n.Metadata.Labels[fmt.Sprintf("writer-%d", i)] = "yes"
				return nil
			})
		})
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("writer %d: %v", i, err)
		}
	}
	n, err := e.Client.GetNode(ctx, "worker-1")
	if err != nil {
		t.Fatal(err)
	}
	if len(n.Metadata.Labels) != writers {
		t.Errorf("labels %v, want %d", n.Metadata.Labels, writers)
	}

	// A mutation that changes nothing writes nothing.
	same, err := e.Client.ModifyNode(ctx, "worker-1", func(*datastore.Node) error { return nil })
	if err != nil || same.Metadata.ResourceVersion != n.Metadata.ResourceVersion {
		t.Errorf("no-op modify: %v, revision %s -> %s", err, n.Metadata.ResourceVersion, same.Metadata.ResourceVersion)
	}
	// A mutation that breaks the rules is refused.
	_, err = e.Client.ModifyNode(ctx, "worker-1", func(n *datastore.Node) error {
		n.Spec.BGP = &datastore.NodeBGPSpec{IPv4Address: "10.0.0.1"}
		return nil
	})
	if !errors.Is(err, datastore.ErrInvalid) || !strings.Contains(err.Error(), "spec.bgp.ipv4Address") {
		t.Errorf("invalid modify: %v", err)
	}
	// The mutation's own error comes back as it is.
	sentinel := errors.New("no address yet")
	if _, err := e.Client.ModifyNode(ctx, "worker-1", func(*datastore.Node) error { return sentinel }); !errors.Is(err, sentinel) {
		t.Errorf("mutation error: %v", err)
	}
}

func TestKindsRoundTrip(t *testing.T) {
	t.Parallel()
	e := etcdtest.Start(t)
	ctx := context.Background()
	c := e.Client
	if _, err := c.CreateBGPConfiguration(ctx, &datastore.BGPConfiguration{Metadata: datastore.ObjectMeta{Name: "default"}, Spec: datastore.BGPConfigurationSpec{ASNumber: asn(65000)}}); err != nil {
		t.Fatal(err)
	}
	cfg, err := c.GetBGPConfiguration(ctx, "default")
	if err != nil || *cfg.Spec.ASNumber != 65000 || !*cfg.Spec.NodeToNodeMeshEnabled || cfg.Spec.ListenPort != 179 {
		t.Errorf("BGPConfiguration: %+v %v", cfg, err)
	}
	if _, err := c.ApplyBGPPeer(ctx, &datastore.BGPPeer{Metadata: datastore.ObjectMeta{Name: "tor"}, Spec: datastore.BGPPeerSpec{PeerIP: "10.30.0.1", ASNumber: 65001}}); err != nil {
		t.Fatal(err)
	}
	peers, err := c.ListBGPPeers(ctx)
	if err != nil || len(peers) != 1 || peers[0].Spec.ASNumber != 65001 {
		t.Errorf("BGPPeers: %+v %v", peers, err)
	}
	if _, err := c.GetResource(ctx, "Pod", "x"); err == nil || !strings.Contains(err.Error(), `unknown kind "Pod"`) {
		t.Errorf("unknown kind: %v", err)
	}
	// A broken stored document is listed as a problem, not returned and not fatal.
	if _, err := e.Raw().Put(ctx, "/calico/resources/v3/projectcalico.org/bgppeers/broken", "{"); err != nil {
		t.Fatal(err)
	}
	l, err := c.ListResources(ctx, datastore.KindBGPPeer)
	if err != nil || len(l.Items) != 1 || len(l.Problems) != 1 || !strings.Contains(l.Problems[0].Key, "broken") {
		t.Errorf("list with a broken document: %+v %v", l, err)
	}
}
