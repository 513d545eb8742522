package main

import (
	"bytes"
	"context"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tabby-net/tabby/datastore"
	"github.com/tabby-net/tabby/internal/statusapi"
)

func TestDiagnoseLocalViewPrefersTheStoredNodeAddress(t *testing.T) {
	n := &datastore.Node{}
	n.Metadata.Name = "worker-1"
	n.Spec.BGP = &datastore.NodeBGPSpec{IPv4Address: "10.30.0.206/16"}
	other := &datastore.Node{}
	other.Metadata.Name = "worker-2"
	other.Spec.BGP = &datastore.NodeBGPSpec{IPv4Address: "10.30.0.56/24"}
	st := &statusapi.Status{
		Node: "worker-1", NodeAddress: "10.30.0.206/24", HostMTU: 9001,
		NotReady: []string{"kernel has no ipip support"},
	}
	local, err := localView(st, []*datastore.Node{other, n})
	if err != nil {
		t.Fatal(err)
	}
	// The stored address is what the other nodes and CrossSubnet use: a wrong prefix
	// there is one of the things diagnose must see.
	if local.Addr != netip.MustParsePrefix("10.30.0.206/16") || local.HostMTU != 9001 || !local.NoIPIP {
		t.Errorf("local view = %+v", local)
	}

	// No Node yet: tabbyd's own view stands in.
	local, err = localView(st, nil)
	if err != nil || local.Addr != netip.MustParsePrefix("10.30.0.206/24") {
		t.Errorf("without a Node: %+v, %v", local, err)
	}
	if _, err := localView(&statusapi.Status{Node: "x"}, nil); err == nil || !strings.Contains(err.Error(), "no usable IPv4 address") {
		t.Errorf("no address at all: err = %v", err)
	}
}

func TestDiagnoseFindsTheInterfaceOfTheNodeAddress(t *testing.T) {
	name, prefix, mtu, err := interfaceHolding(netip.MustParseAddr("127.0.0.1"))
	if err != nil {
		t.Fatal(err)
	}
	if name != "lo" || prefix != netip.MustParsePrefix("127.0.0.1/8") || mtu <= 0 {
		t.Errorf("127.0.0.1 is on %s as %s (MTU %d), want lo as 127.0.0.1/8", name, prefix, mtu)
	}
	if _, _, _, err := interfaceHolding(netip.MustParseAddr("192.0.2.77")); err == nil || !strings.Contains(err.Error(), "no interface of this host has the node address 192.0.2.77") {
		t.Errorf("address on no interface: err = %v", err)
	}
}

func TestNodeDiagnoseWithoutTabbyd(t *testing.T) {
	var stdout, stderr bytes.Buffer
	socket := filepath.Join(t.TempDir(), "tabbyd.sock")
	code := run(context.Background(), []string{"--socket", socket, "node", "diagnose"}, strings.NewReader(""), &stdout, &stderr)
	if code != 1 || !strings.Contains(stderr.String(), "tabbyd is not running") {
		t.Errorf("exit %d, stderr %q: want 1 and a message that tabbyd is not running", code, stderr.String())
	}
	code = run(context.Background(), []string{"node", "diagnose", "extra"}, strings.NewReader(""), &stdout, &stderr)
	if code != 2 {
		t.Errorf("node diagnose with an argument: exit %d, want 2", code)
	}
}
