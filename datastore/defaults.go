package datastore

import "time"

// Defaults that Calico applies to fields a document leaves out (SPEC §3).
const (
	DefaultBlockSize    = 26
	DefaultNodeSelector = "all()"
	// DefaultASNumber is the AS of every node when neither its Node nor the default
	// BGPConfiguration names one.
	DefaultASNumber ASNumber = 64512
	// DefaultBGPListenPort is the port BGP listens on.
	DefaultBGPListenPort uint16 = 179
	// DefaultNodeMeshMaxRestartTime is the graceful-restart time of mesh sessions.
	DefaultNodeMeshMaxRestartTime = 120 * time.Second
	// DefaultBGPConfigurationName is the name of the cluster-wide BGPConfiguration.
	DefaultBGPConfigurationName = "default"
	// NodeBGPConfigurationPrefix starts the name of a node-specific BGPConfiguration
	// ("node.<node name>").
	NodeBGPConfigurationPrefix = "node."
)

// DefaultAllowedUses is what a pool may be used for when it does not say.
func DefaultAllowedUses() []string { return []string{UseWorkload, UseTunnel} }

// SetDefaults fills in the fields a stored document may leave out, as Calico does when it
// reads them: every resource tabby hands out has its defaults applied. Only the cluster-wide
// BGPConfiguration "default" gets BGP defaults; a node-specific one overrides only what it
// sets.
func SetDefaults(r Resource) {
	switch r := r.(type) {
	case *IPPool:
		r.TypeMeta = TypeMeta{Kind: KindIPPool, APIVersion: APIVersion}
		s := &r.Spec
		if s.BlockSize == 0 {
			s.BlockSize = DefaultBlockSize
		}
		if s.IPIPMode == "" {
			s.IPIPMode = EncapNever
		}
		if s.VXLANMode == "" {
			s.VXLANMode = EncapNever
		}
		if s.NodeSelector == "" {
			s.NodeSelector = DefaultNodeSelector
		}
		if len(s.AllowedUses) == 0 {
			s.AllowedUses = DefaultAllowedUses()
		}
		if s.AssignmentMode == nil {
			m := AssignmentAutomatic
			s.AssignmentMode = &m
		}
	case *BGPConfiguration:
		r.TypeMeta = TypeMeta{Kind: KindBGPConfiguration, APIVersion: APIVersion}
		if r.Metadata.Name != DefaultBGPConfigurationName {
			return
		}
		s := &r.Spec
		if s.ASNumber == nil {
			as := DefaultASNumber
			s.ASNumber = &as
		}
		if s.NodeToNodeMeshEnabled == nil {
			on := true
			s.NodeToNodeMeshEnabled = &on
		}
		if s.ListenPort == 0 {
			s.ListenPort = DefaultBGPListenPort
		}
		// The mesh's restart time is defaulted only while there is a mesh: Calico refuses
		// nodeMeshMaxRestartTime beside nodeToNodeMeshEnabled: false, so a default here
		// would make every stored mesh-less configuration invalid on read, and the
		// cluster would fall back to a full mesh.
		if s.NodeMeshMaxRestartTime == nil && *s.NodeToNodeMeshEnabled {
			s.NodeMeshMaxRestartTime = &Duration{DefaultNodeMeshMaxRestartTime}
		}
	case *BGPPeer:
		r.TypeMeta = TypeMeta{Kind: KindBGPPeer, APIVersion: APIVersion}
	case *Node:
		r.TypeMeta = TypeMeta{Kind: KindNode, APIVersion: APIVersion}
	}
}

// setStoreDefaults fills in the fields Calico writes into a stored document even when the
// manifest leaves them out: a pool's blockSize and nodeSelector (SPEC §2's example). Other
// defaults stay implicit so that the stored JSON is what Calico would have stored.
func setStoreDefaults(r Resource) {
	if p, ok := r.(*IPPool); ok {
		if p.Spec.BlockSize == 0 {
			p.Spec.BlockSize = DefaultBlockSize
		}
		if p.Spec.NodeSelector == "" {
			p.Spec.NodeSelector = DefaultNodeSelector
		}
	}
}

// DefaultBGPConfiguration is the cluster-wide BGP configuration in force when none is
// stored: every field at its default.
func DefaultBGPConfiguration() *BGPConfiguration {
	c := NewBGPConfiguration(DefaultBGPConfigurationName)
	SetDefaults(c)
	return c
}
