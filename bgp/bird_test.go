package bgp_test

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/tabby-net/tabby/datastore"
	"github.com/tabby-net/tabby/internal/netnstest"
)

// birdConfig renders a BIRD2 configuration: a router at routerID in AS as, originating
// 203.0.113.0/24 (a static blackhole, as a top-of-rack router would announce a prefix of
// its own), with one protocol per neighbour. Timers are short for the tests.
func birdConfig(routerID string, as uint32, extra string, neighbours ...string) string {
	var b strings.Builder
	fmt.Fprintf(&b, `log stderr all;
router id %s;
protocol device { scan time 10; }
protocol static originated { ipv4; route 203.0.113.0/24 blackhole; }
template bgp tabby {
  local %s as %d;
  connect retry time 1;
  error wait time 1, 3;
  hold time 9;
  keepalive time 3;
  graceful restart on;
  ipv4 { import all; export all; };
%s
}
`, routerID, routerID, as, extra)
	for _, n := range neighbours {
		b.WriteString(n)
		b.WriteString("\n")
	}
	return b.String()
}

// birdRoutes parses `birdc show route all` into "prefix via nexthop [protocol]" lines.
func birdRoutes(bird *birdProc) (map[string]bool, string, error) {
	out, err := bird.Query("show route all")
	if err != nil {
		return nil, out, err
	}
	routes := map[string]bool{}
	header := regexp.MustCompile(`^(\d+\.\d+\.\d+\.\d+/\d+)?\s+(unicast|blackhole)\s+\[(\S+)\s`)
	via := regexp.MustCompile(`^\s+via (\S+) on`)
	prefix, proto := "", ""
	for _, line := range strings.Split(out, "\n") {
		if m := header.FindStringSubmatch(line); m != nil {
			if m[1] != "" {
				prefix = m[1]
			}
			proto = m[3]
			if m[2] == "blackhole" {
				routes[prefix+" blackhole ["+proto+"]"] = true
			}
			continue
		}
		if m := via.FindStringSubmatch(line); m != nil && prefix != "" {
			routes[prefix+" via "+m[1]+" ["+proto+"]"] = true
		}
	}
	return routes, out, nil
}

// birdWaitRoutes waits until BIRD's table holds every wanted route and no route matching
// forbidden.
func birdWaitRoutes(t *testing.T, bird *birdProc, want []string, forbidden *regexp.Regexp) {
	t.Helper()
	netnstest.Eventually(t, 30*time.Second, "BIRD's table", func() error {
		got, raw, err := birdRoutes(bird)
		if err != nil {
			return err
		}
		for _, w := range want {
			if !got[w] {
				return fmt.Errorf("no %q in BIRD's table:\n%s", w, raw)
			}
		}
		if forbidden != nil {
			for r := range got {
				if forbidden.MatchString(r) {
					return fmt.Errorf("BIRD has %q:\n%s", r, raw)
				}
			}
		}
		return nil
	})
}

func writeSecretFile(t *testing.T, dir, name, key, value string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Join(dir, name), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, name, key), []byte(value+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
}

func secretRef(name, key string) *datastore.BGPPassword {
	return &datastore.BGPPassword{SecretKeyRef: &datastore.SecretKeyRef{Name: name, Key: key}}
}

// workloadSlash32 matches a /32 inside the pool other than the borrowed address.
var workloadSlash32 = regexp.MustCompile(`^10\.244\.\d+\.\d+/32 `)

// TestBIRDTopOfRack: BIRD2 as a top-of-rack router over eBGP, one session with an MD5
// password and one without, keepOriginalNextHop on one. BIRD holds each node's block with
// the node as next hop and no workload /32; tabby learns BIRD's own prefix as a route
// outside every pool.
func TestBIRDTopOfRack(t *testing.T) {
	netnstest.RequireRoot(t, "birdc")
	t.Parallel()

	lan := netnstest.NewLAN(t, "torlan")
	torNS := netnstest.New(t, "tor")
	lan.Attach(t, torNS, "eth0", "10.99.0.254/24")
	secrets := t.TempDir()
	writeSecretFile(t, secrets, "tor-a", "password", "s3cret-a")

	c := &cluster{
		nodes: []clusterNode{
			{name: "node-a", addr: "10.99.0.1", block: "10.244.1.0/26"},
			{name: "node-b", addr: "10.99.0.2", block: "10.244.2.0/26"},
		},
		peers: map[string]datastore.BGPPeerSpec{
			"tor-a": {Node: "node-a", PeerIP: "10.99.0.254", ASNumber: 65000, Password: secretRef("tor-a", "password"), KeepOriginalNextHop: true},
			"tor-b": {Node: "node-b", PeerIP: "10.99.0.254", ASNumber: 65000},
		},
	}
	bird := startBIRD(t, torNS, filepath.Join(t.TempDir(), "bird"), birdConfig("10.99.0.254", 65000, "",
		`protocol bgp node_a from tabby { neighbor 10.99.0.1 as 64512; password "s3cret-a"; }`,
		`protocol bgp node_b from tabby { neighbor 10.99.0.2 as 64512; }`,
	))

	sp := map[string]*speaker{}
	for i, n := range c.nodes {
		ns := netnstest.New(t, fmt.Sprintf("tor%d", i))
		lan.Attach(t, ns, "eth0", n.addr+"/24")
		sp[n.name] = newSpeaker(t, ns, n.name, c.snapshot(), speakerOptions{secretsDir: secrets})
	}
	for _, n := range c.nodes {
		st := sp[n.name].waitEstablished(30*time.Second, "10.99.0.254", otherAddr(c, n.name))
		if p := st["10.99.0.254"]; p.Type != "node specific" {
			t.Errorf("%s: ToR session %+v, want node specific", n.name, p)
		}
	}

	// Each node's block, from that node, with the node as next hop. node-a also passes on
	// node-b's block (learned over the mesh) with node-b as next hop (keepOriginalNextHop);
	// node-b passes on node-a's with itself as next hop. No workload /32 anywhere.
	birdWaitRoutes(t, bird, []string{
		"10.244.1.0/26 via 10.99.0.1 [node_a]",
		"10.244.2.0/26 via 10.99.0.2 [node_b]",
		"10.244.2.0/26 via 10.99.0.2 [node_a]",
		"10.244.1.0/26 via 10.99.0.2 [node_b]",
	}, workloadSlash32)

	// The ToR's own prefix reaches tabby as a learned route outside every pool, via the ToR.
	for _, n := range c.nodes {
		netnstest.Eventually(t, 20*time.Second, n.name+" learns 203.0.113.0/24", func() error {
			learned, err := sp[n.name].learned()
			if err != nil {
				return err
			}
			got := routeSet(learned)
			if len(got) != 1 || !got["203.0.113.0/24 via 10.99.0.254"] {
				return fmt.Errorf("Learned() = %v, want only 203.0.113.0/24 via 10.99.0.254", got)
			}
			return nil
		})
	}
}

func otherAddr(c *cluster, self string) string {
	for _, n := range c.nodes {
		if n.name != self {
			return n.addr
		}
	}
	return ""
}

// TestBIRDRouteReflector: BIRD2 as the route reflector of tabby nodes over iBGP (no mesh),
// one session with an MD5 password and one without. Each node learns the other's block
// through the reflector with the other node as next hop, and BIRD's prefix as a learned
// route.
func TestBIRDRouteReflector(t *testing.T) {
	netnstest.RequireRoot(t, "birdc")
	t.Parallel()

	lan := netnstest.NewLAN(t, "rrlan")
	rrNS := netnstest.New(t, "rr")
	lan.Attach(t, rrNS, "eth0", "10.99.0.254/24")
	secrets := t.TempDir()
	writeSecretFile(t, secrets, "rr", "a", "rr-s3cret")

	c := &cluster{
		nodes: []clusterNode{
			{name: "node-a", addr: "10.99.0.1", block: "10.244.1.0/26"},
			{name: "node-b", addr: "10.99.0.2", block: "10.244.2.0/26"},
		},
		config: func(s *datastore.BGPConfigurationSpec) { f := false; s.NodeToNodeMeshEnabled = &f },
		peers: map[string]datastore.BGPPeerSpec{
			"rr-a": {Node: "node-a", PeerIP: "10.99.0.254", ASNumber: 64512, Password: secretRef("rr", "a")},
			"rr-b": {Node: "node-b", PeerIP: "10.99.0.254", ASNumber: 64512},
		},
		borrowed: map[string]string{"10.244.2.9": "node-a"},
	}
	bird := startBIRD(t, rrNS, filepath.Join(t.TempDir(), "bird"), birdConfig("10.99.0.254", 64512,
		"  direct;\n  rr client;\n  rr cluster id 10.99.0.254;",
		`protocol bgp node_a from tabby { neighbor 10.99.0.1 as 64512; password "rr-s3cret"; }`,
		`protocol bgp node_b from tabby { neighbor 10.99.0.2 as 64512; }`,
	))

	sp := map[string]*speaker{}
	for i, n := range c.nodes {
		ns := netnstest.New(t, fmt.Sprintf("rrc%d", i))
		lan.Attach(t, ns, "eth0", n.addr+"/24")
		sp[n.name] = newSpeaker(t, ns, n.name, c.snapshot(), speakerOptions{secretsDir: secrets})
	}
	for _, n := range c.nodes {
		sp[n.name].waitEstablished(30*time.Second, "10.99.0.254")
	}

	birdWaitRoutes(t, bird, []string{
		"10.244.1.0/26 via 10.99.0.1 [node_a]",
		"10.244.2.0/26 via 10.99.0.2 [node_b]",
		"10.244.2.9/32 via 10.99.0.1 [node_a]", // borrowed by node-a from node-b's block
	}, regexp.MustCompile(`^10\.244\.\d+\.\d+/32 .*\[node_b\]|^10\.244\.1\.\d+/32 `))

	// Reflected: each node has the other's block with the other as next hop, and the
	// borrowed /32 towards the borrower.
	want := map[string][]string{
		"node-a": {"10.244.2.0/26 via 10.99.0.2"},
		"node-b": {"10.244.1.0/26 via 10.99.0.1", "10.244.2.9/32 via 10.99.0.1"},
	}
	for _, n := range c.nodes {
		netnstest.Eventually(t, 20*time.Second, n.name+" RIB through the reflector", func() error {
			routes, err := sp[n.name].routes()
			if err != nil {
				return err
			}
			got := routeSet(routes)
			for _, w := range want[n.name] {
				if !got[w] {
					return fmt.Errorf("no %s in %v", w, got)
				}
			}
			learned, err := sp[n.name].learned()
			if err != nil {
				return err
			}
			if l := routeSet(learned); len(l) != 1 || !l["203.0.113.0/24 via 10.99.0.254"] {
				return fmt.Errorf("Learned() = %v, want only 203.0.113.0/24 via 10.99.0.254", l)
			}
			return nil
		})
	}
}

// TestLearnedRouteInstalled: a route BIRD announces outside every pool reaches the kernel
// through Learned() and routing's reconciler, with tabby's protocol (95); when BIRD
// withdraws it, it leaves the kernel.
func TestLearnedRouteInstalled(t *testing.T) {
	netnstest.RequireRoot(t, "birdc")
	t.Parallel()

	lan := netnstest.NewLAN(t, "krtlan")
	torNS := netnstest.New(t, "krttor")
	lan.Attach(t, torNS, "eth0", "10.99.0.254/24")
	nodeNS := netnstest.New(t, "krtnode")
	lan.Attach(t, nodeNS, "eth0", "10.99.0.1/24")
	c := &cluster{
		nodes: []clusterNode{{name: "node-a", addr: "10.99.0.1", block: "10.244.1.0/26"}},
		peers: map[string]datastore.BGPPeerSpec{"tor": {PeerIP: "10.99.0.254", ASNumber: 65000}},
	}
	bird := startBIRD(t, torNS, filepath.Join(t.TempDir(), "bird"), birdConfig("10.99.0.254", 65000, "",
		`protocol bgp node_a from tabby { neighbor 10.99.0.1 as 64512; }`))
	sp := newSpeaker(t, nodeNS, "node-a", c.snapshot(), speakerOptions{routing: true})
	sp.waitEstablished(30*time.Second, "10.99.0.254")

	routes := func() (string, error) { return nodeNS.Try("ip", "-4", "route", "show", "proto", "95") }
	netnstest.Eventually(t, 30*time.Second, "203.0.113.0/24 installed with proto 95", func() error {
		out, err := routes()
		if err != nil {
			return err
		}
		// The learned route goes through a nexthop object, as every route of tabby's with a
		// gateway does: `nhid N` stands between the prefix and its gateway.
		learned := regexp.MustCompile(`(?m)^203\.0\.113\.0/24 nhid \d+ via 10\.99\.0\.254 dev eth0 `)
		if !learned.MatchString(out) || !strings.Contains(out, "blackhole 10.244.1.0/26") {
			return fmt.Errorf("ip route show proto 95:\n%s", out)
		}
		return nil
	})

	if _, err := bird.Query("disable", "originated"); err != nil {
		t.Fatal(err)
	}
	netnstest.Eventually(t, 30*time.Second, "203.0.113.0/24 removed after BIRD withdrew it", func() error {
		out, err := routes()
		if err != nil {
			return err
		}
		if strings.Contains(out, "203.0.113.0/24") {
			return fmt.Errorf("still installed:\n%s", out)
		}
		return nil
	})
}
