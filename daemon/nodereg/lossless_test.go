package nodereg

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/netip"
	"reflect"
	"testing"
	"time"

	"github.com/tabby-net/tabby/datastore"
	"github.com/tabby-net/tabby/datastore/etcdtest"
	"github.com/tabby-net/tabby/datastore/ipam"
)

// tabbyd's update of its own Node changes only what the host owns (address, labels,
// tunnel addresses, VTEP MAC): what calicoctl or Calico's components stored on the same
// Node (orchRefs, status, annotations, an IPv6 address, fields of newer versions) comes
// back unchanged.
func TestRegistrationKeepsOthersFields(t *testing.T) {
	t.Parallel()
	e := etcdtest.Start(t)
	c := e.Client
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))

	pool := datastore.NewIPPool("vx")
	pool.Spec = datastore.IPPoolSpec{CIDR: "192.168.0.0/16", VXLANMode: datastore.EncapAlways}
	if _, err := c.CreateIPPool(ctx, pool); err != nil {
		t.Fatal(err)
	}
	stored := []byte(`{"kind":"Node","apiVersion":"projectcalico.org/v3",` +
		`"metadata":{"name":"worker-1","uid":"0b7c3c9e-0000-4000-8000-000000000009","creationTimestamp":"2025-01-02T03:04:05Z",` +
		`"labels":{"role":"edge"},"annotations":{"projectcalico.org/kube-labels":"{}"},"futureMeta":[1]},` +
		`"spec":{"bgp":{"ipv4Address":"10.9.9.9/24","ipv6Address":"fd00::9/64","asNumber":65010},` +
		`"orchRefs":[{"nodeName":"worker-1","orchestrator":"k8s"}],"addresses":[{"address":"10.9.9.9","type":"InternalIP"}],` +
		`"futureSpec":{"n":12345678901234567890}},` +
		`"status":{"podCIDRs":["192.168.7.0/26"],"wireguardPublicKey":"hJ2K8Q3m0l0y6o7n0vX1pJtq0fQG1m2kYw8m3e4s5t0="}}`)
	key := c.Keys.Resource(datastore.KindNode, "worker-1")
	if _, err := e.Raw().Put(ctx, key, string(stored)); err != nil {
		t.Fatal(err)
	}

	id := Identity{Name: "worker-1", Address: netip.MustParsePrefix("10.30.0.206/24"), Labels: map[string]string{"rack": "a"}}
	r := New(c, ipam.New(c, log), id, log)
	if _, _, err := r.reconcile(ctx, snapshotOf(t, c)); err != nil {
		t.Fatal(err)
	}
	node, err := c.GetNode(ctx, "worker-1")
	if err != nil {
		t.Fatal(err)
	}
	vx, ok := TunnelAddr(node, ipam.TunnelVXLAN)
	if !ok {
		t.Fatalf("no VXLAN tunnel address: %s", describe(node))
	}
	change, _ := json.Marshal(map[string]any{
		"metadata": map[string]any{"labels": map[string]string{"rack": "a"}},
		"spec": map[string]any{
			"bgp":                 map[string]any{"ipv4Address": "10.30.0.206/24"},
			"ipv4VXLANTunnelAddr": vx.String(),
			"vxlanTunnelMACAddr":  VTEPMAC("worker-1").String(),
		},
	})
	got, err := c.Get(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	want, _ := json.Marshal(datastore.MergePatch(jsonDoc(t, stored), jsonDoc(t, change)))
	if !reflect.DeepEqual(jsonDoc(t, got.Value), jsonDoc(t, want)) {
		t.Errorf("the Node after tabbyd's update:\n got %s\nwant %s", got.Value, want)
	}
}

// jsonDoc decodes JSON for comparison as a value, numbers exactly as written.
func jsonDoc(t *testing.T, b []byte) any {
	t.Helper()
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		t.Fatalf("%v: %s", err, b)
	}
	return v
}
