package lab

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"sort"
	"strings"

	"github.com/tabby-net/tabby/datastore"
)

// Tunnel device names and overheads of SPEC §5, spelled out here rather than imported
// from tabby's routing package: the lab checks tabbyd against the specification, so it
// must not share the code it checks.
const (
	ipipDevice    = "tunl0"
	vxlanDevice   = "vxlan.tabby"
	ipipOverhead  = 20
	vxlanOverhead = 50
)

// ClusterState is what the routes of SPEC §5 are computed from: the Nodes, the pools and
// the IPAM blocks with their affinities, as stored in etcd.
type ClusterState struct {
	Nodes []*datastore.Node
	Pools []*datastore.IPPool
	// Blocks by CIDR, and the confirmed affinities (block → node).
	Blocks     map[netip.Prefix]*datastore.AllocationBlock
	Affinities map[netip.Prefix]string
}

// ReadState reads the Nodes, pools, blocks and confirmed affinities from etcd.
func ReadState(ctx context.Context, ds *datastore.Client) (*ClusterState, error) {
	st := &ClusterState{Blocks: map[netip.Prefix]*datastore.AllocationBlock{}, Affinities: map[netip.Prefix]string{}}
	var err error
	if st.Nodes, err = ds.ListNodes(ctx); err != nil {
		return nil, fmt.Errorf("list nodes: %w", err)
	}
	if st.Pools, err = ds.ListIPPools(ctx); err != nil {
		return nil, fmt.Errorf("list pools: %w", err)
	}
	blocks, _, err := ds.List(ctx, ds.Keys.BlockPrefix())
	if err != nil {
		return nil, err
	}
	for _, kv := range blocks {
		info, err := ds.Keys.Parse(kv.Key)
		if err != nil || info.Type != datastore.KeyBlock {
			continue
		}
		var b datastore.AllocationBlock
		if err := json.Unmarshal(kv.Value, &b); err != nil {
			return nil, fmt.Errorf("block %s: %w", kv.Key, err)
		}
		st.Blocks[info.CIDR] = &b
	}
	affs, _, err := ds.List(ctx, ds.Keys.HostPrefix())
	if err != nil {
		return nil, err
	}
	for _, kv := range affs {
		info, err := ds.Keys.Parse(kv.Key)
		if err != nil || info.Type != datastore.KeyAffinity {
			continue
		}
		// An empty value is a confirmed affinity (SPEC §2).
		a := datastore.BlockAffinity{}
		if len(kv.Value) > 0 {
			if err := json.Unmarshal(kv.Value, &a); err != nil {
				return nil, fmt.Errorf("affinity %s: %w", kv.Key, err)
			}
		}
		if a.Confirmed() {
			st.Affinities[info.CIDR] = info.Host
		}
	}
	return st, nil
}

// Owner returns the node that owns a block: the block names it as its host and that
// host's affinity is confirmed. A pending affinity counts as absent.
func (s *ClusterState) Owner(cidr netip.Prefix) (string, bool) {
	b, ok := s.Blocks[cidr]
	if !ok || b.Deleted {
		return "", false
	}
	host := b.AffinityHost()
	if host == "" || s.Affinities[cidr] != host {
		return "", false
	}
	return host, true
}

// BlocksOf returns the blocks a node owns, sorted.
func (s *ClusterState) BlocksOf(node string) []netip.Prefix {
	var out []netip.Prefix
	for cidr := range s.Blocks {
		if owner, ok := s.Owner(cidr); ok && owner == node {
			out = append(out, cidr)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Addr().Less(out[j].Addr()) })
	return out
}

func (s *ClusterState) node(name string) *datastore.Node {
	for _, n := range s.Nodes {
		if n.Metadata.Name == name {
			return n
		}
	}
	return nil
}

func (s *ClusterState) poolFor(p netip.Prefix) *datastore.IPPool {
	for _, pool := range s.Pools {
		c, err := netip.ParsePrefix(pool.Spec.CIDR)
		if err == nil && c.Bits() <= p.Bits() && c.Contains(p.Addr()) {
			return pool
		}
	}
	return nil
}

// RouteHost is what ExpectedRoutes needs to know about the host it computes for.
type RouteHost struct {
	Name    string
	Addr    netip.Prefix // its node address with the subnet's prefix
	Gateway netip.Addr   // the router it reaches other subnets through
	NIC     string
	MTU     int
}

// ExpectedRoutes returns the routes SPEC §5 says tabbyd installs on a host, with tabby's
// protocol, as TabbyRoutes prints them (sorted `ip route` lines): a blackhole per own
// block, and per block of another node a route whose form the pool's mode decides.
// Routes it cannot compute (a node without an address or tunnel address yet) come back
// as errors, so that a caller polling for convergence keeps waiting.
func ExpectedRoutes(st *ClusterState, h RouteHost) ([]string, error) {
	var out []string
	var missing []string
	add := func(dst netip.Prefix, pool *datastore.IPPool, node string) {
		line, err := routeLine(st, h, dst, pool, node)
		if err != nil {
			missing = append(missing, err.Error())
			return
		}
		out = append(out, line)
	}
	cidrs := make([]netip.Prefix, 0, len(st.Blocks))
	for c := range st.Blocks {
		cidrs = append(cidrs, c)
	}
	sort.Slice(cidrs, func(i, j int) bool { return cidrs[i].Addr().Less(cidrs[j].Addr()) })
	for _, cidr := range cidrs {
		blk := st.Blocks[cidr]
		pool := st.poolFor(cidr)
		if blk.Deleted || pool == nil {
			continue
		}
		if owner, ok := st.Owner(cidr); ok {
			if owner == h.Name {
				out = append(out, fmt.Sprintf("blackhole %s proto %d", cidr, TabbyRouteProtocol))
			} else {
				add(cidr, pool, owner)
			}
		}
		// Addresses used by a node other than the block's host get a /32 to that node.
		ip := cidr.Addr()
		for ord, idx := range blk.Allocations {
			if ord > 0 {
				ip = ip.Next()
			}
			if idx == nil || *idx < 0 || *idx >= len(blk.Attributes) {
				continue
			}
			user := blk.Attributes[*idx].Secondary["node"]
			if user == "" || user == blk.AffinityHost() || user == h.Name {
				continue
			}
			add(netip.PrefixFrom(ip, 32), pool, user)
		}
	}
	sort.Strings(out)
	if len(missing) > 0 {
		return out, fmt.Errorf("not computable yet: %s", strings.Join(missing, "; "))
	}
	return out, nil
}

// routeLine is one row of SPEC §5's table, seen from h, for dst used by node.
func routeLine(st *ClusterState, h RouteHost, dst netip.Prefix, pool *datastore.IPPool, node string) (string, error) {
	n := st.node(node)
	if n == nil || n.Spec.BGP == nil {
		return "", fmt.Errorf("node %s has no ipv4Address", node)
	}
	addr, err := netip.ParsePrefix(n.Spec.BGP.IPv4Address)
	if err != nil {
		return "", fmt.Errorf("node %s: ipv4Address %q: %w", node, n.Spec.BGP.IPv4Address, err)
	}
	nodeIP := addr.Addr()
	same := h.Addr.Masked().Contains(nodeIP)
	ipip, vxlan := pool.Spec.IPIPMode, pool.Spec.VXLANMode
	proto := TabbyRouteProtocol
	switch {
	case vxlan == datastore.EncapAlways || (vxlan == datastore.EncapCrossSubnet && !same):
		tun, err := netip.ParsePrefix(withLen(n.Spec.IPv4VXLANTunnelAddr))
		if err != nil {
			return "", fmt.Errorf("node %s has no VXLAN tunnel address", node)
		}
		if _, err := net.ParseMAC(n.Spec.VXLANTunnelMACAddr); err != nil {
			return "", fmt.Errorf("node %s has no VTEP MAC", node)
		}
		return fmt.Sprintf("%s via %s dev %s proto %d onlink mtu %d", dst, tun.Addr(), vxlanDevice, proto, h.MTU-vxlanOverhead), nil
	case vxlan == datastore.EncapCrossSubnet:
		// "as Direct" to a node on the link: no onlink flag, unlike IPIP CrossSubnet.
		return fmt.Sprintf("%s via %s dev %s proto %d", dst, nodeIP, h.NIC, proto), nil
	case ipip == datastore.EncapAlways || (ipip == datastore.EncapCrossSubnet && !same):
		return fmt.Sprintf("%s via %s dev %s proto %d onlink mtu %d", dst, nodeIP, ipipDevice, proto, h.MTU-ipipOverhead), nil
	case ipip == datastore.EncapCrossSubnet:
		return fmt.Sprintf("%s via %s dev %s proto %d onlink", dst, nodeIP, h.NIC, proto), nil
	case same:
		return fmt.Sprintf("%s via %s dev %s proto %d", dst, nodeIP, h.NIC, proto), nil
	default:
		// Direct to a node in another subnet: via the gateway, which must know dst.
		return fmt.Sprintf("%s via %s dev %s proto %d", dst, h.Gateway, h.NIC, proto), nil
	}
}

func withLen(s string) string {
	if s != "" && !strings.Contains(s, "/") {
		return s + "/32"
	}
	return s
}

// RouteHost returns the RouteHost of one of the lab's hosts.
func (t *Topology) RouteHost(name string) (RouteHost, error) {
	h, ok := t.Host(name)
	if !ok {
		return RouteHost{}, fmt.Errorf("unknown host %q", name)
	}
	return RouteHost{Name: h.Name, Addr: h.Addr, Gateway: t.Gateway(h), NIC: NIC, MTU: t.MTU}, nil
}

// RouteDiff describes how installed routes differ from expected ones, "" when they match.
func RouteDiff(want, got []string) string {
	w, g := map[string]bool{}, map[string]bool{}
	for _, l := range want {
		w[l] = true
	}
	for _, l := range got {
		g[l] = true
	}
	var b strings.Builder
	for _, l := range want {
		if !g[l] {
			fmt.Fprintf(&b, "  missing: %s\n", l)
		}
	}
	for _, l := range got {
		if !w[l] {
			fmt.Fprintf(&b, "  extra:   %s\n", l)
		}
	}
	return b.String()
}
