package nat

import (
	"context"
	"fmt"
	"strings"
)

// syncer holds what the reconciler learned about the host across syncs.
type syncer struct {
	runner        runner
	ipsets        ipsetKernel
	backendWanted string

	backend       *backend // nil until detected
	backendReason string
	features      features
	featureNote   string
}

type syncResult struct {
	changes       []string
	backend       *backend
	backendReason string
	features      features
	featureNote   string
	detected      bool // the backend was selected in this sync
	forwardAccept bool
	// warning is a problem that does not keep the wanted state from being in place.
	warning string
}

// sync makes the kernel match d: the ipsets first (the rules refer to them), then the
// iptables tables (see applyPlans).
func (s *syncer) sync(ctx context.Context, d Desired) (syncResult, error) {
	var res syncResult
	if s.backend == nil {
		b, reason, err := selectBackend(ctx, s.runner, s.backendWanted)
		if err != nil {
			return res, err
		}
		f, note, err := b.probeFeatures(ctx, s.runner)
		if err != nil {
			return res, fmt.Errorf("probe iptables features: %w", err)
		}
		s.backend, s.backendReason, s.features, s.featureNote = b, reason, f, note
		res.detected = true
	}
	res.backend, res.backendReason, res.features, res.featureNote = s.backend, s.backendReason, s.features, s.featureNote

	changes, err := syncSets(s.ipsets, d)
	res.changes = append(res.changes, changes...)
	if err != nil {
		return res, err
	}

	tables, err := s.backend.saveAll(ctx, s.runner)
	if err != nil {
		return res, fmt.Errorf("read iptables: %w", err)
	}
	res.forwardAccept = forwardDrops(tables[tableFilter])
	var plans []plan
	for _, want := range []tableSpec{natTable(d, s.features), filterTable(res.forwardAccept)} {
		plans = append(plans, planTable(tables[want.table], want))
	}
	changes, sweepErr, err := applyPlans(ctx, s.backend, s.runner, plans)
	res.changes = append(res.changes, changes...)
	if sweepErr != nil {
		res.warning = "leftover tabby chains could not be removed: " + sweepErr.Error()
	}
	return res, err
}

// applyPlans runs the main transactions of all tables in one iptables-restore, then the
// sweeps in another, and returns the changes made. A failed sweep is reported apart
// (sweepErr): the wanted rules are in place by then.
func applyPlans(ctx context.Context, b *backend, r runner, plans []plan) (made []string, sweepErr, err error) {
	for n, phase := range []func(*plan) transaction{
		func(p *plan) transaction { return p.main },
		func(p *plan) transaction { return p.sweep },
	} {
		var script strings.Builder
		var changes []string
		for i := range plans {
			p := &plans[i]
			script.WriteString(p.script(phase(p)))
			for _, c := range phase(p).changes {
				changes = append(changes, p.table+": "+c)
			}
		}
		if script.Len() == 0 {
			continue
		}
		if err := b.restore(ctx, r, script.String()); err != nil {
			err = fmt.Errorf("apply iptables changes (%s): %w", strings.Join(changes, "; "), err)
			if n == 0 {
				return made, nil, err
			}
			return made, err, nil
		}
		made = append(made, changes...)
	}
	return made, nil, nil
}

// forwardDrops reports whether the filter table's FORWARD chain drops what no rule accepts.
// A filter table that does not exist accepts everything.
func forwardDrops(filter *tableState) bool {
	return filter != nil && filter.policies["FORWARD"] == "DROP"
}
