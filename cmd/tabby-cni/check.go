package main

import (
	"context"
	"fmt"
	"net/netip"

	current "github.com/containernetworking/cni/pkg/types/100"
)

// cmdCheck verifies that a workload is still as ADD left it: the allocation in IPAM, the
// container's interface, address and routes, the host veth, its MAC, sysctls and /32
// route. It reports every discrepancy it finds, not just the first.
func cmdCheck(ctx context.Context, inv *invocation) error {
	args, cfg, log := inv.Args, inv.Cfg, inv.Log
	return underHostLock(ctx, cfg, log, func(book *addressBook) error {
		var problems []string
		handle := inv.handle()
		allocated, ok, err := book.addressOf(ctx, handle)
		if err != nil {
			return err
		}
		if !ok {
			problems = append(problems, fmt.Sprintf("IPAM holds no address for handle %s", handle))
		}

		// The runtime hands over the ADD's result; it must agree with IPAM.
		addr := allocated
		if cfg.PrevResult != nil {
			prev, err := current.NewResultFromResult(cfg.PrevResult)
			if err != nil {
				return badKey("prevResult", "%v", err)
			}
			prevAddr, found := resultAddress(prev, args.IfName)
			switch {
			case !found:
				problems = append(problems, fmt.Sprintf("prevResult has no address for interface %s", args.IfName))
			case ok && prevAddr != allocated:
				problems = append(problems, fmt.Sprintf("prevResult says %s but IPAM holds %s for handle %s", prevAddr, allocated, handle))
			case !ok:
				addr = prevAddr
			}
		}

		if addr.IsValid() {
			found, err := checkWorkload(workload{ContainerID: args.ContainerID, Netns: args.Netns, IfName: args.IfName, Addr: addr})
			if err != nil {
				return err
			}
			problems = append(problems, found...)
		}
		if len(problems) > 0 {
			return &checkFailedError{ContainerID: args.ContainerID, Problems: problems}
		}
		log.Info("workload is intact", "address", addr)
		return nil
	})
}

// resultAddress finds the address a result gives the named container interface.
func resultAddress(r *current.Result, ifName string) (netip.Addr, bool) {
	for _, ip := range r.IPs {
		if ip.Interface == nil || *ip.Interface < 0 || *ip.Interface >= len(r.Interfaces) {
			continue
		}
		if iface := r.Interfaces[*ip.Interface]; iface.Name != ifName || iface.Sandbox == "" {
			continue
		}
		if a, ok := netip.AddrFromSlice(ip.Address.IP); ok {
			return a.Unmap(), true
		}
	}
	return netip.Addr{}, false
}
