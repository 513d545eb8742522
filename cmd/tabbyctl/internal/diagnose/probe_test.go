package diagnose

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"net"
	"net/netip"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tabby-net/tabby/bgp/secret"
	"github.com/tabby-net/tabby/internal/namedns"
	"github.com/tabby-net/tabby/internal/netnstest"
	"github.com/tabby-net/tabby/internal/statusapi"
	"github.com/tabby-net/tabby/lab"
)

// TestKernelProberOnTheLabFabric runs the real probes from worker-1 of the articles'
// topology, with and without the fabric faults they must detect.
func TestKernelProberOnTheLabFabric(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to build the lab's network namespaces (make test runs as root); without root, TestDiagnose checks every finding and fix against a scripted prober")
	}
	b := make([]byte, 3)
	rand.Read(b)
	topo := lab.Articles("tabby-diag-" + hex.EncodeToString(b))
	t.Cleanup(func() {
		if err := topo.Destroy(); err != nil {
			t.Errorf("destroy lab: %v", err)
		}
	})
	if err := topo.Build(); err != nil {
		t.Fatal(err)
	}
	w1, w2 := topo.HostNS("worker-1"), topo.HostNS("worker-2")
	// worker-2 routes worker-1's block back to worker-1, as Direct mode does.
	if out, err := namedns.Command(w2, "ip", "route", "add", "192.168.226.64/26", "via", "10.30.0.206").CombinedOutput(); err != nil {
		t.Fatalf("route on worker-2: %v: %s", err, out)
	}
	src := netip.MustParseAddr("192.168.226.64")
	w2addr := netip.MustParseAddr("10.30.0.56")
	p := KernelProber{Timeout: 1500 * time.Millisecond}
	ctx := context.Background()
	inW1 := func(fn func() error) error { return namedns.Do(w1, fn) }

	// worker-1 masquerades pool traffic leaving the pools, as tabby's NAT outgoing does:
	// the probe must not be rewritten by it, or it would test nothing.
	if out, err := namedns.Command(w1, "iptables", "-t", "nat", "-A", "POSTROUTING", "-s", "192.168.0.0/16", "!", "-d", "192.168.0.0/16", "-j", "MASQUERADE").CombinedOutput(); err != nil {
		t.Fatalf("MASQUERADE rule on worker-1: %v: %s", err, out)
	}
	if err := inW1(func() error { return p.SpoofedEcho(ctx, lab.NIC, src, w2addr) }); err != nil {
		t.Fatalf("pool-address echo on a clean fabric, with NAT outgoing on: %v", err)
	}
	if err := inW1(func() error { return p.TCP(ctx, netip.AddrPortFrom(w2addr, 179), secret.Secret{}) }); err == nil {
		t.Error("TCP 179 to a host where nothing listens succeeded")
	}
	if err := inW1(func() error { return p.Ping(ctx, w2addr, 1472, true) }); err != nil {
		t.Errorf("full-size ping on a clean fabric: %v", err)
	}

	if err := topo.SetFault(lab.FaultSrcDstCheck, true); err != nil {
		t.Fatal(err)
	}
	if err := inW1(func() error { return p.SpoofedEcho(ctx, lab.NIC, src, w2addr) }); err == nil {
		t.Error("pool-address echo crossed a fabric with the source/destination check on")
	}
	if err := inW1(func() error { return p.Ping(ctx, w2addr, 56, false) }); err != nil {
		t.Errorf("host ping under the source/destination check: %v", err)
	}
	if err := topo.SetFault(lab.FaultSrcDstCheck, false); err != nil {
		t.Fatal(err)
	}
	if err := topo.SetFault(lab.FaultMTU, true); err != nil {
		t.Fatal(err)
	}
	if err := inW1(func() error { return p.Ping(ctx, w2addr, 1472, true) }); err == nil {
		t.Error("a full-size DF ping crossed a 1400-byte fabric")
	}
}

// TestKernelProberTCPMD5: a BGP-like listener in a namespace of its own accepts only
// connections signed with its TCP-MD5 key for the client's address (as GoBGP, BIRD and
// FRR set it). The probe with the key connects; without it (or with another key) it gets
// no answer, and the diagnosis calls that a password matter, not a blocked port, and
// never contradicts an Established session.
func TestKernelProberTCPMD5(t *testing.T) {
	netnstest.RequireRoot(t)
	lan := netnstest.NewLAN(t, "md5lan")
	client, server := netnstest.New(t, "md5cl"), netnstest.New(t, "md5sv")
	lan.Attach(t, client, "eth0", "10.99.0.1/24")
	lan.Attach(t, server, "eth0", "10.99.0.2/24")
	clientAddr, serverAddr := netip.MustParseAddr("10.99.0.1"), netip.MustParseAddr("10.99.0.2")
	key := secret.New("the-right-one")

	var ln net.Listener
	if err := namedns.Do(server.Name, func() error {
		lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
			var serr error
			if err := c.Control(func(fd uintptr) { serr = setTCPMD5Key(int(fd), clientAddr, key) }); err != nil {
				return err
			}
			return serr
		}}
		var err error
		ln, err = lc.Listen(context.Background(), "tcp4", "10.99.0.2:179")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()

	p := KernelProber{Timeout: time.Second}
	ctx := context.Background()
	port := netip.AddrPortFrom(serverAddr, 179)
	probe := func(k secret.Secret) error {
		var perr error
		if err := namedns.Do(client.Name, func() error { perr = p.TCP(ctx, port, k); return nil }); err != nil {
			t.Fatal(err)
		}
		return perr
	}
	if err := probe(key); err != nil {
		t.Errorf("probe with the peer's key: %v", err)
	}
	if err := probe(secret.Secret{}); !errors.Is(err, ErrNoAnswer) {
		t.Errorf("probe without a key: %v, want %v", err, ErrNoAnswer)
	}
	if err := probe(secret.New("a-wrong-one")); !errors.Is(err, ErrNoAnswer) {
		t.Errorf("probe with another key: %v, want %v", err, ErrNoAnswer)
	}

	// The diagnosis, with the real prober, of a non-node BGPPeer 10.99.0.2.
	diagnoseIn := func(st statusapi.Peer, k PeerKey) *Report {
		in := Input{Peers: []statusapi.Peer{st}, Keys: map[netip.Addr]PeerKey{serverAddr: k}}
		var r *Report
		if err := namedns.Do(client.Name, func() error { r = Run(ctx, in, p); return nil }); err != nil {
			t.Fatal(err)
		}
		return r
	}
	down := statusapi.Peer{Address: "10.99.0.2", Type: statusapi.PeerTypeNodeSpecific, State: "start", Info: "Active: no response (check TCP 179 / MD5 password)"}
	up := statusapi.Peer{Address: "10.99.0.2", Type: statusapi.PeerTypeNodeSpecific, State: "up", Info: "Established", Established: true}
	unreadable := PeerKey{Unreadable: "open /etc/tabby/secrets/tor/password: permission denied"}
	for _, tc := range []struct {
		name       string
		st         statusapi.Peer
		key        PeerKey
		wantStatus string
	}{
		{"Established, key readable", up, PeerKey{Key: key}, "ok (session Established)"},
		{"Established, key not readable", up, unreadable, "ok (session Established)"},
		{"down, probed with the key: TCP is fine", down, PeerKey{Key: key}, "FAIL"},
		{"down, key not readable", down, unreadable, "FAIL (password required or mismatched)"},
		{"down, another key here", down, PeerKey{Key: secret.New("a-wrong-one")}, "FAIL (password mismatched or port blocked)"},
	} {
		r := diagnoseIn(tc.st, tc.key)
		var out bytes.Buffer
		Print(&out, r)
		if len(r.Peers) != 1 || len(r.Peers[0].Results) != 1 || r.Peers[0].Results[0].Status != tc.wantStatus {
			t.Errorf("%s: results %+v, want status %q\n%s", tc.name, r.Peers, tc.wantStatus, out.String())
		}
		// With another key both causes stay possible, and both are named; otherwise the
		// port is never blamed.
		if !strings.Contains(tc.wantStatus, "port blocked") && strings.Contains(out.String(), "open TCP 179") {
			t.Errorf("%s: reported as a blocked port:\n%s", tc.name, out.String())
		}
	}
}
