package main

import (
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/tabby-net/tabby/datastore"
)

// kindNames are the names calicoctl accepts for each kind on the command line.
var kindNames = map[string][]string{
	datastore.KindIPPool:           {"ippool", "ippools", "ipp", "ipps", "pool", "pools"},
	datastore.KindBGPConfiguration: {"bgpconfiguration", "bgpconfigurations", "bgpconfig", "bgpconfigs"},
	datastore.KindBGPPeer:          {"bgppeer", "bgppeers", "bgpp", "bgpps", "bp", "bps"},
	datastore.KindNode:             {"node", "nodes", "no", "nos"},
}

// resolveKind turns a command-line kind ("ippools", "IPPool", "bgpconfig") into a kind.
func resolveKind(arg string) (string, error) {
	lower := strings.ToLower(arg)
	for _, kind := range datastore.Kinds() {
		if lower == strings.ToLower(kind) || slices.Contains(kindNames[kind], lower) {
			return kind, nil
		}
	}
	var known []string
	for _, kind := range datastore.Kinds() {
		known = append(known, kindNames[kind][0])
	}
	return "", usageErrorf("resource type %q is not supported (tabbyctl knows %s)", arg, strings.Join(known, ", "))
}

// table is how `get` prints one kind: its column headings, narrow and wide, and each
// column's value.
type table struct {
	headings, wide []string
	column         func(r datastore.Resource, heading string, ctx tableContext) string
}

// tableContext is what columns may need beyond the resource itself.
type tableContext struct {
	// defaultAS is the AS number of nodes that do not set their own.
	defaultAS datastore.ASNumber
}

// tables are calicoctl's columns (SPEC §11 for IPPool), with a few wide ones added where
// tabby has more to show.
var tables = map[string]table{
	datastore.KindIPPool: {
		headings: []string{"NAME", "CIDR", "SELECTOR"},
		wide:     []string{"NAME", "CIDR", "NAT", "IPIPMODE", "VXLANMODE", "DISABLED", "DISABLEBGPEXPORT", "SELECTOR"},
		column: func(r datastore.Resource, h string, _ tableContext) string {
			p := r.(*datastore.IPPool)
			switch h {
			case "CIDR":
				return p.Spec.CIDR
			case "NAT":
				return strconv.FormatBool(p.Spec.NATOutgoing)
			case "IPIPMODE":
				return string(p.Spec.IPIPMode)
			case "VXLANMODE":
				return string(p.Spec.VXLANMode)
			case "DISABLED":
				return strconv.FormatBool(p.Spec.Disabled)
			case "DISABLEBGPEXPORT":
				return strconv.FormatBool(p.Spec.DisableBGPExport)
			case "SELECTOR":
				return p.Spec.NodeSelector
			}
			return ""
		},
	},
	datastore.KindBGPConfiguration: {
		headings: []string{"NAME", "LOGSEVERITY", "MESHENABLED", "ASNUMBER"},
		wide:     []string{"NAME", "LOGSEVERITY", "MESHENABLED", "ASNUMBER", "LISTENPORT"},
		column: func(r datastore.Resource, h string, _ tableContext) string {
			s := r.(*datastore.BGPConfiguration).Spec
			switch h {
			case "LOGSEVERITY":
				return orDash(s.LogSeverityScreen)
			case "MESHENABLED":
				if s.NodeToNodeMeshEnabled == nil {
					return "-"
				}
				return strconv.FormatBool(*s.NodeToNodeMeshEnabled)
			case "ASNUMBER":
				if s.ASNumber == nil {
					return "-"
				}
				return s.ASNumber.String()
			case "LISTENPORT":
				if s.ListenPort == 0 {
					return "-"
				}
				return strconv.Itoa(int(s.ListenPort))
			}
			return ""
		},
	},
	datastore.KindBGPPeer: {
		headings: []string{"NAME", "PEERIP", "NODE", "ASN"},
		wide:     []string{"NAME", "PEERIP", "PEERSELECTOR", "NODE", "ASN", "KEEPNEXTHOP"},
		column: func(r datastore.Resource, h string, _ tableContext) string {
			s := r.(*datastore.BGPPeer).Spec
			switch h {
			case "PEERIP":
				return s.PeerIP
			case "PEERSELECTOR":
				return orDash(s.PeerSelector)
			case "NODE":
				switch {
				case s.Node != "":
					return s.Node
				case s.NodeSelector != "":
					return s.NodeSelector
				}
				return "(global)"
			case "ASN":
				if s.ASNumber == 0 {
					return "-"
				}
				return s.ASNumber.String()
			case "KEEPNEXTHOP":
				return strconv.FormatBool(s.KeepOriginalNextHop)
			}
			return ""
		},
	},
	datastore.KindNode: {
		headings: []string{"NAME"},
		wide:     []string{"NAME", "ASN", "IPV4", "IPIPTUNNELADDR", "VXLANTUNNELADDR"},
		column: func(r datastore.Resource, h string, ctx tableContext) string {
			n := r.(*datastore.Node)
			b := n.Spec.BGP
			if b == nil {
				b = &datastore.NodeBGPSpec{}
			}
			switch h {
			case "ASN":
				if b.ASNumber != nil {
					return b.ASNumber.String()
				}
				return fmt.Sprintf("(%s)", ctx.defaultAS) // inherited, as calicoctl shows it
			case "IPV4":
				return b.IPv4Address
			case "IPIPTUNNELADDR":
				return b.IPv4IPIPTunnelAddr
			case "VXLANTUNNELADDR":
				return n.Spec.IPv4VXLANTunnelAddr
			}
			return ""
		},
	},
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
