package lab

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/tabby-net/tabby/internal/namedns"
)

// tunnelRx reads the receive counter of a host's tunl0.
func (l *e2eLab) tunnelRx(t *testing.T, host string) uint64 {
	t.Helper()
	h, err := namedns.Handle(l.Topo.HostNS(host))
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	link, err := h.LinkByName("tunl0")
	if err != nil {
		t.Fatalf("tunl0 on %s: %v", host, err)
	}
	if s := link.Attrs().Statistics; s != nil {
		return s.RxPackets
	}
	t.Fatalf("tunl0 on %s: no statistics", host)
	return 0
}

// checkTunnelPings pings between pods on different hosts and, for every pair whose traffic
// the mode encapsulates, wants the far host's tunl0 to have received it: a reply that came
// over the plain NIC proves nothing about IP-in-IP.
func (l *e2eLab) checkTunnelPings(t *testing.T, m Mode) {
	t.Helper()
	encapsulated := 0
	for _, from := range l.Workloads {
		for _, to := range l.Workloads {
			if from.Host == to.Host {
				continue
			}
			fh, _ := l.Topo.Host(from.Host)
			th, _ := l.Topo.Host(to.Host)
			viaTunnel := m == ModeIPIP || (m == ModeCrossSubnet && fh.Segment != th.Segment)
			ip, err := l.WorkloadIP(to.Name)
			if err != nil {
				t.Fatal(err)
			}
			before := l.tunnelRx(t, to.Host)
			if !pingOnce(l.ctx, l.PodNS(from.Name), ip.String()) {
				t.Errorf("ping %s → %s (%s) failed", from.Name, to.Name, ip)
				continue
			}
			after := l.tunnelRx(t, to.Host)
			switch {
			case viaTunnel && after <= before:
				t.Errorf("ping %s → %s answered, but tunl0 on %s received nothing (%d → %d): it did not come through the tunnel", from.Name, to.Name, to.Host, before, after)
			case viaTunnel:
				encapsulated++
			}
		}
	}
	t.Logf("mode %s: %d pod pairs crossed the tunnel, each seen by the far tunl0's counter", m, encapsulated)
	if encapsulated == 0 {
		t.Errorf("mode %s: no pod pair used the tunnel", m)
	}
}

// checkTunl0 wants every host's tunl0 up, with its Node's IPIP tunnel address as a /32 and
// the MTU host−20, and every host ready.
func (l *e2eLab) checkTunl0(t *testing.T) {
	t.Helper()
	st := l.state(t)
	want := map[string]string{}
	for _, n := range st.Nodes {
		if n.Spec.BGP != nil {
			want[n.Metadata.Name] = n.Spec.BGP.IPv4IPIPTunnelAddr
		}
	}
	for _, host := range l.Topo.Hosts {
		h, err := namedns.Handle(l.Topo.HostNS(host.Name))
		if err != nil {
			t.Fatal(err)
		}
		link, err := h.LinkByName("tunl0")
		if err != nil {
			h.Close()
			t.Fatalf("tunl0 on %s: %v", host.Name, err)
		}
		addrs, err := h.AddrList(link, netlink.FAMILY_V4)
		h.Close()
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, a := range addrs {
			got = append(got, a.IPNet.String())
		}
		tunnel, err := netip.ParseAddr(strings.TrimSuffix(want[host.Name], "/32"))
		if err != nil {
			t.Errorf("%s: Node has no IPIP tunnel address (%q)", host.Name, want[host.Name])
			continue
		}
		if len(got) != 1 || got[0] != netip.PrefixFrom(tunnel, 32).String() {
			t.Errorf("tunl0 on %s has addresses %v, want exactly %s/32", host.Name, got, tunnel)
		}
		if mtu := link.Attrs().MTU; mtu != l.Topo.MTU-20 {
			t.Errorf("tunl0 on %s: MTU %d, want %d (host MTU %d − 20)", host.Name, mtu, l.Topo.MTU-20, l.Topo.MTU)
		}
		if link.Attrs().Flags&(1<<0) == 0 { // net.FlagUp
			t.Errorf("tunl0 on %s is down", host.Name)
		}
	}
	for _, host := range l.Topo.Hosts {
		ok, body, err := l.Readiness(l.ctx, host.Name)
		if err != nil || !ok {
			t.Errorf("%s not ready in IP-in-IP mode: %s%s", host.Name, body, errText(err))
		}
	}
}

func errText(err error) string {
	if err == nil {
		return ""
	}
	return fmt.Sprintf(" (%v)", err)
}
