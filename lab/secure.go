package lab

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tabby-net/tabby/internal/namedns"
)

// SecureEtcd makes the lab's etcd the way it runs in production: several members in the
// router's namespace (each a process of its own, so that one can be killed), TLS for
// clients and peers, client certificates required, and etcd RBAC. The certificates and
// the roles are made by the operator's scripts (configs/etcd/make-certs.sh and rbac.sh),
// so the lab runs what the README tells operators to run. Every tabbyd logs in as
// tabbyd-<host>, tabby-cni as tabby-cni, tabbyctl as tabbyctl.
type SecureEtcd struct {
	// Members is the number of etcd members, 3 when 0.
	Members int
	// ScriptDir holds make-certs.sh and rbac.sh (the repository's configs/etcd).
	ScriptDir string
	// CtlUser is the etcd user tabbyctl logs in as, with the admin role; "tabbyctl"
	// when empty.
	CtlUser string
	// Passwords are the passwords of etcd users that log in with username and password
	// instead of their certificate's common name (they still present a certificate of
	// the CA: etcd requires one of every client). Keys are user names: tabbyd-<host> or
	// CtlUser.
	Passwords map[string]string
}

func (s *SecureEtcd) ctlUser() string {
	if s.CtlUser == "" {
		return "tabbyctl"
	}
	return s.CtlUser
}

// etcdMemberPortStep separates the members' ports: member i serves clients on
// EtcdPort+i*step and peers on the port after.
const etcdMemberPortStep = 10

func (s *SecureEtcd) members() int {
	if s.Members == 0 {
		return 3
	}
	return s.Members
}

// EtcdMember is one member of a SecureEtcd cluster.
type EtcdMember struct {
	Name       string // etcd-1, etcd-2, ...
	ClientPort int
	PeerPort   int
}

// EtcdMembers lists the members of the lab's etcd: one member on EtcdPort without
// SecureEtcd.
func (c *Cluster) EtcdMembers() []EtcdMember {
	if c.Secure == nil {
		return []EtcdMember{{Name: "etcd", ClientPort: EtcdPort, PeerPort: EtcdPort + 1}}
	}
	out := make([]EtcdMember, c.Secure.members())
	for i := range out {
		port := EtcdPort + i*etcdMemberPortStep
		out[i] = EtcdMember{Name: fmt.Sprintf("etcd-%d", i+1), ClientPort: port, PeerPort: port + 1}
	}
	return out
}

// EtcdEndpoints are the etcd URLs a host uses: every member at the router's address in
// the host's subnet.
func (c *Cluster) EtcdEndpoints(h Host) []string {
	return c.etcdURLs(c.Topo.Gateway(h))
}

func (c *Cluster) etcdURLs(addr netip.Addr) []string {
	scheme := "http"
	if c.Secure != nil {
		scheme = "https"
	}
	var out []string
	for _, m := range c.EtcdMembers() {
		out = append(out, fmt.Sprintf("%s://%s:%d", scheme, addr, m.ClientPort))
	}
	return out
}

// PKIDir holds the lab's CA and certificates (make-certs.sh's layout).
func (c *Cluster) PKIDir() string { return filepath.Join(c.StateDir, "pki") }

// EtcdCredentials are the files and user one etcd client uses; empty without SecureEtcd.
type EtcdCredentials struct {
	CAFile, CertFile, KeyFile string
	// Username and Password are set when the user logs in with a password.
	Username, Password string
}

// EtcdCredentials returns the credentials of the etcd user user (tabbyd-<host>,
// tabby-cni, tabbyctl, root).
func (c *Cluster) EtcdCredentials(user string) EtcdCredentials {
	if c.Secure == nil {
		return EtcdCredentials{}
	}
	dir := c.PKIDir()
	cr := EtcdCredentials{
		CAFile:   filepath.Join(dir, "ca.pem"),
		CertFile: filepath.Join(dir, user+".pem"),
		KeyFile:  filepath.Join(dir, user+"-key.pem"),
	}
	if pw, ok := c.Secure.Passwords[user]; ok {
		cr.Username, cr.Password = user, pw
	}
	return cr
}

// etcdYAML is the etcd section of a host's tabbyd.yaml.
func (c *Cluster) etcdYAML(h Host) string {
	var b strings.Builder
	b.WriteString("etcd:\n  endpoints:\n")
	for _, e := range c.EtcdEndpoints(h) {
		fmt.Fprintf(&b, "    - %q\n", e)
	}
	cr := c.EtcdCredentials("tabbyd-" + h.Name)
	for _, kv := range [][2]string{{"caFile", cr.CAFile}, {"certFile", cr.CertFile}, {"keyFile", cr.KeyFile}, {"username", cr.Username}, {"password", cr.Password}} {
		if kv[1] != "" {
			fmt.Fprintf(&b, "  %s: %q\n", kv[0], kv[1])
		}
	}
	return b.String()
}

// ctlEnv is the environment that gives tabbyctl its etcd credentials (the TABBY_ETCD_*
// variables: a password is never put on a command line, where ps would show it).
func (c *Cluster) ctlEnv() []string {
	if c.Secure == nil {
		return nil
	}
	cr := c.EtcdCredentials(c.Secure.ctlUser())
	var env []string
	for _, kv := range [][2]string{{"CAFILE", cr.CAFile}, {"CERTFILE", cr.CertFile}, {"KEYFILE", cr.KeyFile}, {"USERNAME", cr.Username}, {"PASSWORD", cr.Password}} {
		if kv[1] != "" {
			env = append(env, "TABBY_ETCD_"+kv[0]+"="+kv[1])
		}
	}
	return env
}

// cniEtcdJSON is the TLS part of tabby-cni's network configuration, starting with a comma.
func (c *Cluster) cniEtcdJSON() string {
	cr := c.EtcdCredentials("tabby-cni")
	if cr.CAFile == "" {
		return ""
	}
	return fmt.Sprintf(`,"etcd_ca_cert_file":%q,"etcd_cert_file":%q,"etcd_key_file":%q`, cr.CAFile, cr.CertFile, cr.KeyFile)
}

// clientTLS is the TLS configuration of the lab's own client (tabbyctl's admin user).
func (c *Cluster) clientTLS() (*tls.Config, error) {
	if c.Secure == nil {
		return nil, nil
	}
	cr := c.EtcdCredentials(c.Secure.ctlUser())
	info := transport.TLSInfo{TrustedCAFile: cr.CAFile, CertFile: cr.CertFile, KeyFile: cr.KeyFile}
	return info.ClientConfig()
}

// script is the path of one of the operator's etcd scripts.
func (s *SecureEtcd) script(name string) (string, error) {
	p := filepath.Join(s.ScriptDir, name)
	if _, err := os.Stat(p); err != nil {
		return "", fmt.Errorf("secure etcd: %w (SecureEtcd.ScriptDir is the repository's configs/etcd)", err)
	}
	return p, nil
}

// startSecureEtcd makes the certificates, starts the members, waits for them to serve and
// sets up the roles, all with the operator's scripts.
func (c *Cluster) startSecureEtcd(ctx context.Context) error {
	certs, err := c.Secure.script("make-certs.sh")
	if err != nil {
		return err
	}
	rbac, err := c.Secure.script("rbac.sh")
	if err != nil {
		return err
	}
	dir := c.PKIDir()
	var sans []string
	for _, s := range c.Topo.Segments {
		sans = append(sans, s.Router.Addr().String())
	}
	sans = append(sans, c.Topo.Outside.Router.Addr().String(), "127.0.0.1")
	steps := [][]string{{"ca", dir}}
	for _, m := range c.EtcdMembers() {
		steps = append(steps, []string{"member", dir, m.Name, strings.Join(sans, ",")})
	}
	for _, u := range c.etcdUsers() {
		steps = append(steps, []string{"client", dir, u})
	}
	for _, args := range steps {
		if out, err := cmdOutputCombined(ctx, exec.Command(certs, args...)); err != nil {
			return fmt.Errorf("make-certs.sh %s: %w: %s", strings.Join(args, " "), err, out)
		}
	}
	c.say("certificates by make-certs.sh in %s", dir)

	router := c.Topo.Segments[0].Router.Addr()
	var initial []string
	for _, m := range c.EtcdMembers() {
		initial = append(initial, fmt.Sprintf("%s=https://%s:%d", m.Name, router, m.PeerPort))
	}
	for _, m := range c.EtcdMembers() {
		if err := c.startEtcdMember(m, strings.Join(initial, ",")); err != nil {
			return err
		}
	}
	c.say("started %d etcd members in %s (TLS, client certificates required)", len(initial), c.Topo.RouterNS())
	if err := c.waitEtcd(ctx, 60*time.Second); err != nil {
		return err
	}
	setup := [][]string{{"setup"}}
	for _, h := range c.Topo.Hosts {
		setup = append(setup, []string{"node", h.Name})
	}
	for _, args := range setup {
		user := args[len(args)-1]
		if args[0] == "node" {
			user = "tabbyd-" + user
		}
		var stdin string
		if pw, ok := c.Secure.Passwords[user]; ok {
			args = append(args, "--password-stdin")
			stdin = pw + "\n"
		}
		out, err := c.Etcdctl(ctx, "root", stdin, rbac, args...)
		if err != nil {
			return fmt.Errorf("rbac.sh %s: %w", args[0], err)
		}
		c.say("%s", strings.TrimSpace(out))
	}
	if u := c.Secure.ctlUser(); u != "tabbyctl" {
		args := []string{"user", u, "tabbyctl"}
		var stdin string
		if pw, ok := c.Secure.Passwords[u]; ok {
			args = append(args, "--password-stdin")
			stdin = pw + "\n"
		}
		out, err := c.Etcdctl(ctx, "root", stdin, rbac, args...)
		if err != nil {
			return fmt.Errorf("rbac.sh user: %w", err)
		}
		c.say("%s", strings.TrimSpace(out))
	}
	return nil
}

// etcdUsers are the etcd users the lab makes certificates for.
func (c *Cluster) etcdUsers() []string {
	users := []string{"root", "tabbyctl", "tabby-cni"}
	if u := c.Secure.ctlUser(); u != "tabbyctl" {
		users = append(users, u)
	}
	for _, h := range c.Topo.Hosts {
		users = append(users, "tabbyd-"+h.Name)
	}
	return users
}

// startEtcdMember starts one member of the secure cluster (again, after a kill: its data
// directory is kept).
func (c *Cluster) startEtcdMember(m EtcdMember, initialCluster string) error {
	self, err := c.bin("tabbylab")
	if err != nil {
		return err
	}
	router := c.Topo.Segments[0].Router.Addr()
	dir := c.PKIDir()
	_, err = c.start(c.Topo.RouterNS(), m.Name, m.Name, nil, self, "etcd",
		"--name", m.Name, "--data-dir", filepath.Join(c.StateDir, m.Name),
		"--listen", fmt.Sprintf("%s:%d", router, m.ClientPort),
		"--client-port", fmt.Sprint(m.ClientPort), "--peer-port", fmt.Sprint(m.PeerPort),
		"--initial-cluster", initialCluster,
		"--ca-file", filepath.Join(dir, "ca.pem"), "--cert-file", filepath.Join(dir, m.Name+".pem"),
		"--key-file", filepath.Join(dir, m.Name+"-key.pem"), "--client-cert-auth")
	return err
}

// RestartEtcdMember starts a member that was killed, on its old data.
func (c *Cluster) RestartEtcdMember(ctx context.Context, name string) error {
	for _, m := range c.EtcdMembers() {
		if m.Name == name {
			return c.startEtcdMember(m, "")
		}
	}
	return fmt.Errorf("no etcd member %q", name)
}

// EtcdMemberPID is the PID of a member's process.
func (c *Cluster) EtcdMemberPID(name string) (int, error) { return readPID(c.pidFile(name)) }

// EtcdLeader asks the members which of them leads.
func (c *Cluster) EtcdLeader(ctx context.Context) (EtcdMember, error) {
	ds, err := c.Datastore()
	if err != nil {
		return EtcdMember{}, err
	}
	defer ds.Close()
	router := c.Topo.Segments[0].Router.Addr()
	urls := c.etcdURLs(router)
	var errs []error
	for i, m := range c.EtcdMembers() {
		sctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		st, err := ds.Etcd().Status(sctx, urls[i])
		cancel()
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", m.Name, err))
			continue
		}
		if st.Leader != 0 && st.Leader == st.Header.MemberId {
			return m, nil
		}
	}
	return EtcdMember{}, fmt.Errorf("no etcd member says it leads: %w", errors.Join(errs...))
}

// Etcdctl runs a program that calls etcdctl (etcdctl itself, or rbac.sh) inside the
// router's namespace as the etcd user user, with stdin, and returns its output.
func (c *Cluster) Etcdctl(ctx context.Context, user, stdin, name string, args ...string) (string, error) {
	cr := c.EtcdCredentials(user)
	cmd := namedns.Command(c.Topo.RouterNS(), name, args...)
	cmd.Env = append(os.Environ(), "ETCDCTL_API=3",
		"ETCDCTL_ENDPOINTS="+strings.Join(c.etcdURLs(c.Topo.Segments[0].Router.Addr()), ","),
		"ETCDCTL_CACERT="+cr.CAFile, "ETCDCTL_CERT="+cr.CertFile, "ETCDCTL_KEY="+cr.KeyFile)
	cmd.Stdin = strings.NewReader(stdin)
	out, err := cmdOutputCombined(ctx, cmd)
	if err != nil {
		return out, fmt.Errorf("%s %s: %w: %s", filepath.Base(name), strings.Join(args, " "), err, strings.TrimSpace(out))
	}
	return out, nil
}

// waitEtcd waits until the cluster answers a read.
func (c *Cluster) waitEtcd(ctx context.Context, timeout time.Duration) error {
	ds, err := c.Datastore()
	if err != nil {
		return err
	}
	defer ds.Close()
	return poll(ctx, timeout, 100*time.Millisecond, func() error {
		probeCtx, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		// A key the admin role may read once RBAC is on.
		if _, err := ds.Etcd().Get(probeCtx, ds.Keys.IPAMConfig(), clientv3.WithCountOnly()); err != nil {
			return fmt.Errorf("etcd in %s does not answer (logs in %s): %w", c.Topo.RouterNS(), c.StateDir, err)
		}
		return nil
	})
}
