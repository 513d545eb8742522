package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/vishvananda/netns"

	"github.com/tabby-net/tabby/datastore"
	"github.com/tabby-net/tabby/datastore/ipam"
)

// cmdAdd plugs a workload in: address from IPAM, veth pair, addresses and routes. Either
// all of it is in place when it returns nil, or none of it: every step taken is undone on
// failure, the address included.
func cmdAdd(ctx context.Context, inv *invocation) (err error) {
	args, cfg, log := inv.Args, inv.Cfg, inv.Log
	if err := checkContainerNetns(args.Netns); err != nil {
		return err
	}
	mtu, err := podMTU(cfg, log)
	if err != nil {
		return err
	}

	return underHostLock(ctx, cfg, log, func(book *addressBook) error {
		handle := inv.handle()
		addr, reused, err := book.assign(ctx, ipam.AssignArgs{
			Handle: handle,
			Node:   cfg.Nodename,
			Attrs: map[string]string{
				"container": args.ContainerID,
				"netns":     args.Netns,
				"interface": args.IfName,
				"network":   cfg.Network,
			},
			Use:       datastore.UseWorkload,
			Pools:     cfg.Pools,
			PoolNames: cfg.PoolNames,
		})
		if err != nil {
			return err
		}
		log = log.With("handle", handle, "address", addr)
		if reused {
			log.Info("the handle already holds an address; ADD repeated, reusing it")
		} else {
			log.Info("assigned address")
		}
		defer func() {
			if err == nil {
				return
			}
			// Also when the address was reused from an earlier ADD: its veth was rebuilt and is
			// now gone, so a failed ADD leaves nothing of the container behind, and the
			// runtime's next ADD starts clean. The command's context may be what failed; the
			// undo gets its own.
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), rollbackTimeout)
			defer cancel()
			if rerr := book.release(rctx, handle); rerr != nil {
				log.Error("rollback: cannot release address", "err", rerr)
				err = fmt.Errorf("%w (and rollback failed: %v)", err, rerr)
				return
			}
			log.Info("rollback: released address")
		}()

		w := workload{ContainerID: args.ContainerID, Netns: args.Netns, IfName: args.IfName, Addr: addr, MTU: mtu}
		p, err := setUpWorkload(w, log)
		if err != nil {
			return fmt.Errorf("plumb %s into %s: %w", addr, args.Netns, err)
		}

		result := addResult(w, p)
		if err := types.PrintResult(result, cfg.CNIVersion); err != nil {
			if _, terr := tearDownWorkload(args.ContainerID); terr != nil {
				log.Error("rollback: cannot delete veth", "err", terr)
			}
			return fmt.Errorf("print result: %w", err)
		}
		log.Info("workload plugged in", "veth", p.HostVeth, "mtu", mtu)
		return nil
	})
}

// addResult is the CNI 1.0 result: both ends of the veth, the /32 on the container side
// with 169.254.1.1 as its gateway, and the default route through it.
func addResult(w workload, p plumbed) *current.Result {
	gw := net.IP(gatewayAddr.AsSlice())
	return &current.Result{
		CNIVersion: current.ImplementedSpecVersion,
		Interfaces: []*current.Interface{
			{Name: p.HostVeth, Mac: p.HostMAC.String(), Mtu: w.MTU},
			{Name: w.IfName, Mac: p.ContainerMAC.String(), Mtu: w.MTU, Sandbox: w.Netns},
		},
		IPs: []*current.IPConfig{{
			Interface: current.Int(1), // index into Interfaces: the container side
			Address:   *prefixIPNet(w.addrPrefix()),
			Gateway:   gw,
		}},
		Routes: []*types.Route{{Dst: *prefixIPNet(netip.MustParsePrefix("0.0.0.0/0")), GW: gw}},
	}
}

// checkContainerNetns refuses a CNI_NETNS that is not a network namespace, or that is the
// plugin's own: the workload's eth0 and routes would land on the host.
func checkContainerNetns(path string) error {
	if path == "" {
		return &netnsError{errors.New("CNI_NETNS is empty")}
	}
	target, err := netns.GetFromPath(path)
	if err != nil {
		return &netnsError{fmt.Errorf("container netns %s: %w", path, err)}
	}
	defer target.Close()
	self, err := netns.Get()
	if err != nil {
		return fmt.Errorf("the plugin's own netns: %w", err)
	}
	defer self.Close()
	if target.Equal(self) {
		return &netnsError{fmt.Errorf("container netns %s is the plugin's own network namespace", path)}
	}
	return nil
}
