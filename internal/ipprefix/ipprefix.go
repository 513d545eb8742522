// Package ipprefix holds the one ordering of IP prefixes that tabby's sorted lists use
// (desired routes, pools, ipset members, BGP advertisements), so that every package sorts
// and merges them the same way.
package ipprefix

import (
	"cmp"
	"net/netip"
)

// Compare orders prefixes by address, then by length: a block sorts next to the blocks
// around it whatever its size. netip.Prefix.Compare orders by length first, which would
// scatter one pool's routes through the list.
func Compare(a, b netip.Prefix) int {
	if c := a.Addr().Compare(b.Addr()); c != 0 {
		return c
	}
	return cmp.Compare(a.Bits(), b.Bits())
}
