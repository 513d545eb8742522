package etcdtest

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tabby-net/tabby/datastore"
	"github.com/tabby-net/tabby/datastore/etcdembed"
)

// Cluster is a test's etcd cluster of several members on loopback, over TLS with
// client-certificate authentication: etcd as it runs in production.
type Cluster struct {
	Members []*etcdembed.Server
	// Endpoints are the members' client URLs.
	Endpoints []string
	// PKI signed every member's certificate; Client certificates come from it too.
	PKI *PKI
}

// StartCluster starts a cluster of n members over TLS that require client certificates,
// and stops it when the test ends.
func StartCluster(t testing.TB, n int) *Cluster {
	t.Helper()
	pki := NewPKI(t)
	type member struct {
		name, certFile, keyFile string
		client, peer            int
	}
	ms := make([]member, n)
	var initial []string
	for i := range ms {
		ms[i].name = fmt.Sprintf("etcd-%d", i+1)
		ms[i].certFile, ms[i].keyFile = pki.Member(t, ms[i].name, net.IPv4(127, 0, 0, 1))
		ms[i].client, ms[i].peer = freePort(t), freePort(t)
		initial = append(initial, ms[i].name+"="+etcdembed.PeerURL("127.0.0.1", ms[i].peer, true))
	}
	token := fmt.Sprintf("tabby-test-%d", time.Now().UnixNano())
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c := &Cluster{Members: make([]*etcdembed.Server, n), PKI: pki}
	errs := make([]error, n)
	var wg sync.WaitGroup
	// A member is ready only once a quorum is up: start them all at once.
	for i, m := range ms {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.Members[i], errs[i] = etcdembed.Start(ctx, etcdembed.Options{
				Dir: filepath.Join(t.TempDir(), m.name), Name: m.name, ClientPort: m.client, PeerPort: m.peer,
				InitialCluster: strings.Join(initial, ","), ClusterToken: token, Fast: true,
				TLS: &etcdembed.TLS{CAFile: pki.CAFile, CertFile: m.certFile, KeyFile: m.keyFile, ClientCertAuth: true},
			})
		}()
	}
	wg.Wait()
	for i, s := range c.Members {
		if s != nil {
			t.Cleanup(s.Close)
			c.Endpoints = append(c.Endpoints, s.Endpoint)
		}
		if errs[i] != nil {
			t.Fatalf("start etcd member %s: %v", ms[i].name, errs[i])
		}
	}
	return c
}

// Config is a datastore configuration for the etcd user cn: a client certificate whose
// common name is cn, issued now.
func (c *Cluster) Config(t testing.TB, cn string) datastore.Config {
	t.Helper()
	cert, key := c.PKI.Client(t, cn)
	return datastore.Config{Endpoints: c.Endpoints, CAFile: c.PKI.CAFile, CertFile: cert, KeyFile: key, DialTimeout: 5 * time.Second}
}

// Client connects as the etcd user cn (see Config) and closes the client when the test
// ends.
func (c *Cluster) Client(t testing.TB, cn string) *datastore.Client {
	t.Helper()
	cli, err := datastore.New(c.Config(t, cn))
	if err != nil {
		t.Fatalf("etcd client as %s: %v", cn, err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

// Leader returns the member that leads now, waiting up to 10 s for an election.
func (c *Cluster) Leader(t testing.TB) *etcdembed.Server {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		for _, m := range c.Members {
			if m.IsLeader() {
				return m
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatal("no etcd member leads after 10s")
	return nil
}

// Etcdctl runs etcdctl (Debian's etcd-client) against the cluster as the etcd user cn,
// with its ETCDCTL_* environment, plus env; it returns the combined output.
func (c *Cluster) Etcdctl(t testing.TB, cn string, env []string, args ...string) (string, error) {
	t.Helper()
	return c.Command(t, cn, env, "etcdctl", args...)
}

// Command runs a program (etcdctl or a script calling it, such as configs/etcd/rbac.sh)
// with etcdctl's environment set for the etcd user cn.
func (c *Cluster) Command(t testing.TB, cn string, env []string, name string, args ...string) (string, error) {
	t.Helper()
	if _, err := exec.LookPath("etcdctl"); err != nil {
		t.Fatalf("etcdctl not found (Debian's etcd-client, installed by make deps): %v", err)
	}
	cert, key := c.PKI.Client(t, cn)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = append(os.Environ(), "ETCDCTL_API=3",
		"ETCDCTL_ENDPOINTS="+strings.Join(c.Endpoints, ","),
		"ETCDCTL_CACERT="+c.PKI.CAFile, "ETCDCTL_CERT="+cert, "ETCDCTL_KEY="+key)
	cmd.Env = append(cmd.Env, env...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("find a free port: %v", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// RepoFile returns the path of a file of this repository (e.g. configs/etcd/rbac.sh),
// found by walking up from the test's directory to go.mod.
func RepoFile(t testing.TB, rel string) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return filepath.Join(dir, rel)
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatalf("no go.mod above the test's directory: cannot find %s", rel)
		}
		dir = parent
	}
}
