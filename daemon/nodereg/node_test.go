package nodereg

import (
	"crypto/sha1"
	"net/netip"
	"reflect"
	"testing"

	"github.com/tabby-net/tabby/datastore"
	"github.com/tabby-net/tabby/datastore/ipam"
)

func TestVTEPMAC(t *testing.T) {
	t.Parallel()
	mac := VTEPMAC("worker-1")
	sum := sha1.Sum([]byte("worker-1"))
	if mac[0] != 0x66 || mac[1] != sum[0] || mac[5] != sum[4] || len(mac) != 6 {
		t.Errorf("VTEPMAC = %s", mac)
	}
	if mac[0]&0x01 != 0 {
		t.Error("multicast bit set")
	}
	if mac[0]&0x02 == 0 {
		t.Error("not locally administered")
	}
	if VTEPMAC("worker-2").String() == mac.String() {
		t.Error("two nodes share a MAC")
	}
}

func pool(name, cidr string, ipip, vxlan datastore.EncapMode, mod func(*datastore.IPPool)) *datastore.IPPool {
	p := datastore.NewIPPool(name)
	p.Spec = datastore.IPPoolSpec{CIDR: cidr, IPIPMode: ipip, VXLANMode: vxlan, NodeSelector: "all()"}
	if mod != nil {
		mod(p)
	}
	return p
}

func TestNeededTunnels(t *testing.T) {
	t.Parallel()
	labels := map[string]string{"rack": "a"}
	pools := map[string]*datastore.IPPool{
		"vx":       pool("vx", "10.1.0.0/16", datastore.EncapNever, datastore.EncapAlways, nil),
		"ipip":     pool("ipip", "10.2.0.0/16", datastore.EncapCrossSubnet, datastore.EncapNever, nil),
		"direct":   pool("direct", "10.3.0.0/16", datastore.EncapNever, datastore.EncapNever, nil),
		"disabled": pool("disabled", "10.4.0.0/16", datastore.EncapNever, datastore.EncapAlways, func(p *datastore.IPPool) { p.Spec.Disabled = true }),
		"other":    pool("other", "10.5.0.0/16", datastore.EncapNever, datastore.EncapAlways, func(p *datastore.IPPool) { p.Spec.NodeSelector = "rack == 'b'" }),
		"mine":     pool("mine", "10.6.0.0/16", datastore.EncapNever, datastore.EncapCrossSubnet, func(p *datastore.IPPool) { p.Spec.NodeSelector = "rack == 'a'" }),
		"noTunnel": pool("noTunnel", "10.7.0.0/16", datastore.EncapNever, datastore.EncapAlways, func(p *datastore.IPPool) { p.Spec.AllowedUses = []string{datastore.UseWorkload} }),
	}
	got := NeededTunnels(pools, labels)
	want := map[ipam.TunnelKind][]netip.Prefix{
		ipam.TunnelIPIP:  {netip.MustParsePrefix("10.2.0.0/16")},
		ipam.TunnelVXLAN: {netip.MustParsePrefix("10.1.0.0/16"), netip.MustParsePrefix("10.6.0.0/16")},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("NeededTunnels = %v, want %v", got, want)
	}
	if got := NeededTunnels(map[string]*datastore.IPPool{"direct": pools["direct"]}, labels); len(got) != 0 {
		t.Errorf("a Direct pool needs tunnels: %v", got)
	}
}

func TestDesired(t *testing.T) {
	t.Parallel()
	id := Identity{Name: "worker-1", Address: netip.MustParsePrefix("10.30.0.206/24"), Labels: map[string]string{"rack": "a"}}

	// A new node.
	n := Desired(nil, id, map[ipam.TunnelKind]netip.Addr{ipam.TunnelVXLAN: netip.MustParseAddr("192.168.5.0")})
	if n.Metadata.Name != "worker-1" || n.Spec.BGP.IPv4Address != "10.30.0.206/24" || n.Spec.IPv4VXLANTunnelAddr != "192.168.5.0" ||
		n.Spec.VXLANTunnelMACAddr != VTEPMAC("worker-1").String() || n.Spec.BGP.IPv4IPIPTunnelAddr != "" ||
		!reflect.DeepEqual(n.Metadata.Labels, map[string]string{"rack": "a"}) || n.Kind != datastore.KindNode {
		t.Errorf("new node: %+v %+v", n.Metadata, describe(n))
	}

	// An existing node with what the operator set: kept. Labels merged, ours win.
	as := datastore.ASNumber(65001)
	stored := datastore.NewNode("worker-1")
	stored.Metadata.ResourceVersion = "42"
	stored.Metadata.Labels = map[string]string{"rack": "z", "role": "edge"}
	stored.Spec.BGP = &datastore.NodeBGPSpec{ASNumber: &as, RouteReflectorClusterID: "224.0.0.1",
		IPv4Address: "10.30.0.9/24", IPv4IPIPTunnelAddr: "192.168.9.1"}
	stored.Spec.VXLANTunnelMACAddr = "66:00:00:00:00:01"
	n = Desired(stored, id, map[ipam.TunnelKind]netip.Addr{ipam.TunnelVXLAN: netip.MustParseAddr("192.168.5.0")})
	if n.Spec.BGP.ASNumber == nil || *n.Spec.BGP.ASNumber != 65001 || n.Spec.BGP.RouteReflectorClusterID != "224.0.0.1" {
		t.Errorf("operator's BGP fields lost: %+v", n.Spec.BGP)
	}
	if n.Spec.VXLANTunnelMACAddr != "66:00:00:00:00:01" {
		t.Errorf("operator's MAC replaced: %s", n.Spec.VXLANTunnelMACAddr)
	}
	if n.Spec.BGP.IPv4IPIPTunnelAddr != "" {
		t.Errorf("IPIP address no pool needs kept: %s", n.Spec.BGP.IPv4IPIPTunnelAddr)
	}
	if n.Spec.BGP.IPv4Address != "10.30.0.206/24" || n.Metadata.ResourceVersion != "42" {
		t.Errorf("address or resourceVersion: %s %s", n.Spec.BGP.IPv4Address, n.Metadata.ResourceVersion)
	}
	if want := map[string]string{"rack": "a", "role": "edge"}; !reflect.DeepEqual(n.Metadata.Labels, want) {
		t.Errorf("labels = %v, want %v", n.Metadata.Labels, want)
	}
	// The stored node is shared with the snapshot: it must not change.
	if stored.Spec.BGP.IPv4Address != "10.30.0.9/24" || stored.Metadata.Labels["rack"] != "z" {
		t.Error("Desired changed the stored node")
	}
	// Nothing to change: same rendering.
	if describe(Desired(n, id, map[ipam.TunnelKind]netip.Addr{ipam.TunnelVXLAN: netip.MustParseAddr("192.168.5.0")})) != describe(n) {
		t.Error("Desired is not idempotent")
	}
}
