package lab

import (
	"net"
	"net/netip"
)

// prefixIPNet converts an address with its prefix length (10.30.0.206/24) to the form
// netlink wants for an interface address.
func prefixIPNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// prefixNet converts a prefix to the masked network netlink wants as a route destination.
func prefixNet(p netip.Prefix) *net.IPNet {
	m := p.Masked()
	return &net.IPNet{IP: m.Addr().AsSlice(), Mask: net.CIDRMask(m.Bits(), m.Addr().BitLen())}
}
