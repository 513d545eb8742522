package datastore

import (
	"fmt"
	"slices"
	"strings"
)

// Resource is one of tabby's resource kinds (*IPPool, *BGPConfiguration, *BGPPeer, *Node,
// *IPAMConfiguration, *IPReservation). Code that handles any kind (tabbyctl, the codec, the syncer) works through it;
// code that needs one kind uses the typed methods of Client.
type Resource interface {
	// ResourceKind is the kind as written in manifests ("IPPool").
	ResourceKind() string
	// Meta is the resource's metadata, for reading and writing.
	Meta() *ObjectMeta
}

func (p *IPPool) ResourceKind() string            { return KindIPPool }
func (p *IPPool) Meta() *ObjectMeta               { return &p.Metadata }
func (c *BGPConfiguration) ResourceKind() string  { return KindBGPConfiguration }
func (c *BGPConfiguration) Meta() *ObjectMeta     { return &c.Metadata }
func (p *BGPPeer) ResourceKind() string           { return KindBGPPeer }
func (p *BGPPeer) Meta() *ObjectMeta              { return &p.Metadata }
func (n *Node) ResourceKind() string              { return KindNode }
func (n *Node) Meta() *ObjectMeta                 { return &n.Metadata }
func (c *IPAMConfiguration) ResourceKind() string { return KindIPAMConfiguration }
func (c *IPAMConfiguration) Meta() *ObjectMeta    { return &c.Metadata }
func (r *IPReservation) ResourceKind() string     { return KindIPReservation }
func (r *IPReservation) Meta() *ObjectMeta        { return &r.Metadata }

// Kinds lists the resource kinds in the order tabbyctl shows them.
func Kinds() []string {
	return []string{KindIPPool, KindBGPConfiguration, KindBGPPeer, KindNode, KindIPAMConfiguration, KindIPReservation}
}

// NewResource returns an empty resource of a kind, with its TypeMeta filled in.
func NewResource(kind string) (Resource, error) {
	tm := TypeMeta{Kind: kind, APIVersion: APIVersion}
	switch kind {
	case KindIPPool:
		return &IPPool{TypeMeta: tm}, nil
	case KindBGPConfiguration:
		return &BGPConfiguration{TypeMeta: tm}, nil
	case KindBGPPeer:
		return &BGPPeer{TypeMeta: tm}, nil
	case KindNode:
		return &Node{TypeMeta: tm}, nil
	case KindIPAMConfiguration:
		return &IPAMConfiguration{TypeMeta: tm}, nil
	case KindIPReservation:
		return &IPReservation{TypeMeta: tm}, nil
	}
	return nil, unknownKindError(kind)
}

func unknownKindError(kind string) error {
	if kind == "" {
		return fmt.Errorf("the document has no kind (tabby knows %s)", strings.Join(Kinds(), ", "))
	}
	return fmt.Errorf("unknown kind %q (tabby knows %s)", kind, strings.Join(Kinds(), ", "))
}

// knownKind reports whether tabby handles a kind.
func knownKind(kind string) bool { return slices.Contains(Kinds(), kind) }

// NewIPPool returns an IPPool with its TypeMeta and name set.
func NewIPPool(name string) *IPPool {
	return &IPPool{TypeMeta: TypeMeta{Kind: KindIPPool, APIVersion: APIVersion}, Metadata: ObjectMeta{Name: name}}
}

// NewBGPConfiguration returns a BGPConfiguration with its TypeMeta and name set.
func NewBGPConfiguration(name string) *BGPConfiguration {
	return &BGPConfiguration{TypeMeta: TypeMeta{Kind: KindBGPConfiguration, APIVersion: APIVersion}, Metadata: ObjectMeta{Name: name}}
}

// NewBGPPeer returns a BGPPeer with its TypeMeta and name set.
func NewBGPPeer(name string) *BGPPeer {
	return &BGPPeer{TypeMeta: TypeMeta{Kind: KindBGPPeer, APIVersion: APIVersion}, Metadata: ObjectMeta{Name: name}}
}

// NewNode returns a Node with its TypeMeta and name set.
func NewNode(name string) *Node {
	return &Node{TypeMeta: TypeMeta{Kind: KindNode, APIVersion: APIVersion}, Metadata: ObjectMeta{Name: name}}
}

// NewIPReservation returns an IPReservation with its TypeMeta and name set.
func NewIPReservation(name string) *IPReservation {
	return &IPReservation{TypeMeta: TypeMeta{Kind: KindIPReservation, APIVersion: APIVersion}, Metadata: ObjectMeta{Name: name}}
}

// NewIPAMConfiguration returns an IPAMConfiguration with its TypeMeta and name set.
func NewIPAMConfiguration(name string) *IPAMConfiguration {
	return &IPAMConfiguration{TypeMeta: TypeMeta{Kind: KindIPAMConfiguration, APIVersion: APIVersion}, Metadata: ObjectMeta{Name: name}}
}
