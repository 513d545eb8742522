package main

import (
	"context"
	"fmt"
)

// cmdDel unplugs a workload and frees its address. It is idempotent: a netns that is gone,
// a veth that is missing and a handle IPAM does not know are all success, because the
// runtime may call DEL any number of times, also for an ADD that never completed.
//
// The veth goes first, then the address: the other way round, a new workload could get
// the address while the old /32 route still points at this veth. An unreachable etcd is
// an error (after the veth is gone), so the runtime retries and the address is not leaked.
func cmdDel(ctx context.Context, inv *invocation) error {
	args, cfg, log := inv.Args, inv.Cfg, inv.Log
	return underHostLock(ctx, cfg, log, func(book *addressBook) error {
		deleted, err := tearDownWorkload(args.ContainerID)
		if err != nil {
			return fmt.Errorf("delete veth %s: %w", hostVethName(args.ContainerID), err)
		}
		if deleted {
			log.Info("deleted veth", "veth", hostVethName(args.ContainerID))
		} else {
			log.Info("no veth to delete", "veth", hostVethName(args.ContainerID))
		}
		if err := book.release(ctx, inv.handle()); err != nil {
			return err
		}
		log.Info("released address", "handle", inv.handle())
		return nil
	})
}
