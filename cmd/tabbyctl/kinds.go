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
	datastore.KindIPReservation:    {"ipreservation", "ipreservations", "reservation", "reservations"},
	// calicoctl v3.30 in etcd mode has no name for this kind (it uses `ipam configure`);
	// these are the Kubernetes resource's names.
	datastore.KindIPAMConfiguration: {"ipamconfiguration", "ipamconfigurations", "ipamconfig", "ipamconfigs"},
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

// tables are calicoctl v3.30's columns, so that the two tools' tables agree line for line;
// BGPConfiguration and BGPPeer add a few wide ones where tabby has more to show.
var tables = map[string]table{
	datastore.KindIPPool: {
		headings: []string{"NAME", "CIDR", "SELECTOR"},
		wide:     []string{"NAME", "CIDR", "NAT", "IPIPMODE", "VXLANMODE", "DISABLED", "DISABLEBGPEXPORT", "SELECTOR", "ASSIGNMENTMODE"},
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
			case "ASSIGNMENTMODE":
				if p.Spec.AssignmentMode == nil {
					return string(datastore.AssignmentAutomatic)
				}
				return string(*p.Spec.AssignmentMode)
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
		wide:     []string{"NAME", "ASN", "IPV4", "IPV6"},
		column: func(r datastore.Resource, h string, ctx tableContext) string {
			b := r.(*datastore.Node).Spec.BGP
			if b == nil {
				return "" // as calicoctl: a node without BGP shows no AS or address
			}
			switch h {
			case "ASN":
				if b.ASNumber != nil {
					return b.ASNumber.String()
				}
				return fmt.Sprintf("(%s)", ctx.defaultAS) // inherited, as calicoctl shows it
			case "IPV4":
				return b.IPv4Address
			case "IPV6":
				return b.IPv6Address
			}
			return ""
		},
	},
	datastore.KindIPReservation: {
		headings: []string{"NAME"},
		wide:     []string{"NAME", "CIDRS"},
		column: func(r datastore.Resource, h string, _ tableContext) string {
			if h != "CIDRS" {
				return ""
			}
			// calicoctl joins them with "," and truncates to 80 characters.
			s := strings.Join(r.(*datastore.IPReservation).Spec.ReservedCIDRs, ",")
			if len(s) > 80 {
				s = s[:77] + "..."
			}
			return s
		},
	},
	datastore.KindIPAMConfiguration: {
		headings: []string{"NAME", "STRICTAFFINITY", "MAXBLOCKSPERHOST"},
		wide:     []string{"NAME", "STRICTAFFINITY", "MAXBLOCKSPERHOST", "AUTOALLOCATEBLOCKS"},
		column: func(r datastore.Resource, h string, _ tableContext) string {
			s := r.(*datastore.IPAMConfiguration).Spec
			switch h {
			case "STRICTAFFINITY":
				return strconv.FormatBool(s.StrictAffinity)
			case "MAXBLOCKSPERHOST":
				return strconv.Itoa(int(s.MaxBlocksPerHost))
			case "AUTOALLOCATEBLOCKS":
				return strconv.FormatBool(s.AutoAllocateBlocks == nil || *s.AutoAllocateBlocks)
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
