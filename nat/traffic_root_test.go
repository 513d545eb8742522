package nat

import (
	"net"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/tabby-net/tabby/internal/netnstest"
)

// trafficLab is a workload, its host and an outside machine, each a network namespace, wired
// as tabby-cni wires a workload: the workload has its pool address as a /32 and a default
// route via 169.254.1.1, which the host answers by proxy ARP; the host forwards and has the
// only address the outside can route back to.
type trafficLab struct {
	workload, host, outside *netnstest.NS
}

const (
	workloadIP = "10.244.1.5"
	hostIP     = "203.0.113.1"
	outsideIP  = "203.0.113.2"
)

func newTrafficLab(t *testing.T) trafficLab {
	t.Helper()
	l := trafficLab{workload: netnstest.New(t, "natwl"), host: netnstest.New(t, "nathost"), outside: netnstest.New(t, "natout")}
	ipn := func(ns *netnstest.NS, args ...string) { ns.Run(t, append([]string{"ip"}, args...)...) }
	// Both veth pairs are created inside the namespaces: nothing passes through the
	// machine's own namespace.
	ipn(l.host, "link", "add", "vwl", "type", "veth", "peer", "name", "eth0", "netns", l.workload.Name)
	ipn(l.host, "link", "add", "vout", "type", "veth", "peer", "name", "eth0", "netns", l.outside.Name)

	ipn(l.workload, "addr", "add", workloadIP+"/32", "dev", "eth0")
	ipn(l.workload, "link", "set", "eth0", "up")
	ipn(l.workload, "route", "add", "169.254.1.1", "dev", "eth0", "scope", "link")
	ipn(l.workload, "route", "add", "default", "via", "169.254.1.1", "dev", "eth0")

	ipn(l.host, "link", "set", "vwl", "up")
	ipn(l.host, "link", "set", "vout", "up")
	ipn(l.host, "addr", "add", hostIP+"/24", "dev", "vout")
	ipn(l.host, "route", "add", workloadIP+"/32", "dev", "vwl", "scope", "link")
	ipn(l.host, "route", "add", "default", "via", outsideIP)
	l.host.Run(t, "sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward && "+
		"echo 1 > /proc/sys/net/ipv4/conf/vwl/proxy_arp && echo 0 > /proc/sys/net/ipv4/neigh/vwl/proxy_delay")

	// The outside knows nothing of the pool: without masquerading, replies have no way back.
	ipn(l.outside, "addr", "add", outsideIP+"/24", "dev", "eth0")
	ipn(l.outside, "link", "set", "eth0", "up")
	return l
}

// ping reports whether a ping from the workload to the outside got its answer, trying a
// few times so that a busy machine is not mistaken for a broken path.
func (l trafficLab) ping(tries int) bool {
	for range tries {
		if _, err := l.workload.Try("ping", "-c", "1", "-W", "1", outsideIP); err == nil {
			return true
		}
	}
	return false
}

// udpSource sends one datagram from the workload to a UDP server in the outside namespace
// and returns the source address the server saw. Each call uses a new socket, so a new
// conntrack entry decides its NAT.
func (l trafficLab) udpSource(t *testing.T) string {
	t.Helper()
	var server, client net.PacketConn
	if err := nsRunner(t, l.outside).do(func() (err error) {
		server, err = net.ListenPacket("udp4", outsideIP+":0")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer server.Close()
	if err := nsRunner(t, l.workload).do(func() (err error) {
		client, err = net.ListenPacket("udp4", workloadIP+":0")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	buf := make([]byte, 64)
	for range 20 { // the first datagrams may wait for ARP
		if _, err := client.WriteTo([]byte("who am i"), server.LocalAddr()); err != nil {
			t.Fatal(err)
		}
		_ = server.SetReadDeadline(time.Now().Add(250 * time.Millisecond))
		_, from, err := server.ReadFrom(buf)
		if err == nil {
			host, _, _ := strings.Cut(from.String(), ":")
			return host
		}
	}
	t.Fatal("no datagram from the workload reached the outside")
	return ""
}

// TestMasqueradeRealTraffic sends real packets from a workload through a host running the
// reconciler: with natOutgoing the outside sees the host's address and answers reach the
// workload; without it the outside sees the workload's pool address (and, as in the article,
// the workload cannot reach the outside any more).
func TestMasqueradeRealTraffic(t *testing.T) {
	if _, err := exec.LookPath("ping"); err != nil {
		t.Skip("ping is not installed (make deps installs iputils-ping)")
	}
	forEachBackend(t, func(t *testing.T, mode string) {
		l := newTrafficLab(t)
		n, _ := startNAT(t, l.host, mode, testInterval)
		on := Desired{MasqPools: prefixes("10.244.0.0/16"), AllPools: prefixes("10.244.0.0/16")}
		n.Set(on)
		waitSynced(t, n)
		if !l.ping(5) {
			t.Error("natOutgoing on: ping from the workload to the outside failed")
		}
		if src := l.udpSource(t); src != hostIP {
			t.Errorf("natOutgoing on: the outside saw %s, want the host's %s", src, hostIP)
		}

		n.Set(Desired{AllPools: on.AllPools})
		eventually(t, "the MASQUERADE rule to go", func() bool {
			return !strings.Contains(saveTable(t, l.host, mode, tableNAT), "-A "+ChainNATOutgoing+" ")
		})
		if src := l.udpSource(t); src != workloadIP {
			t.Errorf("natOutgoing off: the outside saw %s, want the workload's %s", src, workloadIP)
		}
		if l.ping(1) {
			t.Error("natOutgoing off: the outside answered a pool address it has no route to")
		}
	})
}
