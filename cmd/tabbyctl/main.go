// Command tabbyctl is tabby's operator CLI, the counterpart of calicoctl: it applies and
// shows the resources in etcd (Calico's layout), manages IPAM, and asks the local tabbyd
// about its node.
//
// Exit codes: 0 success, 1 failure, 2 usage (unknown command or flag, missing argument,
// bad configuration).
package main

import (
	"context"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// run executes one tabbyctl command line and returns its exit code. Tests call it with
// their own arguments and streams.
func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	return execute(ctx, newRootCommand(&globalOptions{}), args, stdin, stdout, stderr)
}

// execute runs a command tree on one command line and returns the exit code.
func execute(ctx context.Context, root *cobra.Command, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	root.SetArgs(args)
	root.SetIn(stdin)
	root.SetOut(stdout)
	root.SetErr(stderr)
	cmd, err := root.ExecuteContextC(ctx)
	return reportError(cmd, err, stderr)
}
