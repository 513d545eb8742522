package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/spf13/cobra"

	"github.com/tabby-net/tabby/cmd/tabbyctl/internal/peertable"
	"github.com/tabby-net/tabby/internal/statusapi"
)

// statusTimeout bounds the wait for the local tabbyd's status socket.
const statusTimeout = 10 * time.Second

// newNodeCmd is `tabbyctl node`: questions to the local tabbyd about this node.
func newNodeCmd(opts *globalOptions) *cobra.Command {
	return newGroupCommand("node", "ask the local tabbyd about this node",
		newNodeStatusCmd(opts),
		newNodeDiagnoseCmd(opts),
	)
}

// newNodeStatusCmd is `tabbyctl node status` (SPEC §11): the local tabbyd's BGP peers,
// printed exactly as `calicoctl node status` prints BIRD's, so that what the articles show
// reads the same.
func newNodeStatusCmd(opts *globalOptions) *cobra.Command {
	return &cobra.Command{
		Use:   "status",
		Short: "show whether tabbyd runs and the state of its BGP sessions",
		Long: `Asks the local tabbyd (through --socket) for its BGP peers and prints them as
calicoctl node status does: peer address, type (node-to-node mesh, global, node specific),
state, since when, and why a session is not Established. Exits 1 when tabbyd is not running.`,
		Args: usageArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, cancel := context.WithTimeout(cmd.Context(), statusTimeout)
			defer cancel()
			st, err := statusapi.Fetch(ctx, opts.socketPath())
			if err != nil {
				if unreachable(err) {
					fmt.Fprintln(cmd.OutOrStdout(), "tabbyd is not running.")
					return errSilentFailure
				}
				return err
			}
			return peertable.Render(cmd.OutOrStdout(), st, time.Now())
		},
	}
}

// unreachable tells "nothing answers on the socket" (tabbyd is not running) from a
// daemon that answered badly.
func unreachable(err error) bool {
	var op *net.OpError
	return (errors.As(err, &op) && op.Op == "dial") || errors.Is(err, context.DeadlineExceeded)
}
