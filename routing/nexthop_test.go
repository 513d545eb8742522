package routing

import (
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/tabby-net/tabby/datastore"
)

// tabbyNexthops returns the nexthop objects of tabby's protocol in the fake kernel, by id.
func tabbyNexthops(fk *fakeKernel) map[uint32]nexthop {
	fk.mu.Lock()
	defer fk.mu.Unlock()
	out := map[uint32]nexthop{}
	for id, nh := range fk.nexthops {
		if nh.Protocol == DefaultProtocol {
			out[id] = nh
		}
	}
	return out
}

// routeNHID returns the nexthop id of the fake kernel's route to dst (0: none or no route).
func routeNHID(fk *fakeKernel, dst string) uint32 {
	fk.mu.Lock()
	defer fk.mu.Unlock()
	for key, r := range fk.routes {
		if key.prefix().String() == dst {
			return r.NHID
		}
	}
	return 0
}

// TestKernelSharesNexthopObjects: routes to two blocks of one node share that node's
// nexthop object, one object per next hop; when the node's blocks go, so does the object.
func TestKernelSharesNexthopObjects(t *testing.T) {
	fk := newFakeKernel()
	k := runKernel(t, fk, KernelOptions{})
	two := article(datastore.EncapNever, datastore.EncapNever).
		block("192.168.133.0/26", "worker-2", datastore.AffinityConfirmed, nil)
	k.Set(Desired(two.s, fakeLocal(t, fk), nil))
	settle(t, k)
	a, b := routeNHID(fk, "192.168.133.192/26"), routeNHID(fk, "192.168.133.0/26")
	if a == 0 || a != b {
		t.Fatalf("worker-2's two blocks use nexthop objects %d and %d, want one shared object", a, b)
	}
	if n := len(tabbyNexthops(fk)); n != 3 {
		t.Errorf("%d nexthop objects for 3 next hops:\n%s", n, fk)
	}

	// worker-2's blocks go: its object goes with the last of them.
	one := article(datastore.EncapNever, datastore.EncapNever).
		block("192.168.133.0/26", "worker-2", datastore.AffinityConfirmed, nil)
	for _, cidr := range []string{"192.168.133.192/26", "192.168.133.0/26"} {
		delete(one.s.Blocks, netip.MustParsePrefix(cidr))
	}
	k.Set(Desired(one.s, fakeLocal(t, fk), nil))
	waitFor(t, "worker-2's object to go", func() bool { _, ok := tabbyNexthops(fk)[a]; return !ok })
	settle(t, k)
	if st := k.Status(); st.Routes[KindDirect] != 2 || len(tabbyNexthops(fk)) != 2 {
		t.Errorf("after worker-2 left: status %+v, kernel\n%s", st, fk)
	}
}

// TestKernelWithoutNexthopObjects: on a kernel that predates nexthop objects (Linux < 5.3)
// routes name their gateways themselves.
func TestKernelWithoutNexthopObjects(t *testing.T) {
	fk := newFakeKernel()
	fk.noNexthops = true
	k := runKernel(t, fk, KernelOptions{})
	k.Set(Desired(article(datastore.EncapNever, datastore.EncapNever).s, fakeLocal(t, fk), nil))
	settle(t, k)
	text := fk.String()
	for _, line := range []string{
		"192.168.97.192/26 via 10.30.0.1 dev eth0 proto tabby",
		"192.168.133.192/26 via 10.30.0.56 dev eth0 proto tabby",
		"192.168.219.64/26 via 10.30.0.136 dev eth0 proto tabby",
	} {
		if !strings.Contains(text, "\n"+line+"\n") {
			t.Errorf("missing %q in\n%s", line, text)
		}
	}
	if st := k.Status(); st.Failures != 0 || st.LastError != "" {
		t.Errorf("status %+v", st)
	}
}

// TestKernelNexthopDeletedByHand: `ip nexthop del` of one of tabby's objects takes its
// routes with it, without a route notification; the reconciler puts both back.
func TestKernelNexthopDeletedByHand(t *testing.T) {
	fk := newFakeKernel()
	k := runKernel(t, fk, KernelOptions{RefreshInterval: time.Hour})
	k.Set(Desired(article(datastore.EncapNever, datastore.EncapNever).s, fakeLocal(t, fk), nil))
	settle(t, k)
	want := fk.String()
	id := routeNHID(fk, "192.168.133.192/26")
	if !fk.externalNexthopDel(id) {
		t.Fatalf("no nexthop object %d", id)
	}
	if strings.Contains(fk.String(), "192.168.133.192/26") {
		t.Fatal("the fake kernel kept a route whose nexthop object was deleted")
	}
	waitFor(t, "the route and its object to come back", func() bool { return fk.String() == want })
}

// TestKernelNexthopIDTaken: ids of other programs' nexthop objects are never used, whether
// they were there at start or appear between a dump and tabby's request; then a route that
// went in through someone else's object is written again through tabby's.
func TestKernelNexthopIDTaken(t *testing.T) {
	fk := newFakeKernel()
	theirs := nexthop{ID: 1, Gw: netip.MustParseAddr("10.30.0.9"), LinkIndex: 2, Protocol: unix.RTPROT_STATIC}
	if err := fk.externalNexthopAdd(theirs); err != nil {
		t.Fatal(err)
	}
	// Another program takes id 3 just before tabby asks for it.
	sneaky := nexthop{ID: 3, Gw: netip.MustParseAddr("10.30.0.10"), LinkIndex: 2, Protocol: unix.RTPROT_STATIC}
	fk.fail = func(op string, arg any) error {
		if op == "NexthopAdd" && fmt.Sprint(arg) == "3" {
			if _, ok := fk.nexthops[3]; !ok {
				fk.nexthops[3] = sneaky // the lock is held: write directly
			}
		}
		return nil
	}
	k := runKernel(t, fk, KernelOptions{})
	k.Set(Desired(article(datastore.EncapNever, datastore.EncapNever).s, fakeLocal(t, fk), nil))
	settle(t, k)
	ours := tabbyNexthops(fk)
	if len(ours) != 3 {
		t.Fatalf("%d nexthop objects of tabby's, want 3:\n%s", len(ours), fk)
	}
	for id := range ours {
		if id == 1 || id == 3 {
			t.Errorf("tabby uses id %d, which another program holds:\n%s", id, fk)
		}
	}
	fk.mu.Lock()
	one, three := fk.nexthops[1], fk.nexthops[3]
	fk.mu.Unlock()
	if one != theirs || three != sneaky {
		t.Errorf("the other program's objects changed: %+v, %+v", one, three)
	}
	for _, dst := range []string{"192.168.97.192/26", "192.168.133.192/26", "192.168.219.64/26"} {
		if id := routeNHID(fk, dst); ours[id].Protocol != DefaultProtocol {
			t.Errorf("route %s uses nexthop %d, not one of tabby's:\n%s", dst, id, fk)
		}
	}
}

// TestKernelAdoptsNexthopObjects: a restarted reconciler takes over the objects and routes
// of the previous run without a single write, and sweeps an object nothing uses.
func TestKernelAdoptsNexthopObjects(t *testing.T) {
	fk := newFakeKernel()
	state := Desired(article(datastore.EncapNever, datastore.EncapNever).s, fakeLocal(t, fk), nil)
	first := newKernel(fk, fk, KernelOptions{Logger: quietLogger()})
	if rep := first.pass(t.Context(), &state, true); rep.failures != 0 {
		t.Fatalf("first run: %v", rep.firstErr)
	}
	want := fk.String()
	// Left over: an object nothing uses, and a second object for a next hop that already
	// has one (the routes keep theirs).
	for _, stale := range []nexthop{
		{ID: 40, Gw: netip.MustParseAddr("10.30.0.99"), LinkIndex: 2, Protocol: DefaultProtocol},
		{ID: 41, Gw: netip.MustParseAddr("10.30.0.56"), LinkIndex: 2, Protocol: DefaultProtocol},
	} {
		if err := fk.externalNexthopAdd(stale); err != nil {
			t.Fatal(err)
		}
	}
	before := len(fk.opLog())
	k := runKernel(t, fk, KernelOptions{})
	k.Set(state)
	settle(t, k)
	got := slices.Sorted(slices.Values(fk.opLog()[before:]))
	if want := []string{"NexthopDel 40", "NexthopDel 41"}; !slices.Equal(got, want) {
		t.Errorf("the restarted reconciler made requests %q, want only %q", got, want)
	}
	if got := fk.String(); got != want {
		t.Errorf("after the restart:\n%s\nwant:\n%s", got, want)
	}
}

// TestRouteCodec: tabby's route and nexthop messages decode to what was encoded.
func TestRouteCodec(t *testing.T) {
	dst := &net.IPNet{IP: net.IPv4(192, 168, 5, 0).To4(), Mask: net.CIDRMask(26, 32)}
	for _, in := range []nlRoute{
		{Route: netlink.Route{Dst: dst, Protocol: 95, Table: unix.RT_TABLE_MAIN, Type: unix.RTN_UNICAST, MTU: 1430}, NHID: 7},
		{Route: netlink.Route{Dst: dst, Protocol: 95, Table: unix.RT_TABLE_MAIN, Type: unix.RTN_UNICAST, Gw: net.IPv4(10, 30, 0, 56).To4(), LinkIndex: 2, Flags: int(netlink.FLAG_ONLINK), Priority: 20}},
		{Route: netlink.Route{Dst: dst, Protocol: 95, Table: 1000, Type: unix.RTN_BLACKHOLE}},
	} {
		out, ok := decodeRoute(encodeRoute(&in))
		if !ok {
			t.Fatalf("%+v did not decode", in)
		}
		if out.Dst.String() != in.Dst.String() || out.NHID != in.NHID || !out.Gw.Equal(in.Gw) || out.LinkIndex != in.LinkIndex ||
			out.Flags != in.Flags || out.Priority != in.Priority || out.MTU != in.MTU || out.Table != in.Table || out.Type != in.Type || out.Protocol != in.Protocol {
			t.Errorf("encoded %+v, decoded %+v", in, out)
		}
	}
	nh := nexthop{ID: 9, Gw: netip.MustParseAddr("10.30.1.66"), LinkIndex: 4, OnLink: true, Protocol: 95}
	if got, ok := decodeNexthop(encodeNexthop(&nh)); !ok || got != nh {
		t.Errorf("nexthop %+v decoded as %+v", nh, got)
	}
	v6 := make([]byte, unix.SizeofRtMsg)
	v6[0] = unix.AF_INET6
	if _, ok := decodeRoute(v6); ok {
		t.Error("an IPv6 route decoded")
	}
	if _, ok := decodeRoute([]byte{unix.AF_INET, 0, 0}); ok {
		t.Error("a truncated message decoded")
	}
}

// TestKernelNexthopCreateFails: a nexthop object the kernel refuses in a bulk pass takes
// the route through it down with it; the route is tried again alone at once, and when that
// fails too, the record keeps neither, the failure is reported and retried, and the state
// converges with no object left unused.
func TestKernelNexthopCreateFails(t *testing.T) {
	fk := newFakeKernel().withIPIPFallback()
	failures := 2
	fk.fail = func(op string, arg any) error {
		if op == "NexthopAdd" && fmt.Sprint(arg) == "1" && failures > 0 {
			failures--
			return unix.ENOBUFS
		}
		return nil
	}
	k := runKernel(t, fk, KernelOptions{})
	k.Set(Desired(article(datastore.EncapNever, datastore.EncapNever).s, fakeLocal(t, fk), nil))
	waitFor(t, "a failed pass", func() bool { return k.Status().Failures > 0 })
	settle(t, k)
	checkGolden(t, "direct", fk.String())
	if st := k.Status(); st.Routes[KindDirect] != 3 || st.Failures != 0 {
		t.Errorf("status %+v", st)
	}
}
