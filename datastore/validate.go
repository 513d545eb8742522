package datastore

import (
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
	}
	return f.err()
}

var (
	dns1123Label     = `[a-z0-9]([-a-z0-9]*[a-z0-9])?`
	dns1123Subdomain = regexp.MustCompile(`^` + dns1123Label + `(\.` + dns1123Label + `)*$`)
	labelName        = regexp.MustCompile(`^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$`)
	secretKey        = regexp.MustCompile(`^[-._a-zA-Z0-9]+$`)
)

// checkName reports why s is not a DNS-1123 subdomain (Kubernetes' rule for object names),
// or "".
func checkName(s string) string {
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
	if _, isConfig := r.(*BGPConfiguration); !isConfig {
		if why := checkName(m.Name); why != "" {
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
	} else if cidrErr == nil && cidr.Bits() > s.BlockSize {
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
	for i, u := range s.AllowedUses {
		if u != UseWorkload && u != UseTunnel {
			f.add(fmt.Sprintf("spec.allowedUses[%d]", i), "%q is not one of %s, %s", u, UseWorkload, UseTunnel)
		}
	}
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

var logSeverities = []string{"Debug", "Info", "Warning", "Error", "Fatal"}

func validateBGPConfiguration(f *fieldErrors, c *BGPConfiguration) {
	name := c.Metadata.Name
	nodeName, nodeSpecific := strings.CutPrefix(name, NodeBGPConfigurationPrefix)
	switch {
	case name == DefaultBGPConfigurationName:
	case nodeSpecific && checkName(nodeName) == "":
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
	if s.NodeMeshMaxRestartTime != nil && s.NodeMeshMaxRestartTime.Duration <= 0 {
		f.add("spec.nodeMeshMaxRestartTime", "%s is not a positive duration", s.NodeMeshMaxRestartTime.Duration)
	}
	if nodeSpecific {
		// These settings are cluster-wide: a node-specific copy would be silently ignored.
		for _, c := range []struct {
			field string
			set   bool
		}{
			{"spec.asNumber", s.ASNumber != nil},
			{"spec.nodeToNodeMeshEnabled", s.NodeToNodeMeshEnabled != nil},
			{"spec.nodeMeshPassword", s.NodeMeshPassword != nil},
			{"spec.nodeMeshMaxRestartTime", s.NodeMeshMaxRestartTime != nil},
		} {
			if c.set {
				f.add(c.field, "is cluster-wide: set it in BGPConfiguration %q, not in a node-specific one (which may set listenPort and logSeverityScreen)", DefaultBGPConfigurationName)
			}
		}
	}
}

func checkPassword(f *fieldErrors, field string, p *BGPPassword) {
	if p.SecretKeyRef == nil {
		f.add(field+".secretKeyRef", "required: the password is read from <bgp.secretsDir>/<name>/<key>")
		return
	}
	ref := p.SecretKeyRef
	if why := checkName(ref.Name); why != "" {
		f.add(field+".secretKeyRef.name", "%s", why)
	}
	switch {
	case ref.Key == "":
		f.add(field+".secretKeyRef.key", "required")
	case ref.Key == "." || ref.Key == ".." || !secretKey.MatchString(ref.Key):
		f.add(field+".secretKeyRef.key", "%q is not a valid key: use letters, digits, '-', '_' and '.'", ref.Key)
	}
}

// ParsePeerIP parses a BGPPeer's peerIP: "10.0.0.1" or "10.0.0.1:1790". The port is 0 when
// none is given (meaning the standard BGP port).
func ParsePeerIP(s string) (netip.Addr, uint16, error) {
	if a, err := netip.ParseAddr(s); err == nil {
		if !a.Is4() {
			return netip.Addr{}, 0, fmt.Errorf("%q is IPv6: tabby peers over IPv4 only", s)
		}
		return a, 0, nil
	}
	host, portText, err := net.SplitHostPort(s)
	if err != nil {
		return netip.Addr{}, 0, fmt.Errorf("%q is not an IPv4 address or address:port", s)
	}
	a, err := netip.ParseAddr(host)
	if err != nil {
		return netip.Addr{}, 0, fmt.Errorf("%q is not an IPv4 address or address:port", s)
	}
	if !a.Is4() {
		return netip.Addr{}, 0, fmt.Errorf("%q is IPv6: tabby peers over IPv4 only", s)
	}
	port, err := strconv.ParseUint(portText, 10, 16)
	if err != nil || port == 0 {
		return netip.Addr{}, 0, fmt.Errorf("%q: port %q is not a number in 1..65535", s, portText)
	}
	return a, uint16(port), nil
}

func validateBGPPeer(f *fieldErrors, p *BGPPeer) {
	s := p.Spec
	if s.Node != "" && s.NodeSelector != "" {
		f.add("spec.nodeSelector", "node and nodeSelector cannot both be set: choose one node, or the nodes a selector picks")
	}
	if s.Node != "" {
		if why := checkName(s.Node); why != "" {
			f.add("spec.node", "%s", why)
		}
	}
	if s.NodeSelector != "" {
		checkSelector(f, "spec.nodeSelector", s.NodeSelector)
	}
	switch {
	case s.PeerIP == "" && s.PeerSelector == "":
		f.add("spec.peerIP", "either peerIP or peerSelector is required")
	case s.PeerIP != "" && s.PeerSelector != "":
		f.add("spec.peerSelector", "peerIP and peerSelector cannot both be set")
	case s.PeerIP != "":
		if _, _, err := ParsePeerIP(s.PeerIP); err != nil {
			f.add("spec.peerIP", "%v", err)
		}
		if s.ASNumber == 0 {
			f.add("spec.asNumber", "required with peerIP (the peer's AS number)")
		}
	default:
		checkSelector(f, "spec.peerSelector", s.PeerSelector)
		if s.ASNumber != 0 {
			f.add("spec.asNumber", "must be empty with peerSelector: the peers' AS numbers come from their Nodes")
		}
	}
	if s.Password != nil {
		checkPassword(f, "spec.password", s.Password)
	}
	if s.MaxRestartTime != nil && s.MaxRestartTime.Duration <= 0 {
		f.add("spec.maxRestartTime", "%s is not a positive duration", s.MaxRestartTime.Duration)
	}
}

func validateNode(f *fieldErrors, n *Node) {
	if b := n.Spec.BGP; b != nil {
		if b.IPv4Address != "" {
			if why := checkNodeAddress(b.IPv4Address); why != "" {
				f.add("spec.bgp.ipv4Address", "%s", why)
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
	if m := n.Spec.VXLANTunnelMACAddr; m != "" {
		if hw, err := net.ParseMAC(m); err != nil || len(hw) != 6 {
			f.add("spec.vxlanTunnelMACAddr", "%q is not a MAC address such as 66:0a:1b:2c:3d:4e", m)
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
