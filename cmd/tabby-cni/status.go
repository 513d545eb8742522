package main

import (
	"context"

	"github.com/containernetworking/cni/pkg/types"
)

// cmdStatus answers CNI 1.1's STATUS: the plugin can serve ADD when its configuration is
// valid and etcd answers. Anything else is "plugin not available", so the runtime holds
// back new workloads instead of failing them one by one.
func cmdStatus(ctx context.Context, inv *invocation) error {
	book, err := openAddressBook(ctx, inv.Cfg, inv.Log)
	if err != nil {
		return types.NewError(types.ErrPluginNotAvailable, err.Error(), "")
	}
	return book.Close()
}
