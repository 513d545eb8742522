// Command tabbyd is tabby's per-host routing daemon (SPEC §1): `tabbyd run` (the default)
// keeps this host's routes, tunnels, NAT and BGP in line with etcd; `tabbyd cleanup` removes
// everything tabby installed on this host; `tabbyd version` prints the version.
//
// Exit codes: 0 success (also after SIGTERM/SIGINT), 1 runtime failure, 2 configuration or
// usage error.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/tabby-net/tabby/daemon"
	"github.com/tabby-net/tabby/internal/version"
)

// Exit codes.
const (
	exitOK      = 0
	exitFailure = 1
	exitUsage   = 2
)

// defaultGCPercent is tabbyd's GOGC when the environment sets none. Most of tabbyd's heap
// is the datastore snapshot, which lives as long as the process, and Go's default of 100
// lets the heap grow to twice that between collections: at 5,000 nodes that headroom alone
// took the resident memory over 60 MB. 75 keeps it near 55 MB (bench's BenchmarkMemory5000)
// with no measurable cost in propagation (BenchmarkPropagation1000) or start-up; and unlike a
// fixed memory limit it cannot make a much larger cluster's daemon collect without end.
const defaultGCPercent = 75

func main() {
	if _, set := os.LookupEnv("GOGC"); !set {
		debug.SetGCPercent(defaultGCPercent)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	code := execute(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// runtimeError marks an error that happened while a command ran, as opposed to the usage
// errors cobra reports before (unknown command, bad flag): those exit 2, these 1.
type runtimeError struct{ err error }

func (e runtimeError) Error() string { return e.err.Error() }
func (e runtimeError) Unwrap() error { return e.err }

// execute runs the command line and returns the process's exit code.
func execute(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	root := newRootCommand(stdout, stderr)
	root.SetArgs(args)
	err := root.ExecuteContext(ctx)
	if err == nil {
		return exitOK
	}
	fmt.Fprintln(stderr, "tabbyd:", err)
	var cfgErr *daemon.ConfigError
	var rtErr runtimeError
	switch {
	case errors.As(err, &cfgErr):
		return exitUsage
	case errors.As(err, &rtErr):
		return exitFailure
	default:
		return exitUsage
	}
}

func newRootCommand(stdout, stderr io.Writer) *cobra.Command {
	var rtProtosDir string
	runE := func(cmd *cobra.Command, _ []string) error {
		cfg, log, err := load(cmd, stderr)
		if err != nil {
			return err
		}
		opts := daemon.Options{RTProtosDir: rtProtosDir}
		if err := daemon.Run(cmd.Context(), cfg, log, opts); err != nil {
			var cfgErr *daemon.ConfigError
			if errors.As(err, &cfgErr) {
				return err
			}
			return runtimeError{err}
		}
		return nil
	}
	root := &cobra.Command{
		Use:           "tabbyd",
		Short:         "tabby's host routing daemon",
		Long:          "tabbyd gives workloads addresses from shared IP pools and routes them between hosts,\nwith etcd as the only shared state. Without a subcommand it runs the daemon.",
		SilenceErrors: true,
		SilenceUsage:  true,
		Args:          cobra.NoArgs,
		RunE:          runE,
	}
	root.SetOut(stdout)
	root.SetErr(stderr)
	daemon.AddFlags(root.PersistentFlags())
	root.Flags().StringVar(&rtProtosDir, "rt-protos-dir", daemon.DefaultRTProtosDir,
		"where the route protocol's name is registered (tests point it elsewhere)")
	root.Flags().MarkHidden("rt-protos-dir") //nolint:errcheck // the flag exists

	run := &cobra.Command{
		Use:   "run",
		Short: "run the daemon (the default)",
		Args:  cobra.NoArgs,
		RunE:  runE,
	}
	run.Flags().StringVar(&rtProtosDir, "rt-protos-dir", daemon.DefaultRTProtosDir,
		"where the route protocol's name is registered (tests point it elsewhere)")
	run.Flags().MarkHidden("rt-protos-dir") //nolint:errcheck // the flag exists

	cleanup := &cobra.Command{
		Use:   "cleanup",
		Short: "remove every route, device, ipset and chain tabby installed on this host",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, log, err := load(cmd, stderr)
			if err != nil {
				return err
			}
			if err := daemon.Cleanup(cmd.Context(), cfg, log, cmd.OutOrStdout()); err != nil {
				return runtimeError{err}
			}
			return nil
		},
	}

	versionCmd := &cobra.Command{
		Use:   "version",
		Short: "print the version",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			fmt.Fprintln(cmd.OutOrStdout(), "tabbyd", version.Version)
			return nil
		},
	}
	root.AddCommand(run, cleanup, versionCmd)
	return root
}

// load reads the configuration and sets up the logger it asks for.
func load(cmd *cobra.Command, stderr io.Writer) (*daemon.Config, *slog.Logger, error) {
	cfg, err := daemon.LoadConfig(daemon.LoadOptions{Flags: cmd.Flags()})
	if err != nil {
		return nil, nil, err
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: cfg.LogLevel}))
	return cfg, log, nil
}
