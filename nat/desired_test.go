package nat

import (
	"net/netip"
	"slices"
	"testing"

	"github.com/tabby-net/tabby/datastore"
	"github.com/tabby-net/tabby/internal/ipprefix"
)

func pool(cidr string, nat, disabled bool, ipip, vxlan datastore.EncapMode) *datastore.IPPool {
	return &datastore.IPPool{Spec: datastore.IPPoolSpec{CIDR: cidr, NATOutgoing: nat, Disabled: disabled, IPIPMode: ipip, VXLANMode: vxlan}}
}

func TestFromSnapshot(t *testing.T) {
	snap := datastore.NewSnapshot()
	snap.Pools["default-ipv4-ippool"] = pool("192.168.0.0/16", true, false, datastore.EncapAlways, "")
	snap.Pools["old"] = pool("10.9.0.0/16", true, true, datastore.EncapNever, datastore.EncapNever)
	snap.Pools["nonat"] = pool("10.8.0.0/24", false, false, "", datastore.EncapCrossSubnet)
	snap.Pools["v6"] = pool("fd00::/64", true, false, "", "")
	got := FromSnapshot(snap)
	want := Desired{
		MasqPools:     prefixes("10.9.0.0/16", "192.168.0.0/16"), // a disabled pool keeps its NAT
		AllPools:      prefixes("10.8.0.0/24", "10.9.0.0/16", "192.168.0.0/16"),
		TunnelDevices: []string{IPIPDevice, VXLANDevice},
	}
	if !got.Equal(want) {
		t.Errorf("FromSnapshot = %+v\nwant %+v", got, want)
	}
	if d := FromSnapshot(datastore.NewSnapshot()); len(d.AllPools)+len(d.MasqPools)+len(d.TunnelDevices) != 0 {
		t.Errorf("empty snapshot gives %+v", d)
	}
}

func TestNormalize(t *testing.T) {
	d, problems := Desired{
		MasqPools:     []netip.Prefix{netip.MustParsePrefix("10.1.2.3/16"), netip.MustParsePrefix("0.0.0.0/0")},
		AllPools:      prefixes("10.2.0.0/16", "10.1.0.0/16", "10.2.0.0/16", "fd00::/8"),
		TunnelDevices: []string{"vxlan.tabby", "tunl0", "tunl0", "bad name", "waytoolongname123"},
	}.normalize()
	want := Desired{
		MasqPools:     prefixes("10.1.0.0/16"),
		AllPools:      prefixes("10.1.0.0/16", "10.2.0.0/16"),
		TunnelDevices: []string{"tunl0", "vxlan.tabby"},
	}
	if !d.Equal(want) {
		t.Errorf("normalize = %+v\nwant %+v", d, want)
	}
	if len(problems) != 4 {
		t.Errorf("problems = %v, want the /0, the IPv6 pool and two bad device names", problems)
	}
	if !slices.IsSortedFunc(d.AllPools, ipprefix.Compare) {
		t.Error("not sorted")
	}
}
