package bgp

import (
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strconv"
	"time"

	"github.com/tabby-net/tabby/datastore"
	"github.com/tabby-net/tabby/datastore/selector"
	"github.com/tabby-net/tabby/internal/ipprefix"
	"github.com/tabby-net/tabby/internal/statusapi"
)

// Defaults from SPEC §3 and §7, Calico's own.
const (
	DefaultASNumber   = 64512
	DefaultListenPort = 179
	// DefaultRestartTime is how long peers keep a restarting node's routes.
	DefaultRestartTime = 120 * time.Second
	// DefaultDeferralTime is how long a restarting node waits for its peers' End-of-RIB
	// before it sends its own routes anyway.
	DefaultDeferralTime = 60 * time.Second
	// maxRestartTime is the largest restart time the 12-bit field of the graceful-restart
	// capability carries (RFC 4724).
	maxRestartTime = 4095 * time.Second
)

// Global is the speaker's identity: what every session shares. A change of RouterID, ASN
// or ListenPort restarts the BGP server, which resets every session; a change of Pools only
// changes which learned routes are reported.
type Global struct {
	// RouterID is the node's IPv4 address. It is also the source address of every session
	// and the next hop of every route the node originates. The zero value means BGP is
	// off (no node address yet): the speaker then runs no server.
	RouterID netip.Addr
	// ASN is the node's AS number.
	ASN uint32
	// ListenPort is the TCP port the node listens on for BGP (179 unless configured).
	ListenPort uint16
	// Pools are the CIDRs of every IP pool. Routes inside them are computed from the
	// datastore, so the speaker reports learned routes only for prefixes outside all of them.
	Pools []netip.Prefix
}

// Peer is one BGP session the node should have.
type Peer struct {
	// Address is the peer's IP; it identifies the session.
	Address netip.Addr
	// Port is the peer's TCP port (179 unless configured).
	Port uint16
	// ASN is the peer's AS number; equal to Global.ASN means iBGP.
	ASN uint32
	// Type is how `tabbyctl node status` names the peering: statusapi.PeerTypeMesh,
	// PeerTypeGlobal or PeerTypeNodeSpecific.
	Type string
	// Source says which resource asked for the session, for logs and problems
	// ("node-to-node mesh with node-2", "BGPPeer rack-tor").
	Source string
	// Passive peers are never dialled: the other side connects. Between two tabby nodes the
	// one with the larger address is passive, so each pair has exactly one TCP session.
	Passive bool
	// Password is the TCP-MD5 key, if any.
	Password Secret
	// RouteReflectorClient is set on a route reflector's sessions with its clients;
	// ClusterID is then the reflector's cluster ID.
	RouteReflectorClient bool
	ClusterID            string
	// KeepOriginalNextHop sends routes learned from others to this (eBGP) peer with their
	// original next hop instead of this node's address.
	KeepOriginalNextHop bool
	// RestartTime is the graceful-restart time announced to this peer: how long it should
	// keep this node's routes while this node restarts. Zero means the speaker's default.
	RestartTime time.Duration
}

// Problem is something in the datastore or on this host that kept the speaker from doing
// part of what it was asked, e.g. a peer left out because its password file is missing.
// The rest of the configuration is still applied.
type Problem struct {
	// Resource names what is wrong: "BGPPeer/rack-tor", "Node/worker-1",
	// "BGPConfiguration/default".
	Resource string
	// Message says what, and never contains a password.
	Message string
}

func (p Problem) String() string { return p.Resource + ": " + p.Message }

// Config computes the node's BGP identity and sessions from a snapshot, the way Calico's
// confd computes BIRD's configuration (SPEC §7):
//
//   - router ID = the node's IPv4 address; AS = the Node's asNumber, else the default
//     BGPConfiguration's, else 64512; listen port from BGPConfiguration "node.<name>",
//     else "default", else 179;
//   - the node-to-node mesh (nodeToNodeMeshEnabled, default true): every other node with
//     an IPv4 address, except route reflectors (nodes with routeReflectorClusterID), which
//     leave the mesh;
//   - BGPPeer resources: global ones (no node, no nodeSelector), node-specific ones (node or
//     nodeSelector matching the local Node's labels), with a peerIP ("ip" or "ip:port") or a
//     peerSelector (the tabby nodes it matches); and, as Calico does, the reverse side of
//     every peering between tabby nodes, so that both ends are configured;
//   - between two tabby nodes the larger address is passive; a route reflector treats its
//     iBGP peers outside its cluster as clients;
//   - passwords are read from <secretsDir>/<name>/<key>.
//
// When one address is asked for more than once, a node-specific peering wins over a global
// one, which wins over the mesh; among equals the resource whose name sorts first wins.
// Anything that cannot be honoured is left out and reported as a Problem; the rest stands.
func Config(snap *datastore.Snapshot, localNode string, secretsDir string) (Global, []Peer, []Problem) {
	g, peers, problems, _ := configure(newCluster(snap), localNode, secretsDir)
	return g, peers, problems
}

// configure computes Config from the snapshot digested: c holds the node problems found
// so far. It also returns the secrets it read, so that a Planner can tell when reading
// them again would give something else.
func configure(c *cluster, localNode string, secretsDir string) (Global, []Peer, []Problem, map[datastore.SecretKeyRef]secretResult) {
	local, ok := c.nodes[localNode]
	if !ok {
		c.problem("Node/"+localNode, "no such node: BGP stays off until tabbyd has registered it")
		return Global{}, nil, c.problems, nil
	}
	if !local.addr.IsValid() {
		c.problem("Node/"+localNode, "no IPv4 address (spec.bgp.ipv4Address): BGP stays off")
		return Global{}, nil, c.problems, nil
	}

	g := Global{
		RouterID:   local.addr,
		ASN:        local.asn,
		ListenPort: local.port,
		Pools:      poolCIDRs(c.snap),
	}

	b := &peerBuilder{cluster: c, local: local, secretsDir: secretsDir, byAddr: map[netip.Addr]candidate{}}
	b.mesh()
	b.bgpPeers()

	peers := make([]Peer, 0, len(b.byAddr))
	for _, cand := range b.byAddr {
		peers = append(peers, cand.peer)
	}
	slices.SortFunc(peers, func(a, b Peer) int { return a.Address.Compare(b.Address) })
	return g, peers, c.problems, b.secrets
}

// nodeInfo is what peering needs to know about one tabby node.
type nodeInfo struct {
	name      string
	addr      netip.Addr // invalid when the node has no (valid) IPv4 address, or another has it
	asn       uint32
	port      uint16
	clusterID string
	labels    map[string]string

	// own is the node's valid IPv4 address, whether it holds it or a node before it (by
	// name) has the same one; problem says why its address is not valid. A Planner's node
	// index keeps them to decide again which node holds an address when nodes change.
	own     netip.Addr
	problem string
}

// nodeIndex is the snapshot's nodes digested for peering: by name, by address and sorted.
type nodeIndex struct {
	nodes       map[string]*nodeInfo
	nodeByAddr  map[netip.Addr]*nodeInfo
	sortedNodes []*nodeInfo // by name, for deterministic output
}

// cluster is what one Config computation works from: the nodes digested, the global BGP
// settings, and the problems found on the way.
type cluster struct {
	*nodeIndex
	snap       *datastore.Snapshot
	defaultCfg *datastore.BGPConfiguration
	problems   []Problem
}

func newCluster(snap *datastore.Snapshot) *cluster {
	c := &cluster{
		nodeIndex: &nodeIndex{
			nodes:      map[string]*nodeInfo{},
			nodeByAddr: map[netip.Addr]*nodeInfo{},
		},
		snap:       snap,
		defaultCfg: snap.BGPConfigs["default"],
	}
	defaultASN, defaultPort := nodeDefaults(c.defaultCfg)
	for _, name := range slices.Sorted(maps.Keys(snap.Nodes)) {
		info := newNodeInfo(name, snap.Nodes[name], defaultASN, defaultPort, snap.BGPConfigs)
		if info.problem != "" {
			c.problem("Node/"+name, info.problem)
		}
		if info.addr.IsValid() {
			if other, dup := c.nodeByAddr[info.addr]; dup {
				c.problem("Node/"+name, sameAddress(info.addr, other.name))
				info.addr = netip.Addr{}
			} else {
				c.nodeByAddr[info.addr] = info
			}
		}
		c.nodes[name] = info
		c.sortedNodes = append(c.sortedNodes, info)
	}
	return c
}

// nodeDefaults are the AS number and listen port of a node that sets none: those of the
// default BGPConfiguration, else 64512 and 179.
func nodeDefaults(defaultCfg *datastore.BGPConfiguration) (uint32, uint16) {
	asn, port := uint32(DefaultASNumber), uint16(DefaultListenPort)
	if defaultCfg != nil {
		if a := defaultCfg.Spec.ASNumber; a != nil && *a != 0 {
			asn = uint32(*a)
		}
		if p := defaultCfg.Spec.ListenPort; p != 0 {
			port = p
		}
	}
	return asn, port
}

// newNodeInfo digests one node, its address not yet checked against the other nodes'.
func newNodeInfo(name string, n *datastore.Node, defaultASN uint32, defaultPort uint16, configs map[string]*datastore.BGPConfiguration) *nodeInfo {
	info := &nodeInfo{name: name, asn: defaultASN, port: defaultPort, labels: n.Metadata.Labels}
	if override := configs["node."+name]; override != nil && override.Spec.ListenPort != 0 {
		info.port = override.Spec.ListenPort
	}
	if bgp := n.Spec.BGP; bgp != nil {
		if bgp.ASNumber != nil && *bgp.ASNumber != 0 {
			info.asn = uint32(*bgp.ASNumber)
		}
		info.clusterID = bgp.RouteReflectorClusterID
		if bgp.IPv4Address != "" {
			if p, err := netip.ParsePrefix(bgp.IPv4Address); err == nil && p.Addr().Is4() {
				info.addr = p.Addr()
			} else if a, err := netip.ParseAddr(bgp.IPv4Address); err == nil && a.Is4() {
				info.addr = a
			} else {
				info.problem = fmt.Sprintf("spec.bgp.ipv4Address %q is not an IPv4 address: the node is left out of BGP", bgp.IPv4Address)
			}
		}
	}
	info.own = info.addr
	return info
}

// sameAddress is the problem of a node whose address a node before it (by name) has.
func sameAddress(addr netip.Addr, holder string) string {
	return fmt.Sprintf("has the same address %s as node %s: the node is left out of BGP peerings", addr, holder)
}

func (c *cluster) problem(resource, msg string) {
	c.problems = append(c.problems, Problem{Resource: resource, Message: msg})
}

// nodesMatching returns the nodes (with an address) that a selector picks, by name.
func (c *cluster) nodesMatching(sel selector.Selector) []*nodeInfo {
	var out []*nodeInfo
	for _, n := range c.sortedNodes {
		if n.addr.IsValid() && sel.Matches(n.labels) {
			out = append(out, n)
		}
	}
	return out
}

// peer rank: which of several requests for one address wins.
const (
	rankMesh = iota + 1
	rankGlobal
	rankNodeSpecific
)

type candidate struct {
	peer Peer
	rank int
}

// peerBuilder collects the local node's sessions.
type peerBuilder struct {
	*cluster
	local      *nodeInfo
	secretsDir string
	byAddr     map[netip.Addr]candidate
	// secrets caches each secretKeyRef read during one Config call, so one unreadable file
	// is reported once per resource and read once.
	secrets map[datastore.SecretKeyRef]secretResult
}

type secretResult struct {
	secret Secret
	err    error
}

// add offers a session; it is kept unless one of higher rank (or equal rank, offered
// earlier) already has the address.
func (b *peerBuilder) add(p Peer, rank int) {
	if p.Address == b.local.addr {
		return
	}
	if old, ok := b.byAddr[p.Address]; ok && old.rank >= rank {
		return
	}
	b.byAddr[p.Address] = candidate{peer: p, rank: rank}
}

// mesh adds the node-to-node mesh.
func (b *peerBuilder) mesh() {
	if cfg := b.defaultCfg; cfg != nil && cfg.Spec.NodeToNodeMeshEnabled != nil && !*cfg.Spec.NodeToNodeMeshEnabled {
		return
	}
	if b.local.clusterID != "" {
		return // route reflectors leave the mesh
	}
	var password Secret
	restart := time.Duration(0)
	if cfg := b.defaultCfg; cfg != nil {
		if ref := cfg.Spec.NodeMeshPassword; ref != nil && ref.SecretKeyRef != nil {
			s, err := b.secret(*ref.SecretKeyRef)
			if err != nil {
				b.problem("BGPConfiguration/default", "nodeMeshPassword: "+err.Error()+": the node-to-node mesh is left out")
				return
			}
			password = s
		}
		if d := cfg.Spec.NodeMeshMaxRestartTime; d != nil {
			restart = d.Duration
		}
	}
	for _, n := range b.sortedNodes {
		if n == b.local || !n.addr.IsValid() || n.clusterID != "" {
			continue
		}
		p := b.nodePeer(n, statusapi.PeerTypeMesh, "node-to-node mesh with "+n.name)
		p.Password = password
		p.RestartTime = restart
		b.add(p, rankMesh)
	}
}

// nodePeer is a session with another tabby node, before the resource's own settings.
func (b *peerBuilder) nodePeer(n *nodeInfo, typ, source string) Peer {
	p := Peer{
		Address: n.addr,
		Port:    n.port,
		ASN:     n.asn,
		Type:    typ,
		Source:  source,
		// One TCP session per pair: the larger address waits for the smaller to dial.
		Passive: b.local.addr.Compare(n.addr) > 0,
	}
	b.reflect(&p, n.clusterID)
	return p
}

// reflect makes an iBGP peer outside the local route reflector's cluster one of its
// clients, as Calico does (a non-node peer has no cluster ID).
func (b *peerBuilder) reflect(p *Peer, peerClusterID string) {
	if b.local.clusterID != "" && p.ASN == b.local.asn && peerClusterID != b.local.clusterID {
		p.RouteReflectorClient = true
		p.ClusterID = b.local.clusterID
	}
}

// bgpPeers adds the sessions BGPPeer resources ask for: first each resource as written
// (local node in scope → peers), then the reverse of each peering between tabby nodes
// (local node is one of the peers → the nodes in scope).
func (b *peerBuilder) bgpPeers() {
	for _, name := range slices.Sorted(maps.Keys(b.snap.BGPPeers)) {
		bp := b.snap.BGPPeers[name]
		res := "BGPPeer/" + name
		spec := bp.Spec
		if spec.Node != "" && spec.NodeSelector != "" {
			b.problem(res, "node and nodeSelector are exclusive: the peer is left out")
			continue
		}
		if (spec.PeerIP == "") == (spec.PeerSelector == "") {
			b.problem(res, "exactly one of peerIP and peerSelector must be set: the peer is left out")
			continue
		}
		scope, err := b.scope(spec)
		if err != nil {
			b.problem(res, err.Error()+": the peer is left out")
			continue
		}
		typ, rank := statusapi.PeerTypeNodeSpecific, rankNodeSpecific
		if spec.Node == "" && spec.NodeSelector == "" {
			typ, rank = statusapi.PeerTypeGlobal, rankGlobal
		}
		source := "BGPPeer " + name

		var forward []Peer
		localIsTarget := false
		if spec.PeerSelector != "" {
			sel, err := selector.Parse(spec.PeerSelector)
			if err != nil {
				b.problem(res, fmt.Sprintf("peerSelector: %v: the peer is left out", err))
				continue
			}
			for _, n := range b.nodesMatching(sel) {
				if n == b.local {
					localIsTarget = true
					continue
				}
				forward = append(forward, b.nodePeer(n, typ, source))
			}
		} else {
			p, isLocal, err := b.ipPeer(spec, typ, source)
			if err != nil {
				b.problem(res, err.Error()+": the peer is left out")
				continue
			}
			localIsTarget = isLocal
			if !isLocal {
				forward = append(forward, p)
			}
		}

		var reverse []Peer
		if localIsTarget {
			for _, n := range scope.nodes(b.cluster) {
				if n != b.local {
					reverse = append(reverse, b.nodePeer(n, statusapi.PeerTypeNodeSpecific, source+" (reverse)"))
				}
			}
		}
		if !scope.includes(b.local) {
			forward = nil
		}
		if len(forward) == 0 && len(reverse) == 0 {
			continue
		}

		password, err := b.peerPassword(spec)
		if err != nil {
			b.problem(res, "password: "+err.Error()+": the peer is left out")
			continue
		}
		for _, p := range forward {
			b.add(b.withResource(p, spec, password), rank)
		}
		for _, p := range reverse {
			b.add(b.withResource(p, spec, password), rankNodeSpecific)
		}
	}
}

// withResource applies a BGPPeer's own settings to one of its sessions.
func (b *peerBuilder) withResource(p Peer, spec datastore.BGPPeerSpec, password Secret) Peer {
	p.Password = password
	p.KeepOriginalNextHop = spec.KeepOriginalNextHop && p.ASN != b.local.asn
	if spec.MaxRestartTime != nil {
		p.RestartTime = spec.MaxRestartTime.Duration
	}
	return p
}

// ipPeer is the session a peerIP asks for. isLocal reports that the address is the local
// node's own (this node is the one being peered with).
func (b *peerBuilder) ipPeer(spec datastore.BGPPeerSpec, typ, source string) (p Peer, isLocal bool, err error) {
	addr, port, err := parsePeerIP(spec.PeerIP)
	if err != nil {
		return Peer{}, false, err
	}
	node := b.nodeByAddr[addr]
	if node == b.local && (spec.ASNumber == 0 || uint32(spec.ASNumber) == b.local.asn) && (port == 0 || port == b.local.port) {
		return Peer{}, true, nil
	}
	asn := uint32(spec.ASNumber)
	if node != nil {
		if port == 0 {
			port = node.port
		}
		if asn == 0 {
			asn = node.asn
		}
	}
	if asn == 0 {
		return Peer{}, false, fmt.Errorf("peerIP %s is not a tabby node and asNumber is not set", spec.PeerIP)
	}
	if port == 0 {
		port = DefaultListenPort
	}
	p = Peer{Address: addr, Port: port, ASN: asn, Type: typ, Source: source}
	if node != nil {
		p.Passive = b.local.addr.Compare(node.addr) > 0
		b.reflect(&p, node.clusterID)
	} else {
		b.reflect(&p, "")
	}
	return p, false, nil
}

// parsePeerIP reads "ip" or "ip:port" (IPv4 only: tabby speaks IPv4 BGP).
func parsePeerIP(s string) (netip.Addr, uint16, error) {
	if ap, err := netip.ParseAddrPort(s); err == nil {
		if !ap.Addr().Is4() || ap.Port() == 0 {
			return netip.Addr{}, 0, fmt.Errorf("peerIP %q is not an IPv4 address with a port", s)
		}
		return ap.Addr(), ap.Port(), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil || !a.Is4() {
		return netip.Addr{}, 0, fmt.Errorf("peerIP %q is not an IPv4 address or ip:port", s)
	}
	return a, 0, nil
}

// peerScope is the set of nodes a BGPPeer applies to: one node, a selector, or every node.
type peerScope struct {
	node string
	sel  *selector.Selector // nil with node == "": every node
}

func (b *peerBuilder) scope(spec datastore.BGPPeerSpec) (peerScope, error) {
	switch {
	case spec.Node != "":
		return peerScope{node: spec.Node}, nil
	case spec.NodeSelector != "":
		sel, err := selector.Parse(spec.NodeSelector)
		if err != nil {
			return peerScope{}, fmt.Errorf("nodeSelector: %w", err)
		}
		return peerScope{sel: &sel}, nil
	}
	return peerScope{}, nil
}

func (s peerScope) includes(n *nodeInfo) bool {
	switch {
	case s.node != "":
		return n.name == s.node
	case s.sel != nil:
		return s.sel.Matches(n.labels)
	}
	return true
}

func (s peerScope) nodes(c *cluster) []*nodeInfo {
	var out []*nodeInfo
	for _, n := range c.sortedNodes {
		if n.addr.IsValid() && s.includes(n) {
			out = append(out, n)
		}
	}
	return out
}

func (b *peerBuilder) peerPassword(spec datastore.BGPPeerSpec) (Secret, error) {
	if spec.Password == nil || spec.Password.SecretKeyRef == nil {
		return Secret{}, nil
	}
	return b.secret(*spec.Password.SecretKeyRef)
}

func (b *peerBuilder) secret(ref datastore.SecretKeyRef) (Secret, error) {
	if r, ok := b.secrets[ref]; ok {
		return r.secret, r.err
	}
	s, err := readSecret(b.secretsDir, ref.Name, ref.Key)
	if b.secrets == nil {
		b.secrets = map[datastore.SecretKeyRef]secretResult{}
	}
	b.secrets[ref] = secretResult{secret: s, err: err}
	return s, err
}

// poolCIDRs lists every pool's CIDR, disabled pools included: their routes still come
// from the datastore.
func poolCIDRs(snap *datastore.Snapshot) []netip.Prefix {
	var out []netip.Prefix
	for _, pool := range snap.Pools {
		if p, err := netip.ParsePrefix(pool.Spec.CIDR); err == nil {
			out = append(out, p.Masked())
		}
	}
	slices.SortFunc(out, ipprefix.Compare)
	return out
}

// portSuffix renders ":port" for a non-default port, as the status table shows addresses.
func portSuffix(port uint16) string {
	if port == 0 || port == DefaultListenPort {
		return ""
	}
	return ":" + strconv.Itoa(int(port))
}
