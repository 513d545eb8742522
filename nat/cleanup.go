package nat

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Cleanup removes everything tabby's NAT installed in the namespace opts names (for `tabbyd
// cleanup`): the jumps and any other rule with a tabby comment in others' chains, every
// tabby- chain, and the ipsets, in that order (the kernel keeps a set while a rule uses it).
// Both iptables backends are cleaned, since a change of dataplane.iptablesBackend may have
// left rules in the other; a failure to read the backend the host does not use is only
// logged. Rules and chains of others are left as they are.
func Cleanup(ctx context.Context, opts Options) error {
	o, err := opts.withDefaults()
	if err != nil {
		return err
	}
	log := o.Logger.With("subsystem", "nat")
	ns, err := openNetNS(o.NetNSPath)
	if err != nil {
		return err
	}
	defer ns.Close()
	r := runner{ns: ns}
	var errs []error
	primary, _, err := selectBackend(ctx, r, o.Backend)
	if err != nil {
		errs = append(errs, err) // still remove the ipsets below
	}
	for _, mode := range []string{BackendNFT, BackendLegacy} {
		if primary == nil {
			break
		}
		b := primary
		if mode != primary.mode {
			if b, err = findBackend(ctx, mode); err != nil {
				continue // not installed: nothing of tabby's can be in it
			}
		}
		if err := cleanBackend(ctx, r, b, log); err != nil {
			if b == primary {
				errs = append(errs, err)
			} else {
				log.Warn("could not clean the other iptables backend", "backend", mode, "err", err)
			}
		}
	}
	nl, err := netlink.NewHandleAt(ns, unix.NETLINK_NETFILTER)
	if err != nil {
		return errors.Join(append(errs, fmt.Errorf("netlink netfilter socket: %w", err))...)
	}
	defer nl.Close()
	if err := destroySets(nl); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

func cleanBackend(ctx context.Context, r runner, b *backend, log *slog.Logger) error {
	tables, err := b.saveAll(ctx, r)
	if err != nil {
		return fmt.Errorf("read iptables (%s): %w", b.mode, err)
	}
	var plans []plan
	for name, cur := range tables {
		plans = append(plans, planTable(cur, tableSpec{table: name})) // wanting nothing: all of tabby's goes
	}
	made, sweepErr, err := applyPlans(ctx, b, r, plans)
	for _, c := range made {
		log.Info("cleanup", "backend", b.mode, "change", c)
	}
	if err = errors.Join(err, sweepErr); err != nil {
		return fmt.Errorf("remove tabby's iptables rules (%s): %w", b.mode, err)
	}
	return nil
}
