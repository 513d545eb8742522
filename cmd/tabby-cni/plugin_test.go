package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// TestAddPlumbsWorkload drives ADD as a runtime does and inspects both namespaces.
func TestAddPlumbsWorkload(t *testing.T) {
	h := newTestHost(t)
	if err := os.WriteFile(filepath.Join(h.DataDir, "mtu"), []byte("1430\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	wl := newNetns(t, "cniwl")
	id := "ctr-" + randSuffix(t)
	out := h.exec(t, cniCall{Command: "ADD", ContainerID: id, Netns: netnsPath(wl), Conf: h.conf(t, nil)})
	if out.Err != nil {
		t.Fatalf("ADD: %v\n%s\n%s", out.Err, out.Stdout, out.Stderr)
	}
	var raw struct {
		CNIVersion string `json:"cniVersion"`
	}
	if err := json.Unmarshal([]byte(out.Stdout), &raw); err != nil || raw.CNIVersion != "1.0.0" {
		t.Errorf("result version %q (%v), want the configuration's 1.0.0", raw.CNIVersion, err)
	}
	parsed, err := current.NewResult([]byte(out.Stdout))
	if err != nil {
		t.Fatal(err)
	}
	r, err := current.GetResult(parsed)
	if err != nil {
		t.Fatal(err)
	}
	addr := resultAddr(t, r)
	veth := hostVethName(id)

	// The result: both ends, the /32 on the container side, the default route.
	if len(r.Interfaces) != 2 || r.Interfaces[0].Name != veth || r.Interfaces[0].Mac != "ee:ee:ee:ee:ee:ee" ||
		r.Interfaces[0].Sandbox != "" || r.Interfaces[1].Name != "eth0" || r.Interfaces[1].Sandbox != netnsPath(wl) || r.Interfaces[1].Mac == "" {
		t.Errorf("result interfaces wrong: %v", r.Interfaces)
	}
	if ip := r.IPs[0]; ip.Interface == nil || *ip.Interface != 1 || ip.Gateway.String() != "169.254.1.1" {
		t.Errorf("result IP wrong: %v", ip)
	}
	if len(r.Routes) != 1 || r.Routes[0].Dst.String() != "0.0.0.0/0" || r.Routes[0].GW.String() != "169.254.1.1" {
		t.Errorf("result routes wrong: %v", r.Routes)
	}
	if !h.Pool.Contains(addr) {
		t.Errorf("address %s is not from the pool %s", addr, h.Pool)
	}

	// Container side.
	cnl := netlinkIn(t, wl)
	eth0, err := cnl.LinkByName("eth0")
	if err != nil {
		t.Fatalf("eth0 in the workload: %v", err)
	}
	if eth0.Attrs().MTU != 1430 {
		t.Errorf("eth0 MTU %d, want the published 1430", eth0.Attrs().MTU)
	}
	if eth0.Attrs().HardwareAddr.String() != r.Interfaces[1].Mac {
		t.Errorf("eth0 MAC %s, result says %s", eth0.Attrs().HardwareAddr, r.Interfaces[1].Mac)
	}
	addrs, err := cnl.AddrList(eth0, unix.AF_INET)
	if err != nil {
		t.Fatal(err)
	}
	if len(addrs) != 1 || addrs[0].IPNet.String() != addr.String()+"/32" {
		t.Errorf("eth0 addresses %v, want %s/32", addrs, addr)
	}
	routes := sh(t, "ip", "-n", wl, "route", "show")
	for _, want := range []string{"default via 169.254.1.1 dev eth0", "169.254.1.1 dev eth0 scope link"} {
		if !strings.Contains(routes, want) {
			t.Errorf("workload routes lack %q:\n%s", want, routes)
		}
	}

	// Host side.
	hnl := netlinkIn(t, h.NS)
	hv, err := hnl.LinkByName(veth)
	if err != nil {
		t.Fatalf("host veth %s: %v", veth, err)
	}
	if hv.Attrs().HardwareAddr.String() != "ee:ee:ee:ee:ee:ee" || hv.Attrs().MTU != 1430 {
		t.Errorf("host veth MAC %s MTU %d", hv.Attrs().HardwareAddr, hv.Attrs().MTU)
	}
	if a, _ := hnl.AddrList(hv, unix.AF_INET); len(a) != 0 {
		t.Errorf("host veth has addresses %v, want none", a)
	}
	if eth0.Attrs().ParentIndex != hv.Attrs().Index {
		t.Errorf("eth0 is not the peer of %s", veth)
	}
	for key, want := range map[string]string{
		"net/ipv4/conf/" + veth + "/proxy_arp":      "1",
		"net/ipv4/neigh/" + veth + "/proxy_delay":   "0",
		"net/ipv4/conf/" + veth + "/forwarding":     "1",
		"net/ipv4/conf/" + veth + "/route_localnet": "1",
	} {
		if got := sysctlIn(t, h.NS, key); got != want {
			t.Errorf("sysctl %s = %s, want %s", key, got, want)
		}
	}
	// The route of the plugin, not tabbyd's protocol 95 (which tabbyd would sweep).
	hostRoutes, err := hnl.RouteListFiltered(unix.AF_INET, &netlink.Route{Dst: prefixIPNet(netip.PrefixFrom(addr, 32))}, netlink.RT_FILTER_DST)
	if err != nil {
		t.Fatal(err)
	}
	if len(hostRoutes) != 1 || hostRoutes[0].LinkIndex != hv.Attrs().Index || hostRoutes[0].Scope != netlink.SCOPE_LINK ||
		hostRoutes[0].Gw != nil || hostRoutes[0].Protocol != unix.RTPROT_BOOT {
		t.Errorf("host routes to %s: %v, want one: dev %s scope link proto boot", addr, hostRoutes, veth)
	}

	// IPAM: the address belongs to the handle "<network>.<containerID>", in a block of this node.
	if got := h.allocations(t)[addr]; got != "tabby."+id {
		t.Errorf("allocation of %s has handle %q, want %q", addr, got, "tabby."+id)
	}

	// DEL removes veth, route and allocation; DEL twice succeeds.
	h.del(t, id, netnsPath(wl))
	if _, err := cnl.LinkByName("eth0"); err == nil {
		t.Error("eth0 still exists after DEL")
	}
	h.assertNothingLeft(t)
	if h.handleExists(t, "tabby."+id) {
		t.Error("IPAM handle still exists after DEL")
	}
	h.del(t, id, netnsPath(wl))
}

// TestTwoWorkloadsPing: two workloads on one host reach each other through the host, by
// proxy ARP and the /32 routes alone.
func TestTwoWorkloadsPing(t *testing.T) {
	h := newTestHost(t)
	a, b := newNetns(t, "cniwl"), newNetns(t, "cniwl")
	ida, idb := "a-"+randSuffix(t), "b-"+randSuffix(t)
	addrA := resultAddr(t, h.add(t, ida, a))
	addrB := resultAddr(t, h.add(t, idb, b))
	if addrA == addrB {
		t.Fatalf("both workloads got %s", addrA)
	}
	for _, p := range []struct {
		from string
		to   netip.Addr
	}{{a, addrB}, {b, addrA}} {
		out, err := exec.Command("ip", "netns", "exec", p.from, "ping", "-c", "2", "-i", "0.2", "-W", "2", p.to.String()).CombinedOutput()
		if err != nil {
			t.Errorf("ping %s from %s: %v\n%s\nworkload neighbours: %s", p.to, p.from, err, out, sh(t, "ip", "-n", p.from, "neigh"))
		}
	}
	// The gateway resolves to the shared host-side MAC, as in Calico.
	if neigh := sh(t, "ip", "-n", a, "neigh", "show", "169.254.1.1"); !strings.Contains(neigh, "ee:ee:ee:ee:ee:ee") {
		t.Errorf("169.254.1.1 does not resolve to ee:ee:ee:ee:ee:ee: %q", neigh)
	}
	h.del(t, ida, netnsPath(a))
	h.del(t, idb, netnsPath(b))
	h.assertNothingLeft(t)
}

// TestAddIsIdempotent: a repeated ADD for the same container keeps its address and leaves
// exactly one veth.
func TestAddIsIdempotent(t *testing.T) {
	h := newTestHost(t)
	wl := newNetns(t, "cniwl")
	id := "ctr-" + randSuffix(t)
	first := resultAddr(t, h.add(t, id, wl))
	second := resultAddr(t, h.add(t, id, wl))
	if first != second {
		t.Errorf("second ADD gave %s, first gave %s", second, first)
	}
	if links := tabbyLinks(t, netlinkIn(t, h.NS)); !slices.Equal(links, []string{hostVethName(id)}) {
		t.Errorf("host veths after two ADDs: %v", links)
	}
	if n := len(h.allocations(t)); n != 1 {
		t.Errorf("%d allocations after two ADDs, want 1", n)
	}
	h.del(t, id, netnsPath(wl))
	h.assertNothingLeft(t)
}

// TestDelAfterNetnsGone: the runtime may delete the netns before calling DEL.
func TestDelAfterNetnsGone(t *testing.T) {
	h := newTestHost(t)
	wlName := "tabby-cniwl-" + randSuffix(t)
	sh(t, "ip", "netns", "add", wlName)
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", wlName).Run() })
	id := "ctr-" + randSuffix(t)
	h.add(t, id, wlName)
	sh(t, "ip", "netns", "del", wlName)

	h.del(t, id, netnsPath(wlName)) // the path no longer exists
	h.del(t, id, "")                // and no netns at all
	h.assertNothingLeft(t)
}

// TestDelUnknownContainer: DEL of something never added succeeds. With log_file set, the
// log goes there and not to stderr.
func TestDelUnknownContainer(t *testing.T) {
	h := newTestHost(t)
	logFile := filepath.Join(t.TempDir(), "log", "tabby-cni.log")
	id := "never-added-" + randSuffix(t)
	out := h.exec(t, cniCall{Command: "DEL", ContainerID: id, Conf: h.conf(t, map[string]any{"log_file": logFile})})
	if out.Err != nil || out.Stdout != "" || out.Stderr != "" {
		t.Fatalf("DEL: err %v, stdout %q, stderr %q", out.Err, out.Stdout, out.Stderr)
	}
	log, err := os.ReadFile(logFile)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(log), "no veth to delete") || !strings.Contains(string(log), "container="+id) {
		t.Errorf("log file lacks the DEL:\n%s", log)
	}
	h.assertNothingLeft(t)
}

// TestAddBrokenConfiguration: an invalid configuration is a CNI error object naming the
// key, and nothing is created.
func TestAddBrokenConfiguration(t *testing.T) {
	h := newTestHost(t)
	wl := newNetns(t, "cniwl")
	for _, tc := range []struct {
		override map[string]any
		want     string
	}{
		{map[string]any{"mtu": 100}, "invalid network configuration: mtu: must be between 576 and 9000"},
		{map[string]any{"etcd_endpoints": "10.0.0.1"}, "invalid network configuration: etcd_endpoints:"},
		{map[string]any{"etcd_endpoints": nil, "tabbyd_config": "/nonexistent/tabbyd.yaml"}, "invalid network configuration: etcd_endpoints: not set"},
	} {
		out := h.exec(t, cniCall{Command: "ADD", ContainerID: "bad-" + randSuffix(t), Netns: netnsPath(wl), Conf: h.conf(t, tc.override)})
		e := cniError(t, out)
		if e.Code != 7 || !strings.Contains(e.Msg, tc.want) {
			t.Errorf("%v: got code %d msg %q, want code 7 and %q", tc.override, e.Code, e.Msg, tc.want)
		}
	}
	if links := tabbyLinks(t, netlinkIn(t, wl)); len(links) > 0 {
		t.Errorf("links left in the workload: %v", links)
	}
	h.assertNothingLeft(t)
}

// TestEtcdUnreachable: ADD and DEL say "try again later", naming where etcd was looked
// for. A DEL that cannot release the address leaves the workload as it is, so the
// runtime's retry finds it.
func TestEtcdUnreachable(t *testing.T) {
	t.Parallel() // waits for the etcd probe to time out
	h := newTestHost(t)
	down := h.conf(t, map[string]any{"etcd_endpoints": "http://127.0.0.1:1"})

	wl := newNetns(t, "cniwl")
	e := cniError(t, h.exec(t, cniCall{Command: "ADD", ContainerID: "ctr-" + randSuffix(t), Netns: netnsPath(wl), Conf: down}))
	if e.Code != 11 || !strings.HasPrefix(e.Msg, "etcd unreachable at http://127.0.0.1:1: ") {
		t.Errorf("ADD: got code %d msg %q", e.Code, e.Msg)
	}
	if _, err := netlinkIn(t, wl).LinkByName("eth0"); err == nil {
		t.Error("eth0 created although ADD failed")
	}
	h.assertNothingLeft(t)

	wl2 := newNetns(t, "cniwl")
	id := "ctr-" + randSuffix(t)
	addr := resultAddr(t, h.add(t, id, wl2))
	e = cniError(t, h.exec(t, cniCall{Command: "DEL", ContainerID: id, Netns: netnsPath(wl2), Conf: down}))
	if e.Code != 11 || !strings.HasPrefix(e.Msg, "etcd unreachable at http://127.0.0.1:1: ") {
		t.Errorf("DEL: got code %d msg %q", e.Code, e.Msg)
	}
	if _, err := netlinkIn(t, h.NS).LinkByName(hostVethName(id)); err != nil {
		t.Errorf("the failed DEL removed the veth: %v", err)
	}
	if h.allocations(t)[addr] != "tabby."+id {
		t.Errorf("the failed DEL changed the allocation of %s", addr)
	}
	h.del(t, id, netnsPath(wl2))
	h.assertNothingLeft(t)
}

// TestAddBadNetns: a CNI_NETNS that is not a namespace is refused before anything is done.
func TestAddBadNetns(t *testing.T) {
	h := newTestHost(t)
	out := h.exec(t, cniCall{Command: "ADD", ContainerID: "ctr-" + randSuffix(t), Netns: "/run/netns/tabby-cniwl-missing-" + randSuffix(t), Conf: h.conf(t, nil)})
	e := cniError(t, out)
	if e.Code != 8 || !strings.Contains(e.Msg, "container netns /run/netns/tabby-cniwl-missing-") {
		t.Errorf("got code %d msg %q", e.Code, e.Msg)
	}
	h.assertNothingLeft(t)
}

// TestAddRollsBackHalfway: the container already has an interface of the requested name,
// so ADD fails after the address is assigned and the veth created; both are undone.
func TestAddRollsBackHalfway(t *testing.T) {
	h := newTestHost(t)
	wl := newNetns(t, "cniwl")
	sh(t, "ip", "-n", wl, "link", "add", "eth0", "type", "veth", "peer", "name", "other0")
	id := "ctr-" + randSuffix(t)
	out := h.exec(t, cniCall{Command: "ADD", ContainerID: id, Netns: netnsPath(wl), Conf: h.conf(t, nil)})
	e := cniError(t, out)
	if want := "interface eth0 already exists in container netns " + netnsPath(wl); !strings.Contains(e.Msg, want) {
		t.Errorf("msg %q, want it to contain %q", e.Msg, want)
	}
	// The log shows the address was taken and the veth made before the failure.
	for _, step := range []string{"assigned address", "rollback: deleted host veth", "rollback: released address"} {
		if !strings.Contains(out.Stderr, step) {
			t.Errorf("log lacks %q:\n%s", step, out.Stderr)
		}
	}
	h.assertNothingLeft(t)
	if h.handleExists(t, "tabby."+id) {
		t.Error("IPAM handle left after rollback")
	}
	// The workload's own interfaces are untouched and nothing of ours is left in it.
	cnl := netlinkIn(t, wl)
	if l, err := cnl.LinkByName("eth0"); err != nil || l.Attrs().HardwareAddr.String() == "ee:ee:ee:ee:ee:ee" {
		t.Errorf("the workload's own eth0 was disturbed: %v", err)
	}
	if links := tabbyLinks(t, cnl); len(links) > 0 {
		t.Errorf("links left in the workload: %v", links)
	}
}

// TestConcurrentAdds: ten ADDs at once on one host all succeed with distinct addresses.
func TestConcurrentAdds(t *testing.T) {
	h := newTestHost(t)
	const n = 10
	type wl struct{ id, ns string }
	wls := make([]wl, n)
	for i := range wls {
		wls[i] = wl{id: fmt.Sprintf("c%d-%s", i, randSuffix(t)), ns: newNetns(t, "cniwl")}
	}
	addrs := make([]netip.Addr, n)
	outs := make([]cniOutcome, n)
	var wg sync.WaitGroup
	for i, w := range wls {
		wg.Go(func() {
			outs[i] = h.exec(t, cniCall{Command: "ADD", ContainerID: w.id, Netns: netnsPath(w.ns), Conf: h.conf(t, nil)})
		})
	}
	wg.Wait()
	seen := map[netip.Addr]string{}
	for i, out := range outs {
		if out.Err != nil {
			t.Fatalf("ADD %s: %v\n%s\n%s", wls[i].id, out.Err, out.Stdout, out.Stderr)
		}
		r, err := current.NewResult([]byte(out.Stdout))
		if err != nil {
			t.Fatal(err)
		}
		res, _ := current.GetResult(r)
		addrs[i] = resultAddr(t, res)
		if other, dup := seen[addrs[i]]; dup {
			t.Errorf("%s and %s both got %s", other, wls[i].id, addrs[i])
		}
		seen[addrs[i]] = wls[i].id
	}
	if got := len(tabbyLinks(t, netlinkIn(t, h.NS))); got != n {
		t.Errorf("%d host veths, want %d", got, n)
	}
	if got := len(h.allocations(t)); got != n {
		t.Errorf("%d allocations, want %d", got, n)
	}
	for _, w := range wls {
		h.del(t, w.id, netnsPath(w.ns))
	}
	h.assertNothingLeft(t)
}

// TestCheck: CHECK passes on a good workload and names what is missing once the host
// route is deleted.
func TestCheck(t *testing.T) {
	h := newTestHost(t)
	wl := newNetns(t, "cniwl")
	id := "ctr-" + randSuffix(t)
	addr := resultAddr(t, h.add(t, id, wl))
	check := func() cniOutcome {
		return h.exec(t, cniCall{Command: "CHECK", ContainerID: id, Netns: netnsPath(wl), Conf: h.conf(t, nil)})
	}
	if out := check(); out.Err != nil {
		t.Fatalf("CHECK of a good workload: %v\n%s\n%s", out.Err, out.Stdout, out.Stderr)
	}

	veth := hostVethName(id)
	sh(t, "ip", "-n", h.NS, "route", "del", addr.String()+"/32", "dev", veth)
	e := cniError(t, check())
	if want := fmt.Sprintf("host route %s/32 dev %s scope link is missing", addr, veth); !strings.Contains(e.Msg, want) {
		t.Errorf("CHECK msg %q, want it to contain %q", e.Msg, want)
	}

	sh(t, "ip", "-n", wl, "route", "del", "default")
	e = cniError(t, check())
	for _, want := range []string{
		fmt.Sprintf("host route %s/32 dev %s scope link is missing", addr, veth),
		"route default via 169.254.1.1 dev eth0 is missing in container netns " + netnsPath(wl),
	} {
		if !strings.Contains(e.Msg, want) {
			t.Errorf("CHECK msg %q, want it to contain %q", e.Msg, want)
		}
	}

	h.del(t, id, netnsPath(wl))
	e = cniError(t, check())
	for _, want := range []string{"IPAM holds no address for handle tabby." + id} {
		if !strings.Contains(e.Msg, want) {
			t.Errorf("CHECK after DEL: msg %q, want it to contain %q", e.Msg, want)
		}
	}
}

// libcniRuntime drives the plugin through libcni, as containerd and podman do, from a
// thread inside the host namespace (where a runtime runs).
type libcniRuntime struct {
	host *testHost
	cni  *libcni.CNIConfig
	list *libcni.NetworkConfigList
}

func newLibcniRuntime(t *testing.T, h *testHost) *libcniRuntime {
	t.Helper()
	confDir := t.TempDir()
	conflist := fmt.Sprintf(`{"cniVersion":"1.0.0","name":"tabby","plugins":[%s]}`, h.conf(t, map[string]any{"cniVersion": nil, "name": nil}))
	if err := os.WriteFile(filepath.Join(confDir, "10-tabby.conflist"), []byte(conflist), 0o644); err != nil {
		t.Fatal(err)
	}
	list, err := libcni.ConfListFromFile(filepath.Join(confDir, "10-tabby.conflist"))
	if err != nil {
		t.Fatal(err)
	}
	return &libcniRuntime{
		host: h,
		cni:  libcni.NewCNIConfigWithCacheDir([]string{filepath.Dir(pluginBinary)}, t.TempDir(), nil),
		list: list,
	}
}

func (r *libcniRuntime) rt(id, nsName string) *libcni.RuntimeConf {
	return &libcni.RuntimeConf{ContainerID: id, NetNS: netnsPath(nsName), IfName: "eth0"}
}

func (r *libcniRuntime) add(t *testing.T, id, nsName string) (*current.Result, error) {
	t.Helper()
	var res *current.Result
	err := inNetns(t, r.host.NS, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
		defer cancel()
		out, err := r.cni.AddNetworkList(ctx, r.list, r.rt(id, nsName))
		if err != nil {
			return err
		}
		res, err = current.GetResult(out)
		return err
	})
	return res, err
}

func (r *libcniRuntime) check(t *testing.T, id, nsName string) error {
	t.Helper()
	return inNetns(t, r.host.NS, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
		defer cancel()
		return r.cni.CheckNetworkList(ctx, r.list, r.rt(id, nsName))
	})
}

func (r *libcniRuntime) del(t *testing.T, id, nsName string) error {
	t.Helper()
	return inNetns(t, r.host.NS, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
		defer cancel()
		return r.cni.DelNetworkList(ctx, r.list, r.rt(id, nsName))
	})
}

// TestThroughLibcni: ADD and CHECK through libcni with a conflist, DEL by hand; then ADD by
// hand and DEL through libcni.
func TestThroughLibcni(t *testing.T) {
	h := newTestHost(t)
	rt := newLibcniRuntime(t, h)

	wl := newNetns(t, "cniwl")
	id := "lib-" + randSuffix(t)
	res, err := rt.add(t, id, wl)
	if err != nil {
		t.Fatalf("libcni ADD: %v", err)
	}
	addr := resultAddr(t, res)
	// The plugin ran where the runtime runs: the veth is in the host namespace.
	if _, err := netlinkIn(t, h.NS).LinkByName(hostVethName(id)); err != nil {
		t.Errorf("host veth of the libcni ADD: %v", err)
	}
	if got := h.allocations(t)[addr]; got != "tabby."+id {
		t.Errorf("allocation of %s: handle %q", addr, got)
	}
	// CHECK gets the cached ADD result as prevResult.
	if err := rt.check(t, id, wl); err != nil {
		t.Errorf("libcni CHECK: %v", err)
	}
	h.del(t, id, netnsPath(wl))
	h.assertNothingLeft(t)

	wl2 := newNetns(t, "cniwl")
	id2 := "raw-" + randSuffix(t)
	h.add(t, id2, wl2)
	if err := rt.del(t, id2, wl2); err != nil {
		t.Fatalf("libcni DEL: %v", err)
	}
	if err := rt.del(t, id2, wl2); err != nil {
		t.Fatalf("second libcni DEL: %v", err)
	}
	h.assertNothingLeft(t)
	if _, err := netlinkIn(t, wl2).LinkByName("eth0"); err == nil {
		t.Error("eth0 still in the workload after libcni DEL")
	}
}

// TestVersion: VERSION through skel lists 0.3.0 to 1.1.0.
func TestVersion(t *testing.T) {
	requireRoot(t) // only for the built binary
	cmd := exec.Command(pluginBinary)
	cmd.Env = []string{"CNI_COMMAND=VERSION"}
	cmd.Stdin = strings.NewReader(`{"cniVersion":"1.0.0"}`)
	out, err := cmd.Output()
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range []string{`"0.3.0"`, `"0.3.1"`, `"0.4.0"`, `"1.0.0"`, `"1.1.0"`} {
		if !strings.Contains(string(out), v) {
			t.Errorf("VERSION output %s lacks %s", out, v)
		}
	}
}

// TestAddRestrictedToPool: ipam.ipv4_pools, as in Calico, picks the pool.
func TestAddRestrictedToPool(t *testing.T) {
	h := newTestHost(t)
	h.writePool(t, "second", `{"kind":"IPPool","apiVersion":"projectcalico.org/v3","metadata":{"name":"second"},"spec":{"cidr":"10.250.0.0/24","blockSize":26,"ipipMode":"Never","vxlanMode":"Never"}}`)
	wl := newNetns(t, "cniwl")
	id := "ctr-" + randSuffix(t)
	conf := h.conf(t, map[string]any{"ipam": map[string]any{"ipv4_pools": []string{"10.250.0.0/24"}}})
	out := h.exec(t, cniCall{Command: "ADD", ContainerID: id, Netns: netnsPath(wl), Conf: conf})
	if out.Err != nil {
		t.Fatalf("ADD: %v\n%s\n%s", out.Err, out.Stdout, out.Stderr)
	}
	parsed, err := current.NewResult([]byte(out.Stdout))
	if err != nil {
		t.Fatal(err)
	}
	r, _ := current.GetResult(parsed)
	if addr := resultAddr(t, r); !netip.MustParsePrefix("10.250.0.0/24").Contains(addr) {
		t.Errorf("address %s is not from the requested pool 10.250.0.0/24", addr)
	}
	if out := h.exec(t, cniCall{Command: "DEL", ContainerID: id, Netns: netnsPath(wl), Conf: conf}); out.Err != nil {
		t.Fatalf("DEL: %v\n%s", out.Err, out.Stdout)
	}
	h.Pool = netip.MustParsePrefix("10.240.0.0/12") // both pools
	h.assertNothingLeft(t)
}

// TestStatus: CNI 1.1 STATUS says whether etcd answers.
func TestStatus(t *testing.T) {
	t.Parallel() // waits for the etcd probe to time out
	h := newTestHost(t)
	ok := h.exec(t, cniCall{Command: "STATUS", Conf: h.conf(t, map[string]any{"cniVersion": "1.1.0"})})
	if ok.Err != nil {
		t.Fatalf("STATUS with etcd up: %v\n%s\n%s", ok.Err, ok.Stdout, ok.Stderr)
	}
	e := cniError(t, h.exec(t, cniCall{Command: "STATUS", Conf: h.conf(t, map[string]any{"cniVersion": "1.1.0", "etcd_endpoints": "http://127.0.0.1:1"})}))
	if e.Code != 50 || !strings.HasPrefix(e.Msg, "etcd unreachable at http://127.0.0.1:1: ") {
		t.Errorf("STATUS with etcd down: code %d msg %q", e.Code, e.Msg)
	}
}

// TestAddFromManualPoolByName: a Manual pool is used when ipam.ipv4_pools names it (by
// name, as Calico's CNI takes it), and only then.
func TestAddFromManualPoolByName(t *testing.T) {
	h := newTestHost(t)
	h.writePool(t, "manual", `{"kind":"IPPool","apiVersion":"projectcalico.org/v3","metadata":{"name":"manual"},"spec":{"cidr":"10.251.0.0/24","assignmentMode":"Manual"}}`)
	wl := newNetns(t, "cniwl")
	for _, tc := range []struct {
		pools []string
		in    netip.Prefix
	}{
		{nil, h.Pool},
		{[]string{"manual"}, netip.MustParsePrefix("10.251.0.0/24")},
	} {
		id := "ctr-" + randSuffix(t)
		conf := h.conf(t, map[string]any{"ipam": map[string]any{"ipv4_pools": tc.pools}})
		out := h.exec(t, cniCall{Command: "ADD", ContainerID: id, Netns: netnsPath(wl), Conf: conf})
		if out.Err != nil {
			t.Fatalf("ADD with ipv4_pools %v: %v\n%s\n%s", tc.pools, out.Err, out.Stdout, out.Stderr)
		}
		parsed, err := current.NewResult([]byte(out.Stdout))
		if err != nil {
			t.Fatal(err)
		}
		r, _ := current.GetResult(parsed)
		if addr := resultAddr(t, r); !tc.in.Contains(addr) {
			t.Errorf("ipv4_pools %v: address %s is not from %s", tc.pools, addr, tc.in)
		}
		if out := h.exec(t, cniCall{Command: "DEL", ContainerID: id, Netns: netnsPath(wl), Conf: conf}); out.Err != nil {
			t.Fatalf("DEL: %v\n%s", out.Err, out.Stdout)
		}
	}
	h.Pool = netip.MustParsePrefix("10.240.0.0/12") // both pools
	h.assertNothingLeft(t)
}
