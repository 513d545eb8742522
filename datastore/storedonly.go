package datastore

import (
	"fmt"
	"slices"
	"strings"
)

// StoredOnlyField is a field of a resource that is set to something other than its
// default and that tabby stores, shows and keeps but does not act on (SPEC §2a): Calico's
// validation accepts it, so tabby accepts it too, and says so instead of dropping it
// silently.
type StoredOnlyField struct {
	// Field is the dotted JSON path, e.g. "spec.sourceAddress".
	Field string
	// Note says more where the field alone would mislead, e.g. which value is not acted on.
	Note string
}

// String renders the field as tabbyctl and tabbyd report it.
func (f StoredOnlyField) String() string {
	if f.Note == "" {
		return "stored; tabby does not act on " + f.Field
	}
	return "stored; tabby does not act on " + f.Field + " (" + f.Note + ")"
}

// StoredOnly lists the fields of r that tabby stores but does not act on, in a stable
// order; nil when tabby acts on everything r sets. r need not have its defaults applied.
func StoredOnly(r Resource) []StoredOnlyField {
	var out []StoredOnlyField
	add := func(set bool, field, note string) {
		if set {
			out = append(out, StoredOnlyField{Field: field, Note: note})
		}
	}
	switch r := r.(type) {
	case *IPPool:
		s := r.Spec
		add(slices.Contains(s.AllowedUses, UseLoadBalancer), "spec.allowedUses",
			"LoadBalancer: tabby has no service load balancer; the pool is listed and never assigned from")
	case *BGPConfiguration:
		s := r.Spec
		add(s.LogSeverityScreen != "", "spec.logSeverityScreen", "tabbyd's log level is its own setting")
		add(len(s.ServiceLoadBalancerIPs) > 0, "spec.serviceLoadBalancerIPs", "")
		add(len(s.ServiceExternalIPs) > 0, "spec.serviceExternalIPs", "")
		add(len(s.ServiceClusterIPs) > 0, "spec.serviceClusterIPs", "")
		add(len(s.Communities) > 0, "spec.communities", "")
		add(len(s.PrefixAdvertisements) > 0, "spec.prefixAdvertisements", "")
		add(s.BindMode != nil && *s.BindMode != "None", "spec.bindMode", "")
		add(len(s.IgnoredInterfaces) > 0, "spec.ignoredInterfaces", "")
		add(s.LocalWorkloadPeeringIPV4 != "", "spec.localWorkloadPeeringIPV4", "")
		add(s.LocalWorkloadPeeringIPV6 != "", "spec.localWorkloadPeeringIPV6", "")
		if strings.HasPrefix(r.Metadata.Name, NodeBGPConfigurationPrefix) {
			const note = "cluster-wide: only BGPConfiguration \"default\" sets it"
			add(s.ASNumber != nil, "spec.asNumber", note)
			add(s.NodeToNodeMeshEnabled != nil, "spec.nodeToNodeMeshEnabled", note)
			add(s.NodeMeshPassword != nil, "spec.nodeMeshPassword", note)
			add(s.NodeMeshMaxRestartTime != nil, "spec.nodeMeshMaxRestartTime", note)
		}
	case *BGPPeer:
		s := r.Spec
		add(s.LocalASNumber != nil, "spec.localASNumber", "")
		add(s.NextHopMode != nil && *s.NextHopMode != "Auto", "spec.nextHopMode", "")
		add(s.SourceAddress == SourceAddressNone, "spec.sourceAddress", "None")
		add(s.KeepaliveTime != nil, "spec.keepaliveTime", "")
		add(s.NumAllowedLocalASNumbers != nil && *s.NumAllowedLocalASNumbers != 0, "spec.numAllowedLocalASNumbers", "")
		add(s.TTLSecurity != nil && *s.TTLSecurity != 0, "spec.ttlSecurity", "")
		add(s.ReachableBy != "", "spec.reachableBy", "")
		add(len(s.Filters) > 0, "spec.filters", "")
		add(s.LocalWorkloadSelector != "", "spec.localWorkloadSelector", "")
	case *Node:
		s := r.Spec
		add(s.BGP != nil && s.BGP.IPv6Address != "", "spec.bgp.ipv6Address", "IPv4 only for now")
		add(s.IPv6VXLANTunnelAddr != "", "spec.ipv6VXLANTunnelAddr", "IPv4 only for now")
		add(s.VXLANTunnelMACAddrV6 != "", "spec.vxlanTunnelMACAddrV6", "IPv4 only for now")
		add(len(s.OrchRefs) > 0, "spec.orchRefs", "")
		add(s.Wireguard != nil, "spec.wireguard", "")
		add(len(s.Addresses) > 0, "spec.addresses", "")
		add(r.Status.WireguardPublicKey != "", "status.wireguardPublicKey", "")
		add(r.Status.WireguardPublicKeyV6 != "", "status.wireguardPublicKeyV6", "")
		add(len(r.Status.PodCIDRs) > 0, "status.podCIDRs", "")
	}
	return out
}

// StoredOnlyNotice is a stored resource with fields tabby does not act on, as the syncer
// reports it (once per stored version).
type StoredOnlyNotice struct {
	Key         string
	ModRevision int64
	Fields      string // the fields, joined: "spec.sourceAddress, spec.ttlSecurity"
}

func (n StoredOnlyNotice) String() string {
	return fmt.Sprintf("%s (revision %d): stored; tabby does not act on %s", n.Key, n.ModRevision, n.Fields)
}

// joinStoredOnly renders fields for a StoredOnlyNotice.
func joinStoredOnly(fields []StoredOnlyField) string {
	parts := make([]string, len(fields))
	for i, f := range fields {
		parts[i] = f.Field
		if f.Note != "" {
			parts[i] += " (" + f.Note + ")"
		}
	}
	return strings.Join(parts, ", ")
}
