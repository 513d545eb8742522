package lab

// etcd as it runs in production, end to end: the articles' lab with a three-member etcd
// over TLS that requires client certificates, RBAC set up by configs/etcd/rbac.sh, a
// tabbyd per host logging in as tabbyd-<host> (worker-1 with a password), tabby-cni as
// tabby-cni, tabbyctl as an operator of the admin role with a password. Then: denied
// writes, the etcd leader killed, members partitioned from hosts, and every output
// searched for the secrets.
//
//	go test ./lab -run TestSecureEtcd -v

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tabby-net/tabby/datastore"
	"github.com/tabby-net/tabby/datastore/etcdtest"
	"github.com/tabby-net/tabby/datastore/ipam"
	"github.com/tabby-net/tabby/internal/namedns"
)

func randomHex(t *testing.T, n int) string {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

// secretLab is the lab of TestSecureEtcd and the secrets it must never show.
type secretLab struct {
	*Cluster
	ctx     context.Context
	secrets map[string]string // what -> value
	// outputs are every output the test saw, to search for the secrets at the end.
	mu      sync.Mutex
	outputs map[string]string
}

func (l *secretLab) saw(what, out string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.outputs[what] += out
}

func TestSecureEtcd(t *testing.T) {
	requireRoot(t)
	if testing.Short() {
		t.Skip("end-to-end suite with a three-member TLS etcd (about two minutes): not run with -short; make test runs it. With -short, datastore's TLS config validation and the single-member etcd tests still run")
	}
	if _, err := exec.LookPath("etcdctl"); err != nil {
		t.Fatalf("etcdctl (Debian's etcd-client, installed by make deps): %v", err)
	}
	bin := e2eBinaries(t)
	prefix := "tabby-sec-" + randomHex(t, 3)
	secrets := map[string]string{
		"tabbyd-worker-1's etcd password": "EtcdPw" + randomHex(t, 8),
		"tabbyctl's etcd password":        "OpsPw" + randomHex(t, 8),
		"a wrong etcd password":           "WrongPw" + randomHex(t, 8),
		"the BGP peer's password":         "BgpPw" + randomHex(t, 8),
	}
	c := NewArticlesCluster(prefix, filepath.Join(t.TempDir(), "state"), bin, logWriter{t})
	c.Secure = &SecureEtcd{
		ScriptDir: etcdtest.RepoFile(t, "configs/etcd"),
		CtlUser:   "ops",
		Passwords: map[string]string{
			"tabbyd-worker-1": secrets["tabbyd-worker-1's etcd password"],
			"ops":             secrets["tabbyctl's etcd password"],
		},
	}
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	l := &secretLab{Cluster: c, ctx: ctx, secrets: secrets, outputs: map[string]string{}}
	t.Cleanup(func() {
		if t.Failed() {
			c.Out = logWriter{t}
			c.sayLogTails(30)
		}
		if err := c.Down(); err != nil {
			t.Errorf("down: %v", err)
		}
		if left, err := namedns.List(prefix + "-"); err != nil || len(left) > 0 {
			t.Errorf("namespaces left behind: %v (%v)", left, err)
		}
	})
	start := time.Now()
	if err := c.Up(ctx, ModeVXLAN); err != nil {
		t.Fatalf("up: %v", err)
	}
	t.Logf("lab %s up with %d etcd members over TLS in %.1fs", prefix, len(c.EtcdMembers()), time.Since(start).Seconds())
	l.pingAll(t)
	l.bgpSecrets(t)

	t.Run("denied", l.testDenied)
	t.Run("failures", l.testFailures)
	t.Run("secrets", l.testSecrets)
}

func (l *secretLab) pingAll(t *testing.T) {
	t.Helper()
	res, err := l.PingMatrix(l.ctx, false)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range res {
		if !r.OK {
			var b bytes.Buffer
			PrintMatrix(&b, res)
			t.Fatalf("pods do not reach each other:\n%s", b.String())
		}
	}
}

// bgpSecrets gives worker-1 a BGP peer whose password is in a secret file, and one whose
// secret file is missing: tabbyd reads the one and reports the other, showing neither.
func (l *secretLab) bgpSecrets(t *testing.T) {
	t.Helper()
	dir := filepath.Join(l.HostDir("worker-1"), "secrets", "bgp-peer")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "password"), []byte(l.secrets["the BGP peer's password"]), 0o600); err != nil {
		t.Fatal(err)
	}
	manifest := `apiVersion: projectcalico.org/v3
kind: BGPPeer
metadata:
  name: secret-peer
spec:
  node: worker-1
  peerIP: 10.30.0.250
  asNumber: 64513
  password:
    secretKeyRef: {name: bgp-peer, key: password}
---
apiVersion: projectcalico.org/v3
kind: BGPPeer
metadata:
  name: missing-secret-peer
spec:
  node: worker-1
  peerIP: 10.30.0.251
  asNumber: 64513
  password:
    secretKeyRef: {name: absent, key: password}
`
	out, err := l.ctlWithInput(l.ctx, "master", strings.NewReader(manifest), "apply", "-f", "-")
	l.saw("tabbyctl apply of the BGP peers", out)
	if err != nil {
		t.Fatal(err)
	}
	// Wait until worker-1's status shows both peers: the secret was read (or missed).
	deadline := time.Now().Add(30 * time.Second)
	for {
		out, err := l.NodeCtl(l.ctx, "worker-1", "node", "status")
		l.saw("tabbyctl node status", out)
		// The peer whose secret is missing is left out and reported as a problem of its
		// BGPPeer (status and log); the other one is configured.
		if err == nil && strings.Contains(out, "10.30.0.250") {
			t.Logf("worker-1's peers:\n%s", out)
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("worker-1 does not show the BGP peer 10.30.0.250 after 30s: %v\n%s", err, out)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// runIn runs a program in a namespace with extra environment and returns its combined
// output and exit error.
func (l *secretLab) runIn(ns string, env []string, stdin string, name string, args ...string) (string, error) {
	cmd := namedns.Command(ns, name, args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdin = strings.NewReader(stdin)
	out, err := cmdOutputCombined(l.ctx, cmd)
	l.saw(filepath.Base(name)+" "+strings.Join(args, " "), out)
	return out, err
}

// ctlAs is tabbyctl on worker-2 as the etcd user user (certificate only).
func (l *secretLab) ctlAs(user, stdin string, args ...string) (string, error) {
	h, _ := l.Topo.Host("worker-2")
	cr := l.EtcdCredentials(user)
	ctl, err := l.bin("tabbyctl")
	if err != nil {
		return "", err
	}
	env := []string{"TABBY_ETCD_CAFILE=" + cr.CAFile, "TABBY_ETCD_CERTFILE=" + cr.CertFile, "TABBY_ETCD_KEYFILE=" + cr.KeyFile}
	all := append([]string{"--endpoints", strings.Join(l.EtcdEndpoints(h), ",")}, args...)
	return l.runIn(l.Topo.HostNS("worker-2"), env, stdin, ctl, all...)
}

func (l *secretLab) testDenied(t *testing.T) {
	// tabbyctl as a tabbyd user: reading works, applying a pool is refused naming the key.
	if out, err := l.ctlAs("tabbyd-worker-2", "", "get", "ippool"); err != nil {
		t.Errorf("tabbyctl get ippool as tabbyd-worker-2: %v\n%s", err, out)
	}
	pool := "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata:\n  name: denied-pool\nspec:\n  cidr: 10.99.0.0/16\n"
	out, err := l.ctlAs("tabbyd-worker-2", pool, "apply", "-f", "-")
	key := "/calico/resources/v3/projectcalico.org/ippools/denied-pool"
	if err == nil || !strings.Contains(out, key) || !strings.Contains(out, "permission denied") {
		t.Errorf("tabbyctl apply of a pool as tabbyd-worker-2: %v, want a refusal naming %s:\n%s", err, key, out)
	} else {
		t.Logf("tabbyctl apply as tabbyd-worker-2: %s", strings.TrimSpace(out))
	}
	if ee, ok := err.(*exec.ExitError); ok && ee.ExitCode() != 1 {
		t.Errorf("tabbyctl's exit code for a refused write: %d, want 1", ee.ExitCode())
	}
	ds := l.datastore(t)
	if _, err := ds.GetIPPool(l.ctx, "denied-pool"); err == nil {
		t.Errorf("the refused apply stored the pool")
	}

	// tabby-cni under a role that may write blocks but not handles: ADD fails naming the
	// handle, leaves no address and no interface.
	roleSteps := [][]string{
		{"role", "add", "cni-nohandles"},
		{"role", "grant-permission", "--prefix=true", "cni-nohandles", "read", "/calico/"},
		{"role", "grant-permission", "--prefix=true", "cni-nohandles", "readwrite", "/calico/ipam/v2/assignment/"},
		{"role", "grant-permission", "--prefix=true", "cni-nohandles", "readwrite", "/calico/ipam/v2/host/"},
		{"user", "add", "cni-nohandles", "--no-password"},
		{"user", "grant-role", "cni-nohandles", "cni-nohandles"},
	}
	for _, args := range roleSteps {
		if out, err := l.Etcdctl(l.ctx, "root", "", "etcdctl", args...); err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
	}
	if out, err := cmdOutputCombined(l.ctx, exec.Command(filepath.Join(l.Secure.ScriptDir, "make-certs.sh"), "client", l.PKIDir(), "cni-nohandles")); err != nil {
		t.Fatalf("make-certs.sh: %v\n%s", err, out)
	}
	h, _ := l.Topo.Host("worker-2")
	ns := l.PodNS("denied-pod")
	if err := namedns.Create(ns); err != nil {
		t.Fatal(err)
	}
	defer namedns.Delete(ns)
	cr := l.EtcdCredentials("cni-nohandles")
	conf := fmt.Sprintf(`{"cniVersion":"1.0.0","name":"tabby","type":"tabby-cni","etcd_endpoints":%q,"nodename":"worker-2","mtu":0,"data_dir":%q,"run_dir":%q,"etcd_ca_cert_file":%q,"etcd_cert_file":%q,"etcd_key_file":%q}`,
		strings.Join(l.EtcdEndpoints(h), ","), l.DataDir("worker-2"), l.RunDir("worker-2"), cr.CAFile, cr.CertFile, cr.KeyFile)
	plugin, err := l.bin("tabby-cni")
	if err != nil {
		t.Fatal(err)
	}
	containerID := l.Topo.Prefix + "-denied-pod"
	out, err = l.runIn(l.Topo.HostNS("worker-2"), []string{"CNI_COMMAND=ADD", "CNI_CONTAINERID=" + containerID,
		"CNI_NETNS=" + namedns.Path(ns), "CNI_IFNAME=eth0", "CNI_PATH=" + filepath.Dir(plugin)}, conf, plugin)
	handleKey := "/calico/ipam/v2/handle/tabby." + containerID
	if err == nil || !strings.Contains(out, handleKey) || !strings.Contains(out, "permission denied") {
		t.Errorf("tabby-cni ADD without handle permission: %v, want a refusal naming %s:\n%s", err, handleKey, out)
	} else {
		t.Logf("tabby-cni ADD without handle permission: %s", strings.TrimSpace(out))
	}
	alloc := ipam.New(ds, nil)
	if ips, err := alloc.IPsByHandle(l.ctx, "tabby."+containerID); err != nil || len(ips) != 0 {
		t.Errorf("the refused ADD left addresses %v (%v)", ips, err)
	}
	if links, err := namedns.Command(ns, "ip", "-o", "link", "show", "eth0").CombinedOutput(); err == nil {
		t.Errorf("the refused ADD left eth0 in the pod: %s", links)
	}
	l.ipamCheck(t)
}

func (l *secretLab) datastore(t *testing.T) *datastore.Client {
	t.Helper()
	ds, err := l.Datastore()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ds.Close() })
	return ds
}

// ipamCheck runs tabbyctl ipam check, which must find nothing wrong.
func (l *secretLab) ipamCheck(t *testing.T) {
	t.Helper()
	out, err := l.Ctl(l.ctx, "master", "ipam", "check")
	l.saw("tabbyctl ipam check", out)
	if err != nil {
		t.Errorf("tabbyctl ipam check: %v", err)
		return
	}
	t.Logf("tabbyctl ipam check:\n%s", strings.TrimSpace(out))
}

// routeWatch polls every host's tabby routes and counts routes of the baseline that
// disappear, until stopped.
type routeWatch struct {
	mu      sync.Mutex
	removed []string
	stop    chan struct{}
	done    chan struct{}
}

func (l *secretLab) watchRoutes(t *testing.T) *routeWatch {
	t.Helper()
	base := map[string][]string{}
	for _, h := range l.Topo.Hosts {
		r, err := l.Topo.TabbyRoutes(h.Name)
		if err != nil {
			t.Fatal(err)
		}
		base[h.Name] = r
	}
	w := &routeWatch{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(w.done)
		tick := time.NewTicker(200 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-w.stop:
				return
			case <-tick.C:
			}
			for host, want := range base {
				got, err := l.Topo.TabbyRoutes(host)
				if err != nil {
					continue
				}
				for _, r := range want {
					if !slices.Contains(got, r) {
						w.mu.Lock()
						w.removed = append(w.removed, host+": "+r)
						w.mu.Unlock()
					}
				}
			}
		}
	}()
	return w
}

func (w *routeWatch) finish() []string {
	close(w.stop)
	<-w.done
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Compact(slices.Sorted(slices.Values(w.removed)))
}

// natChange switches the pool's natOutgoing and returns how long until every host's NAT
// rule followed: the proof that every host's watch delivers changes. The write is retried
// while the cluster has no leader.
func (l *secretLab) natChange(t *testing.T, on bool) time.Duration {
	t.Helper()
	start := time.Now()
	for {
		err := l.SetNATOutgoing(l.ctx, on)
		if err == nil {
			break
		}
		if time.Since(start) > 30*time.Second {
			t.Fatalf("natOutgoing %t: %v", on, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if err := l.WaitNAT(l.ctx, on, 90*time.Second); err != nil {
		t.Fatalf("natOutgoing %t did not reach every host: %v", on, err)
	}
	return time.Since(start)
}

func (l *secretLab) testFailures(t *testing.T) {
	h1, _ := l.Topo.Host("worker-1")
	w := l.watchRoutes(t)

	// Kill the leader; a change made once the cluster has a new leader reaches every host.
	leader, err := l.EtcdLeader(l.ctx)
	if err != nil {
		t.Fatal(err)
	}
	pid, err := l.EtcdMemberPID(leader.Name)
	if err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	if err := killHard(pid); err != nil {
		t.Fatal(err)
	}
	var next EtcdMember
	for {
		if next, err = l.EtcdLeader(l.ctx); err == nil {
			break
		}
		if time.Since(killed) > 30*time.Second {
			t.Fatalf("no new etcd leader 30s after killing %s: %v", leader.Name, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	elected := time.Since(killed)
	took := l.natChange(t, false)
	t.Logf("FIGURE leader %s killed: %s leads after %.1fs; a change made then reached every host in %.1fs (%.1fs after the kill)",
		leader.Name, next.Name, elected.Seconds(), took.Seconds(), time.Since(killed).Seconds())
	if err := l.RestartEtcdMember(l.ctx, leader.Name); err != nil {
		t.Fatal(err)
	}

	// Partition worker-1 from one member at a time, inside its namespace (packets to and
	// from the member are dropped, as by a broken link), and make a change each time: whichever
	// member carries worker-1's watch, one of the three partitions cuts it, and the change
	// must still reach every host.
	on := true
	for _, m := range l.EtcdMembers() {
		gw, port := l.Topo.Gateway(h1).String(), fmt.Sprint(m.ClientPort)
		rules := [][]string{
			{"OUTPUT", "-d", gw, "-p", "tcp", "--dport", port, "-j", "DROP"},
			{"INPUT", "-s", gw, "-p", "tcp", "--sport", port, "-j", "DROP"},
		}
		for _, rule := range rules {
			if out, err := namedns.Command(l.Topo.HostNS("worker-1"), "iptables", append([]string{"-w", "-I"}, rule...)...).CombinedOutput(); err != nil {
				t.Fatalf("partition worker-1 from %s: %v: %s", m.Name, err, out)
			}
		}
		took := l.natChange(t, on)
		t.Logf("FIGURE worker-1 cut off from %s: a change reached every host in %.1fs", m.Name, took.Seconds())
		for _, rule := range rules {
			if out, err := namedns.Command(l.Topo.HostNS("worker-1"), "iptables", append([]string{"-w", "-D"}, rule...)...).CombinedOutput(); err != nil {
				t.Fatalf("heal worker-1's partition from %s: %v: %s", m.Name, err, out)
			}
		}
		on = !on
	}
	took = l.natChange(t, on)
	t.Logf("FIGURE after the partitions healed: a change reached every host in %.1fs", took.Seconds())
	removed := w.finish()
	t.Logf("FIGURE routes removed during the leader kill and the partitions: %d", len(removed))
	if len(removed) > 0 {
		t.Errorf("routes removed during etcd failures:\n%s", strings.Join(removed, "\n"))
	}
	// After recovery: the restarted member serves again, routes match, IPAM is consistent,
	// pods reach each other.
	if err := l.waitEtcd(l.ctx, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := l.WaitRoutes(l.ctx, 60*time.Second); err != nil {
		t.Fatal(err)
	}
	l.ipamCheck(t)
	l.pingAll(t)
}

// httpGetInNS fetches a URL from inside a namespace.
func httpGetInNS(ctx context.Context, ns, url string) (string, error) {
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return namedns.Dial(ctx, ns, network, addr)
		}}}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "", err
	}
	resp, err := client.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

// statusDoc reads a host's status socket document.
func statusDoc(ctx context.Context, socket string) (string, error) {
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		}}}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://tabbyd/status", nil)
	if err != nil {
		return "", err
	}
	resp, err := client.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

func (l *secretLab) testSecrets(t *testing.T) {
	wrong := l.secrets["a wrong etcd password"]
	h1, _ := l.Topo.Host("worker-1")
	ctl, err := l.bin("tabbyctl")
	if err != nil {
		t.Fatal(err)
	}
	tabbyd, err := l.bin("tabbyd")
	if err != nil {
		t.Fatal(err)
	}
	ops := l.EtcdCredentials("ops")
	opsEnv := func(pw string) []string {
		return []string{"TABBY_ETCD_CAFILE=" + ops.CAFile, "TABBY_ETCD_CERTFILE=" + ops.CertFile,
			"TABBY_ETCD_KEYFILE=" + ops.KeyFile, "TABBY_ETCD_USERNAME=ops", "TABBY_ETCD_PASSWORD=" + pw}
	}
	endpoints := strings.Join(l.EtcdEndpoints(h1), ",")
	// Failing paths of tabbyctl: a wrong password, an unreachable etcd, a denied write.
	if out, err := l.runIn(l.Topo.HostNS("worker-1"), opsEnv(wrong), "", ctl, "--endpoints", endpoints, "--timeout", "10s", "get", "ippool"); err == nil {
		t.Errorf("tabbyctl with a wrong password succeeded:\n%s", out)
	} else {
		t.Logf("tabbyctl with a wrong password: %s", strings.TrimSpace(out))
	}
	unreachable := fmt.Sprintf("https://%s:1", l.Topo.Gateway(h1))
	if out, err := l.runIn(l.Topo.HostNS("worker-1"), opsEnv(l.secrets["tabbyctl's etcd password"]), "", ctl, "--endpoints", unreachable, "--timeout", "3s", "get", "ippool"); err == nil {
		t.Errorf("tabbyctl against an unreachable etcd succeeded:\n%s", out)
	}
	// Failing paths of tabbyd: a wrong password, an unreachable etcd; each run for a few
	// seconds from the outside host (it has no Node and routes nothing of the lab's).
	outsideNS := l.Topo.OutsideNS()
	cr := l.EtcdCredentials("tabbyd-worker-1")
	reachable := fmt.Sprintf("https://%s:%d", l.Topo.Outside.Router.Addr(), EtcdPort)
	for _, tc := range []struct {
		name, endpoint, password string
		// denied: the login works, but the role lacks the Node of this name: tabbyd
		// must keep running and retrying, saying which key it was refused.
		denied bool
	}{
		{name: "wrong-password", endpoint: reachable, password: wrong},
		{name: "unreachable", endpoint: fmt.Sprintf("https://%s:1", l.Topo.Outside.Router.Addr()), password: l.secrets["tabbyd-worker-1's etcd password"]},
		{name: "denied", endpoint: reachable, password: l.secrets["tabbyd-worker-1's etcd password"], denied: true},
	} {
		dir := filepath.Join(l.StateDir, "failing-"+tc.name)
		if err := os.MkdirAll(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		cfg := fmt.Sprintf(`nodeName: ghost-%s
etcd:
  endpoints: [%q]
  caFile: %q
  certFile: %q
  keyFile: %q
  username: tabbyd-worker-1
  password: %q
ipv4: {address: %s}
dataDir: %s
runDir: %s
statusSocket: %s
health: {listen: ""}
metrics: {listen: ""}
`, tc.name, tc.endpoint, cr.CAFile, cr.CertFile, cr.KeyFile, tc.password, l.Topo.Outside.Addr,
			filepath.Join(dir, "data"), filepath.Join(dir, "run"), filepath.Join(dir, "run", "tabbyd.sock"))
		path := filepath.Join(dir, "tabbyd.yaml")
		if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
			t.Fatal(err)
		}
		runCtx, cancel := context.WithTimeout(l.ctx, 6*time.Second)
		cmd := namedns.Command(outsideNS, tabbyd, "run", "--config", path)
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Start(); err != nil {
			cancel()
			t.Fatal(err)
		}
		// Its command line while it runs: the config path, never the password.
		time.Sleep(2 * time.Second)
		if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", cmd.Process.Pid)); err == nil {
			l.saw("/proc/<tabbyd "+tc.name+">/cmdline", string(b))
		}
		<-runCtx.Done()
		cancel()
		running := pidRuns(cmd.Process.Pid, "")
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		l.saw("tabbyd "+tc.name, out.String())
		if tc.denied {
			key := "/calico/resources/v3/projectcalico.org/nodes/ghost-denied"
			if !running {
				t.Errorf("tabbyd refused its Node exited instead of retrying")
			}
			if !strings.Contains(out.String(), key) || !strings.Contains(out.String(), "permission denied") {
				t.Errorf("tabbyd refused its Node does not say which key was refused (%s):\n%s", key, out.String())
			}
			// Nothing half-written: no block claimed, no tunnel address held for a Node
			// that could not be written.
			ds := l.datastore(t)
			for _, prefix := range []string{ds.Keys.AffinityPrefix("ghost-denied"), ds.Keys.HandlePrefix()} {
				kvs, _, err := ds.List(l.ctx, prefix)
				if err != nil {
					t.Fatal(err)
				}
				for _, kv := range kvs {
					if strings.Contains(kv.Key, "ghost-denied") {
						t.Errorf("tabbyd refused its Node left %s behind", kv.Key)
					}
				}
			}
		}
		t.Logf("tabbyd with %s said:\n%s", tc.name, lastLines(out.String(), 3))
	}

	// Status, metrics, node status of every host; command lines of every lab process.
	for _, h := range l.Topo.Hosts {
		doc, err := statusDoc(l.ctx, l.StatusSocket(h.Name))
		if err != nil {
			t.Errorf("status socket of %s: %v", h.Name, err)
		}
		l.saw("status socket of "+h.Name, doc)
		metrics, err := httpGetInNS(l.ctx, l.Topo.HostNS(h.Name), "http://127.0.0.1:9091/metrics")
		if err != nil {
			t.Errorf("metrics of %s: %v", h.Name, err)
		}
		l.saw("metrics of "+h.Name, metrics)
		out, _ := l.NodeCtl(l.ctx, h.Name, "node", "status")
		l.saw("tabbyctl node status on "+h.Name, out)
	}
	pids, err := l.Topo.ProcessesInLab()
	if err != nil {
		t.Fatal(err)
	}
	for _, pid := range pids {
		if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid)); err == nil {
			l.saw(fmt.Sprintf("/proc/%d/cmdline", pid), strings.ReplaceAll(string(b), "\x00", " "))
		}
	}
	// Every log of the lab, every file tabbyd keeps in its data and run directories.
	logs, _ := filepath.Glob(filepath.Join(l.StateDir, "*.log"))
	for _, h := range l.Topo.Hosts {
		for _, d := range []string{l.DataDir(h.Name), l.RunDir(h.Name)} {
			_ = filepath.WalkDir(d, func(p string, e os.DirEntry, err error) error {
				if err == nil && e.Type().IsRegular() {
					logs = append(logs, p)
				}
				return nil
			})
		}
	}
	for _, p := range logs {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Errorf("read %s: %v", p, err)
			continue
		}
		l.saw(strings.TrimPrefix(p, l.StateDir+"/"), string(b))
	}

	searched := 0
	l.mu.Lock()
	defer l.mu.Unlock()
	for where, text := range l.outputs {
		searched += len(text)
		for what, secret := range l.secrets {
			if strings.Contains(text, secret) {
				t.Errorf("%s shows %s", where, what)
			}
		}
	}
	t.Logf("FIGURE searched %d outputs (%d bytes) for %d secrets", len(l.outputs), searched, len(l.secrets))

	// Files that hold a secret are root-only.
	for _, p := range []string{
		filepath.Join(l.HostDir("worker-1"), "tabbyd.yaml"),
		filepath.Join(l.HostDir("worker-1"), "secrets", "bgp-peer", "password"),
		filepath.Join(l.PKIDir(), "tabbyd-worker-1-key.pem"),
		filepath.Join(l.PKIDir(), "ca-key.pem"),
	} {
		fi, err := os.Stat(p)
		if err != nil {
			t.Errorf("%v", err)
			continue
		}
		if fi.Mode().Perm()&0o077 != 0 {
			t.Errorf("%s holds a secret and has mode %v", p, fi.Mode().Perm())
		}
	}
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
