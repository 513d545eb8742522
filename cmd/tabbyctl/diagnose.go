package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"sort"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/tabby-net/tabby/bgp/secret"
	"github.com/tabby-net/tabby/cmd/tabbyctl/internal/diagnose"
	"github.com/tabby-net/tabby/datastore"
	"github.com/tabby-net/tabby/internal/statusapi"
)

// newNodeDiagnoseCmd is `tabbyctl node diagnose` (SPEC §11): it checks from this host what
// the articles found by hand when pods could not reach each other on AWS, and says how to
// fix each problem. What it knows of this host comes from three places: the local tabbyd
// (node name, address, BGP sessions, host MTU, kernel problems), etcd (the other nodes and
// their tunnel addresses, the pools' modes, this node's blocks) and the kernel (the
// interface that holds the node address, and its real prefix).
func newNodeDiagnoseCmd(opts *globalOptions) *cobra.Command {
	var timeout time.Duration
	var secretsDir string
	cmd := &cobra.Command{
		Use:   "diagnose",
		Short: "check BGP, tunnels, the fabric's source/destination check, MTU and the node address from this host",
		Long: `Checks from this host, against every other node: ping, TCP 179 (BGP), IP-in-IP
(protocol 4) or VXLAN (UDP 4789) through the tunnel the pools use, whether packets with pool
addresses cross the fabric (AWS source/destination check, or a router that does not know
the blocks), the path MTU, and whether the node address has the interface's prefix.
Prints every finding with its fix; exits 1 when it finds a problem.`,
		Args: usageArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			in, err := gatherDiagnoseInput(ctx, opts, secretsDir)
			if err != nil {
				return err
			}
			rep := diagnose.Run(ctx, in, diagnose.KernelProber{Timeout: timeout})
			diagnose.Print(cmd.OutOrStdout(), rep)
			if !rep.OK() {
				// The report has said everything; exit 1 without another message.
				return errSilentFailure
			}
			return nil
		},
	}
	cmd.Flags().DurationVar(&timeout, "probe-timeout", 2*time.Second, "how long each probe waits for an answer")
	cmd.Flags().StringVar(&secretsDir, "secrets-dir", "/etc/tabby/secrets", "tabbyd's bgp.secretsDir: BGP passwords are read from it to probe TCP 179 as BGP does (root only)")
	return cmd
}

// gatherDiagnoseInput reads the local tabbyd's status, the datastore and the local
// interfaces into a diagnose.Input.
func gatherDiagnoseInput(ctx context.Context, opts *globalOptions, secretsDir string) (diagnose.Input, error) {
	fetchCtx, cancel := context.WithTimeout(ctx, opts.timeout)
	defer cancel()
	st, err := statusapi.Fetch(fetchCtx, opts.socketPath())
	if err != nil {
		return diagnose.Input{}, err
	}
	ds, err := opts.client()
	if err != nil {
		return diagnose.Input{}, err
	}
	defer ds.Close()
	nodes, err := ds.ListNodes(fetchCtx)
	if err != nil {
		return diagnose.Input{}, fmt.Errorf("read the nodes from etcd: %w", err)
	}
	pools, err := ds.ListIPPools(fetchCtx)
	if err != nil {
		return diagnose.Input{}, fmt.Errorf("read the IP pools from etcd: %w", err)
	}
	local, err := localView(st, nodes)
	if err != nil {
		return diagnose.Input{}, err
	}
	if local.Block, err = nodeBlock(fetchCtx, ds, local.Node); err != nil {
		return diagnose.Input{}, err
	}
	nic, nicPrefix, nicMTU, err := interfaceHolding(local.Addr.Addr())
	if err != nil {
		return diagnose.Input{}, err
	}
	local.NIC, local.NICPrefix = nic, nicPrefix
	if local.HostMTU == 0 {
		local.HostMTU = nicMTU
	}
	// Only enabled pools decide how traffic is carried now.
	var enabled []*datastore.IPPool
	for _, p := range pools {
		if !p.Spec.Disabled {
			enabled = append(enabled, p)
		}
	}
	bgpPeers, err := ds.ListBGPPeers(fetchCtx)
	if err != nil {
		return diagnose.Input{}, fmt.Errorf("read the BGP peers from etcd: %w", err)
	}
	bgpConfigs, err := ds.ListBGPConfigurations(fetchCtx)
	if err != nil {
		return diagnose.Input{}, fmt.Errorf("read the BGP configurations from etcd: %w", err)
	}
	keys := peerKeys(st.Peers, bgpPeers, bgpConfigs, secretsDir)
	return diagnose.Input{Local: local, Peers: st.Peers, Nodes: nodes, Pools: enabled, Keys: keys}, nil
}

// peerKeys reads the TCP-MD5 password of each session that has one, from the secret file
// tabbyd reads: nodeMeshPassword for mesh sessions, the BGPPeer's password for a peer
// with that peerIP. A password that cannot be read here (tabbyctl not run as root) is
// noted with the reason, so that the diagnosis does not call its silence a blocked port.
func peerKeys(peers []statusapi.Peer, bgpPeers []*datastore.BGPPeer, configs []*datastore.BGPConfiguration, secretsDir string) map[netip.Addr]diagnose.PeerKey {
	var meshRef *datastore.SecretKeyRef
	for _, c := range configs {
		if c.Metadata.Name == "default" && c.Spec.NodeMeshPassword != nil {
			meshRef = c.Spec.NodeMeshPassword.SecretKeyRef
		}
	}
	refFor := func(p statusapi.Peer, addr netip.Addr) *datastore.SecretKeyRef {
		if p.Type == statusapi.PeerTypeMesh {
			return meshRef
		}
		for _, bp := range bgpPeers {
			if bp.Spec.Password == nil || bp.Spec.Password.SecretKeyRef == nil {
				continue
			}
			if a, err := peerIPAddr(bp.Spec.PeerIP); err == nil && a == addr {
				return bp.Spec.Password.SecretKeyRef
			}
		}
		return nil
	}
	keys := map[netip.Addr]diagnose.PeerKey{}
	for _, p := range peers {
		addr, err := peerIPAddr(p.Address)
		if err != nil {
			continue
		}
		ref := refFor(p, addr)
		if ref == nil {
			continue
		}
		key, err := secret.Read(secretsDir, ref.Name, ref.Key)
		if err != nil {
			keys[addr] = diagnose.PeerKey{Unreadable: err.Error()}
			continue
		}
		keys[addr] = diagnose.PeerKey{Key: key}
	}
	return keys
}

// peerIPAddr reads "10.0.0.1" or "10.0.0.1:1790" (a peerIP, or a status address).
func peerIPAddr(s string) (netip.Addr, error) {
	if ap, err := netip.ParseAddrPort(s); err == nil {
		return ap.Addr(), nil
	}
	return netip.ParseAddr(s)
}

// localView is this host as tabbyd and the datastore describe it. The node address is the
// one stored in the Node (what the other nodes route to and what CrossSubnet compares);
// tabbyd's own view stands in while the Node has none.
func localView(st *statusapi.Status, nodes []*datastore.Node) (diagnose.Local, error) {
	local := diagnose.Local{Node: st.Node, HostMTU: st.HostMTU}
	addr := st.NodeAddress
	for _, n := range nodes {
		if n.Metadata.Name == st.Node && n.Spec.BGP != nil && n.Spec.BGP.IPv4Address != "" {
			addr = n.Spec.BGP.IPv4Address
		}
	}
	p, err := netip.ParsePrefix(addr)
	if err != nil {
		return local, fmt.Errorf("node %s has no usable IPv4 address (%q): is tabbyd running and registered?", st.Node, addr)
	}
	local.Addr = p
	for _, line := range append(append([]string(nil), st.Problems...), st.NotReady...) {
		if strings.Contains(line, "kernel has no ipip support") {
			local.NoIPIP = true
		}
	}
	return local, nil
}

// nodeBlock returns the first block with a confirmed affinity to node: its first address
// is the pool source address of the fabric probe. No block is not an error; the probe
// then says it was skipped.
func nodeBlock(ctx context.Context, ds *datastore.Client, node string) (netip.Prefix, error) {
	kvs, _, err := ds.List(ctx, ds.Keys.AffinityPrefix(node))
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("read the block affinities of %s: %w", node, err)
	}
	var blocks []netip.Prefix
	for _, kv := range kvs {
		info, err := ds.Keys.Parse(kv.Key)
		if err != nil || info.Type != datastore.KeyAffinity {
			continue
		}
		var a datastore.BlockAffinity
		if len(kv.Value) > 0 {
			if err := json.Unmarshal(kv.Value, &a); err != nil {
				continue
			}
		}
		if a.Confirmed() {
			blocks = append(blocks, info.CIDR)
		}
	}
	if len(blocks) == 0 {
		return netip.Prefix{}, nil
	}
	sort.Slice(blocks, func(i, j int) bool { return blocks[i].Addr().Less(blocks[j].Addr()) })
	return blocks[0], nil
}

// interfaceHolding finds the interface that has addr, with the prefix it has there and
// the interface's MTU.
func interfaceHolding(addr netip.Addr) (string, netip.Prefix, int, error) {
	ifs, err := net.Interfaces()
	if err != nil {
		return "", netip.Prefix{}, 0, fmt.Errorf("list interfaces: %w", err)
	}
	for _, ifi := range ifs {
		addrs, err := ifi.Addrs()
		if err != nil {
			continue
		}
		for _, a := range addrs {
			ipn, ok := a.(*net.IPNet)
			if !ok {
				continue
			}
			ip, ok := netip.AddrFromSlice(ipn.IP)
			if !ok || ip.Unmap() != addr {
				continue
			}
			bits, _ := ipn.Mask.Size()
			return ifi.Name, netip.PrefixFrom(addr, bits), ifi.MTU, nil
		}
	}
	return "", netip.Prefix{}, 0, fmt.Errorf("no interface of this host has the node address %s: run node diagnose on the node itself", addr)
}
