package lab

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/tabby-net/tabby/internal/namedns"
)

// TabbydOptions say what differs between the tabbyd daemons the harness starts. The zero
// value is a plain daemon: the host's address from the topology, info logs, tabbyd's own
// key root and BGP timers, no labels.
type TabbydOptions struct {
	// LogLevel is tabbyd's logLevel; info when empty.
	LogLevel string
	// EtcdPrefix is the datastore's key root; tabbyd's default when empty.
	EtcdPrefix string
	// Autodetect replaces the host's fixed address with this ipv4.autodetect method
	// ("interface=eth0").
	Autodetect string
	// Labels are the Node's labels.
	Labels map[string]string
	// SegmentLabel, when set, is one more label whose value is the host's segment, for
	// selectors that pick hosts by subnet (tabbylab's router peers).
	SegmentLabel string
	// BGP sets the session timers; tabbyd's defaults when nil.
	BGP *BGPTimers
	// Extra is YAML appended to the configuration, for settings with no field here.
	Extra string
	// Env is added to the daemon's environment (GOMEMLIMIT, WATCHDOG_USEC, …).
	Env []string
	// Notify gives the daemon a NOTIFY_SOCKET that the harness listens on, as systemd does.
	Notify bool
	// LogName names the log file, <StateDir>/<LogName>.log; tabbyd-<host> when empty.
	// Restarts with the same name append to it.
	LogName string
	// Program runs instead of the cluster's tabbyd binary, with the same arguments: a test
	// binary that runs tabbyd's code under a profiler.
	Program string
}

// BGPTimers are tabbyd's bgp timers.
type BGPTimers struct {
	ConnectRetry, HoldTime, Keepalive time.Duration
}

// Tabbyd is a tabbyd the harness started.
type Tabbyd struct {
	*namedns.Process
	Host string
	// Config is the path of its tabbyd.yaml.
	Config string
	// Notify holds what it told systemd; nil unless TabbydOptions.Notify.
	Notify *Notifications
}

// HostDir is where everything of a host's tabbyd lives: config, data, run and secrets.
func (c *Cluster) HostDir(host string) string { return filepath.Join(c.StateDir, host) }

// StatusSocket is a host's tabbyd status socket.
func (c *Cluster) StatusSocket(host string) string {
	return filepath.Join(c.HostDir(host), "run", "tabbyd.sock")
}

// DataDir is a host's tabbyd data dir (the published pod MTU lives there).
func (c *Cluster) DataDir(host string) string { return filepath.Join(c.HostDir(host), "data") }

// RunDir is a host's tabbyd run dir.
func (c *Cluster) RunDir(host string) string { return filepath.Join(c.HostDir(host), "run") }

// RTProtosDir is where a host's tabbyd registers its route protocol's name, instead of
// the machine's /etc.
func (c *Cluster) RTProtosDir(host string) string { return filepath.Join(c.HostDir(host), "rtprotos") }

// TabbydConfigPath is a host's tabbyd.yaml.
func (c *Cluster) TabbydConfigPath(host string) string {
	return filepath.Join(c.HostDir(host), "tabbyd.yaml")
}

// tabbydConfig renders a host's tabbyd.yaml (SPEC §10): everything it writes stays under
// the host's own directory, so several tabbyd share no file.
func (c *Cluster) tabbydConfig(h Host, o TabbydOptions) string {
	var b strings.Builder
	fmt.Fprintf(&b, "nodeName: %s\n%s", h.Name, c.etcdYAML(h))
	if o.EtcdPrefix != "" {
		fmt.Fprintf(&b, "  prefix: %s\n", o.EtcdPrefix)
	}
	if o.Autodetect != "" {
		fmt.Fprintf(&b, "ipv4:\n  autodetect: %q\n", o.Autodetect)
	} else {
		fmt.Fprintf(&b, "ipv4:\n  address: %s\n", h.Addr)
	}
	labels := map[string]string{}
	for k, v := range o.Labels {
		labels[k] = v
	}
	if o.SegmentLabel != "" {
		labels[o.SegmentLabel] = h.Segment
	}
	if len(labels) > 0 {
		b.WriteString("labels:\n")
		for _, k := range slices.Sorted(maps.Keys(labels)) {
			fmt.Fprintf(&b, "  %s: %q\n", k, labels[k])
		}
	}
	fmt.Fprintf(&b, "dataDir: %s\nrunDir: %s\nstatusSocket: %s\nbgp:\n  secretsDir: %s\n",
		c.DataDir(h.Name), c.RunDir(h.Name), c.StatusSocket(h.Name), filepath.Join(c.HostDir(h.Name), "secrets"))
	if t := o.BGP; t != nil {
		fmt.Fprintf(&b, "  connectRetry: %s\n  holdTime: %s\n  keepalive: %s\n", t.ConnectRetry, t.HoldTime, t.Keepalive)
	}
	fmt.Fprintf(&b, "health:\n  listen: %q\nmetrics:\n  listen: %q\nlogLevel: %s\n", healthAddr, metricsAddr, cmp.Or(o.LogLevel, "info"))
	b.WriteString(o.Extra)
	return b.String()
}

// Every tabbyd serves its endpoints on its own namespace's loopback.
const (
	healthAddr  = "127.0.0.1:9099"
	metricsAddr = "127.0.0.1:9091"
)

// StartTabbyd writes a host's config and starts its tabbyd inside the host's namespace. It
// returns once the process runs; WaitReady waits for it to be ready.
func (c *Cluster) StartTabbyd(host string, o TabbydOptions) (*Tabbyd, error) {
	h, ok := c.Topo.Host(host)
	if !ok {
		return nil, fmt.Errorf("unknown host %q", host)
	}
	program := o.Program
	if program == "" {
		var err error
		if program, err = c.bin("tabbyd"); err != nil {
			return nil, err
		}
	}
	for _, d := range []string{c.DataDir(host), c.RunDir(host), c.RTProtosDir(host), filepath.Join(c.HostDir(host), "secrets")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, err
		}
	}
	cfg := c.TabbydConfigPath(host)
	// Root-only: the file may hold the etcd password.
	if err := os.WriteFile(cfg, []byte(c.tabbydConfig(h, o)), 0o600); err != nil {
		return nil, err
	}
	env := slices.Clone(o.Env)
	var notify *Notifications
	if o.Notify {
		var err error
		notify, err = ListenNotify(filepath.Join(c.HostDir(host), fmt.Sprintf("notify-%d.sock", time.Now().UnixNano())))
		if err != nil {
			return nil, err
		}
		c.mu.Lock()
		c.closers = append(c.closers, notify.Close)
		c.mu.Unlock()
		env = append(env, "NOTIFY_SOCKET="+notify.Path)
	}
	c.say("starting tabbyd on %s (%s)", host, h.Addr)
	p, err := c.start(c.Topo.HostNS(host), "tabbyd-"+host, cmp.Or(o.LogName, "tabbyd-"+host), env, program,
		"run", "--config", cfg, "--rt-protos-dir", c.RTProtosDir(host))
	if err != nil {
		return nil, err
	}
	return &Tabbyd{Process: p, Host: host, Config: cfg, Notify: notify}, nil
}

// StopTabbyd stops a host's tabbyd by the PID it recorded, also one that an earlier
// tabbylab command started: SIGTERM (SIGKILL after 10 s), or SIGKILL at once when hard.
func (c *Cluster) StopTabbyd(host string, hard bool) error {
	pid, err := readPID(c.pidFile("tabbyd-" + host))
	if err != nil || pid == 0 {
		return fmt.Errorf("tabbyd on %s: no PID recorded: %v", host, err)
	}
	if hard {
		return killHard(pid)
	}
	return stopPID(pid, "tabbyd", 10*time.Second)
}

// HTTPGet fetches a URL from inside a host's namespace (its tabbyd's endpoints listen on
// that namespace's loopback): the status code and the body.
func (c *Cluster) HTTPGet(ctx context.Context, host, url string) (int, string, error) {
	client := &http.Client{
		Timeout:   5 * time.Second,
		Transport: &http.Transport{DialContext: namedns.Dialer(c.Topo.HostNS(host)), DisableKeepAlives: true},
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, "", err
	}
	resp, err := client.Do(req)
	if err != nil {
		return 0, "", fmt.Errorf("GET %s on %s: %w", url, host, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// Readiness fetches a host's /readiness: whether it is ready and the body.
func (c *Cluster) Readiness(ctx context.Context, host string) (bool, string, error) {
	code, body, err := c.HTTPGet(ctx, host, "http://"+healthAddr+"/readiness")
	return code == http.StatusOK, strings.TrimSpace(body), err
}

// Metrics fetches a host's /metrics.
func (c *Cluster) Metrics(ctx context.Context, host string) (string, error) {
	code, body, err := c.HTTPGet(ctx, host, "http://"+metricsAddr+"/metrics")
	if err == nil && code != http.StatusOK {
		err = fmt.Errorf("GET /metrics on %s: %d", host, code)
	}
	return body, err
}

// WaitReady waits until the tabbyd of every named host (every host when none is named)
// reports ready. A tabbyd that exited fails the wait at once, with its last log line.
func (c *Cluster) WaitReady(ctx context.Context, timeout time.Duration, hosts ...string) error {
	if len(hosts) == 0 {
		for _, h := range c.Topo.Hosts {
			hosts = append(hosts, h.Name)
		}
	}
	return poll(ctx, timeout, 200*time.Millisecond, func() error {
		var notReady []string
		for _, h := range hosts {
			// A tabbyd that exited will not become ready: say so now, with its last words.
			if pid, err := readPID(c.pidFile("tabbyd-" + h)); err == nil && pid > 0 && !pidRuns(pid, "") {
				return stopPolling(fmt.Errorf("tabbyd on %s exited: %s", h, namedns.TailFile(c.logFile("tabbyd-"+h), 1)))
			}
			ok, body, err := c.Readiness(ctx, h)
			if err != nil || !ok {
				notReady = append(notReady, fmt.Sprintf("%s: %s%v", h, body, errOrEmpty(err)))
			}
		}
		if len(notReady) > 0 {
			return fmt.Errorf("not ready: %s", strings.Join(notReady, "; "))
		}
		return nil
	})
}

func errOrEmpty(err error) string {
	if err == nil {
		return ""
	}
	return " (" + err.Error() + ")"
}
