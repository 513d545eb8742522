package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/tabby-net/tabby/datastore"
	"github.com/tabby-net/tabby/datastore/etcdtest"
)

// pluginBinary is the tabby-cni built once for this test binary by TestMain; the root
// tests run it exactly as a runtime does. Empty in -short mode.
var pluginBinary string

func TestMain(m *testing.M) {
	flag.Parse()
	os.Exit(runTests(m))
}

func runTests(m *testing.M) int {
	if !testing.Short() && os.Geteuid() == 0 {
		dir, err := os.MkdirTemp("", "tabby-cni-bin-")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer os.RemoveAll(dir)
		bin := filepath.Join(dir, "tabby-cni")
		out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput()
		if err != nil {
			fmt.Fprintf(os.Stderr, "build tabby-cni: %v\n%s", err, out)
			return 1
		}
		pluginBinary = bin
	}
	return m.Run()
}

// requireRoot skips tests that create network namespaces when they cannot: without root,
// or in -short mode (unit tests only).
func requireRoot(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("creates network namespaces; not in -short mode")
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root to create network namespaces")
	}
}

func randSuffix(t *testing.T) string {
	t.Helper()
	b := make([]byte, 3)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

func sh(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// newNetns creates the network namespace tabby-<purpose>-<random> and removes it, and any
// process still inside it, when the test ends.
func newNetns(t *testing.T, purpose string) string {
	t.Helper()
	name := "tabby-" + purpose + "-" + randSuffix(t)
	sh(t, "ip", "netns", "add", name)
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "pids", name).Output(); err == nil {
			for _, pid := range strings.Fields(string(out)) {
				if pid != strconv.Itoa(os.Getpid()) { // never the test itself
					_ = exec.Command("kill", "-9", pid).Run()
				}
			}
		}
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			t.Errorf("remove netns %s: %v %s", name, err, out)
		}
	})
	sh(t, "ip", "-n", name, "link", "set", "lo", "up")
	return name
}

func netnsPath(name string) string { return "/run/netns/" + name }

// inNetns runs fn on an OS thread switched into the named namespace, and switches the
// thread back before it unlocks it. If switching back fails the goroutine ends still
// locked, and the runtime discards the thread rather than let another goroutine run in the
// wrong namespace.
func inNetns(t *testing.T, name string, fn func() error) error {
	t.Helper()
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			done <- fmt.Errorf("current netns: %w", err)
			return
		}
		defer orig.Close()
		h, err := netns.GetFromName(name)
		if err != nil {
			done <- fmt.Errorf("open netns %s: %w", name, err)
			return
		}
		defer h.Close()
		if err := netns.Set(h); err != nil {
			done <- fmt.Errorf("enter netns %s: %w", name, err)
			return
		}
		err = fn()
		if netns.Set(orig) == nil {
			runtime.UnlockOSThread()
		}
		done <- err
	}()
	return <-done
}

// netlinkIn returns a netlink handle inside the named namespace, for inspecting it.
func netlinkIn(t *testing.T, name string) *netlink.Handle {
	t.Helper()
	nsh, err := netns.GetFromName(name)
	if err != nil {
		t.Fatal(err)
	}
	defer nsh.Close()
	h, err := netlink.NewHandleAt(nsh)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.Close)
	return h
}

// testHost is one host of the tests: a network namespace playing the host, with a default
// route (as every real host has; proxy ARP only answers for addresses the host can route
// elsewhere), a real etcd holding one IP pool, and its own data and run directories.
type testHost struct {
	NS       string
	Etcd     *etcdtest.Etcd
	Endpoint string // etcd as seen from inside the host namespace
	DataDir  string
	RunDir   string
	Node     string
	Pool     netip.Prefix
}

func newTestHost(t *testing.T) *testHost {
	t.Helper()
	requireRoot(t)
	h := &testHost{
		NS:      newNetns(t, "cnihost"),
		Etcd:    etcdtest.Start(t),
		DataDir: t.TempDir(),
		RunDir:  filepath.Join(t.TempDir(), "run"),
		Node:    "node-" + randSuffix(t),
		Pool:    netip.MustParsePrefix("10.244.0.0/16"),
	}
	// The host's uplink: a veth pair inside the host namespace.
	sh(t, "ip", "-n", h.NS, "link", "add", "uplink0", "type", "veth", "peer", "name", "uplink1")
	sh(t, "ip", "-n", h.NS, "addr", "add", "10.99.0.1/24", "dev", "uplink0")
	sh(t, "ip", "-n", h.NS, "link", "set", "uplink0", "up")
	sh(t, "ip", "-n", h.NS, "link", "set", "uplink1", "up")
	sh(t, "ip", "-n", h.NS, "route", "add", "default", "via", "10.99.0.2", "dev", "uplink0")
	h.Endpoint = proxyIntoNetns(t, h.NS, h.Etcd.Endpoint)
	h.writePool(t, "p", `{"kind":"IPPool","apiVersion":"projectcalico.org/v3","metadata":{"name":"p"},"spec":{"cidr":"10.244.0.0/16","blockSize":26,"nodeSelector":"all()","ipipMode":"Never","vxlanMode":"Never"}}`)
	return h
}

// writePool stores a pool document as Calico (and etcdctl) would.
func (h *testHost) writePool(t *testing.T, name, doc string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := h.Etcd.Raw().Put(ctx, h.Etcd.Client.Keys.Resource(datastore.KindIPPool, name), doc); err != nil {
		t.Fatal(err)
	}
}

// conf is the network configuration of this host, with overrides.
func (h *testHost) conf(t *testing.T, override map[string]any) []byte {
	t.Helper()
	c := map[string]any{
		"cniVersion":     "1.0.0",
		"name":           "tabby",
		"type":           "tabby-cni",
		"etcd_endpoints": h.Endpoint,
		"nodename":       h.Node,
		"mtu":            0,
		"data_dir":       h.DataDir,
		"run_dir":        h.RunDir,
		"log_level":      "debug",
	}
	for k, v := range override {
		if v == nil {
			delete(c, k)
		} else {
			c[k] = v
		}
	}
	b, err := json.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// proxyIntoNetns makes etcd (listening on the root namespace's loopback) reachable from
// inside the host namespace at 127.0.0.1:<port>, without any link between the namespaces:
// the listening socket is opened inside the namespace, and each connection is relayed by
// the test process to etcd on the root loopback.
func proxyIntoNetns(t *testing.T, ns, endpoint string) string {
	t.Helper()
	target, err := url.Parse(endpoint)
	if err != nil {
		t.Fatal(err)
	}
	var l net.Listener
	if err := inNetns(t, ns, func() error {
		var err error
		l, err = net.Listen("tcp4", "127.0.0.1:0")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	var (
		mu    sync.Mutex
		conns []net.Conn
		wg    sync.WaitGroup
	)
	track := func(c net.Conn) {
		mu.Lock()
		defer mu.Unlock()
		conns = append(conns, c)
	}
	wg.Go(func() {
		for {
			in, err := l.Accept()
			if err != nil {
				return
			}
			out, err := net.Dial("tcp", target.Host)
			if err != nil {
				in.Close()
				continue
			}
			track(in)
			track(out)
			wg.Go(func() { _, _ = io.Copy(out, in); out.Close() })
			wg.Go(func() { _, _ = io.Copy(in, out); in.Close() })
		}
	})
	t.Cleanup(func() {
		l.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return "http://" + l.Addr().String()
}

// cniCall is one invocation of the plugin.
type cniCall struct {
	Command     string
	ContainerID string
	Netns       string // path
	IfName      string
	Conf        []byte
}

// cniOutcome is what the plugin printed and how it exited.
type cniOutcome struct {
	Stdout, Stderr string
	Err            error // non-nil when the exit status is not 0
}

// exec runs the plugin binary inside the host namespace exactly as a runtime does:
// environment variables and the configuration on stdin.
func (h *testHost) exec(t *testing.T, c cniCall) cniOutcome {
	t.Helper()
	if c.IfName == "" {
		c.IfName = "eth0"
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ip", "netns", "exec", h.NS, pluginBinary)
	cmd.Env = []string{
		"PATH=" + os.Getenv("PATH"),
		"CNI_COMMAND=" + c.Command,
		"CNI_CONTAINERID=" + c.ContainerID,
		"CNI_NETNS=" + c.Netns,
		"CNI_IFNAME=" + c.IfName,
		"CNI_PATH=" + filepath.Dir(pluginBinary),
	}
	cmd.Stdin = bytes.NewReader(c.Conf)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	return cniOutcome{Stdout: stdout.String(), Stderr: stderr.String(), Err: err}
}

// add runs ADD and requires success; it returns the parsed result.
func (h *testHost) add(t *testing.T, containerID, nsName string) *current.Result {
	t.Helper()
	out := h.exec(t, cniCall{Command: "ADD", ContainerID: containerID, Netns: netnsPath(nsName), Conf: h.conf(t, nil)})
	if out.Err != nil {
		t.Fatalf("ADD %s: %v\nstdout: %s\nstderr: %s", containerID, out.Err, out.Stdout, out.Stderr)
	}
	res, err := current.NewResult([]byte(out.Stdout))
	if err != nil {
		t.Fatalf("ADD %s: result %q: %v", containerID, out.Stdout, err)
	}
	r, err := current.GetResult(res)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// del runs DEL and requires success.
func (h *testHost) del(t *testing.T, containerID, netnsPathOrEmpty string) {
	t.Helper()
	out := h.exec(t, cniCall{Command: "DEL", ContainerID: containerID, Netns: netnsPathOrEmpty, Conf: h.conf(t, nil)})
	if out.Err != nil {
		t.Fatalf("DEL %s: %v\nstdout: %s\nstderr: %s", containerID, out.Err, out.Stdout, out.Stderr)
	}
}

// cniError parses the error object a failed command prints on stdout.
func cniError(t *testing.T, out cniOutcome) *types.Error {
	t.Helper()
	if out.Err == nil {
		t.Fatalf("command succeeded, want a failure; stdout: %s", out.Stdout)
	}
	var exitErr *exec.ExitError
	if !errors.As(out.Err, &exitErr) || exitErr.ExitCode() == 0 {
		t.Fatalf("want a non-zero exit, got %v", out.Err)
	}
	var e types.Error
	if err := json.Unmarshal([]byte(out.Stdout), &e); err != nil || e.Msg == "" {
		t.Fatalf("stdout is not a CNI error object: %q (%v); stderr: %s", out.Stdout, err, out.Stderr)
	}
	return &e
}

// resultAddr is the /32 a result gives the container, with checks of its shape.
func resultAddr(t *testing.T, r *current.Result) netip.Addr {
	t.Helper()
	if len(r.IPs) != 1 {
		t.Fatalf("result has %d IPs, want 1: %+v", len(r.IPs), r)
	}
	ip := r.IPs[0]
	if ones, bits := ip.Address.Mask.Size(); ones != 32 || bits != 32 {
		t.Errorf("result address %s is not a /32", ip.Address.String())
	}
	a, _ := netip.AddrFromSlice(ip.Address.IP)
	return a.Unmap()
}

// allocations reads every block from etcd, as Calico stores them, and returns the
// allocated addresses with their handles.
func (h *testHost) allocations(t *testing.T) map[netip.Addr]string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	kvs, _, err := h.Etcd.Client.List(ctx, h.Etcd.Client.Keys.BlockPrefix())
	if err != nil {
		t.Fatal(err)
	}
	out := map[netip.Addr]string{}
	for _, kv := range kvs {
		var b datastore.AllocationBlock
		if err := json.Unmarshal(kv.Value, &b); err != nil {
			t.Fatalf("block %s: %v", kv.Key, err)
		}
		cidr := netip.MustParsePrefix(b.CIDR)
		for ord, attr := range b.Allocations {
			if attr == nil {
				continue
			}
			a := cidr.Addr()
			for range ord {
				a = a.Next()
			}
			handle := ""
			if *attr < len(b.Attributes) && b.Attributes[*attr].HandleID != nil {
				handle = *b.Attributes[*attr].HandleID
			}
			out[a] = handle
		}
	}
	return out
}

// handleExists reports whether etcd holds the IPAM handle.
func (h *testHost) handleExists(t *testing.T, handle string) bool {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := h.Etcd.Client.Get(ctx, h.Etcd.Client.Keys.Handle(handle))
	if errors.Is(err, datastore.ErrNotFound) {
		return false
	}
	if err != nil {
		t.Fatal(err)
	}
	return true
}

// tabbyLinks lists the links named tabby* in a namespace.
func tabbyLinks(t *testing.T, nl *netlink.Handle) []string {
	t.Helper()
	links, err := nl.LinkList()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, l := range links {
		if strings.HasPrefix(l.Attrs().Name, "tabby") {
			names = append(names, l.Attrs().Name)
		}
	}
	return names
}

// routesInto lists the host's routes whose destination lies inside prefix.
func routesInto(t *testing.T, nl *netlink.Handle, prefix netip.Prefix) []string {
	t.Helper()
	routes, err := nl.RouteList(nil, netlink.FAMILY_V4)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, r := range routes {
		if r.Dst == nil {
			continue
		}
		if p, ok := ipNetPrefix(r.Dst); ok && p.Bits() >= prefix.Bits() && prefix.Contains(p.Addr()) {
			out = append(out, r.String())
		}
	}
	return out
}

// assertNothingLeft checks that a host holds no workload state at all: no veth, no route
// into the pool, no allocation in etcd.
func (h *testHost) assertNothingLeft(t *testing.T) {
	t.Helper()
	nl := netlinkIn(t, h.NS)
	if links := tabbyLinks(t, nl); len(links) > 0 {
		t.Errorf("veths left in the host: %v", links)
	}
	if routes := routesInto(t, nl, h.Pool); len(routes) > 0 {
		t.Errorf("routes left in the host: %v", routes)
	}
	if a := h.allocations(t); len(a) > 0 {
		t.Errorf("allocations left in etcd: %v", a)
	}
}

// sysctlIn reads a sysctl inside a namespace.
func sysctlIn(t *testing.T, ns, key string) string {
	t.Helper()
	return strings.TrimSpace(sh(t, "ip", "netns", "exec", ns, "cat", filepath.Join("/proc/sys", key)))
}
