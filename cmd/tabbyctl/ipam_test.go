package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tabby-net/tabby/datastore"
	"github.com/tabby-net/tabby/datastore/etcdtest"
	"github.com/tabby-net/tabby/datastore/ipam"
)

// compareGolden compares got with testdata/name; TABBY_UPDATE_GOLDEN=1 rewrites the file.
func compareGolden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if os.Getenv("TABBY_UPDATE_GOLDEN") != "" {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if got != string(want) {
		t.Fatalf("output differs from %s\n--- got\n%s--- want\n%s", path, got, want)
	}
}

// The table is byte for byte what calicoctl printed in the article (002), given the same
// numbers.
func TestIPAMShowTableIsCalicoctls(t *testing.T) {
	blk := func(cidr string, inUse int) ipam.BlockUsage {
		return ipam.BlockUsage{CIDR: netip.MustParsePrefix(cidr), Total: 256, InUse: inUse, Free: 256 - inUse}
	}
	u := ipam.Usage{Pools: []ipam.PoolUsage{{
		Name: "default-ipv4-ippool", CIDR: netip.MustParsePrefix("172.16.0.0/16"), Total: 65536, InUse: 7, Free: 65529,
		Blocks: []ipam.BlockUsage{blk("172.16.116.0/24", 4), blk("172.16.158.0/24", 1), blk("172.16.184.0/24", 1), blk("172.16.34.0/24", 1)},
	}}}
	var b bytes.Buffer
	if err := writeUsage(&b, u, true); err != nil {
		t.Fatal(err)
	}
	want, err := os.ReadFile("testdata/ipam_show_blocks_article.golden")
	if err != nil {
		t.Fatal(err)
	}
	if b.String() != string(want) {
		t.Fatalf("got\n%s\nwant (calicoctl, article 002)\n%s", b.String(), want)
	}
	// Large pools print as calicoctl prints them.
	if row := usageRow("IP Pool", netip.MustParsePrefix("10.0.0.0/8"), 1<<24, 0); row[2] != "1.6777e+07" || row[3] != "0 (0%)" {
		t.Fatalf("a /8 pool: %q", row)
	}
}

// ipamEnv is a real etcd with pools and a few assignments made through the library.
type ipamEnv struct {
	e     *etcdtest.Etcd
	ctx   context.Context
	alloc *ipam.Allocator
}

func newIPAMEnv(t *testing.T) *ipamEnv {
	t.Helper()
	e := etcdtest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	put := func(key string, v any) {
		b, _ := json.Marshal(v)
		if _, err := e.Raw().Put(ctx, key, string(b)); err != nil {
			t.Fatal(err)
		}
	}
	pool := func(name, cidr string, spec map[string]any) {
		spec["cidr"] = cidr
		put(e.Client.Keys.Resource(datastore.KindIPPool, name), map[string]any{
			"kind": "IPPool", "apiVersion": datastore.APIVersion, "metadata": map[string]any{"name": name}, "spec": spec})
	}
	pool("default-ipv4-ippool", "10.244.0.0/16", map[string]any{"ipipMode": "Always", "natOutgoing": true})
	pool("tunnels", "10.96.0.0/24", map[string]any{"blockSize": 28, "allowedUses": []string{"Tunnel"}})
	return &ipamEnv{e: e, ctx: ctx, alloc: ipam.New(e.Client, nil)}
}

// tabbyctl runs one command line against the environment's etcd.
func (env *ipamEnv) tabbyctl(t *testing.T, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	var out, errOut bytes.Buffer
	code = run(env.ctx, append([]string{"--endpoints", env.e.Endpoint}, args...), strings.NewReader(""), &out, &errOut)
	return out.String(), errOut.String(), code
}

func (env *ipamEnv) assign(t *testing.T, handle, node string, attrs map[string]string) netip.Addr {
	t.Helper()
	ip, err := env.alloc.AssignOne(env.ctx, ipam.AssignArgs{Handle: handle, Node: node, Use: datastore.UseWorkload, Attrs: attrs})
	if err != nil {
		t.Fatal(err)
	}
	return ip
}

func TestIPAMShowAgainstEtcd(t *testing.T) {
	env := newIPAMEnv(t)
	for i := range 4 {
		env.assign(t, "tabby.k8s-m-"+string(rune('a'+i)), "k8s-m", nil)
	}
	env.assign(t, "tabby.w1", "k8s-w1", nil)
	if _, err := env.alloc.EnsureTunnelAddr(env.ctx, "k8s-m", ipam.TunnelIPIP, []netip.Prefix{netip.MustParsePrefix("10.96.0.0/24")}); err != nil {
		t.Fatal(err)
	}

	out, errOut, code := env.tabbyctl(t, "ipam", "show", "--show-blocks")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	compareGolden(t, "ipam_show_blocks.golden", out)

	out, _, code = env.tabbyctl(t, "ipam", "show")
	if code != 0 || strings.Contains(out, "Block") || !strings.Contains(out, "| IP Pool  | 10.244.0.0/16 |     65536 | 5 (0%)     | 65531 (100%) |") {
		t.Fatalf("ipam show (exit %d):\n%s", code, out)
	}
}

func TestIPAMShowIP(t *testing.T) {
	env := newIPAMEnv(t)
	ip := env.assign(t, "tabby.c1", "worker-1", map[string]string{"container": "c1"})
	out, _, code := env.tabbyctl(t, "ipam", "show", "--ip="+ip.String())
	want := "IP " + ip.String() + " is in use\nHandle ID: tabby.c1\nBlock: " + netip.PrefixFrom(ip, 26).Masked().String() +
		" (affine to worker-1)\nAttributes:\n  container: c1\n  node: worker-1\n"
	if code != 0 || out != want {
		t.Fatalf("exit %d, got\n%s\nwant\n%s", code, out, want)
	}
	out, _, code = env.tabbyctl(t, "ipam", "show", "--ip=10.244.250.1")
	if code != 0 || out != "10.244.250.1 is not assigned\n" {
		t.Fatalf("free address: exit %d, %q", code, out)
	}
	_, errOut, code := env.tabbyctl(t, "ipam", "show", "--ip=10.244.1")
	if code != 2 || !strings.Contains(errOut, `--ip "10.244.1" is not an IPv4 address`) {
		t.Fatalf("bad --ip: exit %d, %q", code, errOut)
	}
}

func TestIPAMCheckAndRelease(t *testing.T) {
	env := newIPAMEnv(t)
	env.assign(t, "tabby.keep", "worker-1", nil)
	leaked := env.assign(t, "tabby.gone", "worker-1", nil)

	out, errOut, code := env.tabbyctl(t, "ipam", "check")
	if code != 0 || !strings.Contains(out, "Found 1 blocks, 2 allocations, 2 handles, 1 block affinities.") ||
		!strings.HasSuffix(out, "Check complete; found 0 problems.\n") {
		t.Fatalf("clean check: exit %d\n%s%s", code, out, errOut)
	}

	// The workload's handle disappears (as if deleted by hand): its address leaks.
	if _, err := env.e.Raw().Delete(env.ctx, env.e.Client.Keys.Handle("tabby.gone")); err != nil {
		t.Fatal(err)
	}
	out, _, code = env.tabbyctl(t, "ipam", "check")
	if code != 1 || !strings.Contains(out, "Leaked addresses") ||
		!strings.Contains(out, leaked.String()+` in block `) || !strings.Contains(out, "handle tabby.gone does not exist") ||
		!strings.HasSuffix(out, "found 1 problems.\n") {
		t.Fatalf("check with a leak: exit %d\n%s", code, out)
	}

	out, errOut, code = env.tabbyctl(t, "ipam", "release", "--ip", leaked.String())
	if code != 0 || out != "Successfully released IP address "+leaked.String()+"\n" {
		t.Fatalf("release: exit %d, %q %q", code, out, errOut)
	}
	if _, _, code = env.tabbyctl(t, "ipam", "check"); code != 0 {
		t.Fatal("check still fails after releasing the leak")
	}
	_, errOut, code = env.tabbyctl(t, "ipam", "release", "--ip", leaked.String())
	if code != 1 || !strings.Contains(errOut, "IP address "+leaked.String()+" is not assigned") {
		t.Fatalf("second release: exit %d, %q", code, errOut)
	}
	_, errOut, code = env.tabbyctl(t, "ipam", "release")
	if code != 2 || !strings.Contains(errOut, "--ip is required") {
		t.Fatalf("release without --ip: exit %d, %q", code, errOut)
	}
	_, errOut, code = env.tabbyctl(t, "ipam", "frobnicate")
	if code != 2 || !strings.Contains(errOut, `unknown command "frobnicate"`) {
		t.Fatalf("unknown subcommand: exit %d, %q", code, errOut)
	}
}
