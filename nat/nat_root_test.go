package nat

import (
	"context"
	"net/netip"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coreos/go-iptables/iptables"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/tabby-net/tabby/internal/netnstest"
)

const testInterval = 200 * time.Millisecond

func forEachBackend(t *testing.T, test func(t *testing.T, mode string)) {
	requireRoot(t)
	for _, mode := range backends {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			requireBackend(t, mode)
			test(t, mode)
		})
	}
}

func TestKernelRulesAndSets(t *testing.T) {
	forEachBackend(t, func(t *testing.T, mode string) {
		ns := netnstest.New(t, "natrules")
		n, _ := startNAT(t, ns, mode, testInterval)
		n.Set(masqDesired)
		waitSynced(t, n)
		if got, want := saveTable(t, ns, mode, tableNAT), readGolden(t, "nat-masq.golden"); got != want {
			t.Fatalf("iptables-save -t nat:\n%s\nwant:\n%s", got, want)
		}
		if got := setMembers(t, ns, MasqSetName); !slices.Equal(got, []string{"10.244.0.0/16"}) {
			t.Errorf("%s = %q", MasqSetName, got)
		}
		if got := setMembers(t, ns, AllSetName); !slices.Equal(got, []string{"10.244.0.0/16", "10.250.0.0/16"}) {
			t.Errorf("%s = %q", AllSetName, got)
		}
		if st := n.Status(); st.Backend != mode || !st.RandomFully || !st.InSync {
			t.Errorf("status %+v", st)
		}

		off := masqDesired
		off.MasqPools = nil
		n.Set(off)
		eventually(t, "tabby-nat-outgoing to be emptied", func() bool {
			return saveTable(t, ns, mode, tableNAT) == readGolden(t, "nat-nomasq.golden")
		})
		eventually(t, "the masquerade set to be emptied", func() bool { return len(setMembers(t, ns, MasqSetName)) == 0 })
		if got := setMembers(t, ns, AllSetName); !slices.Equal(got, []string{"10.244.0.0/16", "10.250.0.0/16"}) {
			t.Errorf("%s = %q", AllSetName, got)
		}

		// Where FORWARD drops (docker's hosts), pool traffic is accepted by tabby-FORWARD,
		// and the chain goes again when the policy accepts.
		ns.Run(t, "iptables-"+mode, "-P", "FORWARD", "DROP")
		eventually(t, "tabby-FORWARD", func() bool {
			s := saveTable(t, ns, mode, tableFilter)
			return strings.Contains(s, "-A FORWARD -m comment") &&
				strings.Contains(s, "-A tabby-FORWARD -m comment --comment") &&
				strings.Contains(s, "-m set --match-set tabby40all-ipam-pools src -j ACCEPT") &&
				strings.Contains(s, "-m set --match-set tabby40all-ipam-pools dst -j ACCEPT")
		})
		ns.Run(t, "iptables-"+mode, "-P", "FORWARD", "ACCEPT")
		eventually(t, "tabby-FORWARD to go", func() bool { return !strings.Contains(saveTable(t, ns, mode, tableFilter), "tabby") })
	})
}

// watcher checks, as fast as it can until stopped, that tabby's jump and MASQUERADE rule are
// in place (with go-iptables, the way an operator's `iptables -C` would) and that the pool
// that keeps natOutgoing never leaves the masquerade set.
type watcher struct {
	checks, misses atomic.Int64
	firstMiss      atomic.Value
	stop           chan struct{}
	done           chan struct{}
}

func startWatcher(t *testing.T, ns *netnstest.NS, mode string, stable string) *watcher {
	t.Helper()
	r := nsRunner(t, ns)
	b, err := findBackend(context.Background(), mode)
	if err != nil {
		t.Fatal(err)
	}
	ipt, err := iptables.New(iptables.Path(b.iptablesBin))
	if err != nil {
		t.Fatal(err)
	}
	nl, err := netlink.NewHandleAt(r.ns, unix.NETLINK_NETFILTER)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nl.Close)
	nat := natTable(masqDesired, features{randomFully: true})
	jump := args(nat.hooks[0].rule.spec)
	masq := args(nat.chains[1].rules[0].spec)
	member := entry(prefixes(stable)[0])
	w := &watcher{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(w.done)
		for {
			select {
			case <-w.stop:
				return
			default:
			}
			var jumpOK, masqOK bool
			err := r.do(func() error {
				var err error
				if jumpOK, err = ipt.Exists(tableNAT, "POSTROUTING", jump...); err != nil {
					return err
				}
				masqOK, err = ipt.Exists(tableNAT, ChainNATOutgoing, masq...)
				return err
			})
			inSet, setErr := nl.IpsetTest(MasqSetName, member)
			w.checks.Add(1)
			if err != nil || setErr != nil || !jumpOK || !masqOK || !inSet {
				w.misses.Add(1)
				w.firstMiss.CompareAndSwap(nil, [5]any{err, setErr, jumpOK, masqOK, inSet})
			}
		}
	}()
	t.Cleanup(w.finish)
	return w
}

func (w *watcher) finish() {
	select {
	case <-w.stop:
	default:
		close(w.stop)
	}
	<-w.done
}

func (w *watcher) verify(t *testing.T) {
	t.Helper()
	w.finish()
	if w.checks.Load() < 10 {
		t.Fatalf("watcher made only %d checks", w.checks.Load())
	}
	if m := w.misses.Load(); m > 0 {
		t.Fatalf("the MASQUERADE path was missing in %d of %d checks; first (err, set err, jump, masq, member): %v",
			m, w.checks.Load(), w.firstMiss.Load())
	}
	t.Logf("watcher: rule and member present in all %d checks", w.checks.Load())
}

// args splits a rule spec into iptables arguments (tabby's specs quote only comments
// without spaces).
func args(spec string) []string {
	f := strings.Fields(spec)
	for i := range f {
		f[i] = strings.Trim(f[i], `"`)
	}
	return f
}

func TestMasqueradeNeverMissingDuringUpdates(t *testing.T) {
	forEachBackend(t, func(t *testing.T, mode string) {
		ns := netnstest.New(t, "natwatch")
		n, _ := startNAT(t, ns, mode, testInterval)
		n.Set(masqDesired)
		waitSynced(t, n)
		w := startWatcher(t, ns, mode, "10.244.0.0/16")
		steps := []Desired{
			{MasqPools: prefixes("10.244.0.0/16", "10.251.0.0/16"), AllPools: prefixes("10.244.0.0/16", "10.250.0.0/16", "10.251.0.0/16"), TunnelDevices: []string{IPIPDevice}},
			{MasqPools: prefixes("10.244.0.0/16"), AllPools: prefixes("10.244.0.0/16", "10.251.0.0/16", "10.252.0.0/24")},
			{MasqPools: prefixes("10.244.0.0/16", "10.252.0.0/24"), AllPools: prefixes("10.244.0.0/16", "10.252.0.0/24"), TunnelDevices: []string{VXLANDevice}},
			masqDesired,
		}
		for i, d := range steps {
			n.Set(d)
			want, _ := d.normalize()
			eventually(t, "step to apply", func() bool {
				return slices.Equal(setMembers(t, ns, AllSetName), prefixStrings(want.AllPools)) &&
					slices.Equal(setMembers(t, ns, MasqSetName), prefixStrings(want.MasqPools)) &&
					strings.Count(saveTable(t, ns, mode, tableNAT), "--limit-iface-out") == len(want.TunnelDevices)
			})
			if i == 1 {
				// Something inserts a rule before tabby's jump: it is moved back first,
				// in one transaction, while the watcher looks.
				ns.Run(t, "iptables-"+mode, "-t", "nat", "-I", "POSTROUTING", "1", "-s", "172.17.0.0/16", "!", "-o", "docker0", "-j", "MASQUERADE")
				eventually(t, "the jump to be first again", func() bool {
					return strings.Contains(saveTable(t, ns, mode, tableNAT),
						"-A POSTROUTING -m comment --comment \"tabby:iGbhfgtguXJX7HLq\" -j tabby-POSTROUTING\n-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE\n")
				})
			}
		}
		w.verify(t)
	})
}

func prefixStrings(ps []netip.Prefix) []string {
	out := make([]string, 0, len(ps))
	for _, p := range ps {
		out = append(out, p.String())
	}
	return out
}

func TestRestoresWhatOthersRemove(t *testing.T) {
	forEachBackend(t, func(t *testing.T, mode string) {
		ns := netnstest.New(t, "natrepair")
		n, _ := startNAT(t, ns, mode, testInterval)
		n.Set(masqDesired)
		waitSynced(t, n)
		golden := readGolden(t, "nat-masq.golden")
		nat := natTable(masqDesired, features{randomFully: true})
		ipt := "iptables-" + mode
		tamper := []struct {
			what string
			cmd  []string
		}{
			{"delete the jump", append([]string{ipt, "-t", "nat", "-D", "POSTROUTING"}, args(nat.hooks[0].rule.spec)...)},
			{"delete the MASQUERADE rule", append([]string{ipt, "-t", "nat", "-D", ChainNATOutgoing}, args(nat.chains[1].rules[0].spec)...)},
			{"flush tabby-POSTROUTING", []string{ipt, "-t", "nat", "-F", ChainPostrouting}},
			{"flush the nat table", []string{ipt, "-t", "nat", "-F"}},
			{"flush the masquerade set", []string{"ipset", "flush", MasqSetName}},
			{"flush the set of all pools", []string{"ipset", "flush", AllSetName}},
		}
		for _, tc := range tamper {
			before := n.Status().Repairs
			ns.Run(t, tc.cmd...)
			// Status is updated just after the kernel is, hence Repairs in the condition.
			eventually(t, "repair after: "+tc.what, func() bool {
				return n.Status().Repairs > before &&
					saveTable(t, ns, mode, tableNAT) == golden &&
					slices.Equal(setMembers(t, ns, MasqSetName), []string{"10.244.0.0/16"}) &&
					slices.Equal(setMembers(t, ns, AllSetName), []string{"10.244.0.0/16", "10.250.0.0/16"})
			})
		}
	})
}

func TestRestartAdoptsWithoutFlushing(t *testing.T) {
	forEachBackend(t, func(t *testing.T, mode string) {
		ns := netnstest.New(t, "natrestart")
		first, stopFirst := startNAT(t, ns, mode, testInterval)
		first.Set(masqDesired)
		waitSynced(t, first)
		stopFirst()
		installed := saveTable(t, ns, mode, tableNAT)

		w := startWatcher(t, ns, mode, "10.244.0.0/16")
		second, _ := startNAT(t, ns, mode, testInterval)
		// Until it is told what it wants, the new reconciler changes nothing, however many
		// periodic checks go by.
		waitChecks(t, second, 5)
		if got := saveTable(t, ns, mode, tableNAT); got != installed || second.Synced() {
			t.Fatalf("reconciler acted before Set:\n%s", got)
		}
		second.Set(masqDesired)
		waitSynced(t, second)
		waitChecks(t, second, 3) // a few periodic checks on the adopted state
		if st := second.Status(); st.Changes != 0 {
			t.Errorf("adopting the previous run's state made %d changes", st.Changes)
		}
		if got := saveTable(t, ns, mode, tableNAT); got != installed {
			t.Errorf("state changed across the restart:\n%s\nwas:\n%s", got, installed)
		}
		w.verify(t)
	})
}

func TestCleanupRemovesOnlyTabby(t *testing.T) {
	forEachBackend(t, func(t *testing.T, mode string) {
		ns := netnstest.New(t, "natclean")
		ipt := "iptables-" + mode
		foreign := []string{"-s", "172.17.0.0/16", "!", "-o", "docker0", "-j", "MASQUERADE"}
		ns.Run(t, append([]string{ipt, "-t", "nat", "-A", "POSTROUTING"}, foreign...)...)
		ns.Run(t, ipt, "-t", "nat", "-N", "DOCKER")
		ns.Run(t, ipt, "-P", "FORWARD", "DROP")
		ns.Run(t, "ipset", "create", "docker-set", "hash:ip")
		n, stop := startNAT(t, ns, mode, testInterval)
		n.Set(masqDesired)
		waitSynced(t, n)
		eventually(t, "tabby-FORWARD", func() bool { return n.Status().ForwardAccept })
		if post := saveTable(t, ns, mode, tableNAT); !strings.Contains(post, "-j tabby-POSTROUTING\n-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE\n") {
			t.Fatalf("tabby's jump is not first, before the foreign rule:\n%s", post)
		}
		stop()

		if err := Cleanup(context.Background(), Options{Backend: mode, NetNSPath: ns.Path(), Logger: testLogger(t)}); err != nil {
			t.Fatal(err)
		}
		nat, filter := saveTable(t, ns, mode, tableNAT), saveTable(t, ns, mode, tableFilter)
		if strings.Contains(nat+filter, "tabby") {
			t.Errorf("tabby left something:\n%s%s", nat, filter)
		}
		if !strings.Contains(nat, "-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE\n") || !strings.Contains(nat, ":DOCKER - ") {
			t.Errorf("foreign rule or chain gone:\n%s", nat)
		}
		if !strings.Contains(filter, ":FORWARD DROP") {
			t.Errorf("FORWARD policy changed:\n%s", filter)
		}
		sets := strings.Fields(ns.Run(t, "ipset", "list", "-n"))
		if !slices.Equal(sets, []string{"docker-set"}) {
			t.Errorf("ipsets after cleanup: %q", sets)
		}
		// Cleanup on a clean host is a no-op, not an error.
		if err := Cleanup(context.Background(), Options{Backend: mode, NetNSPath: ns.Path(), Logger: testLogger(t)}); err != nil {
			t.Errorf("second cleanup: %v", err)
		}
	})
}

// TestAutoBackendFollowsTheHost: with no rules anywhere, auto follows the iptables command;
// once the legacy tables hold rules (as on a host whose docker uses iptables-legacy), it
// picks legacy.
func TestAutoBackendFollowsTheHost(t *testing.T) {
	requireRoot(t)
	requireBackend(t, BackendNFT)
	requireBackend(t, BackendLegacy)
	ns := netnstest.New(t, "natauto")
	r := nsRunner(t, ns)
	ctx := context.Background()
	b, reason, err := selectBackend(ctx, r, BackendAuto)
	if err != nil {
		t.Fatal(err)
	}
	if want := defaultMode(ctx, "iptables"); b.mode != want {
		t.Errorf("fresh namespace: auto chose %s (%s), the iptables command is %s", b.mode, reason, want)
	}
	ns.Run(t, "iptables-legacy", "-t", "filter", "-A", "INPUT", "-s", "192.0.2.1", "-j", "ACCEPT")
	if b, reason, err = selectBackend(ctx, r, BackendAuto); err != nil || b.mode != BackendLegacy {
		t.Errorf("legacy holds rules: auto chose %v (%s, %v)", b, reason, err)
	}
	ns.Run(t, "iptables-nft", "-t", "filter", "-A", "INPUT", "-s", "192.0.2.1", "-j", "ACCEPT")
	ns.Run(t, "iptables-nft", "-t", "filter", "-A", "INPUT", "-s", "192.0.2.2", "-j", "ACCEPT")
	if b, reason, err = selectBackend(ctx, r, BackendAuto); err != nil || b.mode != BackendNFT {
		t.Errorf("nft holds more rules: auto chose %v (%s, %v)", b, reason, err)
	}
	if _, _, err := selectBackend(ctx, r, "nftables"); err == nil {
		t.Error("an unknown backend name was accepted")
	}
}

// TestRecoversFromFailures: what blocks a sync is reported and retried until it clears, and
// a leftover that cannot be removed does not hold back the wanted rules.
func TestRecoversFromFailures(t *testing.T) {
	forEachBackend(t, func(t *testing.T, mode string) {
		ns := netnstest.New(t, "natfail")
		ipt := "iptables-" + mode
		// Someone else's set of the wrong type under tabby's name, in use by their rule: it
		// can be neither swapped nor destroyed, so the sync fails.
		ns.Run(t, "ipset", "create", AllSetName, "hash:ip")
		foreignUse := []string{"INPUT", "-m", "set", "--match-set", AllSetName, "src", "-j", "ACCEPT"}
		ns.Run(t, append([]string{ipt, "-t", "filter", "-I"}, foreignUse...)...)
		// A leftover tabby chain that another rule still jumps to.
		ns.Run(t, ipt, "-t", "nat", "-N", "tabby-old")
		ns.Run(t, ipt, "-t", "nat", "-A", "OUTPUT", "-j", "tabby-old")

		n, _ := startNAT(t, ns, mode, time.Hour) // no periodic checks: recovery is the retry's doing
		n.Set(masqDesired)
		eventually(t, "the failure to be reported", func() bool {
			return strings.Contains(n.Status().LastError, "cannot be swapped")
		})
		if n.Synced() {
			t.Fatal("synced although the set of all pools is unusable")
		}

		ns.Run(t, append([]string{ipt, "-t", "filter", "-D"}, foreignUse...)...)
		waitSynced(t, n)
		if got := setMembers(t, ns, AllSetName); !slices.Equal(got, []string{"10.244.0.0/16", "10.250.0.0/16"}) {
			t.Errorf("%s = %q", AllSetName, got)
		}
		nat := saveTable(t, ns, mode, tableNAT)
		if !strings.Contains(nat, "-A tabby-nat-outgoing -m comment") || !strings.Contains(nat, ":tabby-old") {
			t.Fatalf("want the MASQUERADE rule in place and the leftover kept:\n%s", nat)
		}
		if st := n.Status(); !strings.Contains(st.Warning, "tabby-old") || st.LastError != "" {
			t.Errorf("status %+v: want a warning about tabby-old and no error", st)
		}
	})
}
