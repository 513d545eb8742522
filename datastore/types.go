// Package datastore holds tabby's resource model, stored exactly as Calico's etcdv3
// datastore stores it (SPEC §2), the etcd client with compare-and-swap writes, validation,
// and the list-then-watch syncer that hands consistent snapshots to the daemon.
//
// The JSON field names and their order follow Calico's Go types so that a document written
// by calicoctl (etcd mode) or by etcdctl in Calico's form is read back unchanged, and a
// document written by tabby is byte-for-byte what Calico would have written.
package datastore

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// APIVersion is the apiVersion of every resource; Calico manifests apply unchanged.
const APIVersion = "projectcalico.org/v3"

// Resource kinds, as they appear in manifests.
const (
	KindIPPool            = "IPPool"
	KindBGPConfiguration  = "BGPConfiguration"
	KindBGPPeer           = "BGPPeer"
	KindNode              = "Node"
	KindIPAMConfiguration = "IPAMConfiguration"
	KindIPReservation     = "IPReservation"
)

// Encapsulation modes of a pool (ipipMode, vxlanMode).
type EncapMode string

const (
	EncapNever       EncapMode = "Never"
	EncapAlways      EncapMode = "Always"
	EncapCrossSubnet EncapMode = "CrossSubnet"
)

// Allowed uses of a pool's addresses. tabby-cni assigns Workload addresses and tabbyd
// Tunnel addresses; LoadBalancer pools are for a service load balancer, which tabby does
// not have: they are stored and listed, and never assigned from.
const (
	UseWorkload     = "Workload"
	UseTunnel       = "Tunnel"
	UseLoadBalancer = "LoadBalancer"
)

// AssignmentMode says whether IPAM may pick a pool on its own (Automatic) or only when a
// request names it (Manual), as Calico's IPAM does.
type AssignmentMode string

const (
	AssignmentAutomatic AssignmentMode = "Automatic"
	AssignmentManual    AssignmentMode = "Manual"
)

// TypeMeta is the kind and apiVersion of a resource document.
type TypeMeta struct {
	Kind       string `json:"kind"`
	APIVersion string `json:"apiVersion"`
}

// ObjectMeta is the subset of Kubernetes object metadata that Calico stores.
// ResourceVersion is never stored: it is filled from the key's ModRevision on read and
// used as the compare-and-swap condition on update.
type ObjectMeta struct {
	Name              string            `json:"name"`
	UID               string            `json:"uid,omitempty"`
	ResourceVersion   string            `json:"resourceVersion,omitempty"`
	CreationTimestamp string            `json:"creationTimestamp,omitempty"`
	Labels            map[string]string `json:"labels,omitempty"`
	Annotations       map[string]string `json:"annotations,omitempty"`
}

// IPPool is a range of workload addresses and how traffic to it is carried between hosts.
type IPPool struct {
	TypeMeta
	Metadata ObjectMeta `json:"metadata"`
	Spec     IPPoolSpec `json:"spec"`
}

// IPPoolSpec mirrors Calico's IPPoolSpec field for field (names and order).
type IPPoolSpec struct {
	CIDR             string    `json:"cidr"`
	VXLANMode        EncapMode `json:"vxlanMode,omitempty"`
	IPIPMode         EncapMode `json:"ipipMode,omitempty"`
	NATOutgoing      bool      `json:"natOutgoing,omitempty"`
	Disabled         bool      `json:"disabled,omitempty"`
	DisableBGPExport bool      `json:"disableBGPExport,omitempty"`
	BlockSize        int       `json:"blockSize,omitempty"`
	NodeSelector     string    `json:"nodeSelector,omitempty"`
	// IPIP and NATOutgoingV1 are Calico's v1 fields, which Calico's v3 validation
	// refuses when set; they are modelled so that the refusal names them.
	IPIP           *IPIPConfiguration `json:"ipip,omitempty"`
	NATOutgoingV1  bool               `json:"nat-outgoing,omitempty"`
	AllowedUses    []string           `json:"allowedUses,omitempty"`
	AssignmentMode *AssignmentMode    `json:"assignmentMode,omitempty"`
}

// IPIPConfiguration is Calico's v1 form of ipipMode (spec.ipip), refused in v3.
type IPIPConfiguration struct {
	Enabled bool      `json:"enabled,omitempty"`
	Mode    EncapMode `json:"mode,omitempty"`
}

// BGPConfiguration holds cluster-wide BGP settings ("default") or one node's overrides
// ("node.<name>").
type BGPConfiguration struct {
	TypeMeta
	Metadata ObjectMeta           `json:"metadata"`
	Spec     BGPConfigurationSpec `json:"spec"`
}

// BGPConfigurationSpec mirrors Calico v3.30's BGPConfigurationSpec field for field (names
// and order). Which of them tabby acts on is said by StoredOnly.
type BGPConfigurationSpec struct {
	LogSeverityScreen        string                `json:"logSeverityScreen,omitempty"`
	NodeToNodeMeshEnabled    *bool                 `json:"nodeToNodeMeshEnabled,omitempty"`
	ASNumber                 *ASNumber             `json:"asNumber,omitempty"`
	ServiceLoadBalancerIPs   []ServiceCIDR         `json:"serviceLoadBalancerIPs,omitempty"`
	ServiceExternalIPs       []ServiceCIDR         `json:"serviceExternalIPs,omitempty"`
	ServiceClusterIPs        []ServiceCIDR         `json:"serviceClusterIPs,omitempty"`
	Communities              []Community           `json:"communities,omitempty"`
	PrefixAdvertisements     []PrefixAdvertisement `json:"prefixAdvertisements,omitempty"`
	ListenPort               uint16                `json:"listenPort,omitempty"`
	NodeMeshPassword         *BGPPassword          `json:"nodeMeshPassword,omitempty"`
	NodeMeshMaxRestartTime   *Duration             `json:"nodeMeshMaxRestartTime,omitempty"`
	BindMode                 *string               `json:"bindMode,omitempty"`
	IgnoredInterfaces        []string              `json:"ignoredInterfaces,omitempty"`
	LocalWorkloadPeeringIPV4 string                `json:"localWorkloadPeeringIPV4,omitempty"`
	LocalWorkloadPeeringIPV6 string                `json:"localWorkloadPeeringIPV6,omitempty"`
}

// ServiceCIDR is one entry of a BGPConfiguration's serviceLoadBalancerIPs,
// serviceExternalIPs or serviceClusterIPs.
type ServiceCIDR struct {
	CIDR string `json:"cidr,omitempty"`
}

// Community names a BGP community value ("aa:nn" or the large "aa:nn:mm").
type Community struct {
	Name  string `json:"name,omitempty"`
	Value string `json:"value,omitempty"`
}

// PrefixAdvertisement attaches communities to the routes of one CIDR.
type PrefixAdvertisement struct {
	CIDR        string   `json:"cidr,omitempty"`
	Communities []string `json:"communities,omitempty"`
}

// BGPPeer is an explicit BGP peering: with an address (peerIP) or with the tabby nodes a
// peerSelector picks, from every node, one node, or the nodes a nodeSelector picks.
type BGPPeer struct {
	TypeMeta
	Metadata ObjectMeta  `json:"metadata"`
	Spec     BGPPeerSpec `json:"spec"`
}

// BGPPeerSpec mirrors Calico v3.30's BGPPeerSpec field for field (names and order), plus
// the fields later Calico versions added (localASNumber, keepaliveTime, nextHopMode), so
// that their manifests apply too. Which of them tabby acts on is said by StoredOnly.
type BGPPeerSpec struct {
	Node                     string       `json:"node,omitempty"`
	NodeSelector             string       `json:"nodeSelector,omitempty"`
	PeerIP                   string       `json:"peerIP,omitempty"`
	ASNumber                 ASNumber     `json:"asNumber,omitempty"`
	LocalASNumber            *ASNumber    `json:"localASNumber,omitempty"`
	PeerSelector             string       `json:"peerSelector,omitempty"`
	KeepOriginalNextHop      bool         `json:"keepOriginalNextHop,omitempty"`
	NextHopMode              *string      `json:"nextHopMode,omitempty"`
	Password                 *BGPPassword `json:"password,omitempty"`
	SourceAddress            string       `json:"sourceAddress,omitempty"`
	MaxRestartTime           *Duration    `json:"maxRestartTime,omitempty"`
	KeepaliveTime            *Duration    `json:"keepaliveTime,omitempty"`
	NumAllowedLocalASNumbers *int32       `json:"numAllowedLocalASNumbers,omitempty"`
	TTLSecurity              *uint8       `json:"ttlSecurity,omitempty"`
	ReachableBy              string       `json:"reachableBy,omitempty"`
	Filters                  []string     `json:"filters,omitempty"`
	LocalWorkloadSelector    string       `json:"localWorkloadSelector,omitempty"`
}

// Source addresses of a BGPPeer's session (sourceAddress).
const (
	SourceAddressUseNodeIP = "UseNodeIP"
	SourceAddressNone      = "None"
)

// BGPPassword is Calico's password reference. tabby reads the secret from
// <bgp.secretsDir>/<name>/<key> on each host (SPEC §7).
type BGPPassword struct {
	SecretKeyRef *SecretKeyRef `json:"secretKeyRef,omitempty"`
}

// SecretKeyRef names one key of one secret.
type SecretKeyRef struct {
	Name string `json:"name"`
	Key  string `json:"key"`
}

// Node is one host running tabbyd. tabbyd creates and maintains its own Node.
type Node struct {
	TypeMeta
	Metadata ObjectMeta `json:"metadata"`
	Spec     NodeSpec   `json:"spec"`
	Status   NodeStatus `json:"status,omitzero"`
}

// NodeSpec mirrors Calico v3.30's NodeSpec field for field (names and order).
type NodeSpec struct {
	BGP                  *NodeBGPSpec       `json:"bgp,omitempty"`
	IPv4VXLANTunnelAddr  string             `json:"ipv4VXLANTunnelAddr,omitempty"`
	VXLANTunnelMACAddr   string             `json:"vxlanTunnelMACAddr,omitempty"`
	IPv6VXLANTunnelAddr  string             `json:"ipv6VXLANTunnelAddr,omitempty"`
	VXLANTunnelMACAddrV6 string             `json:"vxlanTunnelMACAddrV6,omitempty"`
	OrchRefs             []OrchRef          `json:"orchRefs,omitempty"`
	Wireguard            *NodeWireguardSpec `json:"wireguard,omitempty"`
	Addresses            []NodeAddress      `json:"addresses,omitempty"`
}

// NodeBGPSpec is the BGP part of a Node. IPv4Address carries its prefix length: the prefix
// decides which nodes are "in the same subnet" for CrossSubnet.
type NodeBGPSpec struct {
	ASNumber                *ASNumber `json:"asNumber,omitempty"`
	IPv4Address             string    `json:"ipv4Address,omitempty"`
	IPv6Address             string    `json:"ipv6Address,omitempty"`
	IPv4IPIPTunnelAddr      string    `json:"ipv4IPIPTunnelAddr,omitempty"`
	RouteReflectorClusterID string    `json:"routeReflectorClusterID,omitempty"`
}

// OrchRef names the node in an orchestrator (Kubernetes, OpenStack) that this Node is.
type OrchRef struct {
	NodeName     string `json:"nodeName,omitempty"`
	Orchestrator string `json:"orchestrator"`
}

// NodeWireguardSpec holds a node's WireGuard interface addresses.
type NodeWireguardSpec struct {
	InterfaceIPv4Address string `json:"interfaceIPv4Address,omitempty"`
	InterfaceIPv6Address string `json:"interfaceIPv6Address,omitempty"`
}

// NodeAddress is one of a node's addresses and its type (CalicoNodeIP, InternalIP,
// ExternalIP).
type NodeAddress struct {
	Address string `json:"address"`
	Type    string `json:"type,omitempty"`
}

// NodeStatus is what Calico's components report about a node.
type NodeStatus struct {
	WireguardPublicKey   string   `json:"wireguardPublicKey,omitempty"`
	WireguardPublicKeyV6 string   `json:"wireguardPublicKeyV6,omitempty"`
	PodCIDRs             []string `json:"podCIDRs,omitempty"`
}

// IPAMConfiguration is the user-facing view of the cluster's IPAM configuration (the key
// <root>/ipam/v2/config, stored in Calico's internal form). Its only name is "default".
type IPAMConfiguration struct {
	TypeMeta
	Metadata ObjectMeta            `json:"metadata"`
	Spec     IPAMConfigurationSpec `json:"spec"`
}

// IPAMConfigurationSpec mirrors Calico's IPAMConfigurationSpec, plus autoAllocateBlocks,
// which Calico keeps in the stored configuration but does not expose in the resource.
type IPAMConfigurationSpec struct {
	StrictAffinity     bool  `json:"strictAffinity"`
	MaxBlocksPerHost   int32 `json:"maxBlocksPerHost,omitempty"`
	AutoAllocateBlocks *bool `json:"autoAllocateBlocks,omitempty"`
}

// IPReservation lists addresses that IPAM never assigns, as Calico's IPAM does.
type IPReservation struct {
	TypeMeta
	Metadata ObjectMeta        `json:"metadata"`
	Spec     IPReservationSpec `json:"spec"`
}

// IPReservationSpec mirrors Calico's IPReservationSpec.
type IPReservationSpec struct {
	ReservedCIDRs []string `json:"reservedCIDRs,omitempty"`
}

// ASNumber is a BGP AS number. Like Calico's numorstring.ASNumber it is stored as a JSON
// number and also accepts the dotted "high.low" form and a quoted number in manifests.
type ASNumber uint32

// UnmarshalJSON accepts 64512, "64512" and "1.10".
func (a *ASNumber) UnmarshalJSON(b []byte) error {
	s := strings.Trim(string(b), `"`)
	v, err := ParseASNumber(s)
	if err != nil {
		return err
	}
	*a = v
	return nil
}

// String renders the AS number in decimal ("64512").
func (a ASNumber) String() string { return strconv.FormatUint(uint64(a), 10) }

// ParseASNumber parses "64512" or the dotted "1.10" (= 1<<16 + 10).
func ParseASNumber(s string) (ASNumber, error) {
	if hi, lo, dotted := strings.Cut(s, "."); dotted {
		h, err1 := strconv.ParseUint(hi, 10, 16)
		l, err2 := strconv.ParseUint(lo, 10, 16)
		if err1 != nil || err2 != nil {
			return 0, fmt.Errorf("invalid AS number %q", s)
		}
		return ASNumber(h<<16 | l), nil
	}
	v, err := strconv.ParseUint(s, 10, 32)
	if err != nil {
		return 0, fmt.Errorf("invalid AS number %q", s)
	}
	return ASNumber(v), nil
}

// Duration is a time.Duration stored as Go duration text ("120s"), as Kubernetes'
// metav1.Duration is.
type Duration struct{ time.Duration }

// MarshalJSON writes the duration as text.
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(d.Duration.String()) }

// UnmarshalJSON reads duration text such as "120s" or "2m".
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("duration must be a string such as \"120s\": %w", err)
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return err
	}
	d.Duration = v
	return nil
}
