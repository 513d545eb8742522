package bgp_test

import (
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/tabby-net/tabby/bgp"
	"github.com/tabby-net/tabby/datastore"
	"github.com/tabby-net/tabby/internal/netnstest"
)

// TestSessionFailures: a wrong MD5 password, a closed TCP 179 and an AS mismatch each keep
// a session down with INFO saying why, and readiness names every such peer.
func TestSessionFailures(t *testing.T) {
	netnstest.RequireRoot(t, "birdc")
	t.Parallel()

	lan := netnstest.NewLAN(t, "faillan")
	nodeNS := netnstest.New(t, "failnode")
	lan.Attach(t, nodeNS, "eth0", "10.99.0.1/24")
	// .201: BIRD with another password. .202: a host where nothing listens on 179.
	// .203: BIRD in AS 65003 while tabby expects 65099.
	pwNS := netnstest.New(t, "failpw")
	lan.Attach(t, pwNS, "eth0", "10.99.0.201/24")
	closedNS := netnstest.New(t, "failclosed")
	lan.Attach(t, closedNS, "eth0", "10.99.0.202/24")
	asNS := netnstest.New(t, "failas")
	lan.Attach(t, asNS, "eth0", "10.99.0.203/24")

	startBIRD(t, pwNS, filepath.Join(t.TempDir(), "bird-pw"), birdConfig("10.99.0.201", 65000, "",
		`protocol bgp node_a from tabby { neighbor 10.99.0.1 as 64512; password "the-right-one"; }`))
	startBIRD(t, asNS, filepath.Join(t.TempDir(), "bird-as"), birdConfig("10.99.0.203", 65003, "",
		`protocol bgp node_a from tabby { neighbor 10.99.0.1 as 64512; }`))

	secrets := t.TempDir()
	writeSecretFile(t, secrets, "tor", "password", "a-wrong-one")
	c := &cluster{
		nodes: []clusterNode{{name: "node-a", addr: "10.99.0.1", block: "10.244.1.0/26"}},
		peers: map[string]datastore.BGPPeerSpec{
			"wrong-password": {PeerIP: "10.99.0.201", ASNumber: 65000, Password: secretRef("tor", "password")},
			"closed-port":    {PeerIP: "10.99.0.202", ASNumber: 65000},
			"as-mismatch":    {PeerIP: "10.99.0.203", ASNumber: 65099},
		},
	}
	sp := newSpeaker(t, nodeNS, "node-a", c.snapshot(), speakerOptions{secretsDir: secrets})

	want := map[string]string{
		"10.99.0.201": "Active: no response (check TCP 179 / MD5 password)",
		"10.99.0.202": "Connect: connection refused",
		"10.99.0.203": "OpenSent: bad peer AS",
	}
	netnstest.Eventually(t, 30*time.Second, "sessions down with their reasons", func() error {
		st, err := sp.statusByAddr()
		if err != nil {
			return err
		}
		for addr, info := range want {
			p, ok := st[addr]
			if !ok {
				return fmt.Errorf("no status for %s: %v", addr, st)
			}
			if p.Established || p.Info != info || p.Type != "global" {
				return fmt.Errorf("%s: %+v, want info %q", addr, p, info)
			}
		}
		return nil
	})
	st, err := sp.status()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range st {
		if p.State == "up" || p.State == "" || p.Since.IsZero() {
			t.Errorf("peer %+v: want a down state with a time", p)
		}
	}
	ok, reason := bgp.Readiness(st, time.Minute, bgp.ExplicitPeersAny)
	if ok || reason != "BGP not established with 10.99.0.201,10.99.0.202,10.99.0.203" {
		t.Errorf("Readiness = %v %q", ok, reason)
	}
}
