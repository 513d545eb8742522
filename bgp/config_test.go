package bgp

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tabby-net/tabby/datastore"
	"github.com/tabby-net/tabby/internal/statusapi"
)

// snapBuilder makes snapshots for the table tests.
type snapBuilder struct{ snap *datastore.Snapshot }

func newSnap() *snapBuilder { return &snapBuilder{snap: datastore.NewSnapshot()} }

func (b *snapBuilder) node(name, addr string, labels map[string]string, mods ...func(*datastore.NodeBGPSpec)) *snapBuilder {
	n := datastore.NewNode(name)
	n.Metadata.Labels = labels
	n.Spec.BGP = &datastore.NodeBGPSpec{IPv4Address: addr}
	for _, m := range mods {
		m(n.Spec.BGP)
	}
	b.snap.Nodes[name] = n
	return b
}

func (b *snapBuilder) bgpConfig(name string, mod func(*datastore.BGPConfigurationSpec)) *snapBuilder {
	c := datastore.NewBGPConfiguration(name)
	mod(&c.Spec)
	b.snap.BGPConfigs[name] = c
	return b
}

func (b *snapBuilder) peer(name string, spec datastore.BGPPeerSpec) *snapBuilder {
	p := datastore.NewBGPPeer(name)
	p.Spec = spec
	b.snap.BGPPeers[name] = p
	return b
}

func asn(n uint32) *datastore.ASNumber { a := datastore.ASNumber(n); return &a }
func boolp(v bool) *bool               { return &v }

func withASN(n uint32) func(*datastore.NodeBGPSpec) {
	return func(s *datastore.NodeBGPSpec) { s.ASNumber = asn(n) }
}

func withCluster(id string) func(*datastore.NodeBGPSpec) {
	return func(s *datastore.NodeBGPSpec) { s.RouteReflectorClusterID = id }
}

func secretRef(name, key string) *datastore.BGPPassword {
	return &datastore.BGPPassword{SecretKeyRef: &datastore.SecretKeyRef{Name: name, Key: key}}
}

// render prints peers one per line, so that tables compare whole configurations.
func render(peers []Peer) string {
	var lines []string
	for _, p := range peers {
		line := fmt.Sprintf("%s port=%d as=%d type=%q", p.Address, p.Port, p.ASN, p.Type)
		if p.Passive {
			line += " passive"
		}
		if !p.Password.IsZero() {
			line += " password=" + p.Password.Reveal()
		}
		if p.RouteReflectorClient {
			line += " rr-client cluster=" + p.ClusterID
		}
		if p.KeepOriginalNextHop {
			line += " keep-next-hop"
		}
		if p.RestartTime != 0 {
			line += " restart=" + p.RestartTime.String()
		}
		lines = append(lines, line)
	}
	return strings.Join(lines, "\n")
}

func renderProblems(ps []Problem) string {
	var lines []string
	for _, p := range ps {
		lines = append(lines, p.String())
	}
	return strings.Join(lines, "\n")
}

func writeSecret(t *testing.T, dir, name, key, value string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Join(dir, name), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, name, key), []byte(value), 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestConfigGlobal(t *testing.T) {
	tests := []struct {
		name string
		snap *datastore.Snapshot
		want Global
	}{{
		name: "defaults",
		snap: newSnap().node("a", "10.0.0.1/24", nil).snap,
		want: Global{RouterID: netip.MustParseAddr("10.0.0.1"), ASN: 64512, ListenPort: 179},
	}, {
		name: "cluster AS and port",
		snap: newSnap().node("a", "10.0.0.1/24", nil).
			bgpConfig("default", func(s *datastore.BGPConfigurationSpec) { s.ASNumber = asn(65001); s.ListenPort = 1179 }).snap,
		want: Global{RouterID: netip.MustParseAddr("10.0.0.1"), ASN: 65001, ListenPort: 1179},
	}, {
		name: "node AS and node port override",
		snap: newSnap().node("a", "10.0.0.1/24", nil, withASN(65010)).
			bgpConfig("default", func(s *datastore.BGPConfigurationSpec) { s.ASNumber = asn(65001); s.ListenPort = 1179 }).
			bgpConfig("node.a", func(s *datastore.BGPConfigurationSpec) { s.ListenPort = 2179 }).snap,
		want: Global{RouterID: netip.MustParseAddr("10.0.0.1"), ASN: 65010, ListenPort: 2179},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g, _, problems := Config(tt.snap, "a", t.TempDir())
			if len(problems) != 0 {
				t.Fatalf("problems: %v", problems)
			}
			if g.RouterID != tt.want.RouterID || g.ASN != tt.want.ASN || g.ListenPort != tt.want.ListenPort {
				t.Errorf("Global = %+v, want %+v", g, tt.want)
			}
		})
	}
}

func TestConfigPoolsAreReported(t *testing.T) {
	snap := newSnap().node("a", "10.0.0.1/24", nil).snap
	for name, cidr := range map[string]string{"p1": "192.168.0.0/16", "p2": "10.244.0.0/16"} {
		p := datastore.NewIPPool(name)
		p.Spec.CIDR = cidr
		snap.Pools[name] = p
	}
	g, _, _ := Config(snap, "a", t.TempDir())
	want := []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16"), netip.MustParsePrefix("192.168.0.0/16")}
	if fmt.Sprint(g.Pools) != fmt.Sprint(want) {
		t.Errorf("Pools = %v, want %v", g.Pools, want)
	}
}

func TestConfigNoLocalNode(t *testing.T) {
	for _, tt := range []struct {
		name, node, problem string
		snap                *datastore.Snapshot
	}{
		{"missing", "z", "Node/z: no such node", newSnap().node("a", "10.0.0.1/24", nil).snap},
		{"no address", "a", "Node/a: no IPv4 address", newSnap().node("a", "", nil).snap},
	} {
		t.Run(tt.name, func(t *testing.T) {
			g, peers, problems := Config(tt.snap, tt.node, t.TempDir())
			if g.RouterID.IsValid() || len(peers) != 0 {
				t.Errorf("got %+v %v, want BGP off", g, peers)
			}
			if !strings.Contains(renderProblems(problems), tt.problem) {
				t.Errorf("problems %q do not mention %q", renderProblems(problems), tt.problem)
			}
		})
	}
}

func TestConfigPeers(t *testing.T) {
	mesh := func() *snapBuilder {
		return newSnap().
			node("a", "10.0.0.2/24", map[string]string{"rack": "r1"}).
			node("b", "10.0.0.1/24", map[string]string{"rack": "r1"}).
			node("c", "10.0.0.3/24", map[string]string{"rack": "r2"})
	}
	tests := []struct {
		name     string
		snap     *datastore.Snapshot
		local    string
		secrets  map[string]string // "name/key" → content
		want     string
		problems string
	}{{
		name:  "full mesh, larger address passive",
		snap:  mesh().snap,
		local: "a",
		want: `10.0.0.1 port=179 as=64512 type="node-to-node mesh" passive
10.0.0.3 port=179 as=64512 type="node-to-node mesh"`,
	}, {
		name:  "mesh seen from the smallest address dials everyone",
		snap:  mesh().snap,
		local: "b",
		want: `10.0.0.2 port=179 as=64512 type="node-to-node mesh"
10.0.0.3 port=179 as=64512 type="node-to-node mesh"`,
	}, {
		name:  "mesh disabled",
		snap:  mesh().bgpConfig("default", func(s *datastore.BGPConfigurationSpec) { s.NodeToNodeMeshEnabled = boolp(false) }).snap,
		local: "a",
		want:  ``,
	}, {
		name: "mesh uses each node's AS and listen port, mesh password and restart time",
		snap: mesh().node("c", "10.0.0.3/24", nil, withASN(65003)).
			bgpConfig("node.b", func(s *datastore.BGPConfigurationSpec) { s.ListenPort = 1179 }).
			bgpConfig("default", func(s *datastore.BGPConfigurationSpec) {
				s.NodeMeshPassword = secretRef("mesh", "password")
				s.NodeMeshMaxRestartTime = &datastore.Duration{Duration: 300 * time.Second}
			}).snap,
		local:   "a",
		secrets: map[string]string{"mesh/password": "m3sh\n"},
		want: `10.0.0.1 port=1179 as=64512 type="node-to-node mesh" passive password=m3sh restart=5m0s
10.0.0.3 port=179 as=65003 type="node-to-node mesh" password=m3sh restart=5m0s`,
	}, {
		name: "missing mesh password leaves the mesh out, other peers stay",
		snap: mesh().
			bgpConfig("default", func(s *datastore.BGPConfigurationSpec) { s.NodeMeshPassword = secretRef("mesh", "password") }).
			peer("tor", datastore.BGPPeerSpec{PeerIP: "10.0.0.254", ASNumber: 65000}).snap,
		local:    "a",
		want:     `10.0.0.254 port=179 as=65000 type="global"`,
		problems: `BGPConfiguration/default: nodeMeshPassword: secret mesh/password: open`,
	}, {
		name:  "route reflector leaves the mesh, others skip it",
		snap:  mesh().node("c", "10.0.0.3/24", nil, withCluster("224.0.0.1")).snap,
		local: "a",
		want:  `10.0.0.1 port=179 as=64512 type="node-to-node mesh" passive`,
	}, {
		name:  "route reflector has no mesh",
		snap:  mesh().node("c", "10.0.0.3/24", nil, withCluster("224.0.0.1")).snap,
		local: "c",
		want:  ``,
	}, {
		name: "global peerIP with port, password and restart time",
		snap: mesh().bgpConfig("default", func(s *datastore.BGPConfigurationSpec) { s.NodeToNodeMeshEnabled = boolp(false) }).
			peer("tor", datastore.BGPPeerSpec{PeerIP: "192.0.2.1:1790", ASNumber: 65000, Password: secretRef("tor", "pw"),
				MaxRestartTime: &datastore.Duration{Duration: 30 * time.Second}, KeepOriginalNextHop: true}).snap,
		local:   "a",
		secrets: map[string]string{"tor/pw": "t0r"},
		want:    `192.0.2.1 port=1790 as=65000 type="global" password=t0r keep-next-hop restart=30s`,
	}, {
		name: "keepOriginalNextHop means nothing for iBGP",
		snap: mesh().bgpConfig("default", func(s *datastore.BGPConfigurationSpec) { s.NodeToNodeMeshEnabled = boolp(false) }).
			peer("rr", datastore.BGPPeerSpec{PeerIP: "192.0.2.1", ASNumber: 64512, KeepOriginalNextHop: true}).snap,
		local: "a",
		want:  `192.0.2.1 port=179 as=64512 type="global"`,
	}, {
		name: "missing password leaves only that peer out",
		snap: mesh().bgpConfig("default", func(s *datastore.BGPConfigurationSpec) { s.NodeToNodeMeshEnabled = boolp(false) }).
			peer("tor1", datastore.BGPPeerSpec{PeerIP: "192.0.2.1", ASNumber: 65000, Password: secretRef("tor1", "pw")}).
			peer("tor2", datastore.BGPPeerSpec{PeerIP: "192.0.2.2", ASNumber: 65000}).snap,
		local:    "a",
		want:     `192.0.2.2 port=179 as=65000 type="global"`,
		problems: `BGPPeer/tor1: password: secret tor1/pw: open`,
	}, {
		name: "node-specific peers by node name and by node selector",
		snap: mesh().bgpConfig("default", func(s *datastore.BGPConfigurationSpec) { s.NodeToNodeMeshEnabled = boolp(false) }).
			peer("mine", datastore.BGPPeerSpec{Node: "a", PeerIP: "192.0.2.1", ASNumber: 65000}).
			peer("not-mine", datastore.BGPPeerSpec{Node: "b", PeerIP: "192.0.2.2", ASNumber: 65000}).
			peer("rack1", datastore.BGPPeerSpec{NodeSelector: "rack == 'r1'", PeerIP: "192.0.2.3", ASNumber: 65000}).
			peer("rack2", datastore.BGPPeerSpec{NodeSelector: "rack == 'r2'", PeerIP: "192.0.2.4", ASNumber: 65000}).snap,
		local: "a",
		want: `192.0.2.1 port=179 as=65000 type="node specific"
192.0.2.3 port=179 as=65000 type="node specific"`,
	}, {
		name: "explicit peers win over the mesh, node specific over global",
		snap: mesh().
			peer("g", datastore.BGPPeerSpec{PeerIP: "10.0.0.3", ASNumber: 64512}).
			peer("n", datastore.BGPPeerSpec{Node: "a", PeerIP: "10.0.0.1", ASNumber: 64512, Password: secretRef("s", "k")}).snap,
		local:   "a",
		secrets: map[string]string{"s/k": "pw"},
		want: `10.0.0.1 port=179 as=64512 type="node specific" passive password=pw
10.0.0.3 port=179 as=64512 type="global"`,
	}, {
		name: "route reflectors by peerSelector: a client peers with the reflectors",
		snap: mesh().node("c", "10.0.0.3/24", map[string]string{"rr": "yes"}, withCluster("224.0.0.1")).
			bgpConfig("default", func(s *datastore.BGPConfigurationSpec) { s.NodeToNodeMeshEnabled = boolp(false) }).
			peer("to-rr", datastore.BGPPeerSpec{NodeSelector: "all()", PeerSelector: "has(rr)"}).snap,
		local: "a",
		want:  `10.0.0.3 port=179 as=64512 type="node specific"`,
	}, {
		name: "route reflectors by peerSelector: the reflector has its clients as RR clients (reverse peering)",
		snap: mesh().node("c", "10.0.0.3/24", map[string]string{"rr": "yes"}, withCluster("224.0.0.1")).
			bgpConfig("default", func(s *datastore.BGPConfigurationSpec) { s.NodeToNodeMeshEnabled = boolp(false) }).
			peer("to-rr", datastore.BGPPeerSpec{NodeSelector: "all()", PeerSelector: "has(rr)"}).snap,
		local: "c",
		want: `10.0.0.1 port=179 as=64512 type="node specific" passive rr-client cluster=224.0.0.1
10.0.0.2 port=179 as=64512 type="node specific" passive rr-client cluster=224.0.0.1`,
	}, {
		name: "two reflectors of one cluster are not each other's clients",
		snap: mesh().node("b", "10.0.0.1/24", map[string]string{"rr": "yes"}, withCluster("224.0.0.1")).
			node("c", "10.0.0.3/24", map[string]string{"rr": "yes"}, withCluster("224.0.0.1")).
			peer("to-rr", datastore.BGPPeerSpec{NodeSelector: "all()", PeerSelector: "has(rr)"}).snap,
		local: "c",
		want: `10.0.0.1 port=179 as=64512 type="node specific" passive
10.0.0.2 port=179 as=64512 type="node specific" passive rr-client cluster=224.0.0.1`,
	}, {
		name: "global peerSelector: every node peers with the selected ones",
		snap: mesh().bgpConfig("default", func(s *datastore.BGPConfigurationSpec) { s.NodeToNodeMeshEnabled = boolp(false) }).
			peer("to-r2", datastore.BGPPeerSpec{PeerSelector: "rack == 'r2'"}).snap,
		local: "a",
		want:  `10.0.0.3 port=179 as=64512 type="global"`,
	}, {
		name: "reverse of a peerIP peering that names a tabby node",
		snap: mesh().bgpConfig("default", func(s *datastore.BGPConfigurationSpec) { s.NodeToNodeMeshEnabled = boolp(false) }).
			peer("a-to-c", datastore.BGPPeerSpec{Node: "a", PeerIP: "10.0.0.3", ASNumber: 64512}).snap,
		local: "c",
		want:  `10.0.0.2 port=179 as=64512 type="node specific" passive`,
	}, {
		name: "external iBGP peer of a reflector is a client, as in Calico",
		snap: mesh().node("a", "10.0.0.2/24", nil, withCluster("1.2.3.4")).
			peer("ext", datastore.BGPPeerSpec{PeerIP: "192.0.2.9", ASNumber: 64512}).snap,
		local: "a",
		want:  `192.0.2.9 port=179 as=64512 type="global" rr-client cluster=1.2.3.4`,
	}, {
		name: "bad resources are reported and skipped",
		snap: mesh().bgpConfig("default", func(s *datastore.BGPConfigurationSpec) { s.NodeToNodeMeshEnabled = boolp(false) }).
			peer("bad-ip", datastore.BGPPeerSpec{PeerIP: "not-an-ip", ASNumber: 65000}).
			peer("bad-sel", datastore.BGPPeerSpec{NodeSelector: "rack ==", PeerIP: "192.0.2.1", ASNumber: 65000}).
			peer("no-as", datastore.BGPPeerSpec{PeerIP: "192.0.2.2"}).
			peer("good", datastore.BGPPeerSpec{PeerIP: "192.0.2.3", ASNumber: 65000}).snap,
		local: "a",
		want:  `192.0.2.3 port=179 as=65000 type="global"`,
		problems: `BGPPeer/bad-ip: peerIP "not-an-ip" is not an IPv4 address or ip:port: the peer is left out
BGPPeer/bad-sel: nodeSelector:
BGPPeer/no-as: peerIP 192.0.2.2 is not a tabby node and asNumber is not set: the peer is left out`,
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			for ref, content := range tt.secrets {
				name, key, _ := strings.Cut(ref, "/")
				writeSecret(t, dir, name, key, content)
			}
			_, peers, problems := Config(tt.snap, tt.local, dir)
			if got := render(peers); got != tt.want {
				t.Errorf("peers:\n%s\nwant:\n%s", got, tt.want)
			}
			got := renderProblems(problems)
			for _, want := range strings.Split(tt.problems, "\n") {
				if !strings.Contains(got, want) {
					t.Errorf("problems:\n%s\ndo not contain %q", got, want)
				}
			}
			if tt.problems == "" && got != "" {
				t.Errorf("unexpected problems:\n%s", got)
			}
		})
	}
}

func TestConfigPeerTypesForStatus(t *testing.T) {
	snap := newSnap().node("a", "10.0.0.1/24", nil).node("b", "10.0.0.2/24", nil).
		peer("g", datastore.BGPPeerSpec{PeerIP: "192.0.2.1", ASNumber: 65000}).
		peer("n", datastore.BGPPeerSpec{Node: "a", PeerIP: "192.0.2.2", ASNumber: 65000}).snap
	_, peers, _ := Config(snap, "a", t.TempDir())
	got := map[string]string{}
	for _, p := range peers {
		got[p.Address.String()] = p.Type
	}
	want := map[string]string{
		"10.0.0.2":  statusapi.PeerTypeMesh,
		"192.0.2.1": statusapi.PeerTypeGlobal,
		"192.0.2.2": statusapi.PeerTypeNodeSpecific,
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("types = %v, want %v", got, want)
	}
}

// TestConfigMeshIsSymmetric checks the mesh invariant over many nodes: each pair has
// exactly one dialling side.
func TestConfigMeshIsSymmetric(t *testing.T) {
	b := newSnap()
	for i := 1; i <= 20; i++ {
		b.node(fmt.Sprintf("n%02d", i), fmt.Sprintf("10.1.%d.%d/16", i%3, 100-i), nil)
	}
	passive := map[[2]netip.Addr]bool{}
	for name, n := range b.snap.Nodes {
		g, peers, problems := Config(b.snap, name, t.TempDir())
		if len(problems) != 0 {
			t.Fatal(problems)
		}
		if len(peers) != 19 {
			t.Fatalf("%s (%s) has %d peers, want 19", name, n.Spec.BGP.IPv4Address, len(peers))
		}
		for _, p := range peers {
			passive[[2]netip.Addr{g.RouterID, p.Address}] = p.Passive
		}
	}
	for pair, p := range passive {
		back, ok := passive[[2]netip.Addr{pair[1], pair[0]}]
		if !ok {
			t.Fatalf("%v has no reverse session", pair)
		}
		if p == back {
			t.Errorf("%v: passive=%v on both ends", pair, p)
		}
		if p != (pair[0].Compare(pair[1]) > 0) {
			t.Errorf("%v: passive=%v, but the larger address must be the passive one", pair, p)
		}
	}
}

func TestSecretNeverPrints(t *testing.T) {
	p := Peer{Address: netip.MustParseAddr("192.0.2.1"), Password: NewSecret("hunter2")}
	for _, s := range []string{fmt.Sprint(p), fmt.Sprintf("%+v", p), fmt.Sprintf("%#v", p), fmt.Sprint(p.Password)} {
		if strings.Contains(s, "hunter2") {
			t.Errorf("password printed: %s", s)
		}
	}
	text, _ := p.Password.MarshalText()
	if strings.Contains(string(text), "hunter2") || strings.Contains(p.Password.LogValue().String(), "hunter2") {
		t.Error("password marshalled or logged")
	}
	if p.Password.Reveal() != "hunter2" {
		t.Error("Reveal lost the password")
	}
}

func TestReadSecret(t *testing.T) {
	dir := t.TempDir()
	writeSecret(t, dir, "s", "ok", "pa ss\r\n")
	writeSecret(t, dir, "s", "long", strings.Repeat("x", 81))
	writeSecret(t, dir, "s", "max", strings.Repeat("y", 80)+"\n")
	writeSecret(t, dir, "s", "empty", "\n")
	tests := []struct {
		name, key, want, err string
	}{
		{"s", "ok", "pa ss", ""},
		{"s", "max", strings.Repeat("y", 80), ""},
		{"s", "long", "", "longer than 80"},
		{"s", "empty", "", "is empty"},
		{"s", "missing", "", "no such file"},
		{"..", "etc", "", "not a plain file name"},
		{"s", "../ok", "", "not a plain file name"},
	}
	for _, tt := range tests {
		got, err := readSecret(dir, tt.name, tt.key)
		switch {
		case tt.err == "" && err != nil:
			t.Errorf("%s/%s: %v", tt.name, tt.key, err)
		case tt.err != "" && (err == nil || !strings.Contains(err.Error(), tt.err)):
			t.Errorf("%s/%s: error %v, want %q", tt.name, tt.key, err, tt.err)
		case got.Reveal() != tt.want:
			t.Errorf("%s/%s = %q, want %q", tt.name, tt.key, got.Reveal(), tt.want)
		}
		if err != nil && strings.Contains(err.Error(), "xxxx") {
			t.Errorf("error leaks the secret: %v", err)
		}
	}
}
