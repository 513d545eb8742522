package lab

import (
	"bytes"
	"fmt"
	"sort"
	"strings"

	"github.com/tabby-net/tabby/internal/namedns"
)

// Fault is a failure of the fabric that the articles met on AWS, injected in the router's
// namespace. Bridged traffic inside a subnet and routed traffic between subnets both pass
// the router, so each fault applies to both, as a security group or a VPC does.
type Fault string

const (
	// FaultBGPPort: TCP 179 closed (the security group lacks the BGP rule).
	FaultBGPPort Fault = "bgp-port"
	// FaultIPIPProto: IP protocol 4 dropped (the security group allows TCP/UDP/ICMP only).
	FaultIPIPProto Fault = "ipip-proto"
	// FaultVXLANPort: UDP 4789 dropped.
	FaultVXLANPort Fault = "vxlan-port"
	// FaultSrcDstCheck: packets whose source or destination is not a host address are
	// dropped, as EC2's source/destination check does; only encapsulated traffic passes.
	FaultSrcDstCheck Fault = "srcdst-check"
	// FaultMTU: the fabric carries smaller frames than the hosts' NICs claim, so large
	// packets vanish without an ICMP error.
	FaultMTU Fault = "mtu"
)

// Faults lists every fault, in the order tabbylab prints them.
func Faults() []Fault {
	return []Fault{FaultBGPPort, FaultIPIPProto, FaultVXLANPort, FaultSrcDstCheck, FaultMTU}
}

// FabricMTUWithFault is the fabric's MTU while FaultMTU is on.
const FabricMTUWithFault = 1400

// ParseFault names a fault or says which ones exist.
func ParseFault(s string) (Fault, error) {
	for _, f := range Faults() {
		if string(f) == s {
			return f, nil
		}
	}
	all := Faults()
	names := make([]string, len(all))
	for i, f := range all {
		names[i] = string(f)
	}
	return "", fmt.Errorf("unknown fault %q (one of %s)", s, strings.Join(names, ", "))
}

// nftTable is the name of the lab's nftables tables in the router's namespace.
const nftTable = "tabbylab"

// nftRules returns the filter rules of a fault, tagged with a comment that lets
// ActiveFaults read the state back from the kernel.
func (t *Topology) nftRules(f Fault) []string {
	tag := fmt.Sprintf("comment %q", "fault:"+string(f))
	switch f {
	case FaultBGPPort:
		return []string{"tcp dport 179 drop " + tag, "tcp sport 179 drop " + tag}
	case FaultIPIPProto:
		return []string{"ip protocol 4 drop " + tag}
	case FaultVXLANPort:
		return []string{"udp dport 4789 drop " + tag}
	case FaultSrcDstCheck:
		hosts := t.hostSet()
		return []string{
			fmt.Sprintf("ip saddr != %s drop %s", hosts, tag),
			fmt.Sprintf("ip daddr != %s drop %s", hosts, tag),
		}
	}
	return nil
}

// hostSet is the nft set of the addresses the fabric knows: the subnets and the outside.
func (t *Topology) hostSet() string {
	var parts []string
	for _, s := range t.Segments {
		parts = append(parts, s.Router.Masked().String())
	}
	parts = append(parts, t.Outside.Router.Masked().String())
	return "{ " + strings.Join(parts, ", ") + " }"
}

// SetFault turns a fault on or off. The set of active faults is read back from the
// kernel, so SetFault works from a fresh process (tabbylab fault ... on).
func (t *Topology) SetFault(f Fault, on bool) error {
	active, err := t.ActiveFaults()
	if err != nil {
		return err
	}
	want := map[Fault]bool{}
	for _, a := range active {
		want[a] = true
	}
	want[f] = on
	if f == FaultMTU {
		mtu := t.MTU
		if on {
			mtu = FabricMTUWithFault
		}
		if err := t.setFabricMTU(mtu); err != nil {
			return err
		}
	}
	return t.applyNFT(want)
}

// ActiveFaults reads which faults are on.
func (t *Topology) ActiveFaults() ([]Fault, error) {
	var out []Fault
	cmd := namedns.Command(t.RouterNS(), "nft", "list", "table", "bridge", nftTable)
	var stdout bytes.Buffer
	cmd.Stdout = &stdout
	// A missing table means no nft fault is on.
	if err := cmd.Run(); err == nil {
		for _, f := range Faults() {
			if strings.Contains(stdout.String(), `"fault:`+string(f)+`"`) {
				out = append(out, f)
			}
		}
	}
	mtu, err := t.fabricMTU()
	if err != nil {
		return nil, err
	}
	if mtu == FabricMTUWithFault {
		out = append(out, FaultMTU)
	}
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out, nil
}

// applyNFT replaces the lab's tables with the rules of the wanted faults, in one
// transaction, so no other rule flickers.
func (t *Topology) applyNFT(want map[Fault]bool) error {
	var rules []string
	for _, f := range Faults() {
		if want[f] {
			rules = append(rules, t.nftRules(f)...)
		}
	}
	var b strings.Builder
	for _, family := range []string{"bridge", "ip"} {
		// "add" then "delete" makes the delete succeed whether or not the table exists.
		fmt.Fprintf(&b, "add table %s %s\ndelete table %s %s\n", family, nftTable, family, nftTable)
		fmt.Fprintf(&b, "table %s %s {\n  chain forward {\n    type filter hook forward priority 0; policy accept;\n", family, nftTable)
		for _, r := range rules {
			fmt.Fprintf(&b, "    %s\n", r)
		}
		b.WriteString("  }\n}\n")
	}
	cmd := namedns.Command(t.RouterNS(), "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(b.String())
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("nft in %s: %v: %s", t.RouterNS(), err, bytes.TrimSpace(out))
	}
	return nil
}

// setFabricMTU sets the MTU of the router's side of every link. The hosts keep theirs,
// so the mismatch is invisible to them until a large packet disappears.
func (t *Topology) setFabricMTU(mtu int) error {
	h, err := namedns.Handle(t.RouterNS())
	if err != nil {
		return err
	}
	defer h.Close()
	names := []string{"p-outside"}
	for _, s := range t.Segments {
		names = append(names, bridgeName(s.Name))
	}
	for _, p := range t.Ports() {
		names = append(names, p)
	}
	for _, n := range names {
		l, err := h.LinkByName(n)
		if err != nil {
			return fmt.Errorf("link %s: %w", n, err)
		}
		if err := h.LinkSetMTU(l, mtu); err != nil {
			return fmt.Errorf("MTU %d on %s: %w", mtu, n, err)
		}
	}
	return nil
}

func (t *Topology) fabricMTU() (int, error) {
	h, err := namedns.Handle(t.RouterNS())
	if err != nil {
		return 0, err
	}
	defer h.Close()
	for _, p := range t.Ports() {
		l, err := h.LinkByName(p)
		if err != nil {
			return 0, fmt.Errorf("link %s: %w", p, err)
		}
		return l.Attrs().MTU, nil
	}
	return t.MTU, nil
}
