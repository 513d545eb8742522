package nat

import (
	"context"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/tabby-net/tabby/internal/netnstest"
)

// BenchmarkPlanSteadyState is the pure part of a periodic check: parse iptables-save output
// and find nothing to do.
func BenchmarkPlanSteadyState(b *testing.B) {
	f := fakeTables{}
	for _, want := range []tableSpec{natTable(masqDesired, features{randomFully: true}), filterTable(true)} {
		f.apply(b, planTable(nil, want))
	}
	f[tableFilter].policies["FORWARD"] = "DROP" // docker's host: tabby-FORWARD is wanted
	save := f.save()
	for b.Loop() {
		tables, err := parseSave(save)
		if err != nil {
			b.Fatal(err)
		}
		for _, want := range []tableSpec{natTable(masqDesired, features{randomFully: true}), filterTable(forwardDrops(tables[tableFilter]))} {
			if p := planTable(tables[want.table], want); !p.empty() {
				b.Fatal("steady state planned changes")
			}
		}
	}
}

// newBenchSyncer is a syncer working in a fresh namespace, as Run builds it.
func newBenchSyncer(b *testing.B, mode string) *syncer {
	requireRoot(b)
	requireBackend(b, mode)
	ns := netnstest.New(b, "natbench")
	r := nsRunner(b, ns)
	nl, err := netlink.NewHandleAt(r.ns, unix.NETLINK_NETFILTER)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(nl.Close)
	return &syncer{runner: r, ipsets: nl, backendWanted: mode}
}

// BenchmarkSyncSteadyState is one periodic check of an unchanged host: read both ipsets and
// the tables, find nothing to change.
func BenchmarkSyncSteadyState(b *testing.B) {
	for _, mode := range backends {
		b.Run(mode, func(b *testing.B) {
			s := newBenchSyncer(b, mode)
			ctx := context.Background()
			if _, err := s.sync(ctx, masqDesired); err != nil {
				b.Fatal(err)
			}
			for b.Loop() {
				res, err := s.sync(ctx, masqDesired)
				if err != nil || len(res.changes) > 0 {
					b.Fatalf("steady state: %v %q", err, res.changes)
				}
			}
		})
	}
}

// BenchmarkSyncPoolChange is one update: a pool with natOutgoing comes or goes (two set
// members each way, no iptables change).
func BenchmarkSyncPoolChange(b *testing.B) {
	more := masqDesired
	more.MasqPools = prefixes("10.244.0.0/16", "10.251.0.0/16")
	more.AllPools = prefixes("10.244.0.0/16", "10.250.0.0/16", "10.251.0.0/16")
	for _, mode := range backends {
		b.Run(mode, func(b *testing.B) {
			s := newBenchSyncer(b, mode)
			ctx := context.Background()
			states := []Desired{masqDesired, more}
			i := 0
			for b.Loop() {
				if _, err := s.sync(ctx, states[i%2]); err != nil {
					b.Fatal(err)
				}
				i++
			}
		})
	}
}

// BenchmarkSyncToggleNATOutgoing is one update that changes iptables: natOutgoing on and off
// (one rule in, one rule out, in one iptables-restore transaction).
func BenchmarkSyncToggleNATOutgoing(b *testing.B) {
	off := masqDesired
	off.MasqPools = nil
	for _, mode := range backends {
		b.Run(mode, func(b *testing.B) {
			s := newBenchSyncer(b, mode)
			ctx := context.Background()
			states := []Desired{masqDesired, off}
			i := 0
			for b.Loop() {
				if _, err := s.sync(ctx, states[i%2]); err != nil {
					b.Fatal(err)
				}
				i++
			}
		})
	}
}
