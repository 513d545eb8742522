package nat

import (
	"fmt"
	"net/netip"
	"slices"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"

	"github.com/tabby-net/tabby/internal/ipprefix"
)

// fakeIPSets is an in-memory kernel ipset table that calls check after every change, so a
// test can assert an invariant at every intermediate state, not only at the end.
type fakeIPSets struct {
	sets  map[string]*netlink.IPSetResult
	check func(f *fakeIPSets)
	ops   []string
}

func (f *fakeIPSets) members(name string) []netip.Prefix {
	s, ok := f.sets[name]
	if !ok {
		return nil
	}
	var out []netip.Prefix
	for _, e := range s.Entries {
		a, _ := netip.AddrFromSlice(e.IP)
		out = append(out, netip.PrefixFrom(a.Unmap(), int(e.CIDR)))
	}
	return out
}

func (f *fakeIPSets) changed(op string) {
	f.ops = append(f.ops, op)
	if f.check != nil {
		f.check(f)
	}
}

func (f *fakeIPSets) IpsetList(name string) (*netlink.IPSetResult, error) {
	s, ok := f.sets[name]
	if !ok {
		return nil, unix.ENOENT
	}
	c := *s
	c.Entries = slices.Clone(s.Entries)
	return &c, nil
}

func (f *fakeIPSets) IpsetCreate(name, typename string, o netlink.IpsetCreateOptions) error {
	if _, ok := f.sets[name]; ok {
		return unix.EEXIST
	}
	f.sets[name] = &netlink.IPSetResult{SetName: name, TypeName: typename, Family: o.Family}
	f.changed("create " + name)
	return nil
}

func (f *fakeIPSets) IpsetAdd(name string, e *netlink.IPSetEntry) error {
	s, ok := f.sets[name]
	if !ok {
		return unix.ENOENT
	}
	for _, have := range s.Entries {
		if have.IP.Equal(e.IP) && have.CIDR == e.CIDR {
			return nil
		}
	}
	s.Entries = append(s.Entries, netlink.IPSetEntry{IP: e.IP, CIDR: e.CIDR})
	f.changed(fmt.Sprintf("add %s %v/%d", name, e.IP, e.CIDR))
	return nil
}

func (f *fakeIPSets) IpsetDel(name string, e *netlink.IPSetEntry) error {
	s, ok := f.sets[name]
	if !ok {
		return unix.ENOENT
	}
	i := slices.IndexFunc(s.Entries, func(have netlink.IPSetEntry) bool { return have.IP.Equal(e.IP) && have.CIDR == e.CIDR })
	if i < 0 {
		return nl.IPSetError(nl.IPSET_ERR_EXIST)
	}
	s.Entries = slices.Delete(s.Entries, i, i+1)
	f.changed(fmt.Sprintf("del %s %v/%d", name, e.IP, e.CIDR))
	return nil
}

func (f *fakeIPSets) IpsetSwap(a, b string) error {
	sa, oka := f.sets[a]
	sb, okb := f.sets[b]
	if !oka || !okb {
		return unix.ENOENT
	}
	f.sets[a], f.sets[b] = sb, sa
	sa.SetName, sb.SetName = b, a
	f.changed("swap " + a + " " + b)
	return nil
}

func (f *fakeIPSets) IpsetDestroy(name string) error {
	if _, ok := f.sets[name]; !ok {
		return unix.ENOENT
	}
	delete(f.sets, name)
	f.changed("destroy " + name)
	return nil
}

// TestSetUpdatesNeverOpenAWindow moves the pool sets through a series of states and checks,
// after every single kernel operation, that (1) every pool wanted both before and after a
// step is in its sets all the time, and (2) no pool is in the masquerade set without being
// in the set of all pools (which would masquerade traffic between pools).
func TestSetUpdatesNeverOpenAWindow(t *testing.T) {
	steps := []Desired{
		{MasqPools: prefixes("10.1.0.0/16"), AllPools: prefixes("10.1.0.0/16")},
		{MasqPools: prefixes("10.1.0.0/16", "10.2.0.0/16"), AllPools: prefixes("10.1.0.0/16", "10.2.0.0/16", "10.3.0.0/16")},
		{MasqPools: prefixes("10.1.0.0/16", "10.3.0.0/16"), AllPools: prefixes("10.1.0.0/16", "10.3.0.0/16")},
		{MasqPools: prefixes("10.1.0.0/16"), AllPools: prefixes("10.1.0.0/16", "10.4.0.0/24")},
		{AllPools: prefixes("10.1.0.0/16")},
	}
	f := &fakeIPSets{sets: map[string]*netlink.IPSetResult{}}
	var prev Desired
	for i, next := range steps {
		next, _ = next.normalize()
		stableMasq := intersect(prev.MasqPools, next.MasqPools)
		stableAll := intersect(prev.AllPools, next.AllPools)
		f.check = func(f *fakeIPSets) {
			masq, all := f.members(MasqSetName), f.members(AllSetName)
			for _, p := range stableMasq {
				if !slices.Contains(masq, p) {
					t.Errorf("step %d: %v missing from %s after %q", i, p, MasqSetName, f.ops[len(f.ops)-1])
				}
			}
			for _, p := range stableAll {
				if !slices.Contains(all, p) {
					t.Errorf("step %d: %v missing from %s after %q", i, p, AllSetName, f.ops[len(f.ops)-1])
				}
			}
			for _, p := range masq {
				if !slices.Contains(all, p) {
					t.Errorf("step %d: %v in %s but not in %s after %q", i, p, MasqSetName, AllSetName, f.ops[len(f.ops)-1])
				}
			}
		}
		if _, err := syncSets(f, next); err != nil {
			t.Fatal(err)
		}
		masq, all := f.members(MasqSetName), f.members(AllSetName)
		slices.SortFunc(masq, ipprefix.Compare)
		slices.SortFunc(all, ipprefix.Compare)
		if !slices.Equal(masq, next.MasqPools) || !slices.Equal(all, next.AllPools) {
			t.Fatalf("step %d: sets %v / %v, want %v / %v", i, masq, all, next.MasqPools, next.AllPools)
		}
		changes, err := syncSets(f, next)
		if err != nil || len(changes) != 0 {
			t.Fatalf("step %d: second sync changed %q (err %v)", i, changes, err)
		}
		prev = next
	}
}

func intersect(a, b []netip.Prefix) []netip.Prefix {
	var out []netip.Prefix
	for _, p := range a {
		if slices.Contains(b, p) {
			out = append(out, p)
		}
	}
	return out
}

// TestWrongTypeSetSwappedInPlace: a set of the wrong type (someone else's hash:ip) is replaced
// by building the right one aside and swapping, not by destroying the one rules refer to.
func TestWrongTypeSetSwappedInPlace(t *testing.T) {
	f := &fakeIPSets{sets: map[string]*netlink.IPSetResult{
		AllSetName: {SetName: AllSetName, TypeName: "hash:ip", Family: unix.AF_INET, References: 1},
	}}
	d, _ := Desired{AllPools: prefixes("10.1.0.0/16")}.normalize()
	if _, err := syncSets(f, d); err != nil {
		t.Fatal(err)
	}
	if got := f.sets[AllSetName]; got.TypeName != setType || !slices.Equal(f.members(AllSetName), d.AllPools) {
		t.Errorf("set = %+v", got)
	}
	if slices.Contains(f.ops, "destroy "+AllSetName) {
		t.Errorf("the set in use was destroyed: %q", f.ops)
	}
	if _, ok := f.sets[tmpSetName]; ok {
		t.Error("scratch set left behind")
	}
}
