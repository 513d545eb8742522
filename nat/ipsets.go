package nat

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"

	"github.com/tabby-net/tabby/internal/ipprefix"
)

// ipsetKernel is the part of netlink's ipset API tabby uses; *netlink.Handle implements it
// (bound to the managed namespace), and the unit tests put a fake in its place.
type ipsetKernel interface {
	IpsetList(name string) (*netlink.IPSetResult, error)
	IpsetCreate(name, typename string, options netlink.IpsetCreateOptions) error
	IpsetAdd(name string, entry *netlink.IPSetEntry) error
	IpsetDel(name string, entry *netlink.IPSetEntry) error
	IpsetSwap(name, other string) error
	IpsetDestroy(name string) error
}

const (
	setType = "hash:net"
	// setMaxElem is Calico's maxelem for its pool sets; one entry per pool needs far fewer,
	// but the kernel's default (65536) would be an arbitrary limit of its own.
	setMaxElem = 1 << 20
)

func entry(p netip.Prefix) *netlink.IPSetEntry {
	// Replace drops NLM_F_EXCL: adding a member that is already there is not an error.
	return &netlink.IPSetEntry{IP: net.IP(p.Addr().AsSlice()), CIDR: uint8(p.Bits()), Replace: true}
}

func isNotFound(err error) bool { return errors.Is(err, unix.ENOENT) }

// isNotMember is the kernel's answer to deleting a member that is not in the set.
func isNotMember(err error) bool { return errors.Is(err, nl.IPSetError(nl.IPSET_ERR_EXIST)) }

// setState is one set as the kernel holds it.
type setState struct {
	exists  bool
	usable  bool // hash:net of family inet: the type tabby creates
	members []netip.Prefix
	refs    uint32
	desc    string // type and family, for messages
}

func readSet(k ipsetKernel, name string) (setState, error) {
	res, err := k.IpsetList(name)
	if isNotFound(err) {
		return setState{}, nil
	}
	if err != nil {
		return setState{}, fmt.Errorf("list ipset %s: %w", name, err)
	}
	s := setState{
		exists: true,
		usable: res.TypeName == setType && res.Family == unix.AF_INET,
		refs:   res.References,
		desc:   res.TypeName + " of family " + familyName(res.Family),
	}
	for _, e := range res.Entries {
		addr, ok := netip.AddrFromSlice(e.IP)
		if !ok {
			continue
		}
		bits := int(e.CIDR)
		if bits == 0 {
			bits = addr.Unmap().BitLen()
		}
		s.members = append(s.members, netip.PrefixFrom(addr.Unmap(), bits))
	}
	slices.SortFunc(s.members, ipprefix.Compare)
	return s, nil
}

func familyName(f uint8) string {
	switch f {
	case unix.AF_INET:
		return "inet"
	case unix.AF_INET6:
		return "inet6"
	}
	return fmt.Sprint(f)
}

func createSet(k ipsetKernel, name string) error {
	err := k.IpsetCreate(name, setType, netlink.IpsetCreateOptions{Family: unix.AF_INET, MaxElements: setMaxElem})
	if err != nil {
		return fmt.Errorf("create ipset %s: %w", name, err)
	}
	return nil
}

// setDiff is what one set needs: members to add and members to remove.
type setDiff struct {
	name       string
	add, del   []netip.Prefix
	createdNow bool
}

// prepareSet makes sure the set exists with the right type and returns the members it lacks
// and the ones it has too many of. A set of the wrong type (left by someone else) is replaced
// in place: a correct one is built aside and swapped in, so the rules naming the set never
// lose it.
func prepareSet(k ipsetKernel, name string, want []netip.Prefix) (setDiff, error) {
	d := setDiff{name: name}
	cur, err := readSet(k, name)
	if err != nil {
		return d, err
	}
	switch {
	case !cur.exists:
		if err := createSet(k, name); err != nil {
			return d, err
		}
		d.createdNow = true
		d.add = want
		return d, nil
	case !cur.usable:
		if err := replaceSet(k, name, cur, want); err != nil {
			return d, err
		}
		d.createdNow = true
		return d, nil
	}
	for _, p := range want {
		if _, found := slices.BinarySearchFunc(cur.members, p, ipprefix.Compare); !found {
			d.add = append(d.add, p)
		}
	}
	for _, p := range cur.members {
		if _, found := slices.BinarySearchFunc(want, p, ipprefix.Compare); !found {
			d.del = append(d.del, p)
		}
	}
	return d, nil
}

func replaceSet(k ipsetKernel, name string, cur setState, want []netip.Prefix) error {
	if err := k.IpsetDestroy(tmpSetName); err != nil && !isNotFound(err) {
		return fmt.Errorf("destroy leftover ipset %s: %w", tmpSetName, err)
	}
	if err := createSet(k, tmpSetName); err != nil {
		return err
	}
	for _, p := range want {
		if err := k.IpsetAdd(tmpSetName, entry(p)); err != nil {
			return fmt.Errorf("add %v to ipset %s: %w", p, tmpSetName, err)
		}
	}
	swapErr := k.IpsetSwap(name, tmpSetName)
	if swapErr != nil && cur.refs > 0 {
		return fmt.Errorf("ipset %s is a %s, not %s, and cannot be swapped for one while rules use it: %w",
			name, cur.desc, setType, swapErr)
	}
	if swapErr != nil {
		// Unused: it can simply be recreated.
		if err := k.IpsetDestroy(name); err != nil {
			return fmt.Errorf("destroy ipset %s of type %s: %w", name, cur.desc, err)
		}
		if err := createSet(k, name); err != nil {
			return err
		}
		for _, p := range want {
			if err := k.IpsetAdd(name, entry(p)); err != nil {
				return fmt.Errorf("add %v to ipset %s: %w", p, name, err)
			}
		}
	}
	if err := k.IpsetDestroy(tmpSetName); err != nil && !isNotFound(err) {
		return fmt.Errorf("destroy ipset %s: %w", tmpSetName, err)
	}
	return nil
}

func addMembers(k ipsetKernel, d setDiff) ([]string, error) {
	var changes []string
	for _, p := range d.add {
		if err := k.IpsetAdd(d.name, entry(p)); err != nil {
			return changes, fmt.Errorf("add %v to ipset %s: %w", p, d.name, err)
		}
		changes = append(changes, fmt.Sprintf("add %v to ipset %s", p, d.name))
	}
	return changes, nil
}

func delMembers(k ipsetKernel, d setDiff) ([]string, error) {
	var changes []string
	for _, p := range d.del {
		if err := k.IpsetDel(d.name, entry(p)); err != nil && !isNotMember(err) {
			return changes, fmt.Errorf("remove %v from ipset %s: %w", p, d.name, err)
		}
		changes = append(changes, fmt.Sprintf("remove %v from ipset %s", p, d.name))
	}
	return changes, nil
}

// syncSets brings both pool sets to d. Every member that must be added is added, to both
// sets, before any is removed, and removals go from the masquerade set before the set of all
// pools: at no moment is traffic between two pools, or from a pool that keeps natOutgoing,
// judged on a set missing a member it should have.
func syncSets(k ipsetKernel, d Desired) ([]string, error) {
	all, err := prepareSet(k, AllSetName, d.AllPools)
	if err != nil {
		return nil, err
	}
	masq, err := prepareSet(k, MasqSetName, d.MasqPools)
	if err != nil {
		return nil, err
	}
	var changes []string
	for _, d := range []setDiff{all, masq} {
		if d.createdNow {
			changes = append(changes, "create ipset "+d.name)
		}
	}
	for _, step := range []struct {
		apply func(ipsetKernel, setDiff) ([]string, error)
		set   setDiff
	}{{addMembers, all}, {addMembers, masq}, {delMembers, masq}, {delMembers, all}} {
		c, err := step.apply(k, step.set)
		changes = append(changes, c...)
		if err != nil {
			return changes, err
		}
	}
	return changes, nil
}

// destroySets removes tabby's ipsets (Cleanup). It must run after the rules using them are
// gone: the kernel refuses to destroy a set in use.
func destroySets(k ipsetKernel) error {
	var errs []error
	for _, name := range []string{MasqSetName, AllSetName, tmpSetName} {
		if err := k.IpsetDestroy(name); err != nil && !isNotFound(err) {
			errs = append(errs, fmt.Errorf("destroy ipset %s: %w", name, err))
		}
	}
	return errors.Join(errs...)
}
