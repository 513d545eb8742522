package lab

import (
	"errors"
	"fmt"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/tabby-net/tabby/internal/namedns"
)

// NoIPIPMessage is how the lab says that the IP-in-IP modes cannot run here; the demo
// prints it once and the end-to-end tests skip with it.
const NoIPIPMessage = "kernel has no ipip support"

// HasIPIP reports whether this kernel can make IP-in-IP devices. It asks inside the lab's
// router namespace (or a short-lived namespace of the lab when the lab is down) by
// creating an ipip link there: a loaded ipip module shows as tunl0 in every namespace,
// and a loadable one is loaded by the attempt, as tabbyd's own attempt would load it.
func (t *Topology) HasIPIP() (bool, error) {
	ns := t.RouterNS()
	if exists, err := t.Exists(); err != nil {
		return false, err
	} else if !exists || !nsExists(ns) {
		ns = t.Prefix + "-ipipcheck"
		if err := namedns.Create(ns); err != nil {
			return false, err
		}
		defer func() { _ = namedns.Delete(ns) }()
	}
	h, err := namedns.Handle(ns)
	if err != nil {
		return false, err
	}
	defer h.Close()
	if _, err := h.LinkByName("tunl0"); err == nil {
		return true, nil
	}
	probe := &netlink.Iptun{LinkAttrs: netlink.LinkAttrs{Name: "tabbyipipchk"}, Local: nil, Remote: nil}
	err = h.LinkAdd(probe)
	switch {
	case err == nil:
		if l, lerr := h.LinkByName(probe.Name); lerr == nil {
			_ = h.LinkDel(l)
		}
		return true, nil
	case errors.Is(err, unix.EEXIST):
		return true, nil
	case errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.ENOENT) ||
		strings.Contains(strings.ToLower(err.Error()), "not supported"):
		return false, nil
	}
	return false, fmt.Errorf("probe for ipip support in %s: %w", ns, err)
}

func nsExists(name string) bool {
	names, err := namedns.List(name)
	if err != nil {
		return false
	}
	for _, n := range names {
		if n == name {
			return true
		}
	}
	return false
}
