package lab

// The Calico interoperability suite: the real calicoctl v3.30.1 (etcd mode) and tabbyctl
// against the same etcd and the real tabbyd hosts of the articles' lab, both directions.
// calicoctl is built from Calico's Go module by scripts/calicoctl.sh (make calicoctl),
// which make test runs first and names in TABBY_CALICOCTL. Without the binary this suite
// fails, saying how to get it; it never passes without having run calicoctl.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tabby-net/tabby/datastore"
	"github.com/tabby-net/tabby/datastore/ipam"
	"github.com/tabby-net/tabby/internal/namedns"
	"github.com/tabby-net/tabby/internal/statusapi"
)

// defaultCalicoctl is where scripts/calicoctl.sh caches the binary.
const defaultCalicoctl = "/var/cache/tabby-calicoctl/calicoctl-v3.30.1"

// calicoctlBinary is TABBY_CALICOCTL, else the cached build; missing is a failure.
func calicoctlBinary(t *testing.T) string {
	t.Helper()
	bin := os.Getenv("TABBY_CALICOCTL")
	if bin == "" {
		bin = defaultCalicoctl
	}
	if _, err := os.Stat(bin); err != nil {
		t.Fatalf("the real calicoctl is needed (%v): run `make calicoctl` (scripts/calicoctl.sh builds "+
			"calicoctl v3.30.1 from Calico's Go module through the module proxy) or set TABBY_CALICOCTL", err)
	}
	return bin
}

// calicoLab is the articles' lab with the real calicoctl beside tabbyctl.
type calicoLab struct {
	*e2eLab
	t   *testing.T
	bin string
}

// calico runs calicoctl in etcd mode in worker-1's namespace, against the lab's etcd.
func (l *calicoLab) calico(stdin string, args ...string) (string, error) {
	h, _ := l.Topo.Host("worker-1")
	ctx, cancel := context.WithTimeout(l.ctx, time.Minute)
	defer cancel()
	cmd := namedns.CommandContext(ctx, l.Topo.HostNS("worker-1"), l.bin, args...)
	cmd.Env = append(os.Environ(), "DATASTORE_TYPE=etcdv3", "ETCD_ENDPOINTS="+strings.Join(l.EtcdEndpoints(h), ","))
	cmd.Stdin = strings.NewReader(stdin)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	if err != nil {
		return out.String(), fmt.Errorf("calicoctl %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(out.String()))
	}
	return out.String(), nil
}

func (l *calicoLab) mustCalico(stdin string, args ...string) string {
	l.t.Helper()
	out, err := l.calico(stdin, args...)
	if err != nil {
		l.t.Fatal(err)
	}
	return out
}

func (l *calicoLab) tabby(stdin string, args ...string) (string, error) {
	return l.ctlWithInput(l.ctx, "worker-1", strings.NewReader(stdin), args...)
}

func (l *calicoLab) mustTabby(stdin string, args ...string) string {
	l.t.Helper()
	out, err := l.tabby(stdin, args...)
	if err != nil {
		l.t.Fatal(err)
	}
	return out
}

// raw reads a key's stored document.
func (l *calicoLab) raw(key string) map[string]any {
	l.t.Helper()
	ds, err := l.Datastore()
	if err != nil {
		l.t.Fatal(err)
	}
	defer ds.Close()
	kv, err := ds.Get(l.ctx, key)
	if err != nil {
		l.t.Fatalf("read %s: %v", key, err)
	}
	var doc map[string]any
	if err := json.Unmarshal(kv.Value, &doc); err != nil {
		l.t.Fatalf("%s: %v", key, err)
	}
	return doc
}

// field digs a dotted path out of a decoded document ("" when absent).
func field(doc map[string]any, path string) string {
	var v any = doc
	for _, k := range strings.Split(path, ".") {
		m, ok := v.(map[string]any)
		if !ok {
			return ""
		}
		v = m[k]
	}
	if v == nil {
		return ""
	}
	if s, ok := v.(string); ok {
		return s
	}
	b, _ := json.Marshal(v)
	return string(b)
}

// tableRows turns a table (calicoctl's or tabbyctl's) into rows of fields, so that the
// two tools' tables compare cell by cell whatever their column spacing.
func tableRows(s string) []string {
	var rows []string
	for _, line := range strings.Split(strings.TrimSpace(s), "\n") {
		rows = append(rows, strings.Join(strings.Fields(line), " "))
	}
	return rows
}

func TestCalicoInterop(t *testing.T) {
	requireRoot(t)
	if testing.Short() {
		t.Skip("Calico interoperability suite (the articles' lab and the real calicoctl, a few " +
			"minutes): not run with -short; make test runs it. With -short, datastore's table of Calico validator cases and its lossless round trips still run")
	}
	bin := calicoctlBinary(t)
	l := &calicoLab{e2eLab: newE2ELab(t), t: t, bin: bin}
	ds, err := l.Datastore()
	if err != nil {
		t.Fatal(err)
	}
	defer ds.Close()
	keys := ds.Keys
	// run is t.Run with the lab's helpers failing the subtest, not the whole suite.
	run := func(name string, f func(t *testing.T)) {
		t.Run(name, func(t *testing.T) {
			l.t = t
			defer func() { l.t = nil }()
			f(t)
		})
	}

	run("tables agree", func(t *testing.T) {
		for _, args := range [][]string{{"get", "ippool", "-o", "wide"}, {"get", "nodes", "-o", "wide"}, {"get", "ippool"}, {"get", "nodes"}} {
			c, ta := l.mustCalico("", args...), l.mustTabby("", args...)
			if !slices.Equal(tableRows(c), tableRows(ta)) {
				t.Errorf("%s differs:\ncalicoctl:\n%s\ntabbyctl:\n%s", strings.Join(args, " "), c, ta)
			}
		}
	})

	run("calicoctl's yaml applies to tabby", func(t *testing.T) {
		for _, kind := range []string{"ippool", "node"} {
			y := l.mustCalico("", "get", kind, "-o", "yaml")
			if out, err := l.tabby(y, "apply", "-f", "-"); err != nil {
				t.Errorf("calicoctl get %s -o yaml | tabbyctl apply -f -: %v\n%s", kind, err, y)
			} else if !strings.Contains(out, "Successfully applied") {
				t.Errorf("tabbyctl apply said %q", out)
			}
		}
	})

	run("Manual pool keeps its mode through tabby's writes", func(t *testing.T) {
		l.mustCalico("apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {name: manual-pool}\nspec: {cidr: 10.96.0.0/24, assignmentMode: Manual}\n", "create", "-f", "-")
		l.mustTabby("", "patch", "ippool", "manual-pool", "-p", `{"spec":{"natOutgoing":true}}`)
		doc := l.raw(keys.Resource(datastore.KindIPPool, "manual-pool"))
		if field(doc, "spec.assignmentMode") != "Manual" || field(doc, "spec.natOutgoing") != "true" {
			t.Errorf("after tabbyctl patch: %v", doc)
		}
		y := l.mustTabby("", "get", "ippool", "manual-pool", "-o", "yaml")
		l.mustCalico(y, "apply", "-f", "-")
		if got := field(l.raw(keys.Resource(datastore.KindIPPool, "manual-pool")), "spec.assignmentMode"); got != "Manual" {
			t.Errorf("tabbyctl get -o yaml | calicoctl apply: assignmentMode %q", got)
		}
		if w := l.mustCalico("", "get", "ippool", "manual-pool", "-o", "wide"); !strings.Contains(w, "Manual") {
			t.Errorf("calicoctl get -o wide:\n%s", w)
		}
	})

	run("Manual pool is not used", func(t *testing.T) {
		l.mustCalico("", "patch", "ippool", "default-ipv4-ippool", "-p", `{"spec":{"disabled":true}}`)
		defer l.mustCalico("", "patch", "ippool", "default-ipv4-ippool", "-p", `{"spec":{"disabled":false}}`)
		w := Workload{Name: "pod-manual", Host: "worker-2"}
		if ip, err := l.AddWorkload(l.ctx, w); err == nil {
			_ = l.DelWorkload(l.ctx, w)
			t.Fatalf("with only a Manual pool enabled, tabby-cni assigned %s", ip)
		} else if !strings.Contains(err.Error(), "no usable pool") && !strings.Contains(err.Error(), "usable") {
			t.Errorf("workload refused, but not for want of a pool: %v", err)
		}
	})

	run("LoadBalancer pool is listed and never assigned", func(t *testing.T) {
		l.mustCalico("apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {name: lb-pool}\nspec: {cidr: 10.97.0.0/24, allowedUses: [LoadBalancer]}\n", "create", "-f", "-")
		if out := l.mustTabby("", "get", "ippool"); !strings.Contains(out, "lb-pool") {
			t.Errorf("tabbyctl get ippool does not list it:\n%s", out)
		}
		if out := l.mustTabby("", "ipam", "show"); !strings.Contains(out, "10.97.0.0/24") {
			t.Errorf("tabbyctl ipam show does not list it:\n%s", out)
		}
		if out := l.mustCalico("", "ipam", "show"); !strings.Contains(out, "10.97.0.0/24") {
			t.Errorf("calicoctl ipam show does not list it:\n%s", out)
		}
		w := Workload{Name: "pod-lb", Host: "worker-3"}
		ip, err := l.AddWorkload(l.ctx, w)
		if err != nil {
			t.Fatalf("workload beside a LoadBalancer pool: %v", err)
		}
		defer l.DelWorkload(l.ctx, w)
		if netip.MustParsePrefix("10.97.0.0/24").Contains(ip) {
			t.Errorf("tabby-cni assigned %s from the LoadBalancer pool", ip)
		}
		// tabbyd accepts the pool and says, once, that it does not act on it.
		deadline := time.Now().Add(30 * time.Second)
		for {
			st, err := statusapi.Fetch(l.ctx, l.StatusSocket("worker-3"))
			if err == nil && slices.ContainsFunc(st.StoredOnly, func(s string) bool { return strings.Contains(s, "lb-pool") && strings.Contains(s, "LoadBalancer") }) {
				if slices.ContainsFunc(st.Problems, func(s string) bool { return strings.Contains(s, "lb-pool") }) {
					t.Errorf("tabbyd reports the LoadBalancer pool as a problem: %v", st.Problems)
				}
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("tabbyd's status does not report the LoadBalancer pool as stored only: %+v, %v", st, err)
			}
			time.Sleep(200 * time.Millisecond)
		}
	})

	run("IPAM configured by calicoctl is obeyed; a 21st block is claimed", func(t *testing.T) {
		l.mustCalico("apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {name: tiny-blocks}\nspec: {cidr: 10.95.0.0/27, blockSize: 32, assignmentMode: Manual}\n", "create", "-f", "-")
		if out := l.mustCalico("", "ipam", "show", "--show-configuration"); !regexp.MustCompile(`MaxBlocksPerHost\s*\|\s*0\s`).MatchString(out) {
			t.Errorf("calicoctl ipam show --show-configuration with no limit set:\n%s", out)
		}
		a := ipam.New(ds, nil)
		pools := []netip.Prefix{netip.MustParsePrefix("10.95.0.0/27")}
		for i := range 21 {
			if _, err := a.ClaimBlock(l.ctx, "worker-3", datastore.UseWorkload, pools); err != nil {
				t.Fatalf("block %d for worker-3 with no limit: %v", i+1, err)
			}
		}
		l.mustCalico("", "ipam", "configure", "--strictaffinity=true", "--max-blocks-per-host=22")
		if out := l.mustTabby("", "get", "ipamconfig", "-o", "wide"); !strings.Contains(tableRows(out)[1], "default true 22 true") {
			t.Errorf("tabbyctl reads calicoctl's configuration as:\n%s", out)
		}
		if _, err := a.ClaimBlock(l.ctx, "worker-3", datastore.UseWorkload, pools); err != nil {
			t.Fatalf("block 22 with maxBlocksPerHost 22: %v", err)
		}
		if _, err := a.ClaimBlock(l.ctx, "worker-3", datastore.UseWorkload, pools); !errors.Is(err, ipam.ErrBlockLimit) {
			t.Fatalf("block 23 with maxBlocksPerHost 22: %v, want the limit", err)
		}
		// And the other way round.
		l.mustTabby("", "ipam", "configure", "--strictaffinity=false", "--max-blocks-per-host=0")
		out := l.mustCalico("", "ipam", "show", "--show-configuration")
		if !regexp.MustCompile(`StrictAffinity\s*\|\s*false`).MatchString(out) || !regexp.MustCompile(`MaxBlocksPerHost\s*\|\s*0\s`).MatchString(out) {
			t.Errorf("calicoctl reads tabby's configuration as:\n%s", out)
		}
		if tout := l.mustTabby("", "ipam", "show", "--show-configuration"); tout != out {
			t.Errorf("ipam show --show-configuration differs:\ncalicoctl:\n%s\ntabbyctl:\n%s", out, tout)
		}
		blocks := l.mustCalico("", "ipam", "show", "--show-blocks")
		for _, b := range []string{"10.95.0.0/32", "10.95.0.21/32"} {
			if !strings.Contains(blocks, b) && !strings.Contains(blocks, strings.TrimSuffix(b, "/32")) {
				t.Errorf("calicoctl ipam show --show-blocks lacks %s:\n%s", b, blocks)
			}
		}
		if err := a.ReleaseHostAffinities(l.ctx, "worker-3", true); err != nil {
			t.Errorf("release worker-3's empty blocks: %v", err)
		}
	})

	run("an IPReservation is never handed out", func(t *testing.T) {
		l.mustCalico("apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {name: resv-pool}\nspec: {cidr: 10.94.0.0/29, blockSize: 29, assignmentMode: Manual}\n", "create", "-f", "-")
		l.mustCalico("apiVersion: projectcalico.org/v3\nkind: IPReservation\nmetadata: {name: keep-out}\nspec: {reservedCIDRs: [10.94.0.0/30, 10.94.0.5]}\n", "create", "-f", "-")
		if out := l.mustTabby("", "get", "ipreservation", "-o", "wide"); !strings.Contains(out, "10.94.0.0/30,10.94.0.5") {
			t.Errorf("tabbyctl get ipreservation -o wide:\n%s", out)
		}
		a := ipam.New(ds, nil)
		var got []string
		for i := range 3 {
			ip, err := a.AssignOne(l.ctx, ipam.AssignArgs{Handle: fmt.Sprintf("resv-%d", i), Node: "worker-2", Use: datastore.UseWorkload, Pools: []netip.Prefix{netip.MustParsePrefix("10.94.0.0/29")}})
			if err != nil {
				t.Fatalf("address %d: %v", i+1, err)
			}
			got = append(got, ip.String())
		}
		slices.Sort(got)
		if want := []string{"10.94.0.4", "10.94.0.6", "10.94.0.7"}; !slices.Equal(got, want) {
			t.Errorf("assigned %v, want %v (the rest is reserved)", got, want)
		}
		if _, err := a.AssignOne(l.ctx, ipam.AssignArgs{Handle: "resv-x", Node: "worker-2", Use: datastore.UseWorkload, Pools: []netip.Prefix{netip.MustParsePrefix("10.94.0.0/29")}}); err == nil {
			t.Error("a 4th address was assigned from a /29 with 5 addresses reserved")
		}
		if out := l.mustCalico("", "ipam", "show", "--ip=10.94.0.6"); !strings.Contains(out, "in use") {
			t.Errorf("calicoctl ipam show --ip of an address tabby assigned:\n%s", out)
		}
		for i := range 3 {
			if err := a.ReleaseByHandle(l.ctx, fmt.Sprintf("resv-%d", i)); err != nil {
				t.Errorf("release: %v", err)
			}
		}
	})

	run("each kind both ways", func(t *testing.T) {
		// Made by calicoctl, read, patched and re-applied by tabbyctl.
		l.mustCalico("apiVersion: projectcalico.org/v3\nkind: BGPPeer\nmetadata: {name: tor}\nspec: {peerIP: 10.30.0.1, asNumber: 65001, nodeSelector: \"rack == 'none'\", sourceAddress: None, ttlSecurity: 1, numAllowedLocalASNumbers: 2}\n", "create", "-f", "-")
		y := l.mustTabby("", "get", "bgppeer", "tor", "-o", "yaml")
		for _, f := range []string{"sourceAddress: None", "ttlSecurity: 1", "numAllowedLocalASNumbers: 2"} {
			if !strings.Contains(y, f) {
				t.Errorf("tabbyctl get bgppeer -o yaml lacks %q:\n%s", f, y)
			}
		}
		if out, err := l.tabby("", "patch", "bgppeer", "tor", "-p", `{"spec":{"keepOriginalNextHop":true}}`); err != nil || !strings.Contains(out, "stored; tabby does not act on spec.ttlSecurity") {
			t.Errorf("tabbyctl patch: %v\n%s", err, out)
		}
		l.mustTabby(l.mustTabby("", "get", "bgppeer", "tor", "-o", "yaml"), "apply", "-f", "-")
		cy := l.mustCalico("", "get", "bgppeer", "tor", "-o", "yaml")
		for _, f := range []string{"keepOriginalNextHop: true", "sourceAddress: None", "ttlSecurity: 1", "numAllowedLocalASNumbers: 2"} {
			if !strings.Contains(cy, f) {
				t.Errorf("calicoctl reads back without %q:\n%s", f, cy)
			}
		}
		l.mustCalico(cy, "apply", "-f", "-")

		// Made by tabbyctl, read, patched and re-applied by calicoctl.
		for _, m := range []string{
			"apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {name: from-tabby}\nspec: {cidr: 10.93.0.0/24, assignmentMode: Manual, natOutgoing: true}\n",
			"apiVersion: projectcalico.org/v3\nkind: BGPConfiguration\nmetadata: {name: node.nobody}\nspec: {logSeverityScreen: Info, listenPort: 1790}\n",
			"apiVersion: projectcalico.org/v3\nkind: IPReservation\nmetadata: {name: tabby-resv}\nspec: {reservedCIDRs: [10.93.0.10]}\n",
			"apiVersion: projectcalico.org/v3\nkind: Node\nmetadata: {name: calico-only, labels: {rack: r9}}\nspec: {bgp: {ipv4Address: 10.30.9.9/24}, orchRefs: [{nodeName: k9, orchestrator: k8s}]}\n",
		} {
			l.mustTabby(m, "create", "-f", "-")
		}
		for _, o := range []struct{ kind, name, patch, want string }{
			{"ippool", "from-tabby", `{"spec":{"disabled":true}}`, "assignmentMode: Manual"},
			{"bgpconfig", "node.nobody", `{"spec":{"listenPort":1791}}`, "logSeverityScreen: Info"},
			{"ipreservation", "tabby-resv", `{"metadata":{"labels":{"a":"b"}}}`, "10.93.0.10"},
			{"node", "calico-only", `{"metadata":{"labels":{"zone":"z"}}}`, "orchestrator: k8s"},
		} {
			cy := l.mustCalico("", "get", o.kind, o.name, "-o", "yaml")
			if !strings.Contains(cy, o.want) {
				t.Errorf("calicoctl get %s %s lacks %q:\n%s", o.kind, o.name, o.want, cy)
			}
			l.mustCalico("", "patch", o.kind, o.name, "-p", o.patch)
			l.mustCalico(l.mustCalico("", "get", o.kind, o.name, "-o", "yaml"), "apply", "-f", "-")
			ty := l.mustTabby("", "get", o.kind, o.name, "-o", "yaml")
			if !strings.Contains(ty, o.want) {
				t.Errorf("after calicoctl's patch and apply, tabbyctl get %s %s lacks %q:\n%s", o.kind, o.name, o.want, ty)
			}
			l.mustTabby(ty, "apply", "-f", "-")
		}
		if got := field(l.raw(keys.Resource(datastore.KindBGPConfiguration, "node.nobody")), "spec.listenPort"); got != "1791" {
			t.Errorf("calicoctl's patch of listenPort: %q", got)
		}
		l.mustCalico("", "delete", "node", "calico-only")
	})

	run("tabbyd keeps what calicoctl wrote into its Node", func(t *testing.T) {
		key := keys.Resource(datastore.KindNode, "worker-2")
		l.mustCalico("", "patch", "node", "worker-2", "-p", `{"spec":{"orchRefs":[{"nodeName":"k8s-worker-2","orchestrator":"k8s"}]}}`)
		doc := l.raw(key)
		doc["status"] = map[string]any{"podCIDRs": []string{"10.244.2.0/24"}}
		b, _ := json.Marshal(doc)
		if _, err := ds.Etcd().Put(l.ctx, key, string(b)); err != nil {
			t.Fatal(err)
		}
		// tabbyd rewrites its Node at start-up.
		if err := l.StopTabbyd("worker-2", false); err != nil {
			t.Fatal(err)
		}
		if _, err := l.StartTabbyd("worker-2", l.Tabbyd); err != nil {
			t.Fatal(err)
		}
		if err := l.WaitReady(l.ctx, 90*time.Second); err != nil {
			t.Fatal(err)
		}
		doc = l.raw(key)
		if !strings.Contains(field(doc, "spec.orchRefs"), "k8s-worker-2") || !strings.Contains(field(doc, "status.podCIDRs"), "10.244.2.0/24") {
			t.Errorf("tabbyd's update of its Node lost calicoctl's fields: %v", doc)
		}
		if field(doc, "spec.bgp.ipv4Address") != "10.30.0.56/24" {
			t.Errorf("tabbyd's Node: %v", doc)
		}
	})

	run("calicoctl ipam show", func(t *testing.T) {
		ip, err := l.WorkloadIP("pod-1")
		if err != nil {
			t.Fatal(err)
		}
		out := l.mustCalico("", "ipam", "show", "--ip="+ip.String())
		if !strings.Contains(out, "IP "+ip.String()+" is in use") {
			t.Errorf("calicoctl ipam show --ip=%s:\n%s", ip, out)
		}
		if _, err := l.calico("", "ipam", "show", "--show-borrowed"); err != nil {
			t.Errorf("calicoctl ipam show --show-borrowed: %v", err)
		}
		cb, tb := l.mustCalico("", "ipam", "show", "--show-blocks"), l.mustTabby("", "ipam", "show", "--show-blocks")
		st := l.state(t)
		for cidr := range st.Blocks {
			if !strings.Contains(cb, cidr.String()) || !strings.Contains(tb, cidr.String()) {
				t.Errorf("block %s missing:\ncalicoctl:\n%s\ntabbyctl:\n%s", cidr, cb, tb)
			}
		}
		// calicoctl ipam check reads Kubernetes' pods even in etcd mode: calicoctl's own
		// limitation. tabbyctl ipam check is the check that runs here.
		if out, err := l.calico("", "ipam", "check"); err == nil {
			t.Logf("calicoctl ipam check ran without Kubernetes:\n%s", out)
		} else {
			t.Logf("calicoctl ipam check needs a Kubernetes API even in etcd mode (its limitation): %v", err)
		}
		if out := l.mustTabby("", "ipam", "check"); !strings.Contains(out, "found 0 problems") {
			t.Errorf("tabbyctl ipam check after the interop steps:\n%s", out)
		}
	})

	run("calicoctl delete node on a tabby node", func(t *testing.T) {
		for _, w := range l.Workloads {
			if w.Host == "worker-3" {
				if err := l.DelWorkload(l.ctx, w); err != nil {
					t.Fatal(err)
				}
			}
		}
		if err := l.StopTabbyd("worker-3", false); err != nil {
			t.Fatal(err)
		}
		out := l.mustCalico("", "delete", "node", "worker-3")
		if !strings.Contains(out, "Successfully deleted 1 'Node' resource") {
			t.Errorf("calicoctl delete node said %q", out)
		}
		if out := l.mustTabby("", "get", "nodes"); strings.Contains(out, "worker-3") {
			t.Errorf("tabbyctl still lists worker-3:\n%s", out)
		}
		if st := l.state(t); len(st.BlocksOf("worker-3")) != 0 {
			t.Errorf("worker-3 still owns blocks %v after calicoctl delete node", st.BlocksOf("worker-3"))
		}
		if out := l.mustTabby("", "ipam", "check"); !strings.Contains(out, "found 0 problems") {
			t.Errorf("tabbyctl ipam check after calicoctl delete node:\n%s", out)
		}
	})
}
