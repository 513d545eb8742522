package rollout

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tabby-net/tabby/internal/namedns"
	"github.com/tabby-net/tabby/lab"
)

// The suite needs what `make test-rollout` prepares: the hosts' root file system
// (rootfs.sh) and the package (`make deb`).
const (
	envRootFS = "TABBY_ROLLOUT_ROOTFS"
	envDeb    = "TABBY_ROLLOUT_DEB"
	envDebUp  = "TABBY_ROLLOUT_DEB_NEXT" // the same tree packaged as a later version
	envDebUp2 = "TABBY_ROLLOUT_DEB_THIRD"
)

// fleet is the running rollout lab: the articles' topology, a TLS etcd with RBAC in the
// router's namespace, and a Debian host booted with systemd in each host namespace.
type fleet struct {
	t        *testing.T
	topo     *lab.Topology
	dir      string // inventory, certificates, keys, logs
	repo     string
	hosts    map[string]*Host
	order    []string
	etcd     *exec.Cmd
	etcdDone chan struct{}
	ctlBin   string // tabbyctl, unpacked from the package
	certs    string
	endpoint string
}

func repoRoot(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	return root
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func run(ctx context.Context, cmd *exec.Cmd) (string, error) {
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("%s: %w: %s", strings.Join(cmd.Args, " "), err, strings.TrimSpace(out.String()))
	}
	return out.String(), nil
}

func newFleet(ctx context.Context, t *testing.T) *fleet {
	rootfs, deb := os.Getenv(envRootFS), os.Getenv(envDeb)
	if rootfs == "" || deb == "" {
		t.Skipf("%s and %s are not set: the rollout suite runs under `make test-rollout`, which builds the hosts' root file system and the package first", envRootFS, envDeb)
	}
	if os.Geteuid() != 0 {
		t.Fatal("the rollout suite boots containers in network namespaces: run it as root")
	}
	// /var/tmp, not the test's temporary directory: overlay upper directories and the
	// containers' files want a real file system, and nothing here may land in a tmpfs
	// nspawn replaces.
	dir, err := os.MkdirTemp("/var/tmp", "tabby-rollout-")
	if err != nil {
		t.Fatal(err)
	}
	f := &fleet{t: t, topo: lab.Articles("tabby-ro" + randomHex(3)), dir: dir, repo: repoRoot(t), hosts: map[string]*Host{}}
	t.Cleanup(f.teardown)
	if err := f.topo.Build(); err != nil {
		t.Fatal(err)
	}
	if out, err := run(ctx, exec.Command("dpkg-deb", "-x", deb, filepath.Join(dir, "pkg"))); err != nil {
		t.Fatal(out, err)
	}
	f.ctlBin = filepath.Join(dir, "pkg/usr/bin/tabbyctl")
	f.startEtcd(ctx)

	key := filepath.Join(dir, "id_ed25519")
	if out, err := run(ctx, exec.Command("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "tabby-rollout", "-f", key)); err != nil {
		t.Fatal(out, err)
	}
	pub, err := os.ReadFile(key + ".pub")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var errs []error
	for _, h := range f.topo.Hosts {
		f.order = append(f.order, h.Name)
		wg.Add(1)
		go func() {
			defer wg.Done()
			host, err := Boot(ctx, rootfs, dir, h.Name, f.topo.HostNS(h.Name), pub)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs = append(errs, err)
				return
			}
			f.hosts[h.Name] = host
		}()
	}
	wg.Wait()
	for _, err := range errs {
		t.Error(err)
	}
	if len(errs) > 0 {
		t.FailNow()
	}
	return f
}

// teardown stops every container and process by PID and removes the namespaces, also
// after a failure.
func (f *fleet) teardown() {
	for _, h := range f.hosts {
		if err := h.Stop(); err != nil {
			f.t.Error(err)
		}
	}
	if f.etcd != nil && f.etcd.Process != nil {
		_ = f.etcd.Process.Signal(syscall.SIGTERM)
		select {
		case <-f.etcdDone:
		case <-time.After(10 * time.Second):
			_ = f.etcd.Process.Kill()
			<-f.etcdDone
		}
	}
	// ssh's connection masters (ControlPersist) run in the router's namespace; the lab
	// finds every process left in its namespaces and stops it by PID.
	c := &lab.Cluster{Topo: f.topo, StateDir: filepath.Join(f.dir, "lab")}
	if err := c.Down(); err != nil {
		f.t.Error(err)
	}
	if f.t.Failed() {
		f.t.Logf("kept %s for inspection", f.dir)
		return
	}
	_ = os.RemoveAll(f.dir)
}

// startEtcd makes the certificates and runs etcd in the router's namespace with TLS,
// client-certificate authentication and the RBAC of configs/etcd/rbac.sh, as production
// does (one member: the three-member cluster is etcd's own business, tested elsewhere).
func (f *fleet) startEtcd(ctx context.Context) {
	t := f.t
	f.certs = filepath.Join(f.dir, "inventory/etcd-certs")
	mk := filepath.Join(f.repo, "configs/etcd/make-certs.sh")
	var sans []string
	for _, s := range f.topo.Segments {
		sans = append(sans, s.Router.Addr().String())
	}
	steps := [][]string{{"ca", f.certs}, {"member", f.certs, "etcd", strings.Join(sans, ",")},
		{"client", f.certs, "root"}, {"client", f.certs, "tabbyctl"}, {"client", f.certs, "tabby-cni"}}
	for _, h := range f.topo.Hosts {
		steps = append(steps, []string{"client", f.certs, "tabbyd-" + h.Name})
	}
	for _, s := range steps {
		if out, err := run(ctx, exec.Command(mk, s...)); err != nil {
			t.Fatal(out, err)
		}
	}
	var listen []string
	for _, a := range sans {
		listen = append(listen, "https://"+a+":2379")
	}
	f.endpoint = listen[0]
	log, err := os.Create(filepath.Join(f.dir, "etcd.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer log.Close()
	f.etcd = namedns.Command(f.topo.RouterNS(), "etcd", "--name", "etcd",
		"--data-dir", filepath.Join(f.dir, "etcd"),
		"--listen-client-urls", strings.Join(listen, ","), "--advertise-client-urls", f.endpoint,
		"--listen-peer-urls", "http://127.0.0.1:2380", "--initial-advertise-peer-urls", "http://127.0.0.1:2380",
		"--initial-cluster", "etcd=http://127.0.0.1:2380",
		"--cert-file", filepath.Join(f.certs, "etcd.pem"), "--key-file", filepath.Join(f.certs, "etcd-key.pem"),
		"--trusted-ca-file", filepath.Join(f.certs, "ca.pem"), "--client-cert-auth")
	f.etcd.Stdout, f.etcd.Stderr = log, log
	if err := f.etcd.Start(); err != nil {
		t.Fatal(err)
	}
	f.etcdDone = make(chan struct{})
	go func() { _ = f.etcd.Wait(); close(f.etcdDone) }()
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, err := f.etcdctl(ctx, "root", "endpoint", "health"); err == nil {
			break
		} else if time.Now().After(deadline) {
			t.Fatalf("etcd does not answer: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	rbac := filepath.Join(f.repo, "configs/etcd/rbac.sh")
	f.rbac(ctx, rbac, "setup")
	for _, h := range f.topo.Hosts {
		f.rbac(ctx, rbac, "node", h.Name)
	}
	if err := os.WriteFile(filepath.Join(f.dir, "tabbyctl.yaml"), fmt.Appendf(nil,
		"etcd:\n  endpoints: [%q]\n  caFile: %s\n  certFile: %s\n  keyFile: %s\n", f.endpoint,
		filepath.Join(f.certs, "ca.pem"), filepath.Join(f.certs, "tabbyctl.pem"), filepath.Join(f.certs, "tabbyctl-key.pem")), 0o600); err != nil {
		t.Fatal(err)
	}
}

func (f *fleet) etcdEnv(user string) []string {
	return append(os.Environ(), "ETCDCTL_API=3", "ETCDCTL_ENDPOINTS="+f.endpoint,
		"ETCDCTL_CACERT="+filepath.Join(f.certs, "ca.pem"),
		"ETCDCTL_CERT="+filepath.Join(f.certs, user+".pem"),
		"ETCDCTL_KEY="+filepath.Join(f.certs, user+"-key.pem"))
}

func (f *fleet) etcdctl(ctx context.Context, user string, args ...string) (string, error) {
	cmd := namedns.CommandContext(ctx, f.topo.RouterNS(), "etcdctl", args...)
	cmd.Env = f.etcdEnv(user)
	return run(ctx, cmd)
}

func (f *fleet) rbac(ctx context.Context, script string, args ...string) {
	cmd := namedns.CommandContext(ctx, f.topo.RouterNS(), script, args...)
	cmd.Env = f.etcdEnv("root")
	if out, err := run(ctx, cmd); err != nil {
		f.t.Fatal(out, err)
	}
}

// tabbyctl runs the operator's tabbyctl (admin role) from the router's namespace.
func (f *fleet) tabbyctl(ctx context.Context, stdin string, args ...string) (string, error) {
	cmd := namedns.CommandContext(ctx, f.topo.RouterNS(), f.ctlBin, append([]string{"--config", filepath.Join(f.dir, "tabbyctl.yaml")}, args...)...)
	cmd.Stdin = strings.NewReader(stdin)
	return run(ctx, cmd)
}

// inventory writes the example inventory with only its addresses changed: etcd runs on
// the router here, not on master.
func (f *fleet) inventory() string {
	b, err := os.ReadFile(filepath.Join(f.repo, "configs/ansible/inventory.example.ini"))
	if err != nil {
		f.t.Fatal(err)
	}
	text := strings.ReplaceAll(string(b), "https://10.30.0.136:2379", f.endpoint)
	if text == string(b) {
		f.t.Fatal("the example inventory no longer names etcd at https://10.30.0.136:2379: update the suite")
	}
	path := filepath.Join(f.dir, "inventory/inventory.ini")
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		f.t.Fatal(err)
	}
	return path
}

// playbook runs ansible-playbook from the router's namespace over SSH and returns its
// output.
func (f *fleet) playbook(ctx context.Context, args ...string) (string, error) {
	home := filepath.Join(f.dir, "ansible-home")
	if err := os.MkdirAll(home, 0o700); err != nil {
		return "", err
	}
	all := append([]string{"-i", f.inventory(), filepath.Join(f.repo, "configs/ansible/site.yml")}, args...)
	cmd := namedns.CommandContext(ctx, f.topo.RouterNS(), "ansible-playbook", all...)
	cmd.Env = append(os.Environ(), "HOME="+home, "ANSIBLE_HOME="+home,
		"ANSIBLE_PRIVATE_KEY_FILE="+filepath.Join(f.dir, "id_ed25519"),
		"ANSIBLE_HOST_KEY_CHECKING=False", "ANSIBLE_PIPELINING=True", "ANSIBLE_NOCOLOR=1",
		"ANSIBLE_RETRY_FILES_ENABLED=0", "ANSIBLE_FORCE_COLOR=0",
		"ANSIBLE_SSH_ARGS=-o ControlMaster=auto -o ControlPersist=30s -o UserKnownHostsFile=/dev/null",
		"ANSIBLE_SSH_CONTROL_PATH_DIR="+filepath.Join(home, "cp"))
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	_ = os.WriteFile(filepath.Join(f.dir, fmt.Sprintf("ansible-%d.log", time.Now().UnixNano())), out.Bytes(), 0o644)
	return out.String(), err
}

// unit returns systemd's view of tabbyd on a host.
func (f *fleet) unit(ctx context.Context, host string) map[string]string {
	out, err := f.hosts[host].Output(ctx, "systemctl", "show", "-p", "ActiveState", "-p", "SubState",
		"-p", "StatusText", "-p", "NRestarts", "-p", "Result", "-p", "MainPID", "-p", "InvocationID",
		"-p", "ExecMainStartTimestampMonotonic", "-p", "ActiveEnterTimestampMonotonic", "tabbyd.service")
	if err != nil {
		f.t.Error(err)
	}
	m := map[string]string{}
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		k, v, _ := strings.Cut(l, "=")
		m[k] = v
	}
	return m
}

// waitActive waits until tabbyd on a host is active (running): it has sent READY=1.
func (f *fleet) waitActive(ctx context.Context, host string, timeout time.Duration) map[string]string {
	deadline := time.Now().Add(timeout)
	for {
		u := f.unit(ctx, host)
		if u["ActiveState"] == "active" && u["SubState"] == "running" {
			return u
		}
		if time.Now().After(deadline) {
			f.t.Fatalf("tabbyd on %s is not active (running) after %s: %v", host, timeout, u)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// pod is a workload plugged in with tabby-cni inside a host, as a CNI runtime does it.
type pod struct {
	name, host string
	ip         string
}

func (f *fleet) addPod(ctx context.Context, p *pod) {
	t := f.t
	h := f.hosts[p.host]
	if out, err := h.Output(ctx, "ip", "netns", "add", p.name); err != nil {
		t.Fatal(out, err)
	}
	// A CNI runtime hands the plugin its entry of the conflist, with the list's name and
	// version (libcni's ConfFromConfList).
	raw, err := os.ReadFile(filepath.Join(h.Root, "etc/cni/net.d/10-tabby.conflist"))
	if err != nil {
		t.Fatal(err)
	}
	var list struct {
		CNIVersion string           `json:"cniVersion"`
		Name       string           `json:"name"`
		Plugins    []map[string]any `json:"plugins"`
	}
	if err := json.Unmarshal(raw, &list); err != nil || len(list.Plugins) != 1 {
		t.Fatalf("conflist written by the role: %v: %s", err, raw)
	}
	conf := list.Plugins[0]
	conf["cniVersion"], conf["name"] = list.CNIVersion, list.Name
	stdin, _ := json.Marshal(conf)
	cmd := h.Command(ctx, "/opt/cni/bin/tabby-cni")
	cmd.Env = []string{"CNI_COMMAND=ADD", "CNI_CONTAINERID=" + p.name, "CNI_NETNS=/run/netns/" + p.name,
		"CNI_IFNAME=eth0", "CNI_PATH=/opt/cni/bin", "PATH=/usr/sbin:/usr/bin:/sbin:/bin"}
	cmd.Stdin = bytes.NewReader(stdin)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("tabby-cni ADD %s on %s: %v: %s %s", p.name, p.host, err, stdout.String(), stderr.String())
	}
	var res struct {
		IPs []struct {
			Address string `json:"address"`
		} `json:"ips"`
	}
	if err := json.Unmarshal(stdout.Bytes(), &res); err != nil || len(res.IPs) == 0 {
		t.Fatalf("tabby-cni result for %s: %v: %s", p.name, err, stdout.String())
	}
	p.ip, _, _ = strings.Cut(res.IPs[0].Address, "/")
}

func (f *fleet) ping(ctx context.Context, from, to *pod) error {
	_, err := run(ctx, exec.CommandContext(ctx, "nsenter", "--net="+f.hosts[from.host].PodNSPath(from.name), "--", "ping", "-n", "-c", "1", "-W", "2", to.ip))
	return err
}

// waitPing waits until every pod answers every other.
func (f *fleet) waitPing(ctx context.Context, pods []*pod, timeout time.Duration) {
	deadline := time.Now().Add(timeout)
	for _, a := range pods {
		for _, b := range pods {
			if a == b {
				continue
			}
			for {
				err := f.ping(ctx, a, b)
				if err == nil {
					break
				}
				if time.Now().After(deadline) {
					f.t.Fatalf("%s on %s does not reach %s on %s (%s): %v", a.name, a.host, b.name, b.host, b.ip, err)
				}
			}
		}
	}
}

// streams is steady traffic between pods on different hosts, in both subnets.
type streams struct {
	names   []string
	pingers []*Pinger
}

func (f *fleet) startStreams(pods []*pod) *streams {
	s := &streams{}
	for i, a := range pods {
		b := pods[(i+1)%len(pods)]
		p, err := StartPing(f.hosts[a.host].PodNSPath(a.name), b.ip)
		if err != nil {
			f.t.Fatal(err)
		}
		s.names = append(s.names, a.name+"→"+b.name)
		s.pingers = append(s.pingers, p)
	}
	return s
}

// stop ends the streams and returns the lost requests of each, and the total sent.
func (s *streams) stop(t *testing.T) (lost map[string]int, sent int) {
	lost = map[string]int{}
	for i, p := range s.pingers {
		tx, rx, err := p.Stop()
		if err != nil {
			t.Error(err)
			continue
		}
		lost[s.names[i]] = tx - rx
		sent += tx
	}
	return lost, sent
}

func totalLost(lost map[string]int) int {
	n := 0
	for _, v := range lost {
		n += v
	}
	return n
}

var slogLine = regexp.MustCompile(`(?m)^time=\S+ level=(INFO|WARN|DEBUG|ERROR) msg=`)

func TestRollout(t *testing.T) {
	// On ^C or SIGTERM the context ends, the running step fails, and the cleanup still
	// removes the containers, processes and namespaces.
	sigCtx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(sigCtx, 40*time.Minute)
	defer cancel()
	start := time.Now()
	f := newFleet(ctx, t)
	t.Logf("lab, etcd and %d hosts booted in %s", len(f.hosts), time.Since(start).Round(100*time.Millisecond))

	// The cluster's configuration, as the operator applies it before the rollout: a
	// CrossSubnet VXLAN pool (worker-3 is in the other subnet), and the BGP mesh with an
	// MD5 password that the role distributes.
	meshPassword := randomHex(12)
	if out, err := f.tabbyctl(ctx, `apiVersion: projectcalico.org/v3
kind: IPPool
metadata:
  name: default-ipv4-ippool
spec:
  cidr: 192.168.0.0/16
  blockSize: 26
  ipipMode: Never
  vxlanMode: CrossSubnet
  natOutgoing: true
  nodeSelector: all()
---
apiVersion: projectcalico.org/v3
kind: BGPConfiguration
metadata:
  name: default
spec:
  nodeToNodeMeshEnabled: true
  asNumber: 64512
  nodeMeshPassword:
    secretKeyRef: {name: bgp-secrets, key: mesh-password}
`, "apply", "-f", "-"); err != nil {
		t.Fatal(out, err)
	}
	secrets := filepath.Join(f.dir, "secrets.yml")
	if err := os.WriteFile(secrets, fmt.Appendf(nil, "tabby_bgp_secrets:\n  - {name: bgp-secrets, key: mesh-password, password: %q}\n", meshPassword), 0o600); err != nil {
		t.Fatal(err)
	}
	deb := os.Getenv(envDeb)

	began := time.Now()
	out, err := f.playbook(ctx, "-e", "tabby_deb="+deb, "-e", "@"+secrets)
	if err != nil {
		t.Fatalf("first rollout: %v\n%s", err, out)
	}
	t.Logf("first rollout on %d hosts: %s", len(f.hosts), time.Since(began).Round(100*time.Millisecond))

	t.Run("active and ready", func(t *testing.T) {
		for _, name := range f.order {
			u := f.unit(ctx, name)
			if u["ActiveState"] != "active" || u["SubState"] != "running" || u["StatusText"] == "" {
				t.Errorf("%s: tabbyd %v, want active (running) with a status text", name, u)
			}
			j, err := f.hosts[name].Journal(ctx, "tabbyd.service")
			if err != nil || !slogLine.MatchString(j) {
				t.Errorf("%s: journal of tabbyd has no structured log line: %v\n%s", name, err, j)
			}
			t.Logf("%s: %s", name, u["StatusText"])
		}
	})

	pods := []*pod{{name: "pod-1", host: "worker-1"}, {name: "pod-2", host: "worker-2"}, {name: "pod-3", host: "worker-3"}}
	for _, p := range pods {
		f.addPod(ctx, p)
	}
	f.waitPing(ctx, pods, 30*time.Second)

	t.Run("hardened unit does all its work", func(t *testing.T) { f.checkWork(ctx, t, meshPassword) })
	t.Run("stop and restart keep traffic", func(t *testing.T) { f.checkStopRestart(ctx, t, pods) })
	t.Run("watchdog restarts a frozen tabbyd", func(t *testing.T) { f.checkWatchdog(ctx, t) })
	t.Run("crash loop with etcd down", func(t *testing.T) { f.checkCrashLoop(ctx, t) })
	t.Run("rolling upgrade", func(t *testing.T) { f.checkUpgrade(ctx, t, pods, secrets) })
	t.Run("a host that is not ready stops the rollout", func(t *testing.T) { f.checkBrokenHost(ctx, t, secrets) })
	t.Logf("whole suite: %s", time.Since(start).Round(time.Second))
}
