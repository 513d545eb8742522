package routing

import (
	"context"
	"fmt"
	"slices"
)

// A pass is one attempt to bring the kernel to the desired state: it resyncs the record
// from the kernel when it is full, compiles the desired state into the wanted side of the
// keyed tables (compile.go), then adds and deletes in SPEC §5's order through the
// functions of each kind: devices (devices.go), neighbours and FDB entries
// (neighbors.go), routes (routes.go) and the nexthop objects they share (nexthops.go).

// passReport is what one reconciliation pass achieved.
type passReport struct {
	full     bool
	wanted   int
	failures int
	firstErr error
	problems []string
	// tunl0Wanted and vxlanWanted say which devices the applied state wants.
	tunl0Wanted, vxlanWanted bool
	// redoDevices: a device was recreated or found changed during the pass; look again.
	redoDevices bool
}

func (p *passReport) fail(err error) {
	p.failures++
	if p.firstErr == nil {
		p.firstErr = err
	}
}

func (p *passReport) problem(format string, args ...any) {
	p.problems = append(p.problems, fmt.Sprintf(format, args...))
}

// ctxCheckEvery is how many netlink requests a long loop makes between looks at its context.
const ctxCheckEvery = 1024

// pass makes one attempt to bring the kernel to want. The order is SPEC §5's: devices, then
// neighbours, FDB entries and routes are added, and only then is anything deleted (routes,
// then FDB entries, then neighbours, then devices). The record follows every successful
// operation, so after a partial failure it is the state really reached. Only keys that may
// differ are visited, unless the pass is full.
func (k *Kernel) pass(ctx context.Context, want *State, full bool) passReport {
	rep := passReport{full: full, wanted: len(want.Routes), tunl0Wanted: want.Tunl0 != nil, vxlanWanted: want.VXLAN != nil}
	k.pools = want.Pools
	k.routes.StartPass()
	k.neighs.StartPass()
	k.fdb.StartPass()
	k.installedWanted = 0
	if full {
		if err := k.resyncNexthops(); err != nil {
			rep.fail(err)
		}
		if err := k.resyncRoutes(want); err != nil {
			rep.fail(err)
		}
	}
	k.ensureDevices(&rep, want, full)
	if full {
		if err := k.resyncNeighbors(); err != nil {
			rep.fail(err)
		}
	}
	k.compile(&rep, want)
	neighsVisited := k.addNeighbors(&rep, want)
	k.addRoutes(ctx, &rep)
	if ctx.Err() != nil {
		return rep
	}
	// Leftovers of a previous run are swept only once everything wanted is in place.
	sweep := k.isSynced || rep.failures == 0
	k.deleteRoutes(ctx, &rep, sweep)
	k.deleteNexthops(&rep, sweep)
	neighsVisited = k.deleteNeighbors(&rep, want, sweep) && neighsVisited
	k.removeDevices(&rep, want, full)
	// Every dirty key was visited: what is left to do is what the pass handed on. The
	// neighbour and FDB tables keep their dirty keys when a phase skipped them (the
	// device is not ready, or deletes wait for the first full sync).
	k.routes.Settle()
	if neighsVisited {
		k.neighs.Settle()
		k.fdb.Settle()
	}
	k.reportProblems(&rep)
	slices.Sort(rep.problems)
	return rep
}

// reportProblems lists what the kernel side cannot do: routes waiting for a device the
// kernel has no driver for, and wanted routes left alone because another protocol holds
// them.
func (k *Kernel) reportProblems(rep *passReport) {
	waiting := map[string]int{}
	for _, dev := range k.want.keep {
		waiting[dev]++
	}
	if n := waiting[DeviceIPIP]; n > 0 && k.rec.ipip.unsupported {
		rep.problem("%v: %s via %s not installed", ErrNoIPIP, plural(n, "route"), DeviceIPIP)
	}
	if n := waiting[DeviceVXLAN]; n > 0 && k.rec.vxlan.unsupported {
		rep.problem("%v: %s via %s not installed", ErrNoVXLAN, plural(n, "route"), DeviceVXLAN)
	}
	var lines []string
	for key, proto := range k.rec.conflicts {
		if _, ok := k.routes.Wanted(key); ok {
			lines = append(lines, fmt.Sprintf("route %s left alone: the kernel holds it with protocol %d", key.prefix(), proto))
		}
	}
	slices.Sort(lines)
	const most = 10
	if len(lines) > most {
		lines = append(lines[:most], fmt.Sprintf("and %s more left alone for the same reason", plural(len(lines)-most, "route")))
	}
	rep.problems = append(rep.problems, lines...)
}

// forgetLink drops from the record what the kernel removed with a device: the routes
// through it, the nexthop objects on it and, for vxlan.tabby, its neighbours and FDB entries.
func (k *Kernel) forgetLink(index int) {
	if index == 0 {
		return
	}
	var gone map[uint32]bool
	for id, e := range k.rec.nexthops {
		if e.key.link == index {
			if gone == nil {
				gone = map[uint32]bool{}
			}
			gone[id] = true
		}
	}
	for key, r := range k.routes.AllInstalled() {
		if r.kr.link == index || gone[r.kr.nhid] {
			k.delRoute(key)
			k.routes.Mark(key)
		}
	}
	for id := range gone {
		k.rec.delNexthop(id)
	}
	if index == k.rec.vxlan.index {
		k.neighs.ForgetInstalled()
		k.fdb.ForgetInstalled()
	}
}

// plural writes "1 route", "2 routes".
func plural(n int, noun string) string {
	if n == 1 {
		return fmt.Sprintf("%d %s", n, noun)
	}
	return fmt.Sprintf("%d %ss", n, noun)
}
