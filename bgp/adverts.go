package bgp

import (
	"net/netip"
	"slices"

	"github.com/tabby-net/tabby/datastore"
	"github.com/tabby-net/tabby/internal/ipprefix"
)

// Advertisements computes the prefixes the local node originates (SPEC §7): each block it
// owns (confirmed affinity) as a whole prefix, plus a /32 for each address it uses from a
// block it does not own (a borrowed address), only from enabled pools without
// disableBGPExport. Never the /32s of its own workloads (the block covers them) and never
// tunnel addresses.
func Advertisements(snap *datastore.Snapshot, localNode string) []netip.Prefix {
	exporting := exportingPools(snap)
	var out []netip.Prefix
	for cidr, block := range snap.Blocks {
		out = append(out, blockAdverts(snap, cidr, block, localNode, exporting)...)
	}
	slices.SortFunc(out, ipprefix.Compare)
	return slices.Compact(out)
}

// blockAdverts is what one block makes the local node originate: the block, if the node
// owns it, else the addresses of it the node borrowed; nothing outside exporting pools.
func blockAdverts(snap *datastore.Snapshot, cidr netip.Prefix, block *datastore.AllocationBlock, localNode string, exporting []netip.Prefix) []netip.Prefix {
	if block.Deleted || !insideAny(cidr, exporting) {
		return nil
	}
	if owner, owned := snap.BlockOwner(cidr); owned && owner == localNode {
		return []netip.Prefix{cidr.Masked()}
	}
	return borrowed(cidr, block, localNode)
}

// exportingPools lists the CIDRs of the pools that are enabled and export to BGP. Pools
// never overlap (SPEC §3), so a block inside one of them belongs to it.
func exportingPools(snap *datastore.Snapshot) []netip.Prefix {
	var out []netip.Prefix
	for _, pool := range snap.Pools {
		if pool.Spec.Disabled || pool.Spec.DisableBGPExport {
			continue
		}
		if p, err := netip.ParsePrefix(pool.Spec.CIDR); err == nil {
			out = append(out, p.Masked())
		}
	}
	return out
}

// borrowed lists, as /32s, the addresses of a block that localNode really uses
// (attribute secondary "node"), tunnel addresses excepted.
func borrowed(cidr netip.Prefix, block *datastore.AllocationBlock, localNode string) []netip.Prefix {
	var out []netip.Prefix
	base := cidr.Masked().Addr()
	for ordinal, attrIdx := range block.Allocations {
		if attrIdx == nil || *attrIdx < 0 || *attrIdx >= len(block.Attributes) {
			continue
		}
		sec := block.Attributes[*attrIdx].Secondary
		if sec["node"] != localNode || isTunnelAllocation(sec) {
			continue
		}
		addr, ok := addOrdinal(base, ordinal)
		if !ok || !cidr.Contains(addr) {
			continue
		}
		out = append(out, netip.PrefixFrom(addr, 32))
	}
	return out
}

// isTunnelAllocation recognises the tunnel addresses Calico and tabby allocate
// (secondary "type": "ipipTunnelAddress", "vxlanTunnelAddress", "wireguardTunnelAddress").
func isTunnelAllocation(sec map[string]string) bool {
	switch sec["type"] {
	case "ipipTunnelAddress", "vxlanTunnelAddress", "wireguardTunnelAddress":
		return true
	}
	return false
}

// addOrdinal returns base + n for an IPv4 base.
func addOrdinal(base netip.Addr, n int) (netip.Addr, bool) {
	if !base.Is4() || n < 0 {
		return netip.Addr{}, false
	}
	b := base.As4()
	v := uint64(b[0])<<24 | uint64(b[1])<<16 | uint64(b[2])<<8 | uint64(b[3])
	v += uint64(n)
	if v > 0xffffffff {
		return netip.Addr{}, false
	}
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)}), true
}
