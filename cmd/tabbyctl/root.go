package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/viper"

	"github.com/tabby-net/tabby/datastore"
	"github.com/tabby-net/tabby/internal/version"
)

// Where tabbyctl finds etcd when nothing else says (SPEC §11).
const (
	defaultConfigFile = "/etc/tabby/tabbyctl.yaml"
	defaultEndpoint   = "http://127.0.0.1:2379"
	defaultSocket     = "/run/tabby/tabbyd.sock"
)

// globalOptions are the settings every command shares: how to reach etcd and the local
// tabbyd. Commands read them through client() and socketPath(), after the flags are
// parsed.
//
// Adding a command: write newXxxCmd(opts *globalOptions) *cobra.Command in its own file
// (use newGroupCommand for a command that only holds subcommands, and usageArgs for its
// argument rules), and add one root.AddCommand line in newRootCommand.
type globalOptions struct {
	configFile string
	endpoints  []string
	socket     string
	timeout    time.Duration
}

// configKeys are the keys tabbyctl.yaml may hold (viper lowercases them).
var configKeys = []string{
	"etcd.endpoints", "etcd.cafile", "etcd.certfile", "etcd.keyfile",
	"etcd.username", "etcd.password", "etcd.prefix",
}

// etcdConfig resolves the etcd settings: --endpoints, then TABBY_ETCD_* variables, then the
// configuration file (--config, or /etc/tabby/tabbyctl.yaml when it exists), then the
// default endpoint. A bad setting is a usage error naming it.
func (o *globalOptions) etcdConfig() (datastore.Config, error) {
	v := viper.New()
	v.SetEnvPrefix("TABBY")
	v.SetEnvKeyReplacer(strings.NewReplacer(".", "_"))
	v.AutomaticEnv()
	file, explicit := o.configFile, o.configFile != ""
	if !explicit {
		file = defaultConfigFile
	}
	v.SetConfigFile(file)
	v.SetConfigType("yaml")
	if err := v.ReadInConfig(); err != nil {
		if explicit || !errors.Is(err, fs.ErrNotExist) {
			return datastore.Config{}, usageErrorf("configuration file %s: %v", file, err)
		}
	} else {
		for _, k := range v.AllKeys() {
			if !slices.Contains(configKeys, k) {
				return datastore.Config{}, usageErrorf("configuration file %s: unknown key %q (known: %s)", file, k, strings.Join(configKeys, ", "))
			}
		}
	}
	endpoints, fromFlag := splitList(o.endpoints), true
	if len(endpoints) == 0 {
		endpoints, fromFlag = splitList(v.GetStringSlice("etcd.endpoints")), false
	}
	if len(endpoints) == 0 {
		endpoints = []string{defaultEndpoint}
	}
	cfg := datastore.Config{
		Endpoints:   endpoints,
		CAFile:      v.GetString("etcd.caFile"),
		CertFile:    v.GetString("etcd.certFile"),
		KeyFile:     v.GetString("etcd.keyFile"),
		Username:    v.GetString("etcd.username"),
		Password:    v.GetString("etcd.password"),
		Prefix:      v.GetString("etcd.prefix"),
		DialTimeout: 5 * time.Second,
	}
	if err := cfg.Validate(); err != nil {
		var ce *datastore.ConfigError
		if errors.As(err, &ce) && ce.Key == datastore.KeyEndpoints && fromFlag {
			return datastore.Config{}, usageErrorf("--endpoints: %s", ce.Problem)
		}
		return datastore.Config{}, usageErrorf("%v", err)
	}
	return cfg, nil
}

// splitList splits comma-separated entries ("a,b" from an environment variable or a flag).
func splitList(in []string) []string {
	var out []string
	for _, s := range in {
		for part := range strings.SplitSeq(s, ",") {
			if part = strings.TrimSpace(part); part != "" {
				out = append(out, part)
			}
		}
	}
	return out
}

// client connects to etcd. The caller closes it.
func (o *globalOptions) client() (*datastore.Client, error) {
	cfg, err := o.etcdConfig()
	if err != nil {
		return nil, err
	}
	return datastore.New(cfg)
}

// connect opens the datastore for one command and bounds the command's work by --timeout;
// release closes the connection and releases the context.
func (o *globalOptions) connect(cmd *cobra.Command) (context.Context, *datastore.Client, func(), error) {
	c, err := o.client()
	if err != nil {
		return nil, nil, nil, err
	}
	ctx, cancel := context.WithTimeout(cmd.Context(), o.timeout)
	return ctx, c, func() { cancel(); c.Close() }, nil
}

// socketPath is the local tabbyd's status socket.
func (o *globalOptions) socketPath() string { return o.socket }

// newRootCommand builds the whole command tree around opts, which the flags fill in.
func newRootCommand(opts *globalOptions) *cobra.Command {
	root := &cobra.Command{
		Use:   "tabbyctl",
		Short: "manage tabby: IP pools, BGP, nodes and IPAM in etcd, the way calicoctl manages Calico",
		Long: `tabbyctl manages tabby's resources (IPPool, BGPConfiguration, BGPPeer, Node) in etcd,
stored as Calico stores them, so Calico's manifests apply unchanged.

etcd is found through --endpoints, the TABBY_ETCD_ENDPOINTS variable (and TABBY_ETCD_CAFILE,
_CERTFILE, _KEYFILE, _USERNAME, _PASSWORD, _PREFIX), or /etc/tabby/tabbyctl.yaml (keys
etcd.endpoints, etcd.caFile, etcd.certFile, etcd.keyFile, etcd.username, etcd.password,
etcd.prefix), in that order; the default is ` + defaultEndpoint + `.`,
		Version:       version.Version,
		SilenceErrors: true,
		SilenceUsage:  true,
		Args:          cobra.ArbitraryArgs,
		// Runs only when no subcommand matched: an unknown command is a usage error.
		RunE: func(cmd *cobra.Command, args []string) error { return unknownSubcommand(cmd, args) },
	}
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	flags := root.PersistentFlags()
	flags.StringVar(&opts.configFile, "config", "", "configuration file (default "+defaultConfigFile+" when it exists)")
	flags.StringSliceVar(&opts.endpoints, "endpoints", nil, "etcd endpoints, comma-separated (default $TABBY_ETCD_ENDPOINTS, etcd.endpoints, "+defaultEndpoint+")")
	flags.StringVar(&opts.socket, "socket", defaultSocket, "the local tabbyd's status socket")
	flags.DurationVar(&opts.timeout, "timeout", 30*time.Second, "give up on etcd after this long")

	root.AddCommand(newApplyCmd(opts))
	root.AddCommand(newCreateCmd(opts))
	root.AddCommand(newReplaceCmd(opts))
	root.AddCommand(newDeleteCmd(opts))
	root.AddCommand(newGetCmd(opts))
	root.AddCommand(newPatchCmd(opts))
	root.AddCommand(newLabelCmd(opts))
	root.AddCommand(newIPAMCmd(opts))
	root.AddCommand(newNodeCmd(opts))
	root.AddCommand(newVersionCmd())
	return root
}

// newGroupCommand returns a command that only holds subcommands (such as "node" or
// "ipam"): run alone or with an unknown subcommand, it is a usage error.
func newGroupCommand(use, short string, subcommands ...*cobra.Command) *cobra.Command {
	cmd := &cobra.Command{
		Use:   use,
		Short: short,
		Args:  cobra.ArbitraryArgs,
		RunE:  unknownSubcommand,
	}
	cmd.AddCommand(subcommands...)
	return cmd
}

func unknownSubcommand(cmd *cobra.Command, args []string) error {
	if len(args) == 0 {
		return usageErrorf("%s needs a command; see %s --help", cmd.CommandPath(), cmd.CommandPath())
	}
	msg := fmt.Sprintf("unknown command %q for %q", args[0], cmd.CommandPath())
	if cmd.SuggestionsMinimumDistance <= 0 {
		cmd.SuggestionsMinimumDistance = 2
	}
	if s := cmd.SuggestionsFor(args[0]); len(s) > 0 {
		msg += fmt.Sprintf(" (did you mean %s?)", strings.Join(s, ", "))
	}
	return usageErrorf("%s", msg)
}

// usageArgs makes a cobra argument rule's errors usage errors (exit code 2).
func usageArgs(rule cobra.PositionalArgs) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if err := rule(cmd, args); err != nil {
			return usageError{err}
		}
		return nil
	}
}

// usageError is a command line that cannot be run as written: exit code 2.
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

func usageErrorf(format string, args ...any) error {
	return usageError{fmt.Errorf(format, args...)}
}

// errSilentFailure is returned by commands that have already written their failure: exit
// code 1 and nothing more to print.
var errSilentFailure = errors.New("failed")

// reportError prints a command's error and returns the exit code.
func reportError(cmd *cobra.Command, err error, stderr io.Writer) int {
	if err == nil {
		return 0
	}
	var usage usageError
	if errors.As(err, &usage) {
		fmt.Fprintf(stderr, "Error: %v\n", err)
		path := "tabbyctl"
		if cmd != nil {
			path = cmd.CommandPath()
		}
		fmt.Fprintf(stderr, "Run '%s --help' for usage.\n", path)
		return 2
	}
	if !errors.Is(err, errSilentFailure) {
		fmt.Fprintf(stderr, "Error: %v\n", err)
	}
	return 1
}

func newVersionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "print tabbyctl's version",
		Args:  usageArgs(cobra.NoArgs),
		Run: func(cmd *cobra.Command, _ []string) {
			fmt.Fprintf(cmd.OutOrStdout(), "tabbyctl %s\n", version.Version)
		},
	}
}
