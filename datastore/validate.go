package datastore

import (
	"encoding/base64"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/tabby-net/tabby/datastore/selector"
)

// ErrInvalid is wrapped by every error that says a resource breaks the rules of SPEC §3,
// so that callers can tell bad input from a datastore failure with errors.Is.
var ErrInvalid = errors.New("invalid resource")

// FieldError is one broken rule: which resource, which field, and what is wrong, e.g.
// `IPPool "p1": spec.blockSize: 19 is outside 20..32`.
type FieldError struct {
	Kind    string
	Name    string
	Field   string // dotted JSON path, "" for the resource as a whole
	Problem string
}

func (e *FieldError) Error() string {
	who := e.Kind
	if e.Name != "" {
		who = fmt.Sprintf("%s %q", e.Kind, e.Name)
	}
	if e.Field == "" {
		return who + ": " + e.Problem
	}
	return who + ": " + e.Field + ": " + e.Problem
}

// Is makes every FieldError match ErrInvalid.
func (e *FieldError) Is(target error) bool { return target == ErrInvalid }

// fieldErrors collects the broken rules of one resource.
type fieldErrors struct {
	kind, name string
	errs       []error
}

func newFieldErrors(r Resource) *fieldErrors {
	return &fieldErrors{kind: r.ResourceKind(), name: r.Meta().Name}
}

func (f *fieldErrors) add(field, format string, args ...any) {
	f.errs = append(f.errs, &FieldError{Kind: f.kind, Name: f.name, Field: field, Problem: fmt.Sprintf(format, args...)})
}

func (f *fieldErrors) err() error { return errors.Join(f.errs...) }

// Validate checks one resource against the rules of SPEC §3 that need no other resource
// (pool overlaps and immutable fields are checked by Client when it writes, and by the
// syncer when it reads). Fields left out are checked at their defaults. The error joins one
// *FieldError per broken rule; it is nil when the resource is valid.
func Validate(r Resource) error {
	r = cloneResource(r)
	SetDefaults(r)
	return validateDefaulted(r)
}

// validateDefaulted is Validate for a resource whose defaults are applied already and that
// the caller owns (the syncer's freshly decoded documents): it checks r in place, without
// Validate's defensive copy, which cost a JSON round trip per document, a third of the
// decoding time of a 5,000-node first list.
func validateDefaulted(r Resource) error {
	f := newFieldErrors(r)
	validateMeta(f, r)
	switch r := r.(type) {
	case *IPPool:
		validatePool(f, r)
	case *BGPConfiguration:
		validateBGPConfiguration(f, r)
	case *BGPPeer:
		validateBGPPeer(f, r)
	case *Node:
		validateNode(f, r)
	case *IPAMConfiguration:
		validateIPAMConfiguration(f, r)
	case *IPReservation:
		validateIPReservation(f, r)
	}
	return f.err()
}

var (
	dns1123Label     = `[a-z0-9]([-a-z0-9]*[a-z0-9])?`
	dns1123Subdomain = regexp.MustCompile(`^` + dns1123Label + `(\.` + dns1123Label + `)*$`)
	labelName        = regexp.MustCompile(`^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$`)
	secretKey        = regexp.MustCompile(`^[-._a-zA-Z0-9]+$`)
)

// CheckName reports why s is not a DNS-1123 subdomain (Kubernetes' rule for object names),
// or "".
func CheckName(s string) string {
	switch {
	case s == "":
		return "required"
	case len(s) > 253:
		return fmt.Sprintf("%q is longer than 253 characters", s)
	case !dns1123Subdomain.MatchString(s):
		return fmt.Sprintf("%q is not a valid name: use lowercase letters, digits, '-' and '.', starting and ending with a letter or digit", s)
	}
	return ""
}

func validateMeta(f *fieldErrors, r Resource) {
	m := r.Meta()
	switch r.(type) {
	case *BGPConfiguration, *IPAMConfiguration: // their names have rules of their own
	default:
		if why := CheckName(m.Name); why != "" {
			f.add("metadata.name", "%s", why)
		}
	}
	for _, k := range slices.Sorted(maps.Keys(m.Labels)) {
		field := fmt.Sprintf("metadata.labels[%q]", k)
		if why := checkLabelKey(k); why != "" {
			f.add(field, "%s", why)
		}
		if v := m.Labels[k]; v != "" && (len(v) > 63 || !labelName.MatchString(v)) {
			f.add(field, "value %q is not a valid label value: at most 63 letters, digits, '-', '_' and '.', starting and ending with a letter or digit", v)
		}
	}
}

// checkLabelKey applies Kubernetes' rule for label keys: an optional DNS subdomain prefix
// and a slash, then a name of at most 63 characters.
func checkLabelKey(k string) string {
	prefix, name, hasPrefix := strings.Cut(k, "/")
	if !hasPrefix {
		name, prefix = prefix, ""
	}
	if hasPrefix && (len(prefix) > 253 || !dns1123Subdomain.MatchString(prefix)) {
		return fmt.Sprintf("key %q: the prefix before '/' must be a DNS subdomain such as example.com", k)
	}
	if len(name) == 0 || len(name) > 63 || !labelName.MatchString(name) {
		return fmt.Sprintf("key %q is not a valid label key: at most 63 letters, digits, '-', '_' and '.', starting and ending with a letter or digit, optionally after a DNS-subdomain prefix and '/'", k)
	}
	return ""
}

// Address ranges no pool may overlap: link-local (169.254.1.1 is the workloads' gateway),
// loopback and multicast.
var reservedRanges = []struct {
	prefix netip.Prefix
	what   string
}{
	{netip.MustParsePrefix("169.254.0.0/16"), "the link-local range"},
	{netip.MustParsePrefix("127.0.0.0/8"), "the loopback range"},
	{netip.MustParsePrefix("224.0.0.0/4"), "the multicast range"},
}

// ParsePoolCIDR parses a pool's cidr the way validation does: IPv4 only, no host bits.
func ParsePoolCIDR(s string) (netip.Prefix, error) {
	p, err := netip.ParsePrefix(s)
	if err != nil {
		if a, aerr := netip.ParseAddr(s); aerr == nil {
			return netip.Prefix{}, fmt.Errorf("%q has no prefix length (a pool is a CIDR such as %s/16)", s, a)
		}
		return netip.Prefix{}, fmt.Errorf("%q is not a CIDR such as 192.168.0.0/16", s)
	}
	if !p.Addr().Is4() {
		return netip.Prefix{}, fmt.Errorf("%s is IPv6: tabby handles IPv4 pools only", s)
	}
	if p.Masked() != p {
		return netip.Prefix{}, fmt.Errorf("%s has host bits set (did you mean %s?)", s, p.Masked())
	}
	return p, nil
}

func validatePool(f *fieldErrors, p *IPPool) {
	s := p.Spec
	cidr, cidrErr := netip.Prefix{}, error(nil)
	if s.CIDR == "" {
		f.add("spec.cidr", "required")
		cidrErr = errors.New("missing")
	} else if cidr, cidrErr = ParsePoolCIDR(s.CIDR); cidrErr != nil {
		f.add("spec.cidr", "%v", cidrErr)
	}
	if cidrErr == nil {
		for _, r := range reservedRanges {
			if cidr.Overlaps(r.prefix) {
				f.add("spec.cidr", "%s overlaps %s %s", cidr, r.what, r.prefix)
			}
		}
	}
	if s.BlockSize < 20 || s.BlockSize > 32 {
		f.add("spec.blockSize", "%d is outside 20..32", s.BlockSize)
	} else if cidrErr == nil && cidr.Bits() > s.BlockSize && !s.Disabled {
		// Calico checks the size of enabled pools only: a disabled pool allocates nothing.
		f.add("spec.blockSize", "the pool %s is smaller than one block (/%d): use a larger pool or a blockSize of at least %d", cidr, s.BlockSize, cidr.Bits())
	}
	modesOK := true
	for _, m := range []struct {
		field string
		mode  EncapMode
	}{{"spec.ipipMode", s.IPIPMode}, {"spec.vxlanMode", s.VXLANMode}} {
		if !validEncap(m.mode) {
			f.add(m.field, "%q is not one of Never, Always, CrossSubnet", m.mode)
			modesOK = false
		}
	}
	if modesOK && s.IPIPMode != EncapNever && s.VXLANMode != EncapNever {
		f.add("spec.vxlanMode", "ipipMode (%s) and vxlanMode (%s) cannot both be enabled: choose one encapsulation", s.IPIPMode, s.VXLANMode)
	}
	checkSelector(f, "spec.nodeSelector", s.NodeSelector)
	if s.IPIP != nil {
		f.add("spec.ipip", "is Calico's v1 form, not accepted in %s: use spec.ipipMode", APIVersion)
	}
	if s.NATOutgoingV1 {
		f.add("spec.nat-outgoing", "is Calico's v1 form, not accepted in %s: use spec.natOutgoing", APIVersion)
	}
	if m := s.AssignmentMode; m != nil && *m != AssignmentAutomatic && *m != AssignmentManual {
		f.add("spec.assignmentMode", "%q is not one of %s, %s", *m, AssignmentAutomatic, AssignmentManual)
	}
	loadBalancer := slices.Contains(s.AllowedUses, UseLoadBalancer)
	for i, u := range s.AllowedUses {
		field := fmt.Sprintf("spec.allowedUses[%d]", i)
		switch u {
		case UseLoadBalancer:
		case UseWorkload, UseTunnel:
			if loadBalancer {
				f.add(field, "%s cannot be combined with %s: a LoadBalancer pool is for load balancer addresses alone", u, UseLoadBalancer)
			}
		default:
			f.add(field, "%q is not one of %s, %s, %s", u, UseWorkload, UseTunnel, UseLoadBalancer)
		}
	}
	if loadBalancer {
		// Calico's rules for LoadBalancer pools.
		if modesOK && (s.IPIPMode != EncapNever || s.VXLANMode != EncapNever) {
			f.add("spec.ipipMode", "a LoadBalancer pool cannot have IP-in-IP or VXLAN enabled")
		}
		if s.DisableBGPExport {
			f.add("spec.disableBGPExport", "a LoadBalancer pool is exported by BGP: disableBGPExport must be false")
		}
		if s.NodeSelector != DefaultNodeSelector {
			f.add("spec.nodeSelector", "%q: a LoadBalancer pool must select all() nodes", s.NodeSelector)
		}
	}
}

// PoolAssignsAutomatically reports whether IPAM may pick the pool on its own (Calico's
// Automatic assignment mode, the default); a Manual pool is used only when a request names it.
func PoolAssignsAutomatically(s IPPoolSpec) bool {
	return s.AssignmentMode == nil || *s.AssignmentMode != AssignmentManual
}

func validEncap(m EncapMode) bool {
	return m == EncapNever || m == EncapAlways || m == EncapCrossSubnet
}

func checkSelector(f *fieldErrors, field, s string) {
	if _, err := selector.Parse(s); err != nil {
		f.add(field, "%v", err)
	}
}

// validatePoolChange refuses changes to a pool's immutable fields. Both pools have their
// defaults applied.
func validatePoolChange(old, p *IPPool) error {
	f := newFieldErrors(p)
	oldCIDR, err1 := netip.ParsePrefix(old.Spec.CIDR)
	newCIDR, err2 := netip.ParsePrefix(p.Spec.CIDR)
	if err1 != nil || err2 != nil || oldCIDR.Masked() != newCIDR.Masked() {
		f.add("spec.cidr", "cannot change from %s to %s: the cidr of a pool is immutable (create a new pool, then disable and delete the old one)", old.Spec.CIDR, p.Spec.CIDR)
	}
	if old.Spec.BlockSize != p.Spec.BlockSize {
		f.add("spec.blockSize", "cannot change from %d to %d: the blockSize of a pool is immutable", old.Spec.BlockSize, p.Spec.BlockSize)
	}
	return f.err()
}

// poolOverlap returns an error when p overlaps one of others (all with valid cidrs; those
// that do not parse are skipped, and so is p's own name).
func poolOverlap(p *IPPool, others []*IPPool) error {
	cidr, err := netip.ParsePrefix(p.Spec.CIDR)
	if err != nil {
		return nil
	}
	f := newFieldErrors(p)
	for _, o := range others {
		if o.Metadata.Name == p.Metadata.Name {
			continue
		}
		oc, err := netip.ParsePrefix(o.Spec.CIDR)
		if err != nil || !oc.Addr().Is4() {
			continue
		}
		if cidr.Overlaps(oc) {
			f.add("spec.cidr", "%s overlaps IPPool %q (%s)", cidr, o.Metadata.Name, oc)
		}
	}
	return f.err()
}

var logSeverities = []string{"Trace", "Debug", "Info", "Warning", "Error", "Fatal"}

func validateBGPConfiguration(f *fieldErrors, c *BGPConfiguration) {
	name := c.Metadata.Name
	nodeName, nodeSpecific := strings.CutPrefix(name, NodeBGPConfigurationPrefix)
	switch {
	case name == DefaultBGPConfigurationName:
	case nodeSpecific && CheckName(nodeName) == "":
	default:
		f.add("metadata.name", "%q must be %q (cluster-wide) or %q followed by a node name", name, DefaultBGPConfigurationName, NodeBGPConfigurationPrefix)
	}
	s := c.Spec
	if s.LogSeverityScreen != "" && !slices.Contains(logSeverities, s.LogSeverityScreen) {
		f.add("spec.logSeverityScreen", "%q is not one of %s", s.LogSeverityScreen, strings.Join(logSeverities, ", "))
	}
	if s.ASNumber != nil && *s.ASNumber == 0 {
		f.add("spec.asNumber", "0 is not a valid AS number")
	}
	if s.NodeMeshPassword != nil {
		checkPassword(f, "spec.nodeMeshPassword", s.NodeMeshPassword)
	}
	if s.NodeMeshMaxRestartTime != nil && s.NodeMeshMaxRestartTime.Duration < 0 {
		f.add("spec.nodeMeshMaxRestartTime", "%s is negative", s.NodeMeshMaxRestartTime.Duration)
	}
	mesh := s.NodeToNodeMeshEnabled
	if s.NodeMeshPassword != nil && mesh != nil && !*mesh {
		f.add("spec.nodeMeshPassword", "cannot be set while nodeToNodeMeshEnabled is false")
	}
	if s.NodeMeshMaxRestartTime != nil && mesh != nil && !*mesh {
		f.add("spec.nodeMeshMaxRestartTime", "cannot be set while nodeToNodeMeshEnabled is false")
	}
	for _, l := range []struct {
		field string
		cidrs []ServiceCIDR
	}{{"spec.serviceLoadBalancerIPs", s.ServiceLoadBalancerIPs}, {"spec.serviceExternalIPs", s.ServiceExternalIPs}, {"spec.serviceClusterIPs", s.ServiceClusterIPs}} {
		for i, c := range l.cidrs {
			if c.CIDR != "" && !isCIDROrIP(c.CIDR) {
				f.add(fmt.Sprintf("%s[%d].cidr", l.field, i), "%q is not a CIDR or an IP address", c.CIDR)
			}
		}
	}
	defined := map[string]bool{}
	for i, c := range s.Communities {
		field := fmt.Sprintf("spec.communities[%d]", i)
		if c.Name == "" {
			f.add(field+".name", "required")
		} else if !dns1123Subdomain.MatchString(c.Name) {
			f.add(field+".name", "%q is not a valid name", c.Name)
		}
		if c.Value == "" {
			f.add(field+".value", "required")
		} else if why := checkCommunity(c.Value); why != "" {
			f.add(field+".value", "%s", why)
		}
		defined[c.Name] = true
	}
	if len(s.Communities) > 0 && len(s.PrefixAdvertisements) == 0 {
		f.add("spec.communities", "are defined but no prefixAdvertisements use them")
	}
	for i, pa := range s.PrefixAdvertisements {
		field := fmt.Sprintf("spec.prefixAdvertisements[%d]", i)
		if !isCIDROrIP(pa.CIDR) {
			f.add(field+".cidr", "%q is not a CIDR", pa.CIDR)
		}
		if len(pa.Communities) == 0 {
			f.add(field+".communities", "required: the communities to attach")
		}
		for j, v := range pa.Communities {
			if checkCommunity(v) != "" && !defined[v] {
				f.add(fmt.Sprintf("%s.communities[%d]", field, j), "%q is neither a community value (aa:nn or aa:nn:mm) nor the name of one in spec.communities", v)
			}
		}
	}
	for i, iface := range s.IgnoredInterfaces {
		if !ignoredInterface.MatchString(iface) || iface == "*" {
			f.add(fmt.Sprintf("spec.ignoredInterfaces[%d]", i), "%q is not an interface name (at most 15 of letters, digits, '_', '.', '-', and '*' as a wildcard)", iface)
		}
	}
	if a := s.LocalWorkloadPeeringIPV4; a != "" {
		if ip, err := netip.ParseAddr(a); err != nil || !ip.Is4() {
			f.add("spec.localWorkloadPeeringIPV4", "%q is not an IPv4 address", a)
		}
	}
	if a := s.LocalWorkloadPeeringIPV6; a != "" {
		if ip, err := netip.ParseAddr(a); err != nil || !ip.Is6() || ip.Is4In6() {
			f.add("spec.localWorkloadPeeringIPV6", "%q is not an IPv6 address", a)
		}
	}
}

var (
	ignoredInterface  = regexp.MustCompile(`^[a-zA-Z0-9_.*-]{1,15}$`)
	standardCommunity = regexp.MustCompile(`^(\d+):(\d+)$`)
	largeCommunity    = regexp.MustCompile(`^(\d+):(\d+):(\d+)$`)
)

// checkCommunity reports why v is not a BGP community value, standard (aa:nn, 16-bit
// parts) or large (aa:nn:mm, 32-bit parts), or "".
func checkCommunity(v string) string {
	bits := 16
	if largeCommunity.MatchString(v) {
		bits = 32
	} else if !standardCommunity.MatchString(v) {
		return fmt.Sprintf("%q is not a community value such as 64512:100 or 64512:100:200", v)
	}
	for _, part := range strings.Split(v, ":") {
		if _, err := strconv.ParseUint(part, 10, bits); err != nil {
			return fmt.Sprintf("%q: %s does not fit in %d bits", v, part, bits)
		}
	}
	return ""
}

// isCIDROrIP reports whether s is a CIDR or a bare address, either family (Calico's "net").
func isCIDROrIP(s string) bool {
	if _, err := netip.ParsePrefix(s); err == nil {
		return true
	}
	_, err := netip.ParseAddr(s)
	return err == nil
}

func checkPassword(f *fieldErrors, field string, p *BGPPassword) {
	if p.SecretKeyRef == nil {
		f.add(field+".secretKeyRef", "required: the password is read from <bgp.secretsDir>/<name>/<key>")
		return
	}
	ref := p.SecretKeyRef
	if why := CheckName(ref.Name); why != "" {
		f.add(field+".secretKeyRef.name", "%s", why)
	}
	switch {
	case ref.Key == "":
		f.add(field+".secretKeyRef.key", "required")
	case ref.Key == "." || ref.Key == ".." || !secretKey.MatchString(ref.Key):
		f.add(field+".secretKeyRef.key", "%q is not a valid key: use letters, digits, '-', '_' and '.'", ref.Key)
	}
}

// splitPeerIP splits a BGPPeer's peerIP ("10.0.0.1", "10.0.0.1:1790", "fd00::1",
// "[fd00::1]:1790") into its address and port (0: none given), either family, as Calico's
// validation reads it.
func splitPeerIP(s string) (netip.Addr, uint16, error) {
	if a, err := netip.ParseAddr(s); err == nil && a.Zone() == "" {
		return a, 0, nil
	}
	ap, err := netip.ParseAddrPort(s)
	if err != nil || ap.Addr().Zone() != "" {
		return netip.Addr{}, 0, fmt.Errorf("%q is not an IP address, IPv4:port or [IPv6]:port", s)
	}
	if ap.Port() == 0 {
		return netip.Addr{}, 0, fmt.Errorf("%q: port 0 is not a port in 1..65535", s)
	}
	return ap.Addr(), ap.Port(), nil
}

// validateBGPPeer applies Calico's rules for a BGPPeer. A peer Calico accepts but tabby
// cannot set up (neither peerIP nor peerSelector, an IPv6 peer) is accepted too: the BGP
// subsystem reports it and leaves it out.
func validateBGPPeer(f *fieldErrors, p *BGPPeer) {
	s := p.Spec
	if s.Node != "" && s.NodeSelector != "" {
		f.add("spec.nodeSelector", "node and nodeSelector cannot both be set: choose one node, or the nodes a selector picks")
	}
	if s.Node != "" {
		if why := CheckName(s.Node); why != "" {
			f.add("spec.node", "%s", why)
		}
	}
	if s.NodeSelector != "" {
		checkSelector(f, "spec.nodeSelector", s.NodeSelector)
	}
	var peerAddr netip.Addr
	if s.PeerIP != "" {
		a, _, err := splitPeerIP(s.PeerIP)
		if err != nil {
			f.add("spec.peerIP", "%v", err)
		}
		peerAddr = a
	}
	if s.PeerIP != "" && s.PeerSelector != "" {
		f.add("spec.peerSelector", "peerIP and peerSelector cannot both be set")
	}
	if s.PeerSelector != "" {
		checkSelector(f, "spec.peerSelector", s.PeerSelector)
		if s.ASNumber != 0 {
			f.add("spec.asNumber", "must be empty with peerSelector: the peers' AS numbers come from their Nodes")
		}
	}
	if s.LocalWorkloadSelector != "" {
		checkSelector(f, "spec.localWorkloadSelector", s.LocalWorkloadSelector)
		if s.ASNumber == 0 {
			f.add("spec.asNumber", "required with localWorkloadSelector")
		}
		if s.PeerIP != "" {
			f.add("spec.peerIP", "must be empty with localWorkloadSelector")
		}
		if s.PeerSelector != "" {
			f.add("spec.peerSelector", "must be empty with localWorkloadSelector")
		}
	}
	if s.ReachableBy != "" {
		r, err := netip.ParseAddr(s.ReachableBy)
		switch {
		case s.PeerIP == "":
			f.add("spec.reachableBy", "needs a peerIP (it is the gateway to that peer)")
		case err != nil:
			f.add("spec.reachableBy", "%q is not an IP address", s.ReachableBy)
		case peerAddr.IsValid() && r.Is4() != peerAddr.Is4():
			f.add("spec.reachableBy", "%s and peerIP %s are of different address families", s.ReachableBy, s.PeerIP)
		}
	}
	if a := s.SourceAddress; a != "" && a != SourceAddressUseNodeIP && a != SourceAddressNone {
		f.add("spec.sourceAddress", "%q is not one of %s, %s", a, SourceAddressUseNodeIP, SourceAddressNone)
	}
	if m := s.NextHopMode; m != nil && *m != "Auto" && *m != "Self" && *m != "Keep" {
		f.add("spec.nextHopMode", "%q is not one of Auto, Self, Keep", *m)
	}
	for i, name := range s.Filters {
		if why := CheckName(name); why != "" {
			f.add(fmt.Sprintf("spec.filters[%d]", i), "%s", why)
		}
	}
	if s.Password != nil {
		checkPassword(f, "spec.password", s.Password)
	}
	if s.MaxRestartTime != nil && s.MaxRestartTime.Duration < 0 {
		f.add("spec.maxRestartTime", "%s is negative", s.MaxRestartTime.Duration)
	}
	if s.KeepaliveTime != nil && s.KeepaliveTime.Duration < 0 {
		f.add("spec.keepaliveTime", "%s is negative", s.KeepaliveTime.Duration)
	}
}

func validateNode(f *fieldErrors, n *Node) {
	if b := n.Spec.BGP; b != nil {
		if *b == (NodeBGPSpec{}) {
			f.add("spec.bgp", "is empty: leave it out, or give at least an address")
		}
		if b.IPv4Address != "" {
			if why := checkNodeAddress(b.IPv4Address); why != "" {
				f.add("spec.bgp.ipv4Address", "%s", why)
			}
		}
		if b.IPv6Address != "" {
			if p, err := netip.ParsePrefix(b.IPv6Address); err != nil || !p.Addr().Is6() || p.Addr().Is4In6() {
				f.add("spec.bgp.ipv6Address", "%q is not an IPv6 address with a prefix length, such as fd00::5/64", b.IPv6Address)
			}
		}
		if b.ASNumber != nil && *b.ASNumber == 0 {
			f.add("spec.bgp.asNumber", "0 is not a valid AS number")
		}
		checkBareIPv4(f, "spec.bgp.ipv4IPIPTunnelAddr", b.IPv4IPIPTunnelAddr)
		if b.RouteReflectorClusterID != "" {
			if a, err := netip.ParseAddr(b.RouteReflectorClusterID); err != nil || !a.Is4() {
				f.add("spec.bgp.routeReflectorClusterID", "%q must be in IPv4 address form, such as 224.0.0.1", b.RouteReflectorClusterID)
			}
		}
	}
	checkBareIPv4(f, "spec.ipv4VXLANTunnelAddr", n.Spec.IPv4VXLANTunnelAddr)
	checkBareIPv6(f, "spec.ipv6VXLANTunnelAddr", n.Spec.IPv6VXLANTunnelAddr)
	for _, m := range []struct{ field, mac string }{
		{"spec.vxlanTunnelMACAddr", n.Spec.VXLANTunnelMACAddr},
		{"spec.vxlanTunnelMACAddrV6", n.Spec.VXLANTunnelMACAddrV6},
	} {
		if m.mac == "" {
			continue
		}
		if hw, err := net.ParseMAC(m.mac); err != nil || len(hw) != 6 {
			f.add(m.field, "%q is not a MAC address such as 66:0a:1b:2c:3d:4e", m.mac)
		}
	}
	if w := n.Spec.Wireguard; w != nil {
		checkBareIPv4(f, "spec.wireguard.interfaceIPv4Address", w.InterfaceIPv4Address)
		checkBareIPv6(f, "spec.wireguard.interfaceIPv6Address", w.InterfaceIPv6Address)
	}
	for i, a := range n.Spec.Addresses {
		field := fmt.Sprintf("spec.addresses[%d]", i)
		if !isCIDROrIP(a.Address) {
			f.add(field+".address", "%q is not an IP address or CIDR", a.Address)
		}
		if a.Type != "" && a.Type != "CalicoNodeIP" && a.Type != "InternalIP" && a.Type != "ExternalIP" {
			f.add(field+".type", "%q is not one of CalicoNodeIP, InternalIP, ExternalIP", a.Type)
		}
	}
	for i, r := range n.Spec.OrchRefs {
		if r.Orchestrator == "" {
			f.add(fmt.Sprintf("spec.orchRefs[%d].orchestrator", i), "required")
		}
	}
	for _, k := range []struct{ field, key string }{
		{"status.wireguardPublicKey", n.Status.WireguardPublicKey},
		{"status.wireguardPublicKeyV6", n.Status.WireguardPublicKeyV6},
	} {
		if k.key == "" {
			continue
		}
		if b, err := base64.StdEncoding.DecodeString(k.key); err != nil || len(b) != 32 {
			f.add(k.field, "%q is not a WireGuard public key (32 bytes, base64)", k.key)
		}
	}
}

// IPAMConfigurationName is the only name an IPAMConfiguration may have: there is one IPAM
// configuration per cluster.
const IPAMConfigurationName = "default"

func validateIPAMConfiguration(f *fieldErrors, c *IPAMConfiguration) {
	if c.Metadata.Name != IPAMConfigurationName {
		f.add("metadata.name", "%q: the IPAM configuration is called %q", c.Metadata.Name, IPAMConfigurationName)
	}
	s := c.Spec
	if s.MaxBlocksPerHost < 0 {
		f.add("spec.maxBlocksPerHost", "%d is negative (0 means no limit)", s.MaxBlocksPerHost)
	}
	// Calico's IPAM refuses these combinations when the configuration is set.
	if !s.StrictAffinity && s.AutoAllocateBlocks != nil && !*s.AutoAllocateBlocks {
		f.add("spec.autoAllocateBlocks", "cannot be false while strictAffinity is false: a node could then get no address at all")
	}
	if s.MaxBlocksPerHost > 0 && !s.StrictAffinity {
		f.add("spec.maxBlocksPerHost", "needs strictAffinity: true (a node at its limit would otherwise borrow addresses from other nodes' blocks)")
	}
}

func validateIPReservation(f *fieldErrors, r *IPReservation) {
	for i, c := range r.Spec.ReservedCIDRs {
		if !isCIDROrIP(c) {
			f.add(fmt.Sprintf("spec.reservedCIDRs[%d]", i), "%q is not a CIDR or an IP address", c)
		}
	}
}

// checkNodeAddress reports why s is not an IPv4 address with a prefix length, or "".
func checkNodeAddress(s string) string {
	p, err := netip.ParsePrefix(s)
	if err != nil {
		if a, aerr := netip.ParseAddr(s); aerr == nil && a.Is4() {
			return fmt.Sprintf("%q needs a prefix length, such as %s/24: the prefix decides which nodes share a subnet (CrossSubnet)", s, a)
		}
		return fmt.Sprintf("%q is not an IPv4 address with a prefix length, such as 10.0.0.5/24", s)
	}
	if !p.Addr().Is4() {
		return fmt.Sprintf("%q is IPv6: tabby handles IPv4 only", s)
	}
	if p.Bits() == 0 {
		return fmt.Sprintf("%q: a prefix length of 0 puts every address in one subnet", s)
	}
	return ""
}

func checkBareIPv4(f *fieldErrors, field, s string) {
	if s == "" {
		return
	}
	if a, err := netip.ParseAddr(s); err != nil || !a.Is4() {
		f.add(field, "%q is not an IPv4 address (without prefix length)", s)
	}
}

func checkBareIPv6(f *fieldErrors, field, s string) {
	if s == "" {
		return
	}
	if a, err := netip.ParseAddr(s); err != nil || !a.Is6() || a.Is4In6() {
		f.add(field, "%q is not an IPv6 address (without prefix length)", s)
	}
}
