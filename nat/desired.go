package nat

import (
	"fmt"
	"net/netip"
	"regexp"
	"slices"

	"github.com/tabby-net/tabby/datastore"
	"github.com/tabby-net/tabby/internal/ipprefix"
)

// Desired is the complete NAT state tabby wants on this host. It is computed from the
// datastore snapshot (FromSnapshot) and handed to NAT.Set whole; the reconciler works out
// the difference with what the kernel has.
type Desired struct {
	// MasqPools are the CIDRs of the pools with natOutgoing: traffic from them to anywhere
	// outside AllPools is masqueraded.
	MasqPools []netip.Prefix
	// AllPools are the CIDRs of every pool, disabled ones included (a disabled pool keeps
	// its routes and its NAT membership, SPEC §3).
	AllPools []netip.Prefix
	// TunnelDevices are the tunnel devices (tunl0, vxlan.tabby) whose host-sourced traffic
	// is masqueraded to the tunnel's own address. The rule names only the device, not its
	// address: it matches "source is a local address, but not one of the outgoing device's",
	// as Calico's does, so it stays right when the tunnel address changes. A device that does
	// not exist (yet) makes the rule match nothing, which is harmless.
	TunnelDevices []string
}

// FromSnapshot derives the desired NAT state from a datastore snapshot, as Felix does from
// the IPPools: every IPv4 pool goes into AllPools, the ones with natOutgoing into MasqPools,
// and a pool with ipipMode or vxlanMode other than Never brings in the masquerade rule of the
// matching tunnel device. Pools' node selectors do not matter here: traffic to a pool is
// pool traffic wherever the pool's blocks live.
func FromSnapshot(snap *datastore.Snapshot) Desired {
	var d Desired
	ipip, vxlan := false, false
	for _, pool := range snap.Pools {
		cidr, err := netip.ParsePrefix(pool.Spec.CIDR)
		if err != nil || !cidr.Addr().Is4() {
			continue
		}
		d.AllPools = append(d.AllPools, cidr)
		if pool.Spec.NATOutgoing {
			d.MasqPools = append(d.MasqPools, cidr)
		}
		if enabledEncap(pool.Spec.IPIPMode) {
			ipip = true
		}
		if enabledEncap(pool.Spec.VXLANMode) {
			vxlan = true
		}
	}
	if ipip {
		d.TunnelDevices = append(d.TunnelDevices, IPIPDevice)
	}
	if vxlan {
		d.TunnelDevices = append(d.TunnelDevices, VXLANDevice)
	}
	n, _ := d.normalize()
	return n
}

func enabledEncap(m datastore.EncapMode) bool {
	return m == datastore.EncapAlways || m == datastore.EncapCrossSubnet
}

// interfaceName is what Linux accepts as a device name (at most 15 bytes, no '/', no
// whitespace, not "." or ".."), further limited to characters iptables prints unquoted.
var interfaceName = regexp.MustCompile(`^[A-Za-z0-9_.:@-]{1,15}$`)

// normalize returns d with prefixes masked, sorted and deduplicated, MasqPools included in
// AllPools, and device names sorted. Entries that cannot be programmed (IPv6 prefixes,
// /0, invalid device names) are left out and reported.
func (d Desired) normalize() (Desired, []error) {
	var problems []error
	clean := func(in []netip.Prefix) []netip.Prefix {
		out := make([]netip.Prefix, 0, len(in))
		for _, p := range in {
			switch {
			case !p.IsValid() || !p.Addr().Is4():
				problems = append(problems, fmt.Errorf("pool %v: only IPv4 pools are programmed", p))
			case p.Bits() == 0:
				problems = append(problems, fmt.Errorf("pool %v: a hash:net ipset cannot hold a /0", p))
			default:
				out = append(out, p.Masked())
			}
		}
		return out
	}
	n := Desired{MasqPools: clean(d.MasqPools)}
	n.AllPools = append(clean(d.AllPools), n.MasqPools...)
	slices.SortFunc(n.MasqPools, ipprefix.Compare)
	slices.SortFunc(n.AllPools, ipprefix.Compare)
	n.MasqPools = slices.Compact(n.MasqPools)
	n.AllPools = slices.Compact(n.AllPools)
	for _, dev := range d.TunnelDevices {
		if !interfaceName.MatchString(dev) || dev == "." || dev == ".." {
			problems = append(problems, fmt.Errorf("tunnel device %q: not a valid interface name", dev))
			continue
		}
		n.TunnelDevices = append(n.TunnelDevices, dev)
	}
	slices.Sort(n.TunnelDevices)
	n.TunnelDevices = slices.Compact(n.TunnelDevices)
	return n, problems
}

// Equal reports whether two normalized desired states are the same.
func (d Desired) Equal(o Desired) bool {
	return slices.Equal(d.MasqPools, o.MasqPools) &&
		slices.Equal(d.AllPools, o.AllPools) &&
		slices.Equal(d.TunnelDevices, o.TunnelDevices)
}
