// Command tabbylab builds the topology of the Calico articles out of network namespaces
// on one machine — four hosts in two subnets, a router, an outside host — with a real
// etcd, a tabbyd per host and workloads made by tabby-cni, and lets you switch modes,
// inject the failures the articles met on AWS, and look at routes and pings.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/tabby-net/tabby/datastore/etcdembed"
	"github.com/tabby-net/tabby/lab"
)

type options struct {
	prefix   string
	stateDir string
	binDir   string
}

func (o *options) cluster() *lab.Cluster {
	dir := o.stateDir
	if dir == "" {
		dir = filepath.Join("/run/tabbylab", o.prefix)
	}
	return lab.NewArticlesCluster(o.prefix, dir, o.binDir, os.Stdout)
}

// exitCode ends tabbylab with a code and no message of its own (ctl passes tabbyctl's on).
type exitCode int

func (e exitCode) Error() string { return fmt.Sprintf("exit code %d", int(e)) }

// usageError marks errors in how the command was called (exit code 2).
type usageError struct{ error }

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	err := newRoot().ExecuteContext(ctx)
	if err == nil {
		return
	}
	var code exitCode
	if errors.As(err, &code) {
		os.Exit(int(code))
	}
	fmt.Fprintln(os.Stderr, "tabbylab:", err)
	var ue usageError
	if errors.As(err, &ue) {
		os.Exit(2)
	}
	os.Exit(1)
}

func newRoot() *cobra.Command {
	o := &options{}
	root := &cobra.Command{
		Use:           "tabbylab",
		Short:         "The articles' Calico topology on one machine, run by tabby",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	root.PersistentFlags().StringVar(&o.prefix, "prefix", "tabbylab", "name prefix of the lab's network namespaces")
	root.PersistentFlags().StringVar(&o.stateDir, "state-dir", "", "where the lab keeps configs, logs and PIDs (default /run/tabbylab/<prefix>)")
	root.PersistentFlags().StringVar(&o.binDir, "bin-dir", "", "directory of tabbyd, tabbyctl and tabby-cni (default: next to tabbylab)")
	root.AddCommand(
		upCmd(o), downCmd(o), statusCmd(o), pingCmd(o), modeCmd(o), routesCmd(o),
		birdCmd(o), faultCmd(o), natCmd(o), ctlCmd(o), hasIPIPCmd(o), etcdCmd(),
	)
	return root
}

func exactArgs(n int) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) != n {
			return usageError{fmt.Errorf("%s takes %d argument(s), got %d", cmd.CommandPath(), n, len(args))}
		}
		return nil
	}
}

func upCmd(o *options) *cobra.Command {
	var mode string
	cmd := &cobra.Command{
		Use:   "up",
		Short: "build the lab and start etcd, a tabbyd per host and pod-1..3",
		Args:  exactArgs(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			m, err := lab.ParseMode(mode)
			if err != nil {
				return usageError{err}
			}
			c := o.cluster()
			if exists, _ := c.Topo.Exists(); exists {
				return fmt.Errorf("lab %s is up already: run `tabbylab down` first", o.prefix)
			}
			start := time.Now()
			if err := c.Up(cmd.Context(), m); err != nil {
				return err
			}
			fmt.Printf("lab %s is up in mode %s (%.1fs)\n", o.prefix, m, time.Since(start).Seconds())
			printLab(c)
			return nil
		},
	}
	cmd.Flags().StringVar(&mode, "mode", "vxlan", "initial pool mode: ipip, crosssubnet, direct, vxlan, vxlan-crosssubnet")
	return cmd
}

func downCmd(o *options) *cobra.Command {
	return &cobra.Command{
		Use:   "down",
		Short: "stop every process of the lab and remove its namespaces (also after a crash)",
		Args:  exactArgs(0),
		RunE: func(*cobra.Command, []string) error {
			if err := o.cluster().Down(); err != nil {
				return err
			}
			fmt.Printf("lab %s is down\n", o.prefix)
			return nil
		},
	}
}

func statusCmd(o *options) *cobra.Command {
	return &cobra.Command{
		Use:   "status",
		Short: "show each host's readiness, the pool, BIRD, the active faults and ipip support",
		Args:  exactArgs(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			c := o.cluster()
			if exists, _ := c.Topo.Exists(); !exists {
				return fmt.Errorf("lab %s is not up", o.prefix)
			}
			for _, h := range c.Topo.Hosts {
				ok, body, err := c.Readiness(cmd.Context(), h.Name)
				state := "ready"
				if err != nil {
					state = "unreachable: " + err.Error()
				} else if !ok {
					state = "NOT READY: " + strings.ReplaceAll(body, "\n", "; ")
				}
				fmt.Printf("%-9s %-15s %s\n", h.Name, h.Addr, state)
			}
			out, err := c.Ctl(cmd.Context(), "master", "get", "ippool", "-o", "wide")
			if err != nil {
				return err
			}
			fmt.Print(out)
			faults, err := c.Topo.ActiveFaults()
			if err != nil {
				return err
			}
			names := make([]string, len(faults))
			for i, f := range faults {
				names[i] = string(f)
			}
			fmt.Printf("faults: %s\n", orNone(strings.Join(names, ", ")))
			bird := "off"
			if c.BirdRunning() {
				bird = "on (router AS " + fmt.Sprint(lab.RouterAS) + ")"
			}
			fmt.Printf("BIRD on the router: %s\n", bird)
			has, err := c.Topo.HasIPIP()
			if err != nil {
				return err
			}
			if has {
				fmt.Println("kernel: has ipip support")
			} else {
				fmt.Println("kernel: no ipip support (the IP-in-IP modes cannot work here)")
			}
			return nil
		},
	}
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}

// printLab lists the hosts and pods of a lab that is up.
func printLab(c *lab.Cluster) {
	for _, h := range c.Topo.Hosts {
		fmt.Printf("  %-9s %-15s %s\n", h.Name, h.Addr, c.Topo.HostNS(h.Name))
	}
	for _, w := range c.Workloads {
		ip, err := c.WorkloadIP(w.Name)
		if err != nil {
			continue
		}
		fmt.Printf("  %-9s %-15s on %s\n", w.Name, ip, w.Host)
	}
	fmt.Printf("  %-9s %-15s knows only %s\n", "outside", c.Topo.Outside.Addr, c.Topo.Outside.Knows)
}

func pingCmd(o *options) *cobra.Command {
	var outside bool
	var expectFail []string
	cmd := &cobra.Command{
		Use:   "ping",
		Short: "ping every pod from every pod and print the matrix",
		Long: `Pings every pod from every pod (and, with --outside, the outside host from each pod,
showing the source address the outside host saw) in parallel and prints the matrix.
Exits 0 when every ping succeeded, or, with --expect-fail, when exactly the pings from or to
the named pods (or "outside") failed and all the others succeeded.`,
		Args: exactArgs(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			c := o.cluster()
			res, err := c.PingMatrix(cmd.Context(), false)
			if err != nil {
				return err
			}
			var views []lab.OutsideView
			if outside {
				if views, err = c.ObserveOutside(cmd.Context()); err != nil {
					return err
				}
				for _, v := range views {
					res = append(res, lab.PingResult{From: v.Pod, To: "outside", OK: v.Reply})
				}
			}
			lab.PrintMatrix(os.Stdout, res)
			for _, v := range views {
				fmt.Printf("outside host saw %s's ping from %s\n", v.Pod, describeSource(c, v))
			}
			return judgePings(res, expectFail)
		},
	}
	cmd.Flags().BoolVar(&outside, "outside", false, "also ping the outside host from each pod and show the source address it saw")
	cmd.Flags().StringSliceVar(&expectFail, "expect-fail", nil, "pods (or outside) whose pings must fail, all others must succeed")
	return cmd
}

// describeSource says whose address the outside host saw: the pod's own, or its host's.
func describeSource(c *lab.Cluster, v lab.OutsideView) string {
	if !v.Source.IsValid() {
		return "nowhere: the request never arrived"
	}
	if ip, err := c.WorkloadIP(v.Pod); err == nil && ip == v.Source {
		return v.Source.String() + " (the pod's own address: not masqueraded, the reply cannot come back)"
	}
	for _, w := range c.Workloads {
		if h, ok := c.Topo.Host(w.Host); ok && w.Name == v.Pod && h.Addr.Addr() == v.Source {
			return v.Source.String() + " (" + h.Name + "'s address: masqueraded by NAT outgoing)"
		}
	}
	return v.Source.String()
}

// judgePings says whether the matrix is what was expected.
func judgePings(res []lab.PingResult, expectFail []string) error {
	failing := map[string]bool{}
	for _, n := range expectFail {
		failing[n] = true
	}
	var wrong []string
	for _, r := range res {
		want := !(failing[r.From] || failing[r.To])
		if r.OK != want {
			state := "failed"
			if r.OK {
				state = "succeeded"
			}
			wrong = append(wrong, fmt.Sprintf("%s → %s %s", r.From, r.To, state))
		}
	}
	if len(wrong) > 0 {
		return fmt.Errorf("unexpected ping results: %s", strings.Join(wrong, ", "))
	}
	if len(expectFail) > 0 {
		fmt.Printf("as expected: every ping from or to %s fails, all others succeed\n", strings.Join(expectFail, ", "))
	}
	return nil
}

func hasIPIPCmd(o *options) *cobra.Command {
	return &cobra.Command{
		Use:   "has-ipip",
		Short: "say whether this kernel has ipip support (exit 0) or not (exit 1)",
		Args:  exactArgs(0),
		RunE: func(*cobra.Command, []string) error {
			has, err := o.cluster().Topo.HasIPIP()
			if err != nil {
				return err
			}
			if !has {
				return errors.New("this " + lab.NoIPIPMessage)
			}
			fmt.Println("this kernel has ipip support")
			return nil
		},
	}
}

func modeCmd(o *options) *cobra.Command {
	var force bool
	var wait time.Duration
	cmd := &cobra.Command{
		Use:   "mode ipip|crosssubnet|direct|vxlan|vxlan-crosssubnet",
		Short: "patch the pool's encapsulation, as the articles do with calicoctl",
		Args:  exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			m, err := lab.ParseMode(args[0])
			if err != nil {
				return usageError{err}
			}
			c := o.cluster()
			if m.UsesIPIP() && !force {
				has, err := c.Topo.HasIPIP()
				if err != nil {
					return err
				}
				if !has {
					return fmt.Errorf("this %s: mode %s cannot work here (make test-vm runs the IP-in-IP modes in a VM); --force sets it anyway", lab.NoIPIPMessage, m)
				}
			}
			start := time.Now()
			if err := c.SetMode(cmd.Context(), m); err != nil {
				return err
			}
			if wait == 0 {
				return nil
			}
			if err := c.WaitRoutes(cmd.Context(), wait); err != nil {
				return err
			}
			fmt.Printf("pool %s is in mode %s; every host's routes match the datastore (%.1fs)\n", lab.PoolName, m, time.Since(start).Seconds())
			return nil
		},
	}
	cmd.Flags().BoolVar(&force, "force", false, "set an IP-in-IP mode even where the kernel has no ipip")
	cmd.Flags().DurationVar(&wait, "wait", time.Minute, "wait this long for every host's routes to match (0: don't wait)")
	return cmd
}

func routesCmd(o *options) *cobra.Command {
	var ipForm bool
	cmd := &cobra.Command{
		Use:   "routes HOST",
		Short: "print a host's routing table as `route -n` does",
		Args:  exactArgs(1),
		RunE: func(_ *cobra.Command, args []string) error {
			c := o.cluster()
			if _, ok := c.Topo.Host(args[0]); !ok {
				return usageError{fmt.Errorf("unknown host %q", args[0])}
			}
			if !ipForm {
				return c.Topo.RouteTable(os.Stdout, args[0])
			}
			lines, err := c.Topo.TabbyRoutes(args[0])
			if err != nil {
				return err
			}
			for _, l := range lines {
				fmt.Println(l)
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&ipForm, "tabby", false, "print only tabby's routes (proto 95), as `ip route` does")
	return cmd
}

func onOff(s string) (bool, error) {
	switch s {
	case "on":
		return true, nil
	case "off":
		return false, nil
	}
	return false, usageError{fmt.Errorf("expected on or off, got %q", s)}
}

func birdCmd(o *options) *cobra.Command {
	return &cobra.Command{
		Use:   "bird on|off|show",
		Short: "run BIRD2 on the router and peer every host with it (BGPPeer resources); show: birdc show route",
		Args:  exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c := o.cluster()
			if args[0] == "show" {
				out, err := c.BirdRoutes(cmd.Context())
				fmt.Print(out)
				return err
			}
			on, err := onOff(args[0])
			if err != nil {
				return err
			}
			if err := c.SetBird(cmd.Context(), on); err != nil {
				return err
			}
			if !on {
				fmt.Println("BIRD stopped; the hosts' BGPPeers to the router deleted")
				return nil
			}
			if err := c.WaitBirdRoutes(cmd.Context(), time.Minute); err != nil {
				return err
			}
			fmt.Println("BIRD runs on the router and has learned every block over BGP")
			return nil
		},
	}
}

func faultCmd(o *options) *cobra.Command {
	return &cobra.Command{
		Use:   "fault bgp-port|ipip-proto|vxlan-port|srcdst-check|mtu on|off",
		Short: "inject one of the failures the articles met on AWS into the fabric",
		Args:  exactArgs(2),
		RunE: func(_ *cobra.Command, args []string) error {
			f, err := lab.ParseFault(args[0])
			if err != nil {
				return usageError{err}
			}
			on, err := onOff(args[1])
			if err != nil {
				return err
			}
			return o.cluster().Topo.SetFault(f, on)
		},
	}
}

func natCmd(o *options) *cobra.Command {
	return &cobra.Command{
		Use:   "nat on|off",
		Short: "set the pool's natOutgoing",
		Args:  exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			on, err := onOff(args[0])
			if err != nil {
				return err
			}
			c := o.cluster()
			if err := c.SetNATOutgoing(cmd.Context(), on); err != nil {
				return err
			}
			if err := c.WaitNAT(cmd.Context(), on, 30*time.Second); err != nil {
				return err
			}
			state := "gone from"
			if on {
				state = "in place on"
			}
			fmt.Printf("natOutgoing: %t; the MASQUERADE rule is %s every host\n", on, state)
			return nil
		},
	}
}

// ctlRunner runs tabbyctl on a lab host; *lab.Cluster is the real one.
type ctlRunner interface {
	// HasHost reports whether the lab has the host.
	HasHost(host string) bool
	// NodeCtlWithInput runs tabbyctl on host with stdin and returns its output.
	NodeCtlWithInput(ctx context.Context, host string, stdin io.Reader, args ...string) (string, error)
}

// labCtl is the lab cluster as a ctlRunner.
type labCtl struct{ *lab.Cluster }

func (l labCtl) HasHost(host string) bool {
	_, ok := l.Topo.Host(host)
	return ok
}

func ctlCmd(o *options) *cobra.Command {
	return newCtlCmd(func() ctlRunner { return labCtl{o.cluster()} })
}

// newCtlCmd is the ctl command over the runner that runner gives: tabbyctl gets tabbylab's own
// stdin, so that "tabbylab ctl HOST apply -f -" reads the manifest piped to tabbylab.
func newCtlCmd(runner func() ctlRunner) *cobra.Command {
	return &cobra.Command{
		Use:                "ctl HOST [tabbyctl args...]",
		Short:              "run tabbyctl on a host against the lab's etcd and that host's tabbyd",
		DisableFlagParsing: true,
		RunE: func(cmd *cobra.Command, args []string) error {
			// With flag parsing off, cobra hands over tabbylab's own flags too when they
			// come before "ctl" (tabbylab --prefix x ctl ...): take those up to the host.
			args, err := takeLeadingFlags(cmd, args)
			if err != nil {
				return usageError{err}
			}
			if len(args) < 1 {
				return usageError{errors.New("ctl needs a host")}
			}
			c := runner()
			if !c.HasHost(args[0]) {
				return usageError{fmt.Errorf("unknown host %q", args[0])}
			}
			out, err := c.NodeCtlWithInput(cmd.Context(), args[0], cmd.InOrStdin(), args[1:]...)
			fmt.Print(out)
			// tabbyctl's exit code is the command's (node diagnose exits 1 when it finds a
			// problem); its output, errors included, has been printed already.
			var exit *exec.ExitError
			if errors.As(err, &exit) {
				return exitCode(exit.ExitCode())
			}
			return err
		},
	}
}

// takeLeadingFlags sets the --flag value / --flag=value arguments that precede the first
// positional argument on cmd's flags (tabbylab's persistent ones) and returns the rest.
func takeLeadingFlags(cmd *cobra.Command, args []string) ([]string, error) {
	for len(args) > 0 && strings.HasPrefix(args[0], "--") {
		name, value, hasValue := strings.Cut(strings.TrimPrefix(args[0], "--"), "=")
		if cmd.Flags().Lookup(name) == nil {
			return nil, fmt.Errorf("unknown flag --%s before the host (tabbyctl's flags go after it)", name)
		}
		args = args[1:]
		if !hasValue {
			if len(args) == 0 {
				return nil, fmt.Errorf("flag --%s needs a value", name)
			}
			value, args = args[0], args[1:]
		}
		if err := cmd.Flags().Set(name, value); err != nil {
			return nil, fmt.Errorf("--%s: %w", name, err)
		}
	}
	return args, nil
}

// etcdCmd is internal: `up` runs it inside the router's namespace so the lab's etcd is a
// real etcd server embedded in tabbylab, reachable at the router's address in each subnet:
// one member alone over HTTP, or (with --initial-cluster and the TLS files) one member of
// a cluster over TLS that requires client certificates.
func etcdCmd() *cobra.Command {
	var (
		dataDir, listen, name, initialCluster string
		clientPort, peerPort                  int
		tls                                   etcdembed.TLS
	)
	cmd := &cobra.Command{
		Use:    "etcd",
		Short:  "run the lab's embedded etcd (started by up inside the router namespace)",
		Hidden: true,
		Args:   exactArgs(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			first := strings.Split(listen, ",")[0]
			host, _, ok := strings.Cut(first, ":")
			if !ok {
				return usageError{fmt.Errorf("--listen %q: want host:port", listen)}
			}
			opts := etcdembed.Options{
				Dir: dataDir, Host: "0.0.0.0", AdvertiseHost: host, Name: name,
				ClientPort: clientPort, PeerPort: peerPort, InitialCluster: initialCluster,
				ClusterToken: "tabby-lab", Fast: true,
			}
			if tls.CertFile != "" {
				opts.TLS = &tls
			}
			srv, err := etcdembed.Start(cmd.Context(), opts)
			if err != nil {
				return err
			}
			defer srv.Close()
			fmt.Printf("etcd serving on %s\n", srv.Endpoint)
			<-cmd.Context().Done()
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&dataDir, "data-dir", "", "etcd data directory")
	f.StringVar(&listen, "listen", "", "comma-separated host:port the clients use")
	f.StringVar(&name, "name", "", "member name (default tabby)")
	f.IntVar(&clientPort, "client-port", lab.EtcdPort, "client port")
	f.IntVar(&peerPort, "peer-port", lab.EtcdPort+1, "peer port")
	f.StringVar(&initialCluster, "initial-cluster", "", "name=peerURL,... of every member (default: this member alone)")
	f.StringVar(&tls.CAFile, "ca-file", "", "CA of clients and peers (TLS)")
	f.StringVar(&tls.CertFile, "cert-file", "", "member certificate (TLS; serves clients and peers)")
	f.StringVar(&tls.KeyFile, "key-file", "", "member key (TLS)")
	f.BoolVar(&tls.ClientCertAuth, "client-cert-auth", false, "require client certificates (TLS)")
	return cmd
}
