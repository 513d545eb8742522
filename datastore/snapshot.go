package datastore

import "net/netip"

// AffinityKey identifies one host's affinity to one block.
type AffinityKey struct {
	Host string
	CIDR netip.Prefix
}

// Problem is a document in etcd that tabby could not accept. The last valid version of
// that resource (if any) stays in force in the snapshot.
type Problem struct {
	Key         string
	ModRevision int64
	Err         string
}

// Snapshot is a consistent view of the whole key root at one etcd revision. Every resource
// in it is valid and has its defaults applied. Subscribers share snapshots, and snapshots
// share unchanged objects (and equal small maps inside IPAM records) with each other: treat
// them and everything they point to as read-only, and Clone what you want to change.
type Snapshot struct {
	// Revision is the etcd revision the snapshot reflects: every change under the key root
	// up to it is in, none after it.
	Revision int64

	Pools      map[string]*IPPool           // by name
	Nodes      map[string]*Node             // by name
	BGPPeers   map[string]*BGPPeer          // by name
	BGPConfigs map[string]*BGPConfiguration // by name ("default", "node.<name>")

	Blocks     map[netip.Prefix]*AllocationBlock // by block CIDR
	Affinities map[AffinityKey]BlockAffinity
	Handles    map[string]*IPAMHandle // by handle ID
	IPAMConfig IPAMConfig             // defaults when none is stored

	// Problems lists the documents that were refused, sorted by key.
	Problems []Problem
}

// NewSnapshot returns an empty snapshot with its maps allocated and the default IPAM config.
func NewSnapshot() *Snapshot {
	return &Snapshot{
		Pools:      map[string]*IPPool{},
		Nodes:      map[string]*Node{},
		BGPPeers:   map[string]*BGPPeer{},
		BGPConfigs: map[string]*BGPConfiguration{},
		Blocks:     map[netip.Prefix]*AllocationBlock{},
		Affinities: map[AffinityKey]BlockAffinity{},
		Handles:    map[string]*IPAMHandle{},
		IPAMConfig: DefaultIPAMConfig(),
	}
}

// BlockOwner returns the node that owns a block for routing and advertising: the block's
// affine host, when that host's affinity to the block is confirmed. Pending affinities
// count as absent.
func (s *Snapshot) BlockOwner(cidr netip.Prefix) (string, bool) {
	b, ok := s.Blocks[cidr]
	if !ok || b.Deleted {
		return "", false
	}
	host := b.AffinityHost()
	if host == "" {
		return "", false
	}
	aff, ok := s.Affinities[AffinityKey{Host: host, CIDR: cidr}]
	if !ok || !aff.Confirmed() {
		return "", false
	}
	return host, true
}

// PoolFor returns the pool whose CIDR contains p, or nil.
func (s *Snapshot) PoolFor(p netip.Prefix) *IPPool {
	for _, pool := range s.Pools {
		c, err := netip.ParsePrefix(pool.Spec.CIDR)
		if err == nil && c.Bits() <= p.Bits() && c.Contains(p.Addr()) {
			return pool
		}
	}
	return nil
}

// BGPConfig returns the cluster-wide BGP configuration in force: the stored "default"
// (with its defaults applied), or every default when none is stored.
func (s *Snapshot) BGPConfig() *BGPConfiguration {
	if c, ok := s.BGPConfigs[DefaultBGPConfigurationName]; ok {
		return c
	}
	return DefaultBGPConfiguration()
}

// BGPListenPort returns the port BGP listens on at a node: the listenPort of its
// node-specific BGPConfiguration ("node.<name>") when that sets one, else the cluster-wide
// one.
func (s *Snapshot) BGPListenPort(node string) uint16 {
	if c, ok := s.BGPConfigs[NodeBGPConfigurationPrefix+node]; ok && c.Spec.ListenPort != 0 {
		return c.Spec.ListenPort
	}
	if p := s.BGPConfig().Spec.ListenPort; p != 0 {
		return p
	}
	return DefaultBGPListenPort
}
