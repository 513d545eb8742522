package routing

import (
	"context"
	"net"
	"net/netip"
	"os"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/tabby-net/tabby/datastore"
	"github.com/tabby-net/tabby/internal/namedns"
	"github.com/tabby-net/tabby/internal/netnstest"
)

// The tests in this file program real kernels: each in a network namespace it creates and
// removes, never the machine's own. They need root.

func needRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("programs a real kernel, which needs root to create network namespaces; " +
			"tested instead: the same reconciler against the fake kernel (kernel_test.go)")
	}
	if testing.Short() {
		t.Skip("programs a real kernel in a namespace: not with -short (make test-race); " +
			"make test runs it without -short, and the fake-kernel tests (kernel_test.go) run here")
	}
}

// testNS is a network namespace made for one test, with a netlink handle bound to it.
type testNS struct {
	*netnstest.NS
	ns    netns.NsHandle
	h     *netlink.Handle
	close func() // removes the namespace now rather than at the end of the test
}

// newTestNS creates the namespace tabby-<purpose>-<random> and opens it for the reconciler;
// everything is closed and removed when the test ends, or earlier with close.
func newTestNS(t testing.TB, purpose string) *testNS {
	t.Helper()
	n := netnstest.New(t, purpose)
	ns, err := namedns.Open(n.Name)
	if err != nil {
		t.Fatal(err)
	}
	h, err := netlink.NewHandleAt(ns, unix.NETLINK_ROUTE)
	if err != nil {
		ns.Close()
		t.Fatalf("netlink handle in %s: %v", n.Name, err)
	}
	var once sync.Once
	closeNS := func() {
		once.Do(func() {
			h.Close()
			ns.Close()
			n.Remove()
		})
	}
	t.Cleanup(closeNS)
	return &testNS{NS: n, ns: ns, h: h, close: closeNS}
}

// hostNIC gives the namespace an eth0 (a veth, with its peer up) holding addr, with the
// given MTU and a default route via 10.30.0.1: the node's underlay.
func (n *testNS) hostNIC(t testing.TB, addr string, mtu int) {
	t.Helper()
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0", MTU: mtu}, PeerName: "peer0"}
	if err := n.h.LinkAdd(veth); err != nil {
		t.Fatalf("create eth0: %v", err)
	}
	for _, name := range []string{"lo", "peer0", "eth0"} {
		l, err := n.h.LinkByName(name)
		if err != nil {
			t.Fatal(err)
		}
		if name == "eth0" {
			p := netip.MustParsePrefix(addr)
			if err := n.h.AddrAdd(l, &netlink.Addr{IPNet: &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), 32)}}); err != nil {
				t.Fatalf("address eth0: %v", err)
			}
		}
		if err := n.h.LinkSetUp(l); err != nil {
			t.Fatalf("set %s up: %v", name, err)
		}
	}
	eth0, _ := n.h.LinkByName("eth0")
	def := &netlink.Route{Gw: net.ParseIP("10.30.0.1").To4(), LinkIndex: eth0.Attrs().Index, Protocol: unix.RTPROT_BOOT}
	if err := n.h.RouteAdd(def); err != nil {
		t.Fatalf("default route: %v", err)
	}
}

// local describes the namespace's host as the daemon would: from the kernel.
func (n *testNS) local(t testing.TB, node string) Local {
	t.Helper()
	underlay, err := ReadUnderlay(n.h, DefaultProtocol)
	if err != nil {
		t.Fatal(err)
	}
	mtu, nic, err := HostMTU(n.h, netip.MustParseAddr("10.30.0.206"))
	if err != nil {
		t.Fatal(err)
	}
	return Local{NodeName: node, NIC: nic, HostMTU: mtu, Underlay: underlay}
}

// startKernel runs a real reconciler on the namespace until the returned stop is called
// or the test ends.
func (n *testNS) startKernel(t testing.TB, opts KernelOptions) (*Kernel, func()) {
	t.Helper()
	opts.Handle = n.h
	opts.Namespace = &n.ns
	if opts.Logger == nil {
		opts.Logger = quietLogger()
	}
	k, err := NewKernel(opts)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- k.Run(ctx) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("Run: %v", err)
			}
		})
	}
	t.Cleanup(stop)
	return k, stop
}

func waitSynced(t testing.TB, k *Kernel) {
	t.Helper()
	select {
	case <-k.Synced():
	case <-time.After(60 * time.Second):
		t.Fatalf("not synced; status %+v", k.Status())
	}
}

// ourRoutes lists the namespace's routes with tabby's protocol, by destination.
func (n *testNS) ourRoutes(t testing.TB) map[netip.Prefix]netlink.Route {
	t.Helper()
	list, err := n.h.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Protocol: DefaultProtocol}, netlink.RT_FILTER_PROTOCOL)
	if err != nil {
		t.Fatal(err)
	}
	out := make(map[netip.Prefix]netlink.Route, len(list))
	for _, r := range list {
		kr, _ := fromNetlink(nlRoute{Route: r})
		out[kr.dst] = r
	}
	return out
}

// checkRoutes compares the namespace's routes of tabby's with the desired ones.
func (n *testNS) checkRoutes(t testing.TB, want State) {
	t.Helper()
	have := n.ourRoutes(t)
	if len(have) != len(want.Routes) {
		t.Fatalf("%d routes of tabby's in the kernel, want %d", len(have), len(want.Routes))
	}
	for _, w := range want.Routes {
		r, ok := have[w.Dst]
		if !ok {
			t.Fatalf("missing %s", w)
		}
		kr, _ := fromNetlink(nlRoute{Route: r})
		if kr.blackhole != w.Blackhole || kr.gw != w.Gateway || kr.onlink != w.OnLink || kr.mtu != w.MTU {
			t.Fatalf("kernel has %+v for %s", r, w)
		}
	}
	n.checkNexthops(t)
}

// checkNexthops reads the namespace with tabby's own codec: every route of tabby's with a
// gateway uses a nexthop object of tabby's that holds that gateway, on the route's device,
// and no object of tabby's is unused.
func (n *testNS) checkNexthops(t testing.TB) {
	t.Helper()
	codec, err := newRTNL(n.h, &n.ns)
	if err != nil {
		t.Fatal(err)
	}
	defer codec.Close()
	objects := map[uint32]nexthop{}
	if err := codec.NexthopDump(func(nh nexthop) bool {
		if nh.Protocol == DefaultProtocol {
			objects[nh.ID] = nh
		}
		return true
	}); err != nil {
		t.Fatalf("nexthop dump: %v", err)
	}
	used := map[uint32]bool{}
	if err := codec.RouteDump(func(r nlRoute) bool {
		if int(r.Protocol) != DefaultProtocol || r.Type == unix.RTN_BLACKHOLE {
			return true
		}
		nh, ok := objects[r.NHID]
		switch {
		case r.NHID == 0:
			t.Errorf("route %s names its gateway %s itself, not through a nexthop object", r.Dst, r.Gw)
		case !ok:
			t.Errorf("route %s uses nexthop %d, which is not tabby's", r.Dst, r.NHID)
		case !net.IP(nh.Gw.AsSlice()).Equal(r.Gw) || nh.LinkIndex != r.LinkIndex:
			t.Errorf("route %s: via %s dev %d, its nexthop object %+v", r.Dst, r.Gw, r.LinkIndex, nh)
		}
		used[r.NHID] = true
		return true
	}); err != nil {
		t.Fatalf("route dump: %v", err)
	}
	for id, nh := range objects {
		if !used[id] {
			t.Errorf("nexthop object %+v of tabby's is used by no route", nh)
		}
	}
}

func pollUntil(t testing.TB, what string, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	deadline := start.Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
	return time.Since(start)
}

// TestRootVXLAN1000 installs 1,000 remote blocks in VXLAN mode, restores a route and then
// the whole device when they are deleted by hand, and cleans everything up.
func TestRootVXLAN1000(t *testing.T) {
	needRoot(t)
	n := newTestNS(t, "vxlan")
	n.hostNIC(t, "10.30.0.206/16", 9001)
	k, stop := n.startKernel(t, KernelOptions{})
	state := Desired(bigCluster(1001, datastore.EncapAlways).s, n.local(t, "worker-1"), nil)
	if len(state.Routes) != 1001 || state.VXLAN == nil || len(state.Problems) != 0 {
		t.Fatalf("unexpected desired state: %d routes, problems %q", len(state.Routes), state.Problems)
	}
	k.Set(state)
	waitSynced(t, k)
	n.checkRoutes(t, state)

	link, err := n.h.LinkByName(DeviceVXLAN)
	if err != nil {
		t.Fatal(err)
	}
	v := link.(*netlink.Vxlan)
	if v.VxlanId != VXLANVNI || v.Port != VXLANPort || v.Learning || v.MTU != 8951 || v.Flags&net.FlagUp == 0 ||
		v.HardwareAddr.String() != "66:00:00:00:00:00" || !v.SrcAddr.Equal(net.ParseIP("10.30.0.206")) {
		t.Errorf("vxlan.tabby = %+v", v)
	}
	neighs, err := n.h.NeighList(v.Index, netlink.FAMILY_V4)
	if err != nil {
		t.Fatal(err)
	}
	fdb, err := n.h.NeighList(v.Index, unix.AF_BRIDGE)
	if err != nil {
		t.Fatal(err)
	}
	permanent := 0
	for _, e := range neighs {
		if e.State&netlink.NUD_PERMANENT != 0 {
			permanent++
		}
	}
	withDst := 0
	for _, e := range fdb {
		if e.IP != nil {
			withDst++
		}
	}
	if permanent != 1000 || withDst != 1000 {
		t.Errorf("%d permanent neighbours and %d FDB entries on vxlan.tabby, want 1000 each", permanent, withDst)
	}

	// Someone deletes a route: it comes back from the route notification.
	other, err := netlink.NewHandleAt(n.ns, unix.NETLINK_ROUTE)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	victim := state.Routes[500]
	if err := other.RouteDel(&netlink.Route{Dst: &net.IPNet{IP: victim.Dst.Addr().AsSlice(), Mask: net.CIDRMask(victim.Dst.Bits(), 32)}, Protocol: DefaultProtocol}); err != nil {
		t.Fatal(err)
	}
	took := pollUntil(t, "the deleted route to come back", func() bool { _, ok := n.ourRoutes(t)[victim.Dst]; return ok })
	t.Logf("route deleted by hand restored after %v", took)

	// Someone deletes vxlan.tabby: it, its neighbours, FDB entries and routes come back.
	if err := other.LinkDel(link); err != nil {
		t.Fatal(err)
	}
	took = pollUntil(t, "vxlan.tabby and its routes to come back", func() bool { return len(n.ourRoutes(t)) == 1001 })
	t.Logf("vxlan.tabby deleted by hand: device and 1,000 routes back after %v", took)
	n.checkRoutes(t, state)

	stop()
	rep, err := Cleanup(context.Background(), n.h, DefaultProtocol)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Routes != 1001 || !rep.VXLANDeleted {
		t.Errorf("cleanup report %+v", rep)
	}
	if left := n.ourRoutes(t); len(left) != 0 {
		t.Errorf("%d routes of tabby's left after cleanup", len(left))
	}
	if _, err := n.h.LinkByName(DeviceVXLAN); err == nil {
		t.Error("vxlan.tabby left after cleanup")
	}
}

// TestRootDirect1000 installs 1,000 remote blocks in Direct mode and leaves routes of
// other protocols alone: a workload route inside the pool, and a static route on a prefix
// tabby wants.
func TestRootDirect1000(t *testing.T) {
	needRoot(t)
	n := newTestNS(t, "direct")
	n.hostNIC(t, "10.30.0.206/16", 1500)
	eth0, _ := n.h.LinkByName("eth0")
	workload := &netlink.Route{Dst: mustIPNet("10.128.0.5/32"), LinkIndex: eth0.Attrs().Index, Scope: netlink.SCOPE_LINK, Protocol: unix.RTPROT_BOOT}
	foreign := &netlink.Route{Dst: mustIPNet("10.128.0.128/26"), Gw: net.ParseIP("10.30.0.9").To4(), Protocol: unix.RTPROT_STATIC}
	for _, r := range []*netlink.Route{workload, foreign} {
		if err := n.h.RouteAdd(r); err != nil {
			t.Fatal(err)
		}
	}
	k, _ := n.startKernel(t, KernelOptions{RefreshInterval: 100 * time.Millisecond})
	state := Desired(bigCluster(1001, datastore.EncapNever).s, n.local(t, "worker-1"), nil)
	k.Set(state)
	waitSynced(t, k)
	// Let a few full resyncs go by.
	before := k.Status().FullSyncs
	pollUntil(t, "three full resyncs", func() bool { return k.Status().FullSyncs >= before+3 })

	have := n.ourRoutes(t)
	if len(have) != 1000 {
		t.Errorf("%d routes of tabby's, want 1000 (1001 less the one another protocol holds)", len(have))
	}
	for _, w := range state.Routes {
		if w.Dst.String() == "10.128.0.128/26" || w.Blackhole {
			continue
		}
		r, ok := have[w.Dst]
		if !ok || !r.Gw.Equal(w.Gateway.AsSlice()) || r.LinkIndex != eth0.Attrs().Index {
			t.Fatalf("route %s: kernel has %+v", w, r)
		}
	}
	all, err := n.h.RouteList(nil, netlink.FAMILY_V4)
	if err != nil {
		t.Fatal(err)
	}
	found := 0
	for _, r := range all {
		kr, _ := fromNetlink(nlRoute{Route: r})
		switch {
		case kr.dst.String() == "10.128.0.5/32" && r.Protocol == unix.RTPROT_BOOT && r.LinkIndex == eth0.Attrs().Index:
			found++
		case kr.dst.String() == "10.128.0.128/26" && r.Protocol == unix.RTPROT_STATIC && r.Gw.Equal(net.ParseIP("10.30.0.9")):
			found++
		}
	}
	if found != 2 {
		t.Errorf("the routes of other protocols were touched:\n%v", all)
	}
	if st := k.Status(); !slices.Contains(st.Problems, "route 10.128.0.128/26 left alone: the kernel holds it with protocol 4") {
		t.Errorf("problems %q", st.Problems)
	}
}

// TestRootRestartAdopts: a second reconciler started over the routes of a first adopts
// them (a watcher on the route notifications sees no route of tabby's disappear, so the
// count never dips) and sweeps the one stale route.
func TestRootRestartAdopts(t *testing.T) {
	needRoot(t)
	n := newTestNS(t, "restart")
	n.hostNIC(t, "10.30.0.206/16", 1500)
	state := Desired(bigCluster(1001, datastore.EncapNever).s, n.local(t, "worker-1"), nil)

	k1, stop1 := n.startKernel(t, KernelOptions{})
	k1.Set(state)
	waitSynced(t, k1)
	stop1() // as SIGTERM or kill -9 would: the routes stay

	stale := &netlink.Route{Dst: mustIPNet("10.250.0.0/26"), Gw: net.ParseIP("10.30.0.9").To4(), Protocol: DefaultProtocol}
	if err := n.h.RouteAdd(stale); err != nil {
		t.Fatal(err)
	}

	// The watcher: the set of tabby's routes, from one dump and then notifications.
	events := make(chan netlink.RouteUpdate, 1<<16)
	done := make(chan struct{})
	defer close(done)
	if err := netlink.RouteSubscribeWithOptions(events, done, netlink.RouteSubscribeOptions{Namespace: &n.ns, ReceiveBufferSize: 8 << 20, ReceiveBufferForceSize: true}); err != nil {
		t.Fatal(err)
	}
	set := map[netip.Prefix]bool{}
	for p := range n.ourRoutes(t) {
		set[p] = true
	}
	if len(set) != 1002 {
		t.Fatalf("%d routes before the restart, want 1002", len(set))
	}
	minCount := len(set)
	var deleted []netip.Prefix

	k2, _ := n.startKernel(t, KernelOptions{})
	k2.Set(state)
	waitSynced(t, k2)
	staleDst := netip.MustParsePrefix("10.250.0.0/26")
	deadline := time.After(30 * time.Second)
	for set[staleDst] {
		select {
		case u, ok := <-events:
			if !ok {
				t.Fatal("the watcher's subscription overflowed")
			}
			if int(u.Protocol) != DefaultProtocol {
				continue
			}
			kr, _ := fromNetlink(nlRoute{Route: u.Route})
			switch u.Type {
			case unix.RTM_NEWROUTE:
				set[kr.dst] = true
			case unix.RTM_DELROUTE:
				delete(set, kr.dst)
				deleted = append(deleted, kr.dst)
			}
			minCount = min(minCount, len(set))
		case <-deadline:
			t.Fatalf("the stale route was not swept; status %+v", k2.Status())
		}
	}
	if !slices.Equal(deleted, []netip.Prefix{staleDst}) {
		t.Errorf("routes deleted during the restart: %v, want only %s", deleted, staleDst)
	}
	if minCount < 1001 {
		t.Errorf("the count of tabby's routes dipped to %d during the restart", minCount)
	}
	n.checkRoutes(t, state)
	if ops := k2.Status().Ops; ops.RouteWrites != 1 {
		t.Errorf("the restarted reconciler made %d route writes, want 1 (the sweep)", ops.RouteWrites)
	}
}

// startIPIP programs the articles' CrossSubnet topology and waits for a first pass; it
// reports whether the kernel has IP-in-IP (tunl0 is not DeviceUnsupported).
func startIPIP(t *testing.T) (*testNS, *Kernel, State, bool) {
	t.Helper()
	needRoot(t)
	n := newTestNS(t, "ipip")
	n.hostNIC(t, "10.30.0.206/24", 9001)
	k, _ := n.startKernel(t, KernelOptions{})
	state := Desired(article(datastore.EncapCrossSubnet, datastore.EncapNever).s, n.local(t, "worker-1"), nil)
	k.Set(state)
	pollUntil(t, "a first pass", func() bool { return k.Status().Passes > 0 })
	return n, k, state, k.Status().Tunl0 != DeviceUnsupported
}

// TestRootWithoutIPIP: on a kernel without the ipip module, the problem is reported in
// readiness's words and everything else is programmed.
func TestRootWithoutIPIP(t *testing.T) {
	n, k, _, hasIPIP := startIPIP(t)
	if hasIPIP {
		t.Skip("the kernel has ipip support, so there is no degraded mode to check; " +
			"TestRootIPIP checks tunl0 and its routes here instead")
	}
	waitSynced(t, k)
	if !slices.Contains(k.Status().Problems, "kernel has no ipip support") {
		t.Fatalf("problems %q do not say %q", k.Status().Problems, "kernel has no ipip support")
	}
	have := n.ourRoutes(t)
	for _, dst := range []string{"192.168.133.192/26", "192.168.219.64/26", "192.168.226.64/26"} {
		if _, ok := have[netip.MustParsePrefix(dst)]; !ok {
			t.Fatalf("without ipip, %s was not programmed", dst)
		}
	}
	if len(have) != 3 {
		t.Fatalf("%d routes programmed without ipip, want 3", len(have))
	}
}

// TestRootIPIP: on a kernel with the ipip module, tunl0 (adopted or created) gets the tunnel
// address, MTU and up, the routes go through it, and switching the pool to Direct releases
// it.
func TestRootIPIP(t *testing.T) {
	n, k, state, hasIPIP := startIPIP(t)
	if !hasIPIP {
		t.Skip("kernel has no ipip support: tunl0 cannot be checked here; TestRootWithoutIPIP " +
			"checks the degraded mode instead, and make test-vm runs this test on a kernel with ipip")
	}
	waitSynced(t, k)
	n.checkRoutes(t, state)
	tunl0, err := n.h.LinkByName(DeviceIPIP)
	if err != nil {
		t.Fatal(err)
	}
	a := tunl0.Attrs()
	if tunl0.Type() != "ipip" || a.MTU != 8981 || a.Flags&net.FlagUp == 0 {
		t.Errorf("tunl0 = type %s, mtu %d, flags %v; want ipip, 8981, up", tunl0.Type(), a.MTU, a.Flags)
	}
	addrs, err := n.h.AddrList(tunl0, netlink.FAMILY_V4)
	if err != nil {
		t.Fatal(err)
	}
	if len(addrs) != 1 || addrs[0].IPNet.String() != "192.168.226.64/32" {
		t.Errorf("tunl0 addresses %v, want 192.168.226.64/32", addrs)
	}
	r := n.ourRoutes(t)[netip.MustParsePrefix("192.168.97.192/26")]
	if r.LinkIndex != a.Index || r.Flags&int(netlink.FLAG_ONLINK) == 0 || r.MTU != 8981 || !r.Gw.Equal(net.ParseIP("10.30.1.66")) {
		t.Errorf("route to worker-3 = %+v, want via 10.30.1.66 dev tunl0 onlink mtu 8981", r)
	}

	// Switching the pool to Direct releases tunl0: no address, down.
	k.Set(Desired(article(datastore.EncapNever, datastore.EncapNever).s, n.local(t, "worker-1"), nil))
	pollUntil(t, "tunl0 to be released", func() bool {
		l, err := n.h.LinkByName(DeviceIPIP)
		if err != nil {
			return true // not the fallback device: deleted
		}
		addrs, _ := n.h.AddrList(l, netlink.FAMILY_V4)
		return len(addrs) == 0 && l.Attrs().Flags&net.FlagUp == 0
	})
}
