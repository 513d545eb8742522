package datastore_test

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/tabby-net/tabby/datastore"
)

// calicoCase is one case of Calico v3.30's own validation tests (libcalico-go
// lib/validator/v3/validator_test.go and clientv3's IPPool checks), restated as a manifest:
// tabby must accept what Calico accepts and refuse, naming the field, what Calico refuses.
type calicoCase struct {
	name  string
	kind  string
	spec  string // the spec as JSON
	valid bool
	field string // for an invalid case: the field the error must name
}

func TestValidateAgreesWithCalico(t *testing.T) {
	const secret = `"password":{"secretKeyRef":{"name":"tigera-bgp-passwords","key":"my-peering"}}`
	cases := []calicoCase{
		// IPPool
		{"pool /26", "IPPool", `{"cidr":"10.0.0.0/26"}`, true, ""},
		{"pool /10", "IPPool", `{"cidr":"100.64.0.0/10"}`, true, ""},
		{"disabled pool smaller than a block", "IPPool", `{"cidr":"10.0.0.0/27","disabled":true}`, true, ""},
		{"enabled pool smaller than a block", "IPPool", `{"cidr":"10.0.0.0/27"}`, false, "spec.blockSize"},
		{"prefix /33", "IPPool", `{"cidr":"1.2.3.4/33"}`, false, "spec.cidr"},
		{"link-local pool", "IPPool", `{"cidr":"169.254.5.0/24"}`, false, "spec.cidr"},
		{"not strictly masked", "IPPool", `{"cidr":"10.0.0.1/24"}`, false, "spec.cidr"},
		{"no cidr", "IPPool", `{}`, false, "spec.cidr"},
		{"blockSize 19", "IPPool", `{"cidr":"10.0.0.0/16","blockSize":19}`, false, "spec.blockSize"},
		{"blockSize 32", "IPPool", `{"cidr":"10.0.0.0/16","blockSize":32}`, true, ""},
		{"allowed uses Workload and Tunnel", "IPPool", `{"cidr":"100.64.0.0/10","allowedUses":["Workload","Tunnel"]}`, true, ""},
		{"allowed use Tunnel alone", "IPPool", `{"cidr":"100.64.0.0/10","allowedUses":["Tunnel"]}`, true, ""},
		{"LoadBalancer pool", "IPPool", `{"cidr":"100.64.0.0/10","allowedUses":["LoadBalancer"]}`, true, ""},
		{"LoadBalancer with Tunnel", "IPPool", `{"cidr":"100.64.0.0/10","allowedUses":["LoadBalancer","Tunnel"]}`, false, "spec.allowedUses[1]"},
		{"garbage allowed use", "IPPool", `{"cidr":"100.64.0.0/10","allowedUses":["Garbage"]}`, false, "spec.allowedUses[0]"},
		{"LoadBalancer with disableBGPExport", "IPPool", `{"cidr":"100.64.0.0/10","allowedUses":["LoadBalancer"],"disableBGPExport":true}`, false, "spec.disableBGPExport"},
		{"LoadBalancer with VXLAN", "IPPool", `{"cidr":"100.64.0.0/10","allowedUses":["LoadBalancer"],"vxlanMode":"Always"}`, false, "spec.ipipMode"},
		{"LoadBalancer with IPIP", "IPPool", `{"cidr":"100.64.0.0/10","allowedUses":["LoadBalancer"],"ipipMode":"Always"}`, false, "spec.ipipMode"},
		{"LoadBalancer with a node selector", "IPPool", `{"cidr":"100.64.0.0/10","allowedUses":["LoadBalancer"],"nodeSelector":"!all()"}`, false, "spec.nodeSelector"},
		{"assignmentMode Automatic", "IPPool", `{"cidr":"100.64.0.0/10","assignmentMode":"Automatic"}`, true, ""},
		{"assignmentMode Manual", "IPPool", `{"cidr":"100.64.0.0/10","assignmentMode":"Manual"}`, true, ""},
		{"assignmentMode empty", "IPPool", `{"cidr":"100.64.0.0/10","assignmentMode":""}`, false, "spec.assignmentMode"},
		{"assignmentMode lower case", "IPPool", `{"cidr":"100.64.0.0/10","assignmentMode":"manual"}`, false, "spec.assignmentMode"},
		{"no ipipMode", "IPPool", `{"cidr":"1.2.3.0/24"}`, true, ""},
		{"ipipMode and vxlanMode Never", "IPPool", `{"cidr":"1.2.3.0/24","ipipMode":"Never","vxlanMode":"Never"}`, true, ""},
		{"ipipMode Always", "IPPool", `{"cidr":"1.2.3.0/24","ipipMode":"Always"}`, true, ""},
		{"ipipMode CrossSubnet", "IPPool", `{"cidr":"1.2.3.0/24","ipipMode":"CrossSubnet"}`, true, ""},
		{"ipipMode badVal", "IPPool", `{"cidr":"1.2.3.0/24","ipipMode":"badVal"}`, false, "spec.ipipMode"},
		{"ipipMode never", "IPPool", `{"cidr":"1.2.3.0/24","ipipMode":"never"}`, false, "spec.ipipMode"},
		{"IPIP and VXLAN", "IPPool", `{"cidr":"1.2.3.0/24","ipipMode":"Always","vxlanMode":"Always"}`, false, "spec.vxlanMode"},
		{"vxlanMode Always", "IPPool", `{"cidr":"1.2.3.0/24","vxlanMode":"Always"}`, true, ""},
		{"vxlanMode CrossSubnet", "IPPool", `{"cidr":"1.2.3.0/24","vxlanMode":"CrossSubnet"}`, true, ""},
		{"vxlanMode never", "IPPool", `{"cidr":"1.2.3.0/24","vxlanMode":"never"}`, false, "spec.vxlanMode"},
		{"vxlanMode badVal", "IPPool", `{"cidr":"1.2.3.0/24","vxlanMode":"badVal"}`, false, "spec.vxlanMode"},
		{"v1 ipip field", "IPPool", `{"cidr":"1.2.3.0/24","ipipMode":"Never","ipip":{"enabled":true,"mode":"Always"}}`, false, "spec.ipip"},
		{"v1 nat-outgoing false", "IPPool", `{"cidr":"1.2.3.0/24","nat-outgoing":false}`, true, ""},
		{"v1 nat-outgoing true", "IPPool", `{"cidr":"1.2.3.0/24","nat-outgoing":true}`, false, "spec.nat-outgoing"},
		{"bad node selector", "IPPool", `{"cidr":"1.2.3.0/24","nodeSelector":"kubernetes.io/hostname: == 'x'"}`, false, "spec.nodeSelector"},

		// IPReservation
		{"reservation of an IP", "IPReservation", `{"reservedCIDRs":["10.0.0.1"]}`, true, ""},
		{"reservation of a CIDR", "IPReservation", `{"reservedCIDRs":["10.0.1.0/24"]}`, true, ""},
		{"reservation of a CIDR and an IP", "IPReservation", `{"reservedCIDRs":["10.0.1.0/24","192.168.0.34"]}`, true, ""},
		{"reservation of garbage", "IPReservation", `{"reservedCIDRs":["garbage"]}`, false, "spec.reservedCIDRs[0]"},
		{"reservation /33", "IPReservation", `{"reservedCIDRs":["10.0.1.0/33"]}`, false, "spec.reservedCIDRs[0]"},
		{"reservation with IPv6", "IPReservation", `{"reservedCIDRs":["10.0.0.1","cafe::1","cafe:f00d::/96"]}`, true, ""},

		// IPAMConfiguration (Calico's resource check and its IPAM's SetIPAMConfig checks)
		{"ipam config strict", "IPAMConfiguration", `{"strictAffinity":true,"maxBlocksPerHost":21}`, true, ""},
		{"ipam config defaults", "IPAMConfiguration", `{"strictAffinity":false}`, true, ""},
		{"ipam config negative max", "IPAMConfiguration", `{"strictAffinity":true,"maxBlocksPerHost":-1}`, false, "spec.maxBlocksPerHost"},
		{"ipam config max without strict", "IPAMConfiguration", `{"strictAffinity":false,"maxBlocksPerHost":4}`, false, "spec.maxBlocksPerHost"},
		{"ipam config neither strict nor auto", "IPAMConfiguration", `{"strictAffinity":false,"autoAllocateBlocks":false}`, false, "spec.autoAllocateBlocks"},

		// BGPConfiguration
		{"log level Info", "BGPConfiguration", `{"logSeverityScreen":"Info"}`, true, ""},
		{"log level info", "BGPConfiguration", `{"logSeverityScreen":"info"}`, false, "spec.logSeverityScreen"},
		{"log level INFO", "BGPConfiguration", `{"logSeverityScreen":"INFO"}`, false, "spec.logSeverityScreen"},
		{"log level invalidLvl", "BGPConfiguration", `{"logSeverityScreen":"invalidLvl"}`, false, "spec.logSeverityScreen"},
		{"cluster IP 1.2.3.4", "BGPConfiguration", `{"serviceClusterIPs":[{"cidr":"1.2.3.4"}]}`, true, ""},
		{"external IP 8.8.8.8", "BGPConfiguration", `{"serviceExternalIPs":[{"cidr":"8.8.8.8"}]}`, true, ""},
		{"cluster IP x.x.x.x", "BGPConfiguration", `{"serviceClusterIPs":[{"cidr":"x.x.x.x"}]}`, false, "spec.serviceClusterIPs[0].cidr"},
		{"external IP y.y.y.y", "BGPConfiguration", `{"serviceExternalIPs":[{"cidr":"y.y.y.y"}]}`, false, "spec.serviceExternalIPs[0].cidr"},
		{"IPv6 cluster IP", "BGPConfiguration", `{"serviceClusterIPs":[{"cidr":"fdf5:1234::102:304"}]}`, true, ""},
		{"IPv6 load balancer IPs", "BGPConfiguration", `{"serviceLoadBalancerIPs":[{"cidr":"fdf5:1234::/64"}]}`, true, ""},
		{"mesh password with mesh on", "BGPConfiguration", `{"nodeToNodeMeshEnabled":true,"nodeMeshPassword":{"secretKeyRef":{"name":"test-secret","key":"bgp-password"}}}`, true, ""},
		{"mesh password with mesh off", "BGPConfiguration", `{"nodeToNodeMeshEnabled":false,"nodeMeshPassword":{"secretKeyRef":{"name":"test-secret","key":"bgp-password"}}}`, false, "spec.nodeMeshPassword"},
		{"mesh restart time with mesh on", "BGPConfiguration", `{"nodeToNodeMeshEnabled":true,"nodeMeshMaxRestartTime":"200s"}`, true, ""},
		{"mesh restart time with mesh off", "BGPConfiguration", `{"nodeToNodeMeshEnabled":false,"nodeMeshMaxRestartTime":"200s"}`, false, "spec.nodeMeshMaxRestartTime"},
		{"ignored interfaces", "BGPConfiguration", `{"ignoredInterfaces":["valid_iface*","interface_name"]}`, true, ""},
		{"ignored interface *", "BGPConfiguration", `{"ignoredInterfaces":["*"]}`, false, "spec.ignoredInterfaces[0]"},
		{"community without prefix advertisement", "BGPConfiguration", `{"communities":[{"name":"community-test","value":"101:5695"}]}`, false, "spec.communities"},
		{"community without name", "BGPConfiguration", `{"communities":[{"value":"536:785"}],"prefixAdvertisements":[{"cidr":"192.168.10.0/28","communities":["100:100"]}]}`, false, "spec.communities[0].name"},
		{"community without value", "BGPConfiguration", `{"communities":[{"name":"community-test"}],"prefixAdvertisements":[{"cidr":"192.168.10.0/28","communities":["100:100"]}]}`, false, "spec.communities[0].value"},
		{"standard community", "BGPConfiguration", `{"communities":[{"name":"community-test","value":"100:520"}],"prefixAdvertisements":[{"cidr":"192.168.10.0/28","communities":["100:100"]}]}`, true, ""},
		{"large community", "BGPConfiguration", `{"communities":[{"name":"community-test","value":"100:520:56"}],"prefixAdvertisements":[{"cidr":"192.168.10.0/28","communities":["100:100"]}]}`, true, ""},
		{"community value 100", "BGPConfiguration", `{"communities":[{"name":"community-test","value":"100"}],"prefixAdvertisements":[{"cidr":"192.168.10.0/28","communities":["100:100"]}]}`, false, "spec.communities[0].value"},
		{"community value ab-n", "BGPConfiguration", `{"communities":[{"name":"community-test","value":"ab-n"}],"prefixAdvertisements":[{"cidr":"192.168.10.0/28","communities":["100:100"]}]}`, false, "spec.communities[0].value"},
		{"standard community over 16 bits", "BGPConfiguration", `{"communities":[{"name":"community-test","value":"65536:999999"}],"prefixAdvertisements":[{"cidr":"192.168.10.0/28","communities":["100:100"]}]}`, false, "spec.communities[0].value"},
		{"large community over 32 bits", "BGPConfiguration", `{"communities":[{"name":"community-test","value":"4147483647:999999"}],"prefixAdvertisements":[{"cidr":"192.168.10.0/28","communities":["100:100"]}]}`, false, "spec.communities[0].value"},
		{"prefix advertisement without cidr", "BGPConfiguration", `{"prefixAdvertisements":[{"communities":["100:5964"]}]}`, false, "spec.prefixAdvertisements[0].cidr"},
		{"prefix advertisement without communities", "BGPConfiguration", `{"prefixAdvertisements":[{"cidr":"192.168.10.0/28"}]}`, false, "spec.prefixAdvertisements[0].communities"},
		{"IPv4 prefix advertisement", "BGPConfiguration", `{"prefixAdvertisements":[{"cidr":"192.168.10.0/28","communities":["100:5964:50"]}]}`, true, ""},
		{"IPv6 prefix advertisement", "BGPConfiguration", `{"prefixAdvertisements":[{"cidr":"2001:4860::/128","communities":["100:5964:50"]}]}`, true, ""},
		{"two standard communities", "BGPConfiguration", `{"prefixAdvertisements":[{"cidr":"2001:4860::/128","communities":["100:5964","200:594"]}]}`, true, ""},
		{"advertised standard community over 16 bits", "BGPConfiguration", `{"prefixAdvertisements":[{"cidr":"2001:4860::/128","communities":["100:1147483647"]}]}`, false, "spec.prefixAdvertisements[0].communities[0]"},
		{"advertised large community over 32 bits", "BGPConfiguration", `{"prefixAdvertisements":[{"cidr":"2001:4860::/128","communities":["100:100:5147483647"]}]}`, false, "spec.prefixAdvertisements[0].communities[0]"},
		{"undefined community name", "BGPConfiguration", `{"prefixAdvertisements":[{"cidr":"2001:4860::/128","communities":["nonexistent-community"]}]}`, false, "spec.prefixAdvertisements[0].communities[0]"},
		{"defined community name", "BGPConfiguration", `{"communities":[{"name":"community-test","value":"101:5695"}],"prefixAdvertisements":[{"cidr":"2001:4860::/128","communities":["community-test","8988:202"]}]}`, true, ""},
		{"local workload peering IPs", "BGPConfiguration", `{"localWorkloadPeeringIPV4":"1.2.3.4","localWorkloadPeeringIPV6":"aa:bb::ff"}`, true, ""},
		{"bad local workload peering IPv4", "BGPConfiguration", `{"localWorkloadPeeringIPV4":"999.999.999.999"}`, false, "spec.localWorkloadPeeringIPV4"},
		{"bad local workload peering IPv6", "BGPConfiguration", `{"localWorkloadPeeringIPV6":"xyz::"}`, false, "spec.localWorkloadPeeringIPV6"},
		{"bind mode NodeIP", "BGPConfiguration", `{"bindMode":"NodeIP"}`, true, ""},

		// BGPPeer
		{"peer with an IP", "BGPPeer", `{"peerIP":"1.2.3.4"}`, true, ""},
		{"peer with a bad IPv4", "BGPPeer", `{"peerIP":"999.999.999.999"}`, false, "spec.peerIP"},
		{"peer with a bad IPv6", "BGPPeer", `{"peerIP":"xyz::"}`, false, "spec.peerIP"},
		{"node and nodeSelector", "BGPPeer", `{"node":"my-node","nodeSelector":"has(mylabel)"}`, false, "spec.nodeSelector"},
		{"peerIP and peerSelector", "BGPPeer", `{"peerIP":"1.2.3.4","peerSelector":"has(mylabel)"}`, false, "spec.peerSelector"},
		{"asNumber and peerSelector", "BGPPeer", `{"asNumber":61234,"peerSelector":"has(mylabel)"}`, false, "spec.asNumber"},
		{"nodeSelector and peerSelector", "BGPPeer", `{"nodeSelector":"has(mylabel)","peerSelector":"has(mylabel)"}`, true, ""},
		{"localWorkloadSelector without asNumber", "BGPPeer", `{"localWorkloadSelector":"has(labelone)"}`, false, "spec.asNumber"},
		{"localWorkloadSelector and peerSelector", "BGPPeer", `{"localWorkloadSelector":"has(labelone)","peerSelector":"has(labeltwo)","asNumber":61234}`, false, "spec.peerSelector"},
		{"localWorkloadSelector and peerIP", "BGPPeer", `{"localWorkloadSelector":"has(labelone)","peerIP":"1.2.3.4","asNumber":61234}`, false, "spec.peerIP"},
		{"localWorkloadSelector with asNumber", "BGPPeer", `{"localWorkloadSelector":"has(labelone)","asNumber":61234}`, true, ""},
		{"reachableBy without peerIP", "BGPPeer", `{"reachableBy":"100.5.10.20"}`, false, "spec.reachableBy"},
		{"reachableBy (IPv6) without peerIP", "BGPPeer", `{"reachableBy":"aa:bb::cc"}`, false, "spec.reachableBy"},
		{"reachableBy and peerIP:port", "BGPPeer", `{"peerIP":"192.168.0.1:179","reachableBy":"1.2.3.4"}`, true, ""},
		{"reachableBy and peerIP (IPv6)", "BGPPeer", `{"peerIP":"[aa:bb::ff]:179","reachableBy":"aa:bb::ff"}`, true, ""},
		{"bad reachableBy", "BGPPeer", `{"peerIP":"192.168.0.1:179","reachableBy":"999.999.999.999"}`, false, "spec.reachableBy"},
		{"bad reachableBy (IPv6)", "BGPPeer", `{"peerIP":"[aa:bb::ff]:179","reachableBy":"xyz::"}`, false, "spec.reachableBy"},
		{"reachableBy IPv6, peerIP IPv4", "BGPPeer", `{"peerIP":"1.2.3.4","reachableBy":"aa:bb::ff"}`, false, "spec.reachableBy"},
		{"reachableBy IPv6, peerIP IPv4:port", "BGPPeer", `{"peerIP":"192.168.0.1:179","reachableBy":"aa:bb::ff"}`, false, "spec.reachableBy"},
		{"reachableBy IPv4, peerIP IPv6", "BGPPeer", `{"peerIP":"aa:bb::ff","reachableBy":"1.2.3.4"}`, false, "spec.reachableBy"},
		{"reachableBy IPv4, peerIP [IPv6]:port", "BGPPeer", `{"peerIP":"[aa:bb::ff]:179","reachableBy":"1.2.3.4"}`, false, "spec.reachableBy"},
		{"password", "BGPPeer", `{"peerIP":"1.2.3.4",` + secret + `}`, true, ""},
		{"bad nodeSelector", "BGPPeer", `{"nodeSelector":"kubernetes.io/hostname: == 'casey-crc-kadm-node-4'"}`, false, "spec.nodeSelector"},
		{"IPv4 with port", "BGPPeer", `{"peerIP":"192.168.1.1:500"}`, true, ""},
		{"IPv6 with port", "BGPPeer", `{"peerIP":"[9000::]:500"}`, true, ""},
		{"bracketed IPv4, port too large", "BGPPeer", `{"peerIP":"[192.168.0.0]:98956"}`, false, "spec.peerIP"},
		{"IPv4, port 65536", "BGPPeer", `{"peerIP":"192.168.0.0:65536"}`, false, "spec.peerIP"},
		{"IPv4, port 0", "BGPPeer", `{"peerIP":"192.168.0.0:0"}`, false, "spec.peerIP"},
		{"bad IPv4 with port", "BGPPeer", `{"peerIP":"192.168.0.330:170"}`, false, "spec.peerIP"},
		{"IPv6, port too large", "BGPPeer", `{"peerIP":"[9000::]:98956"}`, false, "spec.peerIP"},
		{"IPv4, empty port", "BGPPeer", `{"peerIP":"192.168.0.0:"}`, false, "spec.peerIP"},
		{"IPv6, empty port", "BGPPeer", `{"peerIP":"[9000::]:"}`, false, "spec.peerIP"},
		{"IPv6, port 65536", "BGPPeer", `{"peerIP":"[9000::]:65536"}`, false, "spec.peerIP"},
		{"IPv6, port 0", "BGPPeer", `{"peerIP":"[9000::]:0"}`, false, "spec.peerIP"},
		{"bad IPv6 with port", "BGPPeer", `{"peerIP":"[9000::FFFFF]:170"}`, false, "spec.peerIP"},
		{"port without IPv4", "BGPPeer", `{"peerIP":":8552"}`, false, "spec.peerIP"},
		{"port without IPv6", "BGPPeer", `{"peerIP":"[]:8552"}`, false, "spec.peerIP"},
		{"sourceAddress UseNodeIP", "BGPPeer", `{"sourceAddress":"UseNodeIP"}`, true, ""},
		{"sourceAddress None", "BGPPeer", `{"sourceAddress":"None"}`, true, ""},
		{"sourceAddress rubbish", "BGPPeer", `{"sourceAddress":"rubbish"}`, false, "spec.sourceAddress"},
		{"maxRestartTime", "BGPPeer", `{"maxRestartTime":"10s"}`, true, ""},
		{"every v3.30 field", "BGPPeer", `{"peerIP":"10.0.0.1","asNumber":65001,"sourceAddress":"None","numAllowedLocalASNumbers":2,"ttlSecurity":1,"reachableBy":"10.0.0.254","filters":["export-only"],"keepOriginalNextHop":true,"maxRestartTime":"2m"}`, true, ""},
		{"bad filter name", "BGPPeer", `{"peerIP":"10.0.0.1","filters":["Not_A_Name"]}`, false, "spec.filters[0]"},

		// Node
		{"node with IPv4 BGP", "Node", `{"bgp":{"ipv4Address":"192.168.1.1/24"}}`, true, ""},
		{"node with IPv6 BGP", "Node", `{"bgp":{"ipv6Address":"dead:beef::1/120"}}`, true, ""},
		{"node with a tunnel address", "Node", `{"bgp":{"ipv4IPIPTunnelAddr":"10.0.0.1"}}`, true, ""},
		{"node without BGP", "Node", `{}`, true, ""},
		{"node with an empty BGP", "Node", `{"bgp":{}}`, false, "spec.bgp"},
		{"IPv6 address as ipv4Address", "Node", `{"bgp":{"ipv4Address":"dead:beef::1/120"}}`, false, "spec.bgp.ipv4Address"},
		{"IPv4 address as ipv6Address", "Node", `{"bgp":{"ipv6Address":"192.168.1.1/24"}}`, false, "spec.bgp.ipv6Address"},
		{"bad route reflector cluster ID", "Node", `{"bgp":{"ipv4Address":"192.168.1.1/24","routeReflectorClusterID":"abcdef"}}`, false, "spec.bgp.routeReflectorClusterID"},
		{"route reflector cluster ID 300.34.3.1", "Node", `{"bgp":{"ipv4Address":"192.168.1.1/24","routeReflectorClusterID":"300.34.3.1"}}`, false, "spec.bgp.routeReflectorClusterID"},
		{"good route reflector cluster ID", "Node", `{"bgp":{"ipv4Address":"192.168.1.1/24","routeReflectorClusterID":"245.0.0.1"}}`, true, ""},
		{"WireGuard interface address", "Node", `{"wireguard":{"interfaceIPv4Address":"1.2.3.4"}}`, true, ""},
		{"bad WireGuard interface address", "Node", `{"wireguard":{"interfaceIPv4Address":"foo.bar"}}`, false, "spec.wireguard.interfaceIPv4Address"},
		{"orchRefs and addresses", "Node", `{"orchRefs":[{"nodeName":"k8s-1","orchestrator":"k8s"}],"addresses":[{"address":"10.0.0.5/24","type":"CalicoNodeIP"},{"address":"10.0.0.5","type":"InternalIP"}]}`, true, ""},
		{"bad address type", "Node", `{"addresses":[{"address":"10.0.0.5","type":"Public"}]}`, false, "spec.addresses[0].type"},
	}
	nodeStatus := []calicoCase{
		{"valid WireGuard public key", "Node", `{"wireguardPublicKey":"jlkVyQYooZYzI2wFfNhSZez5eWh44yfq1wKVjLvSXgY="}`, true, ""},
		{"invalid WireGuard public key", "Node", `{"wireguardPublicKey":"foobar"}`, false, "status.wireguardPublicKey"},
	}
	run := func(tc calicoCase, doc string) {
		t.Run(tc.name, func(t *testing.T) {
			r, err := datastore.DecodeManifest([]byte(doc))
			if err != nil {
				t.Fatalf("decode %s: %v", doc, err)
			}
			err = datastore.Validate(r)
			switch {
			case tc.valid && err != nil:
				t.Errorf("Calico accepts %s, tabby refuses it: %v", doc, err)
			case !tc.valid && err == nil:
				t.Errorf("Calico refuses %s, tabby accepts it", doc)
			case !tc.valid && !errors.Is(err, datastore.ErrInvalid):
				t.Errorf("error %v does not wrap ErrInvalid", err)
			case !tc.valid && !strings.Contains(err.Error(), ": "+tc.field+": "):
				t.Errorf("error does not name %s:\n%v", tc.field, err)
			}
		})
	}
	name := func(kind string) string {
		switch kind {
		case "BGPConfiguration", "IPAMConfiguration":
			return "default"
		}
		return "x"
	}
	for _, tc := range cases {
		run(tc, fmt.Sprintf(`{"apiVersion":"projectcalico.org/v3","kind":%q,"metadata":{"name":%q},"spec":%s}`, tc.kind, name(tc.kind), tc.spec))
	}
	for _, tc := range nodeStatus {
		run(tc, fmt.Sprintf(`{"apiVersion":"projectcalico.org/v3","kind":"Node","metadata":{"name":"x"},"spec":{},"status":%s}`, tc.spec))
	}
}
