package lab

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/tabby-net/tabby/internal/namedns"
)

// Workload is a pod of the articles: a network namespace plugged into a host by tabby-cni.
type Workload struct {
	Name string // "pod-1"
	Host string // "worker-1"
}

// Mode is one of the pool configurations the articles walk through.
type Mode string

const (
	ModeIPIP             Mode = "ipip"
	ModeCrossSubnet      Mode = "crosssubnet"
	ModeDirect           Mode = "direct"
	ModeVXLAN            Mode = "vxlan"
	ModeVXLANCrossSubnet Mode = "vxlan-crosssubnet"
)

// Modes lists every mode in the order the demo shows them.
func Modes() []Mode {
	return []Mode{ModeIPIP, ModeCrossSubnet, ModeDirect, ModeVXLAN, ModeVXLANCrossSubnet}
}

// ParseMode names a mode or says which ones exist.
func ParseMode(s string) (Mode, error) {
	for _, m := range Modes() {
		if string(m) == s {
			return m, nil
		}
	}
	return "", fmt.Errorf("unknown mode %q (one of ipip, crosssubnet, direct, vxlan, vxlan-crosssubnet)", s)
}

// encap returns the pool's ipipMode and vxlanMode for a mode.
func (m Mode) encap() (ipip, vxlan string) {
	switch m {
	case ModeIPIP:
		return "Always", "Never"
	case ModeCrossSubnet:
		return "CrossSubnet", "Never"
	case ModeVXLAN:
		return "Never", "Always"
	case ModeVXLANCrossSubnet:
		return "Never", "CrossSubnet"
	}
	return "Never", "Never"
}

// UsesIPIP reports whether the mode needs the kernel's ipip module.
func (m Mode) UsesIPIP() bool { return m == ModeIPIP || m == ModeCrossSubnet }

// PoolName and PoolCIDR are the articles' default pool.
const (
	PoolName = "default-ipv4-ippool"
	PoolCIDR = "192.168.0.0/16"
)

// EtcdPort is where the lab's etcd listens, on the router's addresses.
const EtcdPort = 2379

// Cluster is a running lab: the topology, etcd in the router's namespace, one tabbyd per
// host and the workloads. Its state lives in StateDir so that every tabbylab command,
// run as a fresh process, finds the lab that `up` made.
type Cluster struct {
	Topo      *Topology
	Workloads []Workload
	// StateDir holds configs, logs, PID files and data dirs of the lab.
	StateDir string
	// BinDir holds tabbyd, tabbyctl, tabby-cni and tabbylab; empty = next to this program.
	BinDir string
	// Out receives progress lines.
	Out io.Writer
	// Secure, when set, makes etcd a TLS cluster with client certificates and RBAC.
	Secure *SecureEtcd
	// Tabbyd configures the tabbyd that Up starts on every host.
	Tabbyd TabbydOptions
	// Detach starts every process in a session of its own, so that it outlives the command
	// that started it (tabbylab up). Benchmarks leave it off: with the kernel's autogroup
	// scheduling, a session of its own is a scheduling group of its own, and on a loaded
	// machine that delays a daemon's wakeups by seconds (1,000 paced writes: p50 2.8 s
	// detached, 0.08 s not, in one run).
	Detach bool

	mu sync.Mutex
	// procs are the processes this Cluster value started, by name ("etcd",
	// "tabbyd-worker-1"); a later tabbylab command finds them by PID file instead.
	procs map[string]*namedns.Process
	// closers run at Down: listeners the harness opened for its daemons.
	closers []func()
}

// NewArticlesCluster is the lab of the articles under prefix, with pod-1..3 on worker-1..3.
func NewArticlesCluster(prefix, stateDir, binDir string, out io.Writer) *Cluster {
	return &Cluster{
		Topo: Articles(prefix),
		Workloads: []Workload{
			{Name: "pod-1", Host: "worker-1"},
			{Name: "pod-2", Host: "worker-2"},
			{Name: "pod-3", Host: "worker-3"},
		},
		StateDir: stateDir,
		BinDir:   binDir,
		Out:      out,
		// tabbylab's commands end; the lab's processes stay.
		Detach: true,
		// Short timers, so that a closed TCP 179 (tabbylab fault bgp-port) shows within
		// seconds instead of the 90 s of a production hold time, and a reopened one heals
		// at once; the subnet label selects each host's router peer (SetBird).
		Tabbyd: TabbydOptions{SegmentLabel: "subnet", BGP: &BGPTimers{ConnectRetry: time.Second, HoldTime: 9 * time.Second, Keepalive: 3 * time.Second}},
	}
}

func (c *Cluster) say(format string, args ...any) {
	if c.Out != nil {
		fmt.Fprintf(c.Out, format+"\n", args...)
	}
}

func (c *Cluster) pidFile(name string) string { return filepath.Join(c.StateDir, name+".pid") }
func (c *Cluster) logFile(name string) string { return filepath.Join(c.StateDir, name+".log") }

// PodNS is a workload's namespace.
func (c *Cluster) PodNS(pod string) string { return c.Topo.Prefix + "-" + pod }

// EtcdEndpoint is the first etcd URL a host uses (see EtcdEndpoints).
func (c *Cluster) EtcdEndpoint(h Host) string { return c.EtcdEndpoints(h)[0] }

func (c *Cluster) bin(name string) (string, error) { return lookBin(c.BinDir, name) }

// Up builds the whole lab: topology, etcd, the pool in the given mode, a tabbyd per host,
// and the workloads. On failure it tears down what it made.
func (c *Cluster) Up(ctx context.Context, mode Mode) (err error) {
	if err := os.MkdirAll(c.StateDir, 0o755); err != nil {
		return err
	}
	defer func() {
		if err != nil {
			c.say("up failed: %v", err)
			c.sayLogTails(20)
			c.say("tearing down")
			_ = c.Down()
		}
	}()
	c.say("building the topology (%d hosts, a router, an outside host)", len(c.Topo.Hosts))
	if err := c.Topo.Build(); err != nil {
		return err
	}
	if mode.UsesIPIP() {
		has, err := c.Topo.HasIPIP()
		if err != nil {
			return err
		}
		if !has {
			return fmt.Errorf("mode %s needs IP-in-IP, but this %s: start in another mode", mode, NoIPIPMessage)
		}
	}
	if err := c.StartEtcd(ctx); err != nil {
		return err
	}
	if err := c.ApplyPool(ctx, mode, true); err != nil {
		return err
	}
	for _, h := range c.Topo.Hosts {
		if _, err := c.StartTabbyd(h.Name, c.Tabbyd); err != nil {
			return err
		}
	}
	if err := c.WaitReady(ctx, 60*time.Second); err != nil {
		return err
	}
	for _, w := range c.Workloads {
		if _, err := c.AddWorkload(ctx, w); err != nil {
			return err
		}
	}
	c.say("waiting for every host's routes to match the datastore")
	return c.WaitRoutes(ctx, 60*time.Second)
}

// sayLogTails prints the last lines of every log of the lab, so that a failure can be
// understood after Down has removed the state directory.
func (c *Cluster) sayLogTails(lines int) { c.say("%s", c.LogTails(lines)) }

// LogTails returns the last lines of every log of the lab, for a failure's report.
func (c *Cluster) LogTails(lines int) string {
	var b strings.Builder
	logs, _ := filepath.Glob(filepath.Join(c.StateDir, "*.log"))
	for _, l := range logs {
		fmt.Fprintf(&b, "--- last lines of %s:\n%s\n", filepath.Base(l), namedns.TailFile(l, lines))
	}
	return b.String()
}

// Down stops every process of the lab and removes its namespaces and state. It works on
// a half-made lab and after a crash that lost the state directory. Every process the lab
// starts runs inside one of its namespaces, so processes are found by namespace (inode),
// never by PID file or program name: a PID this lab recorded may by now belong to another
// lab's tabbyd (PIDs wrap quickly), and signalling it would break that lab. All get
// SIGTERM at once, SIGKILL after a grace period.
func (c *Cluster) Down() error {
	var errs []error
	c.mu.Lock()
	closers := c.closers
	c.closers = nil
	c.mu.Unlock()
	for _, f := range closers {
		f()
	}
	names, err := namedns.List(c.Topo.Prefix + "-")
	errs = append(errs, err)
	inNS, err := procsInNamespaces(names)
	errs = append(errs, err)
	all := inNS
	errs = append(errs, stopAll(all, 5*time.Second))
	errs = append(errs, c.Topo.Destroy())
	errs = append(errs, os.RemoveAll(c.StateDir))
	// Say so if anything survived, rather than claim a clean machine.
	for _, pid := range all {
		if pidRuns(pid, "") {
			errs = append(errs, fmt.Errorf("process %d of the lab still runs", pid))
		}
	}
	if left, err := namedns.List(c.Topo.Prefix + "-"); err == nil && len(left) > 0 {
		errs = append(errs, fmt.Errorf("namespaces left: %s", strings.Join(left, ", ")))
	}
	return errors.Join(errs...)
}

// StartEtcd runs `tabbylab etcd` (an embedded etcd server) inside the router's namespace,
// listening on the router's address in every subnet, and waits until it answers. Its data
// stays in the state directory, so a stopped etcd can be started again with its keys.
func (c *Cluster) StartEtcd(ctx context.Context) error {
	if c.Secure != nil {
		return c.startSecureEtcd(ctx)
	}
	self, err := c.bin("tabbylab")
	if err != nil {
		return err
	}
	var listen []string
	for _, s := range c.Topo.Segments {
		listen = append(listen, fmt.Sprintf("%s:%d", s.Router.Addr(), EtcdPort))
	}
	c.say("starting etcd in %s on %s", c.Topo.RouterNS(), strings.Join(listen, ", "))
	if _, err := c.start(c.Topo.RouterNS(), "etcd", "etcd", nil, self,
		"etcd", "--data-dir", filepath.Join(c.StateDir, "etcd"), "--listen", strings.Join(listen, ",")); err != nil {
		return err
	}
	return c.waitEtcd(ctx, 30*time.Second)
}

// Ctl runs tabbyctl on a host against the lab's etcd and returns its output.
func (c *Cluster) Ctl(ctx context.Context, host string, args ...string) (string, error) {
	return c.ctlWithInput(ctx, host, nil, args...)
}

// NodeCtl runs tabbyctl on a host with that host's tabbyd status socket: the form of the
// commands that talk to the local tabbyd (node status, node diagnose).
func (c *Cluster) NodeCtl(ctx context.Context, host string, args ...string) (string, error) {
	return c.NodeCtlWithInput(ctx, host, nil, args...)
}

// NodeCtlWithInput is NodeCtl with stdin given to tabbyctl (apply -f -); nil is no input.
func (c *Cluster) NodeCtlWithInput(ctx context.Context, host string, stdin io.Reader, args ...string) (string, error) {
	return c.ctlWithInput(ctx, host, stdin, append([]string{"--socket", c.StatusSocket(host)}, args...)...)
}

func (c *Cluster) ctlWithInput(ctx context.Context, host string, stdin io.Reader, args ...string) (string, error) {
	ctl, err := c.bin("tabbyctl")
	if err != nil {
		return "", err
	}
	h, ok := c.Topo.Host(host)
	if !ok {
		return "", fmt.Errorf("unknown host %q", host)
	}
	all := append([]string{"--endpoints", strings.Join(c.EtcdEndpoints(h), ",")}, args...)
	cmd := namedns.Command(c.Topo.HostNS(host), ctl, all...)
	cmd.Env = append(os.Environ(), c.ctlEnv()...)
	cmd.Stdin = stdin
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	done := make(chan error, 1)
	if err := cmd.Start(); err != nil {
		return "", err
	}
	go func() { done <- cmd.Wait() }()
	select {
	case err = <-done:
	case <-ctx.Done():
		_ = cmd.Process.Kill()
		<-done
		err = ctx.Err()
	}
	if err != nil {
		return out.String(), fmt.Errorf("tabbyctl %s on %s: %w: %s", strings.Join(args, " "), host, err, strings.TrimSpace(out.String()))
	}
	return out.String(), nil
}

// ApplyPool writes the articles' pool in a mode (create or update) through tabbyctl.
func (c *Cluster) ApplyPool(ctx context.Context, mode Mode, natOutgoing bool) error {
	ipip, vxlan := mode.encap()
	manifest := fmt.Sprintf(`apiVersion: projectcalico.org/v3
kind: IPPool
metadata:
  name: %s
spec:
  cidr: %s
  blockSize: 26
  ipipMode: %s
  vxlanMode: %s
  natOutgoing: %t
  nodeSelector: all()
`, PoolName, PoolCIDR, ipip, vxlan, natOutgoing)
	_, err := c.ctlWithInput(ctx, "master", strings.NewReader(manifest), "apply", "-f", "-")
	return err
}

// SetMode changes the pool's encapsulation the way the articles do, with a patch.
func (c *Cluster) SetMode(ctx context.Context, mode Mode) error {
	ipip, vxlan := mode.encap()
	patch := fmt.Sprintf(`{"spec":{"ipipMode":%q,"vxlanMode":%q}}`, ipip, vxlan)
	_, err := c.Ctl(ctx, "master", "patch", "ippool", PoolName, "-p", patch)
	return err
}

// SetNATOutgoing turns the pool's natOutgoing on or off.
func (c *Cluster) SetNATOutgoing(ctx context.Context, on bool) error {
	_, err := c.Ctl(ctx, "master", "patch", "ippool", PoolName, "-p", fmt.Sprintf(`{"spec":{"natOutgoing":%t}}`, on))
	return err
}

// cniResult is the part of a CNI result the lab reads.
type cniResult struct {
	IPs []struct {
		Address string `json:"address"`
	} `json:"ips"`
}

// cniConfig is the network configuration tabby-cni gets for a host.
func (c *Cluster) cniConfig(h Host) string {
	return fmt.Sprintf(`{"cniVersion":"1.0.0","name":"tabby","type":"tabby-cni","etcd_endpoints":%q,"nodename":%q,"mtu":0,"data_dir":%q,"run_dir":%q%s}`,
		strings.Join(c.EtcdEndpoints(h), ","), h.Name, c.DataDir(h.Name), c.RunDir(h.Name), c.cniEtcdJSON())
}

// AddWorkload creates a pod's namespace and plugs it in with tabby-cni, exactly as a CNI
// runtime does: environment variables and the configuration on stdin.
func (c *Cluster) AddWorkload(ctx context.Context, w Workload) (netip.Addr, error) {
	h, ok := c.Topo.Host(w.Host)
	if !ok {
		return netip.Addr{}, fmt.Errorf("workload %s: unknown host %q", w.Name, w.Host)
	}
	ns := c.PodNS(w.Name)
	if err := namedns.Create(ns); err != nil {
		return netip.Addr{}, err
	}
	out, err := c.cni(ctx, h, "ADD", w.Name, ns)
	if err != nil {
		_ = namedns.Delete(ns)
		return netip.Addr{}, fmt.Errorf("workload %s on %s: %w", w.Name, w.Host, err)
	}
	var res cniResult
	if err := json.Unmarshal(out, &res); err != nil || len(res.IPs) == 0 {
		return netip.Addr{}, fmt.Errorf("workload %s: tabby-cni result without an address: %s", w.Name, out)
	}
	p, err := netip.ParsePrefix(res.IPs[0].Address)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("workload %s: address %q: %w", w.Name, res.IPs[0].Address, err)
	}
	c.say("%s on %s: %s", w.Name, w.Host, p.Addr())
	return p.Addr(), os.WriteFile(filepath.Join(c.StateDir, w.Name+".ip"), []byte(p.Addr().String()), 0o644)
}

// DelWorkload unplugs a pod and removes its namespace.
func (c *Cluster) DelWorkload(ctx context.Context, w Workload) error {
	h, ok := c.Topo.Host(w.Host)
	if !ok {
		return fmt.Errorf("workload %s: unknown host %q", w.Name, w.Host)
	}
	_, err := c.cni(ctx, h, "DEL", w.Name, c.PodNS(w.Name))
	return errors.Join(err, namedns.Delete(c.PodNS(w.Name)), os.Remove(filepath.Join(c.StateDir, w.Name+".ip")))
}

func (c *Cluster) cni(ctx context.Context, h Host, command, pod, ns string) ([]byte, error) {
	plugin, err := c.bin("tabby-cni")
	if err != nil {
		return nil, err
	}
	cmd := namedns.Command(c.Topo.HostNS(h.Name), plugin)
	cmd.Env = append(os.Environ(),
		"CNI_COMMAND="+command,
		"CNI_CONTAINERID="+c.Topo.Prefix+"-"+pod,
		"CNI_NETNS="+namedns.Path(ns),
		"CNI_IFNAME=eth0",
		"CNI_PATH="+filepath.Dir(plugin),
	)
	cmd.Stdin = strings.NewReader(c.cniConfig(h))
	var stdout, stderr bytes.Buffer
	cmd.Stdout = &stdout
	cmd.Stderr = &stderr
	if err := runCtx(ctx, cmd); err != nil {
		return nil, fmt.Errorf("tabby-cni %s: %w: %s %s", command, err, strings.TrimSpace(stdout.String()), strings.TrimSpace(stderr.String()))
	}
	return stdout.Bytes(), nil
}

// WorkloadIP returns the address tabby-cni gave a pod.
func (c *Cluster) WorkloadIP(pod string) (netip.Addr, error) {
	b, err := os.ReadFile(filepath.Join(c.StateDir, pod+".ip"))
	if err != nil {
		return netip.Addr{}, fmt.Errorf("workload %s: %w", pod, err)
	}
	return netip.ParseAddr(strings.TrimSpace(string(b)))
}

// PingResult is one cell of the ping matrix.
type PingResult struct {
	From, To string
	OK       bool
}

// PingMatrix pings every pod from every other pod (and the outside host from each pod
// when withOutside), in parallel, one packet each with a short timeout.
func (c *Cluster) PingMatrix(ctx context.Context, withOutside bool) ([]PingResult, error) {
	type target struct{ name, ip string }
	var targets []target
	for _, w := range c.Workloads {
		ip, err := c.WorkloadIP(w.Name)
		if err != nil {
			return nil, err
		}
		targets = append(targets, target{w.Name, ip.String()})
	}
	if withOutside {
		targets = append(targets, target{"outside", c.Topo.Outside.Addr.Addr().String()})
	}
	var (
		mu  sync.Mutex
		wg  sync.WaitGroup
		out []PingResult
	)
	for _, w := range c.Workloads {
		for _, t := range targets {
			if t.name == w.Name {
				continue
			}
			wg.Add(1)
			go func(from string, t target) {
				defer wg.Done()
				ok := pingOnce(ctx, c.PodNS(from), t.ip)
				mu.Lock()
				out = append(out, PingResult{From: from, To: t.name, OK: ok})
				mu.Unlock()
			}(w.Name, t)
		}
	}
	wg.Wait()
	sort.Slice(out, func(i, j int) bool {
		if out[i].From != out[j].From {
			return out[i].From < out[j].From
		}
		return out[i].To < out[j].To
	})
	return out, nil
}

// pingOnce sends up to three pings and reports whether one came back; the retries absorb
// the first packet's ARP and route resolution.
func pingOnce(ctx context.Context, ns, dst string) bool {
	cmd := namedns.Command(ns, "ping", "-c", "3", "-i", "0.2", "-W", "1", "-w", "3", dst)
	return runCtx(ctx, cmd) == nil
}

// PrintMatrix renders the ping matrix as a table: rows are sources, columns targets.
func PrintMatrix(w io.Writer, res []PingResult) {
	var rows, cols []string
	seenR, seenC := map[string]bool{}, map[string]bool{}
	cell := map[[2]string]bool{}
	for _, r := range res {
		if !seenR[r.From] {
			seenR[r.From] = true
			rows = append(rows, r.From)
		}
		if !seenC[r.To] {
			seenC[r.To] = true
			cols = append(cols, r.To)
		}
		cell[[2]string{r.From, r.To}] = r.OK
	}
	sort.Strings(rows)
	sort.Slice(cols, func(i, j int) bool { return colRank(cols[i]) < colRank(cols[j]) })
	fmt.Fprintf(w, "%-8s", "from\\to")
	for _, c := range cols {
		fmt.Fprintf(w, " %-8s", c)
	}
	fmt.Fprintln(w)
	for _, r := range rows {
		fmt.Fprintf(w, "%-8s", r)
		for _, c := range cols {
			mark := "-"
			if ok, tried := cell[[2]string{r, c}]; tried {
				mark = "FAIL"
				if ok {
					mark = "ok"
				}
			}
			fmt.Fprintf(w, " %-8s", mark)
		}
		fmt.Fprintln(w)
	}
}

func colRank(s string) string {
	if s == "outside" {
		return "~" + s
	}
	return s
}
