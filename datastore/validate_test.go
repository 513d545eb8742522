package datastore_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/tabby-net/tabby/datastore"
)

func pool(name, cidr string, edit func(*datastore.IPPoolSpec)) *datastore.IPPool {
	p := datastore.NewIPPool(name)
	p.Spec.CIDR = cidr
	if edit != nil {
		edit(&p.Spec)
	}
	return p
}

func asn(n uint32) *datastore.ASNumber { a := datastore.ASNumber(n); return &a }

func TestValidateAccepts(t *testing.T) {
	on := true
	valid := []datastore.Resource{
		pool("default-ipv4-ippool", "192.168.0.0/16", func(s *datastore.IPPoolSpec) { s.IPIPMode = datastore.EncapAlways; s.NATOutgoing = true }),
		pool("vx", "10.244.0.0/16", func(s *datastore.IPPoolSpec) {
			s.VXLANMode = datastore.EncapCrossSubnet
			s.BlockSize = 20
			s.NodeSelector = "zone in {'a','b'} && !has(edge)"
		}),
		pool("tiny", "10.9.9.0/26", nil),
		pool("one-address-blocks", "10.9.8.0/32", func(s *datastore.IPPoolSpec) { s.BlockSize = 32 }),
		&datastore.BGPConfiguration{TypeMeta: datastore.TypeMeta{Kind: "BGPConfiguration"}, Metadata: datastore.ObjectMeta{Name: "default"},
			Spec: datastore.BGPConfigurationSpec{ASNumber: asn(65000), NodeToNodeMeshEnabled: &on, LogSeverityScreen: "Trace",
				NodeMeshPassword:       &datastore.BGPPassword{SecretKeyRef: &datastore.SecretKeyRef{Name: "bgp-secrets", Key: "mesh.password"}},
				NodeMeshMaxRestartTime: &datastore.Duration{Duration: time.Minute}}},
		&datastore.BGPConfiguration{Metadata: datastore.ObjectMeta{Name: "node.worker-1"}, Spec: datastore.BGPConfigurationSpec{ListenPort: 1790}},
		&datastore.BGPPeer{Metadata: datastore.ObjectMeta{Name: "tor"}, Spec: datastore.BGPPeerSpec{PeerIP: "10.30.0.1", ASNumber: 65001, NodeSelector: "rack == 'r1'"}},
		&datastore.BGPPeer{Metadata: datastore.ObjectMeta{Name: "tor-port"}, Spec: datastore.BGPPeerSpec{PeerIP: "10.30.0.1:1790", ASNumber: 65001, Node: "worker-1"}},
		&datastore.BGPPeer{Metadata: datastore.ObjectMeta{Name: "to-rrs"}, Spec: datastore.BGPPeerSpec{PeerSelector: "has(route-reflector)"}},
		&datastore.Node{Metadata: datastore.ObjectMeta{Name: "worker-1", Labels: map[string]string{"kubernetes.io/hostname": "worker-1", "zone": ""}},
			Spec: datastore.NodeSpec{BGP: &datastore.NodeBGPSpec{IPv4Address: "10.30.0.206/24", IPv4IPIPTunnelAddr: "192.168.1.0", RouteReflectorClusterID: "224.0.0.1"},
				IPv4VXLANTunnelAddr: "192.168.1.1", VXLANTunnelMACAddr: "66:0a:1b:2c:3d:4e"}},
	}
	for _, r := range valid {
		if err := datastore.Validate(r); err != nil {
			t.Errorf("Validate(%s %q): %v", r.ResourceKind(), r.Meta().Name, err)
		}
	}
}

func TestValidateRefuses(t *testing.T) {
	tests := []struct {
		name string
		r    datastore.Resource
		want string // the whole message of one of the errors, or a part of it
	}{
		{"both encapsulations", pool("p1", "10.1.0.0/16", func(s *datastore.IPPoolSpec) { s.IPIPMode = "Always"; s.VXLANMode = "CrossSubnet" }),
			`IPPool "p1": spec.vxlanMode: ipipMode (Always) and vxlanMode (CrossSubnet) cannot both be enabled`},
		{"blockSize 19", pool("p1", "10.1.0.0/16", func(s *datastore.IPPoolSpec) { s.BlockSize = 19 }), `IPPool "p1": spec.blockSize: 19 is outside 20..32`},
		{"blockSize 33", pool("p1", "10.1.0.0/16", func(s *datastore.IPPoolSpec) { s.BlockSize = 33 }), `IPPool "p1": spec.blockSize: 33 is outside 20..32`},
		{"smaller than a block", pool("p1", "10.1.0.0/27", nil), `IPPool "p1": spec.blockSize: the pool 10.1.0.0/27 is smaller than one block (/26)`},
		{"host bits", pool("p1", "192.168.0.1/16", nil), `IPPool "p1": spec.cidr: 192.168.0.1/16 has host bits set (did you mean 192.168.0.0/16?)`},
		{"no prefix", pool("p1", "192.168.0.0", nil), `spec.cidr: "192.168.0.0" has no prefix length`},
		{"not a CIDR", pool("p1", "big", nil), `spec.cidr: "big" is not a CIDR`},
		{"missing cidr", pool("p1", "", nil), `IPPool "p1": spec.cidr: required`},
		{"IPv6", pool("p1", "fd00::/48", nil), "spec.cidr: fd00::/48 is IPv6: tabby handles IPv4 pools only"},
		{"link-local", pool("p1", "169.254.0.0/20", nil), "spec.cidr: 169.254.0.0/20 overlaps the link-local range 169.254.0.0/16"},
		{"everything", pool("p1", "0.0.0.0/0", func(s *datastore.IPPoolSpec) { s.BlockSize = 20 }), "overlaps the link-local range"},
		{"bad ipipMode", pool("p1", "10.1.0.0/16", func(s *datastore.IPPoolSpec) { s.IPIPMode = "always" }), `spec.ipipMode: "always" is not one of Never, Always, CrossSubnet`},
		{"bad vxlanMode", pool("p1", "10.1.0.0/16", func(s *datastore.IPPoolSpec) { s.VXLANMode = "On" }), `spec.vxlanMode: "On" is not one of`},
		{"bad selector", pool("p1", "10.1.0.0/16", func(s *datastore.IPPoolSpec) { s.NodeSelector = "zone = 'a'" }), `IPPool "p1": spec.nodeSelector: selector "zone = 'a'": at position 6`},
		{"bad allowedUses", pool("p1", "10.1.0.0/16", func(s *datastore.IPPoolSpec) { s.AllowedUses = []string{"Workload", "LoadBalancer"} }), `spec.allowedUses[0]: Workload cannot be combined with LoadBalancer`},
		{"unknown allowedUse", pool("p1", "10.1.0.0/16", func(s *datastore.IPPoolSpec) { s.AllowedUses = []string{"Garbage"} }), `spec.allowedUses[0]: "Garbage" is not one of Workload, Tunnel, LoadBalancer`},
		{"bad name", pool("Default_Pool", "10.1.0.0/16", nil), `IPPool "Default_Pool": metadata.name: "Default_Pool" is not a valid name`},
		{"no name", pool("", "10.1.0.0/16", nil), "IPPool: metadata.name: required"},
		{"bad label key", &datastore.Node{Metadata: datastore.ObjectMeta{Name: "n", Labels: map[string]string{"bad key": "v"}}}, `Node "n": metadata.labels["bad key"]: key "bad key" is not a valid label key`},
		{"bad label value", &datastore.Node{Metadata: datastore.ObjectMeta{Name: "n", Labels: map[string]string{"k": "-v"}}}, `metadata.labels["k"]: value "-v" is not a valid label value`},

		{"config name", &datastore.BGPConfiguration{Metadata: datastore.ObjectMeta{Name: "global"}}, `BGPConfiguration "global": metadata.name: "global" must be "default" (cluster-wide) or "node." followed by a node name`},
		{"config node name", &datastore.BGPConfiguration{Metadata: datastore.ObjectMeta{Name: "node.Bad_Name"}}, `metadata.name: "node.Bad_Name" must be`},
		{"config AS 0", &datastore.BGPConfiguration{Metadata: datastore.ObjectMeta{Name: "default"}, Spec: datastore.BGPConfigurationSpec{ASNumber: asn(0)}}, "spec.asNumber: 0 is not a valid AS number"},
		{"config restart time", &datastore.BGPConfiguration{Metadata: datastore.ObjectMeta{Name: "default"}, Spec: datastore.BGPConfigurationSpec{NodeMeshMaxRestartTime: &datastore.Duration{Duration: -time.Second}}}, "spec.nodeMeshMaxRestartTime: -1s is negative"},
		{"config secret name", &datastore.BGPConfiguration{Metadata: datastore.ObjectMeta{Name: "default"}, Spec: datastore.BGPConfigurationSpec{NodeMeshPassword: &datastore.BGPPassword{SecretKeyRef: &datastore.SecretKeyRef{Key: "k"}}}}, "spec.nodeMeshPassword.secretKeyRef.name: required"},
		{"config secret key", &datastore.BGPConfiguration{Metadata: datastore.ObjectMeta{Name: "default"}, Spec: datastore.BGPConfigurationSpec{NodeMeshPassword: &datastore.BGPPassword{SecretKeyRef: &datastore.SecretKeyRef{Name: "s"}}}}, "spec.nodeMeshPassword.secretKeyRef.key: required"},
		{"config secret key escapes", &datastore.BGPConfiguration{Metadata: datastore.ObjectMeta{Name: "default"}, Spec: datastore.BGPConfigurationSpec{NodeMeshPassword: &datastore.BGPPassword{SecretKeyRef: &datastore.SecretKeyRef{Name: "s", Key: "../../etc/shadow"}}}}, `spec.nodeMeshPassword.secretKeyRef.key: "../../etc/shadow" is not a valid key`},
		{"config no secretKeyRef", &datastore.BGPConfiguration{Metadata: datastore.ObjectMeta{Name: "default"}, Spec: datastore.BGPConfigurationSpec{NodeMeshPassword: &datastore.BGPPassword{}}}, "spec.nodeMeshPassword.secretKeyRef: required"},
		{"config severity", &datastore.BGPConfiguration{Metadata: datastore.ObjectMeta{Name: "default"}, Spec: datastore.BGPConfigurationSpec{LogSeverityScreen: "loud"}}, `spec.logSeverityScreen: "loud" is not one of Trace, Debug, Info, Warning, Error, Fatal`},

		{"peer node and selector", &datastore.BGPPeer{Metadata: datastore.ObjectMeta{Name: "p"}, Spec: datastore.BGPPeerSpec{PeerIP: "10.0.0.1", ASNumber: 65001, Node: "w1", NodeSelector: "all()"}}, `BGPPeer "p": spec.nodeSelector: node and nodeSelector cannot both be set`},
		{"peer bad IP", &datastore.BGPPeer{Metadata: datastore.ObjectMeta{Name: "p"}, Spec: datastore.BGPPeerSpec{PeerIP: "10.0.0.300", ASNumber: 65001}}, `spec.peerIP: "10.0.0.300" is not an IP address, IPv4:port or [IPv6]:port`},
		{"peer bad port", &datastore.BGPPeer{Metadata: datastore.ObjectMeta{Name: "p"}, Spec: datastore.BGPPeerSpec{PeerIP: "10.0.0.1:99999", ASNumber: 65001}}, `spec.peerIP: "10.0.0.1:99999" is not an IP address`},
		{"peer both", &datastore.BGPPeer{Metadata: datastore.ObjectMeta{Name: "p"}, Spec: datastore.BGPPeerSpec{PeerIP: "10.0.0.1", ASNumber: 1, PeerSelector: "all()"}}, "spec.peerSelector: peerIP and peerSelector cannot both be set"},
		{"peer bad peerSelector", &datastore.BGPPeer{Metadata: datastore.ObjectMeta{Name: "p"}, Spec: datastore.BGPPeerSpec{PeerSelector: "has(x"}}, "spec.peerSelector: selector"},
		{"peer restart time", &datastore.BGPPeer{Metadata: datastore.ObjectMeta{Name: "p"}, Spec: datastore.BGPPeerSpec{PeerIP: "10.0.0.1", ASNumber: 1, MaxRestartTime: &datastore.Duration{Duration: -time.Second}}}, "spec.maxRestartTime: -1s is negative"},
		{"peer password", &datastore.BGPPeer{Metadata: datastore.ObjectMeta{Name: "p"}, Spec: datastore.BGPPeerSpec{PeerIP: "10.0.0.1", ASNumber: 1, Password: &datastore.BGPPassword{SecretKeyRef: &datastore.SecretKeyRef{Name: "s", Key: ""}}}}, "spec.password.secretKeyRef.key: required"},

		{"node address without prefix", &datastore.Node{Metadata: datastore.ObjectMeta{Name: "n"}, Spec: datastore.NodeSpec{BGP: &datastore.NodeBGPSpec{IPv4Address: "10.30.0.206"}}}, `Node "n": spec.bgp.ipv4Address: "10.30.0.206" needs a prefix length, such as 10.30.0.206/24`},
		{"node address IPv6", &datastore.Node{Metadata: datastore.ObjectMeta{Name: "n"}, Spec: datastore.NodeSpec{BGP: &datastore.NodeBGPSpec{IPv4Address: "fd00::1/64"}}}, "spec.bgp.ipv4Address: \"fd00::1/64\" is IPv6"},
		{"node AS 0", &datastore.Node{Metadata: datastore.ObjectMeta{Name: "n"}, Spec: datastore.NodeSpec{BGP: &datastore.NodeBGPSpec{ASNumber: asn(0)}}}, "spec.bgp.asNumber: 0 is not a valid AS number"},
		{"node bad MAC", &datastore.Node{Metadata: datastore.ObjectMeta{Name: "n"}, Spec: datastore.NodeSpec{VXLANTunnelMACAddr: "66:0a:1b"}}, `spec.vxlanTunnelMACAddr: "66:0a:1b" is not a MAC address`},
		{"node tunnel address", &datastore.Node{Metadata: datastore.ObjectMeta{Name: "n"}, Spec: datastore.NodeSpec{IPv4VXLANTunnelAddr: "192.168.1.1/32"}}, `spec.ipv4VXLANTunnelAddr: "192.168.1.1/32" is not an IPv4 address (without prefix length)`},
		{"node cluster ID", &datastore.Node{Metadata: datastore.ObjectMeta{Name: "n"}, Spec: datastore.NodeSpec{BGP: &datastore.NodeBGPSpec{RouteReflectorClusterID: "rr1"}}}, `spec.bgp.routeReflectorClusterID: "rr1" must be in IPv4 address form`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := datastore.Validate(tt.r)
			if err == nil {
				t.Fatalf("Validate accepted %+v", tt.r)
			}
			if !errors.Is(err, datastore.ErrInvalid) {
				t.Errorf("error %v does not wrap ErrInvalid", err)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error\n%v\ndoes not contain\n%s", err, tt.want)
			}
		})
	}
}
