// Command tabby-cni is tabby's CNI 1.0 plugin, network and IPAM in one binary (SPEC §8). ADD
// takes an address from the shared pool in etcd and plugs the workload's network namespace
// into the host the way Calico does: a veth whose host side answers ARP for 169.254.1.1,
// a /32 on the container side, and a /32 route towards it on the host. tabbyd routes those
// addresses between hosts.
//
// stdout belongs to the CNI protocol (the result or the error object); logs go to stderr,
// or to log_file.
package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/version"

	buildversion "github.com/tabby-net/tabby/internal/version"
)

// commandTimeout bounds one command. Runtimes have their own deadlines (often minutes);
// this one makes sure the plugin reports an error itself rather than being killed silently.
const commandTimeout = 60 * time.Second

// rollbackTimeout bounds the undo of a failed ADD; it runs even when the command's own
// deadline has passed.
const rollbackTimeout = 20 * time.Second

func main() {
	skel.PluginMainFuncs(skel.CNIFuncs{
		Add:    func(args *skel.CmdArgs) error { return run(args, "ADD", cmdAdd) },
		Del:    func(args *skel.CmdArgs) error { return run(args, "DEL", cmdDel) },
		Check:  func(args *skel.CmdArgs) error { return run(args, "CHECK", cmdCheck) },
		Status: func(args *skel.CmdArgs) error { return run(args, "STATUS", cmdStatus) },
	},
		// skel answers VERSION and refuses configurations older than 0.3.0 with it.
		version.VersionsStartingFrom("0.3.0"),
		fmt.Sprintf("tabby-cni %s: Calico-style routed workloads for tabby", buildversion.Version))
}

// invocation is one command of the plugin with everything it works with.
type invocation struct {
	Args *skel.CmdArgs
	Cfg  *config
	Log  *slog.Logger
}

// handle is the IPAM handle of the workload, "<network>.<containerID>" as Calico names it.
func (inv *invocation) handle() string { return inv.Cfg.Network + "." + inv.Args.ContainerID }

// run loads the configuration, sets up logging, runs one command with a deadline and turns
// its error into a CNI error object.
func run(args *skel.CmdArgs, command string, fn func(context.Context, *invocation) error) error {
	cfg, err := loadConfig(args.StdinData, hostEnvironment())
	if err != nil {
		return toCNIError(err)
	}
	log, closeLog, err := newLogger(cfg)
	if err != nil {
		return toCNIError(err)
	}
	defer closeLog.Close()
	log = log.With("cmd", command, "container", args.ContainerID, "netns", args.Netns, "ifname", args.IfName)

	ctx, cancel := context.WithTimeout(context.Background(), commandTimeout)
	defer cancel()
	start := time.Now()
	err = fn(ctx, &invocation{Args: args, Cfg: cfg, Log: log})
	if err != nil {
		log.Error("command failed", "err", err, "took", time.Since(start))
		return toCNIError(err)
	}
	log.Info("command done", "took", time.Since(start))
	return nil
}

// newLogger writes to log_file when one is configured, else to stderr; never to stdout,
// which carries the CNI result.
func newLogger(cfg *config) (*slog.Logger, io.Closer, error) {
	opts := &slog.HandlerOptions{Level: cfg.LogLevel}
	if cfg.LogFile == "" {
		return slog.New(slog.NewTextHandler(os.Stderr, opts)), io.NopCloser(nil), nil
	}
	if err := os.MkdirAll(filepath.Dir(cfg.LogFile), 0o755); err != nil {
		return nil, nil, badKey("log_file", "%v", err)
	}
	f, err := os.OpenFile(cfg.LogFile, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
	if err != nil {
		return nil, nil, badKey("log_file", "%v", err)
	}
	return slog.New(slog.NewTextHandler(f, opts)), f, nil
}
