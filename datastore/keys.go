package datastore

import (
	"fmt"
	"net/netip"
	"strings"
)

// DefaultPrefix is the key root Calico uses.
const DefaultPrefix = "/calico"

// Plural names of the resource kinds in their etcd keys.
var kindPlurals = map[string]string{
	KindIPPool:           "ippools",
	KindBGPConfiguration: "bgpconfigurations",
	KindBGPPeer:          "bgppeers",
	KindNode:             "nodes",
	KindIPReservation:    "ipreservations",
	// KindIPAMConfiguration has no key of its own: it is a view of the IPAM config key.
}

// Plural returns the key segment of a kind ("ippools" for IPPool), or "" for an unknown kind.
func Plural(kind string) string { return kindPlurals[kind] }

// Keys builds and parses the etcd keys of Calico's layout under one root (SPEC §2).
type Keys struct {
	// Root is the key root without a trailing slash, "/calico" by default.
	Root string
}

// NewKeys returns the key layout under root ("" means DefaultPrefix).
func NewKeys(root string) Keys {
	if root == "" {
		root = DefaultPrefix
	}
	return Keys{Root: strings.TrimRight(root, "/")}
}

// ResourcePrefix is the prefix of every resource of one kind (with a trailing slash).
func (k Keys) ResourcePrefix(kind string) string {
	return k.Root + "/resources/v3/projectcalico.org/" + Plural(kind) + "/"
}

// Resource is the key of one resource.
func (k Keys) Resource(kind, name string) string { return k.ResourcePrefix(kind) + name }

// BlockPrefix is the prefix of every IPv4 allocation block.
func (k Keys) BlockPrefix() string { return k.Root + "/ipam/v2/assignment/ipv4/block/" }

// Block is the key of the allocation block with this CIDR.
func (k Keys) Block(cidr netip.Prefix) string { return k.BlockPrefix() + cidrSegment(cidr) }

// HostPrefix is the prefix of every block affinity of every host.
func (k Keys) HostPrefix() string { return k.Root + "/ipam/v2/host/" }

// AffinityPrefix is the prefix of one host's IPv4 block affinities.
func (k Keys) AffinityPrefix(host string) string {
	return k.HostPrefix() + host + "/ipv4/block/"
}

// Affinity is the key of one host's affinity to one block.
func (k Keys) Affinity(host string, cidr netip.Prefix) string {
	return k.AffinityPrefix(host) + cidrSegment(cidr)
}

// HandlePrefix is the prefix of every IPAM handle.
func (k Keys) HandlePrefix() string { return k.Root + "/ipam/v2/handle/" }

// Handle is the key of one IPAM handle.
func (k Keys) Handle(id string) string { return k.HandlePrefix() + id }

// IPAMConfig is the key of the IPAM configuration.
func (k Keys) IPAMConfig() string { return k.Root + "/ipam/v2/config" }

// cidrSegment renders 192.168.1.0/26 as "192.168.1.0-26", the form Calico uses in keys.
func cidrSegment(p netip.Prefix) string {
	return fmt.Sprintf("%s-%d", p.Addr(), p.Bits())
}

// ParseCIDRSegment parses the "192.168.1.0-26" form of a key segment.
func ParseCIDRSegment(s string) (netip.Prefix, error) {
	addr, bits, ok := strings.Cut(s, "-")
	if !ok {
		return netip.Prefix{}, fmt.Errorf("key segment %q is not of the form <net>-<len>", s)
	}
	p, err := netip.ParsePrefix(addr + "/" + bits)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("key segment %q: %w", s, err)
	}
	return p, nil
}

// KeyType says what a key under the root holds.
type KeyType int

const (
	KeyUnknown KeyType = iota
	KeyResource
	KeyBlock
	KeyAffinity
	KeyHandle
	KeyIPAMConfig
)

// KeyInfo is a parsed key.
type KeyInfo struct {
	Type KeyType
	Kind string       // KeyResource
	Name string       // KeyResource: resource name; KeyHandle: handle ID
	Host string       // KeyAffinity
	CIDR netip.Prefix // KeyBlock, KeyAffinity
}

// Parse says what a key holds. Keys outside the layout come back as KeyUnknown with a nil
// error; a key inside the layout whose parts do not parse is an error.
func (k Keys) Parse(key string) (KeyInfo, error) {
	rest, ok := strings.CutPrefix(key, k.Root+"/")
	if !ok {
		return KeyInfo{}, nil
	}
	parts := strings.Split(rest, "/")
	switch {
	case len(parts) == 5 && parts[0] == "resources" && parts[1] == "v3" && parts[2] == "projectcalico.org":
		for kind, plural := range kindPlurals {
			if plural == parts[3] && parts[4] != "" {
				return KeyInfo{Type: KeyResource, Kind: kind, Name: parts[4]}, nil
			}
		}
	case len(parts) == 6 && parts[0] == "ipam" && parts[1] == "v2" && parts[2] == "assignment" && parts[3] == "ipv4" && parts[4] == "block":
		p, err := ParseCIDRSegment(parts[5])
		if err != nil {
			return KeyInfo{}, fmt.Errorf("block key %s: %w", key, err)
		}
		return KeyInfo{Type: KeyBlock, CIDR: p}, nil
	case len(parts) == 7 && parts[0] == "ipam" && parts[1] == "v2" && parts[2] == "host" && parts[4] == "ipv4" && parts[5] == "block":
		p, err := ParseCIDRSegment(parts[6])
		if err != nil {
			return KeyInfo{}, fmt.Errorf("affinity key %s: %w", key, err)
		}
		return KeyInfo{Type: KeyAffinity, Host: parts[3], CIDR: p}, nil
	case len(parts) == 4 && parts[0] == "ipam" && parts[1] == "v2" && parts[2] == "handle" && parts[3] != "":
		return KeyInfo{Type: KeyHandle, Name: parts[3]}, nil
	case len(parts) == 3 && parts[0] == "ipam" && parts[1] == "v2" && parts[2] == "config":
		return KeyInfo{Type: KeyIPAMConfig}, nil
	}
	return KeyInfo{}, nil
}
