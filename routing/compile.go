package routing

import (
	"bytes"
	"errors"
	"fmt"
	"net/netip"

	"github.com/tabby-net/tabby/internal/ipprefix"
)

// Compiling turns a desired State into the wanted side of the reconciler's keyed tables:
// routes resolved to kernel terms (device names to interface indexes), neighbours and FDB
// entries keyed as the kernel keys them. It is kept from pass to pass, so that a new
// desired state costs a merge of two sorted lists plus work for what changed, not a
// rebuild of every map.

// linkSig captures every device index compiled routes depend on. When it changes, the
// desired routes are compiled again in full.
type linkSig struct {
	ipipOK, ipipUnsupported   bool
	ipipIndex                 int
	vxlanOK, vxlanUnsupported bool
	vxlanIndex                int
	linksGen                  uint64
}

func (k *Kernel) linkSig() linkSig {
	return linkSig{
		ipipOK: k.rec.ipip.ok, ipipUnsupported: k.rec.ipip.unsupported, ipipIndex: k.rec.ipip.index,
		vxlanOK: k.rec.vxlan.ok, vxlanUnsupported: k.rec.vxlan.unsupported, vxlanIndex: k.rec.vxlan.index,
		linksGen: k.rec.linksGen,
	}
}

// compiled says what the wanted side of the tables was compiled from, and what the tables
// cannot hold: routes wanted but not installable now.
type compiled struct {
	from   *State
	sorted bool // from is in Desired's sorted form, so it can be merged with the next
	sig    linkSig
	retry  bool // a device lookup failed: compile in full next time
	// keep holds desired routes that cannot be installed now (their device is missing or
	// unsupported), with the device: whatever the kernel has for them is not deleted.
	keep map[routeKey]string
}

// compile brings the wanted side of the tables to the desired state: in full when the
// devices routes depend on changed (or the state is not in Desired's sorted form), else
// by merging the previous desired lists with the new ones and marking what changed dirty.
func (k *Kernel) compile(rep *passReport, want *State) {
	w := &k.want
	sig := k.linkSig()
	if w.from == want && w.sig == sig && !w.retry {
		return
	}
	sorted := sortedState(want)
	if w.from != nil && w.sorted && sorted && w.sig == sig && !w.retry {
		k.compileDelta(rep, w.from, want)
	} else {
		k.compileAll(rep, want)
	}
	w.from, w.sig, w.sorted = want, sig, sorted
}

// sortedState reports whether a state's lists are sorted by key without duplicates, as
// Desired makes them; only such states can be merged.
func sortedState(s *State) bool {
	return sortedUnique(s.Routes, func(r Route) netip.Prefix { return r.Dst }, ipprefix.Compare) &&
		sortedUnique(s.Neighbors, func(n Neighbor) netip.Addr { return n.IP }, netip.Addr.Compare) &&
		sortedUnique(s.FDB, func(f FDBEntry) []byte { return f.MAC }, bytes.Compare)
}

func (k *Kernel) compileAll(rep *passReport, want *State) {
	w := &k.want
	if w.keep == nil {
		w.keep = map[routeKey]string{}
	}
	clear(w.keep)
	k.routes.ClearWanted(len(want.Routes))
	k.neighs.ClearWanted(len(want.Neighbors))
	k.fdb.ClearWanted(len(want.FDB))
	w.retry = false
	for _, r := range want.Routes {
		k.compileRoute(rep, r, false)
	}
	for _, n := range want.Neighbors {
		k.neighs.Want(n.IP, string(n.MAC))
	}
	for _, f := range want.FDB {
		k.fdb.Want(string(f.MAC), f.Dst)
	}
}

// compileRoute resolves one desired route into the wanted routes; replace says a previous
// version of it may be there.
func (k *Kernel) compileRoute(rep *passReport, r Route, replace bool) {
	w := &k.want
	kr := kroute{dst: r.Dst, blackhole: r.Blackhole, gw: r.Gateway, onlink: r.OnLink, mtu: r.MTU}
	key := kr.key()
	if replace {
		k.routes.Unwant(key)
		delete(w.keep, key)
	}
	if !r.Blackhole && r.Dev != "" {
		idx, err := k.devIndex(r.Dev)
		if err != nil {
			w.keep[key] = r.Dev
			if !errors.Is(err, ErrNoIPIP) && !errors.Is(err, ErrNoVXLAN) {
				if !w.retry {
					rep.fail(fmt.Errorf("routes via %s: %w", r.Dev, err))
				}
				w.retry = true
			}
			return
		}
		kr.link = idx
	}
	k.routes.Want(key, routeEntry{kr: kr, kind: r.Kind})
}

// compileDelta merges the previous desired state into the new one, both sorted, marking
// what changed dirty.
func (k *Kernel) compileDelta(rep *passReport, old, want *State) {
	w := &k.want
	mergeDiff(old.Routes, want.Routes, func(a, b Route) int { return ipprefix.Compare(a.Dst, b.Dst) },
		func(a, b Route) bool { return a == b },
		func(r Route) { // gone
			key := keyOf(r.Dst, 0)
			k.routes.Unwant(key)
			delete(w.keep, key)
		},
		func(r Route) { // new or changed
			k.compileRoute(rep, r, true)
		})
	mergeDiff(old.Neighbors, want.Neighbors, func(a, b Neighbor) int { return a.IP.Compare(b.IP) },
		func(a, b Neighbor) bool { return bytes.Equal(a.MAC, b.MAC) },
		func(n Neighbor) { k.neighs.Unwant(n.IP) },
		func(n Neighbor) { k.neighs.Want(n.IP, string(n.MAC)) })
	mergeDiff(old.FDB, want.FDB, func(a, b FDBEntry) int { return bytes.Compare(a.MAC, b.MAC) },
		func(a, b FDBEntry) bool { return a.Dst == b.Dst },
		func(f FDBEntry) { k.fdb.Unwant(string(f.MAC)) },
		func(f FDBEntry) { k.fdb.Want(string(f.MAC), f.Dst) })
}

func sortedUnique[T, K any](s []T, key func(T) K, cmp func(K, K) int) bool {
	for i := 1; i < len(s); i++ {
		if cmp(key(s[i-1]), key(s[i])) >= 0 {
			return false
		}
	}
	return true
}

// mergeDiff walks two lists sorted by cmp and calls gone for each element of old whose key
// is not in new, and changed for each element of new that is not in old as it is.
func mergeDiff[T any](old, new []T, cmp func(a, b T) int, equal func(a, b T) bool, gone, changed func(T)) {
	i, j := 0, 0
	for i < len(old) || j < len(new) {
		switch {
		case j == len(new) || (i < len(old) && cmp(old[i], new[j]) < 0):
			gone(old[i])
			i++
		case i == len(old) || cmp(old[i], new[j]) > 0:
			changed(new[j])
			j++
		default:
			if !equal(old[i], new[j]) {
				changed(new[j])
			}
			i++
			j++
		}
	}
}

// devIndex returns the interface index of a device routes go through. tunl0 and
// vxlan.tabby are the reconciler's own; any other name is looked up once and cached until
// a link event or a full resync says it changed.
func (k *Kernel) devIndex(name string) (int, error) {
	switch name {
	case DeviceIPIP:
		return k.rec.ipip.routeIndex(DeviceIPIP, ErrNoIPIP)
	case DeviceVXLAN:
		return k.rec.vxlan.routeIndex(DeviceVXLAN, ErrNoVXLAN)
	}
	if idx, ok := k.rec.links[name]; ok {
		return idx, nil
	}
	link, err := k.nl.LinkByName(name)
	if err != nil {
		return 0, fmt.Errorf("look up device %s: %w", name, err)
	}
	k.rec.links[name] = link.Attrs().Index
	return link.Attrs().Index, nil
}

// routeIndex is the interface index routes through the tunnel device name get, or why
// there is none: unsupported when the kernel has no driver for it.
func (d *devRecord) routeIndex(name string, unsupported error) (int, error) {
	switch {
	case d.ok:
		return d.index, nil
	case d.unsupported:
		return 0, unsupported
	}
	return 0, fmt.Errorf("%s is not configured", name)
}
