package autodetect

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/tabby-net/tabby/internal/netnstest"
)

func TestParseMethod(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		in      string
		kind    Kind
		wantErr string
	}{
		{in: "first-found", kind: FirstFound},
		{in: "interface=eth0", kind: Interface},
		{in: "interface=eth.*,ens.*", kind: Interface},
		{in: "skip-interface=eth0", kind: SkipInterface},
		{in: "can-reach=10.30.0.1", kind: CanReach},
		{in: "cidr=10.30.0.0/16,192.168.0.0/24", kind: CIDR},
		{in: "first-found=x", wantErr: "takes no argument"},
		{in: "interface=", wantErr: "needs a regular expression"},
		{in: "interface=eth(", wantErr: "missing closing )"},
		{in: "can-reach=example", wantErr: "not an IPv4 address"},
		{in: "can-reach=fd00::1", wantErr: "not an IPv4 address"},
		{in: "cidr=10.0.0.0", wantErr: "not an IPv4 CIDR"},
		{in: "nearest", wantErr: "not an autodetection method"},
	} {
		m, err := ParseMethod(tc.in)
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("ParseMethod(%q) error = %v, want it to contain %q", tc.in, err, tc.wantErr)
			}
			continue
		}
		if err != nil {
			t.Errorf("ParseMethod(%q): %v", tc.in, err)
			continue
		}
		if m.Kind != tc.kind || m.String() != tc.in {
			t.Errorf("ParseMethod(%q) = kind %v text %q", tc.in, m.Kind, m.String())
		}
	}
}

// TestDetectInNamespace builds a host namespace with several veths (one that first-found
// must skip by name, one that is down) and checks every method against it.
func TestDetectInNamespace(t *testing.T) {
	t.Parallel()
	host := netnstest.New(t, "autodet")
	peer := netnstest.New(t, "autodetp")
	// Made first, so it has the lowest index: first-found must skip it by its name.
	netnstest.Veth(t, host, "docker0", "10.9.0.1/24", peer, "p0", "10.9.0.9/24")
	netnstest.Veth(t, host, "eth0", "10.1.0.2/24", peer, "p1", "10.1.0.1/24")
	netnstest.Veth(t, host, "eth1", "10.2.0.2/24", peer, "p2", "10.2.0.1/24")
	netnstest.Veth(t, host, "eth2", "10.3.0.2/24", peer, "p3", "10.3.0.1/24")
	netnstest.Veth(t, host, "veth77", "10.4.0.2/24", peer, "p4", "10.4.0.1/24")
	host.Run(t, "ip", "link", "set", "eth2", "down")
	host.Run(t, "ip", "route", "add", "default", "via", "10.2.0.1")
	h := host.Handle(t)

	for _, tc := range []struct {
		method  string
		want    string // "10.1.0.2/24 on eth0"
		wantErr string
	}{
		{method: "first-found", want: "10.1.0.2/24 on eth0"},
		{method: "interface=eth1", want: "10.2.0.2/24 on eth1"},
		{method: "interface=^docker", want: "10.9.0.1/24 on docker0"},
		{method: "skip-interface=eth0", want: "10.2.0.2/24 on eth1"},
		{method: "skip-interface=eth0,eth1", wantErr: "no interface that is up and not skipped"},
		{method: "can-reach=10.2.0.77", want: "10.2.0.2/24 on eth1"},
		{method: "can-reach=10.1.0.1", want: "10.1.0.2/24 on eth0"},
		{method: "can-reach=192.0.2.1", want: "10.2.0.2/24 on eth1"}, // by the default route
		{method: "cidr=10.2.0.0/16", want: "10.2.0.2/24 on eth1"},
		{method: "cidr=172.16.0.0/12,10.1.0.0/16", want: "10.1.0.2/24 on eth0"},
		{method: "cidr=10.3.0.0/16", wantErr: "no usable IPv4 address"}, // eth2 is down
		{method: "interface=eth2", wantErr: "no interface that is up"},
	} {
		m, err := ParseMethod(tc.method)
		if err != nil {
			t.Fatalf("ParseMethod(%q): %v", tc.method, err)
		}
		got, err := Detect(h, m)
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("%s: got %v, %v; want error containing %q", tc.method, got, err, tc.wantErr)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: %v", tc.method, err)
			continue
		}
		if got.String() != tc.want || got.LinkIndex == 0 {
			t.Errorf("%s = %v (index %d), want %s", tc.method, got, got.LinkIndex, tc.want)
		}
	}

	for _, tc := range []struct {
		addr    string
		want    string
		wantErr string
	}{
		{addr: "10.2.0.2", want: "10.2.0.2/24 on eth1"},
		{addr: "10.2.0.2/16", want: "10.2.0.2/16 on eth1"},
		{addr: "10.3.0.2", want: "10.3.0.2/24 on eth2"},
		{addr: "10.77.0.1", wantErr: "not on any interface"},
	} {
		var p netip.Prefix
		if strings.Contains(tc.addr, "/") {
			p = netip.MustParsePrefix(tc.addr)
		} else {
			p = netip.PrefixFrom(netip.MustParseAddr(tc.addr), -1)
		}
		got, err := Fixed(h, p)
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("Fixed(%s) = %v, %v; want error containing %q", tc.addr, got, err, tc.wantErr)
			}
			continue
		}
		if err != nil || got.String() != tc.want {
			t.Errorf("Fixed(%s) = %v, %v; want %s", tc.addr, got, err, tc.want)
		}
	}
}
