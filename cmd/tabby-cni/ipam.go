package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"time"

	"github.com/tabby-net/tabby/datastore"
	"github.com/tabby-net/tabby/datastore/ipam"
)

// etcdProbeTimeout bounds the first request to etcd. The etcd client waits for a
// connection as long as its context allows; without this bound an unreachable etcd would
// only show up as the command's own deadline, a minute later and without saying why.
const etcdProbeTimeout = 5 * time.Second

// addressBook is the plugin's view of tabby's IPAM in etcd.
type addressBook struct {
	client *datastore.Client
	alloc  *ipam.Allocator
	log    *slog.Logger
}

// openAddressBook connects to etcd and makes sure it answers, so that every later failure
// is about IPAM and not about reaching the datastore.
func openAddressBook(ctx context.Context, cfg *config, log *slog.Logger) (*addressBook, error) {
	client, err := datastore.New(cfg.Etcd)
	if err != nil {
		return nil, &etcdUnreachableError{Endpoints: cfg.Etcd.Endpoints, Err: err}
	}
	probeCtx, cancel := context.WithTimeout(ctx, etcdProbeTimeout)
	defer cancel()
	if _, err := client.Get(probeCtx, client.Keys.IPAMConfig()); err != nil && !errors.Is(err, datastore.ErrNotFound) {
		client.Close()
		return nil, &etcdUnreachableError{Endpoints: cfg.Etcd.Endpoints, Err: unwrapDeadline(err)}
	}
	return &addressBook{client: client, alloc: ipam.New(client, log), log: log}, nil
}

// unwrapDeadline keeps the message short: the probe's "get <key>: context deadline
// exceeded" says less than "context deadline exceeded" after "etcd unreachable at ...".
func unwrapDeadline(err error) error {
	if errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("no answer within %s (%w)", etcdProbeTimeout, context.DeadlineExceeded)
	}
	return err
}

func (b *addressBook) Close() error { return b.client.Close() }

// addressOf returns the address held by a handle, if any. A handle holds at most one: the
// plugin only ever assigns one per workload.
func (b *addressBook) addressOf(ctx context.Context, handle string) (netip.Addr, bool, error) {
	ips, err := b.alloc.IPsByHandle(ctx, handle)
	if errors.Is(err, datastore.ErrNotFound) {
		return netip.Addr{}, false, nil
	}
	if err != nil {
		return netip.Addr{}, false, fmt.Errorf("IPAM: addresses of handle %s: %w", handle, err)
	}
	if len(ips) == 0 {
		return netip.Addr{}, false, nil
	}
	if len(ips) > 1 {
		b.log.Warn("handle holds more than one address; using the first", "handle", handle, "addresses", ips)
	}
	return ips[0], true, nil
}

// assign gives the workload an address: the one its handle already holds when the
// runtime repeats an ADD (as Calico does), else a new one from IPAM.
func (b *addressBook) assign(ctx context.Context, args ipam.AssignArgs) (addr netip.Addr, reused bool, err error) {
	addr, ok, err := b.addressOf(ctx, args.Handle)
	if err != nil {
		return netip.Addr{}, false, err
	}
	if ok {
		return addr, true, nil
	}
	addr, err = b.alloc.AssignOne(ctx, args)
	if err != nil {
		// AssignOne names the handle and the node.
		return netip.Addr{}, false, fmt.Errorf("IPAM: %w", err)
	}
	return addr, false, nil
}

// release frees whatever the handle holds; an unknown handle is not an error.
func (b *addressBook) release(ctx context.Context, handle string) error {
	if err := b.alloc.ReleaseByHandle(ctx, handle); err != nil {
		return fmt.Errorf("IPAM: release handle %s: %w", handle, err)
	}
	return nil
}
