package bench

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tabby-net/tabby/lab"
)

// newLab brings up the articles' lab (tabbylab's: four hosts in two subnets, a router,
// etcd, a tabbyd per host, pod-1..3 made by tabby-cni) under a tabby-bench-<random>
// prefix, and tears it down at cleanup.
func newLab(tb testing.TB, mode lab.Mode) *lab.Cluster {
	tb.Helper()
	if os.Geteuid() != 0 {
		tb.Skip("needs root for network namespaces")
	}
	bin := binDir(tb)
	for _, tool := range []string{"iperf3", "ping", "nsenter"} {
		if _, err := exec.LookPath(tool); err != nil {
			tb.Skipf("needs %s (make deps installs it)", tool)
		}
	}
	suffix := make([]byte, 4)
	if _, err := rand.Read(suffix); err != nil {
		tb.Fatal(err)
	}
	prefix := "tabby-bench-" + hex.EncodeToString(suffix)
	var out io.Writer = io.Discard
	if testing.Verbose() {
		out = os.Stdout
	}
	c := lab.NewArticlesCluster(prefix, filepath.Join(tmpfsDir(), prefix), bin, out)
	tb.Cleanup(func() {
		if err := c.Down(); err != nil {
			tb.Errorf("lab down: %v", err)
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if err := c.Up(ctx, mode); err != nil {
		tb.Fatalf("lab up: %v", err)
	}
	return c
}

// nsRun runs a command inside a namespace and returns its standard output.
func nsRun(ctx context.Context, ns string, name string, args ...string) (string, error) {
	cmd := lab.Command(ns, name, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Start(); err != nil {
		return "", err
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			return stdout.String(), fmt.Errorf("%s %s in %s: %w: %s", name, strings.Join(args, " "), ns, err, strings.TrimSpace(stderr.String()))
		}
		return stdout.String(), nil
	case <-ctx.Done():
		_ = cmd.Process.Kill()
		<-done
		return stdout.String(), ctx.Err()
	}
}

// iperf3Result is the part of iperf3 -J's report the benchmark reads.
type iperf3Result struct {
	End struct {
		SumSent struct {
			BitsPerSecond float64 `json:"bits_per_second"`
			Retransmits   int     `json:"retransmits"`
		} `json:"sum_sent"`
		SumReceived struct {
			BitsPerSecond float64 `json:"bits_per_second"`
		} `json:"sum_received"`
	} `json:"end"`
	Error string `json:"error"`
}

// iperf3 runs one TCP test from pod `from` to pod `to` for seconds, the server started
// for this one test (-1), and returns the receiver's throughput in Gbit/s and the
// sender's retransmissions.
func iperf3(ctx context.Context, tb testing.TB, c *lab.Cluster, from, to string, seconds int) (float64, int) {
	tb.Helper()
	ip, err := c.WorkloadIP(to)
	if err != nil {
		tb.Fatal(err)
	}
	srv := lab.Command(c.PodNS(to), "iperf3", "-s", "-1", "-B", ip.String())
	if err := srv.Start(); err != nil {
		tb.Fatal(err)
	}
	defer func() { _ = srv.Process.Kill(); _ = srv.Wait() }()
	var r iperf3Result
	for attempt := 0; ; attempt++ {
		out, err := nsRun(ctx, c.PodNS(from), "iperf3", "-c", ip.String(), "-t", strconv.Itoa(seconds), "-J")
		r = iperf3Result{}
		jerr := json.Unmarshal([]byte(out), &r)
		if err == nil && jerr == nil && r.Error == "" {
			break
		}
		if attempt == 30 {
			tb.Fatalf("iperf3 %s → %s: %v %v %s", from, to, err, jerr, r.Error)
		}
		time.Sleep(100 * time.Millisecond) // the server is not listening yet
	}
	return r.End.SumReceived.BitsPerSecond / 1e9, r.End.SumSent.Retransmits
}

// fragCounters sums the IPv4 fragmentation and reassembly counters of a namespace
// (/proc/net/snmp: FragCreates, FragOKs, FragFails, ReasmReqds).
func fragCounters(ctx context.Context, tb testing.TB, ns string) int64 {
	tb.Helper()
	out, err := nsRun(ctx, ns, "cat", "/proc/net/snmp")
	if err != nil {
		tb.Fatal(err)
	}
	var names, values []string
	for line := range strings.Lines(out) {
		if rest, ok := strings.CutPrefix(line, "Ip: "); ok {
			if names == nil {
				names = strings.Fields(rest)
			} else {
				values = strings.Fields(rest)
			}
		}
	}
	var sum int64
	for i, n := range names {
		switch n {
		case "FragCreates", "FragOKs", "FragFails", "ReasmReqds":
			if i < len(values) {
				v, _ := strconv.ParseInt(values[i], 10, 64)
				sum += v
			}
		}
	}
	return sum
}

// podMTU reads the pod MTU a host's tabbyd published and the MTU of a pod's eth0.
func podMTU(ctx context.Context, tb testing.TB, c *lab.Cluster, host, pod string) (published, eth0 int) {
	tb.Helper()
	b, err := os.ReadFile(filepath.Join(c.DataDir(host), "mtu"))
	if err != nil {
		tb.Fatal(err)
	}
	published, err = strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		tb.Fatal(err)
	}
	// Not /sys/class/net: sysfs shows the namespace it was mounted in, the root one.
	out, err := nsRun(ctx, c.PodNS(pod), "ip", "-o", "link", "show", "eth0")
	if err != nil {
		tb.Fatal(err)
	}
	if _, rest, ok := strings.Cut(out, " mtu "); ok {
		eth0, _ = strconv.Atoi(strings.Fields(rest)[0])
	}
	return published, eth0
}

// dfPing sends three pings of size bytes of ICMP payload with fragmentation prohibited
// and reports whether they came back.
func dfPing(ctx context.Context, ns, dst string, size int) bool {
	_, err := nsRun(ctx, ns, "ping", "-M", "do", "-s", strconv.Itoa(size), "-c", "3", "-i", "0.2", "-W", "1", dst)
	return err == nil
}

// recreatePods plugs pod-1 and pod-2 in again, so that they take the pod MTU of the
// current mode (tabby-cni reads it at ADD).
func recreatePods(ctx context.Context, tb testing.TB, c *lab.Cluster) {
	tb.Helper()
	for _, w := range c.Workloads[:2] {
		if err := c.DelWorkload(ctx, w); err != nil {
			tb.Fatal(err)
		}
		if _, err := c.AddWorkload(ctx, w); err != nil {
			tb.Fatal(err)
		}
	}
	if err := c.WaitRoutes(ctx, 60*time.Second); err != nil {
		tb.Fatal(err)
	}
}

// BenchmarkDatapath (issue 8, figure 7): iperf3 TCP between pod-1 (worker-1) and pod-2
// (worker-2) of the articles' lab, over Direct and over VXLAN, alternately; the pods are
// plugged in again after each mode switch so that they use that mode's published pod
// MTU. For each mode it also checks fragmentation: DF pings of exactly the pod MTU pass,
// one byte more does not, and the hosts' and pods' IPv4 fragmentation and reassembly
// counters do not move during the iperf3 run. Direct is the reference for VXLAN.
// Goal: VXLAN ≥ 0.85 × Direct.
func BenchmarkDatapath(b *testing.B) {
	ctx := context.Background()
	c := newLab(b, lab.ModeDirect)
	const seconds = 5
	namespaces := []string{c.Topo.HostNS("worker-1"), c.Topo.HostNS("worker-2"), c.PodNS("pod-1"), c.PodNS("pod-2")}
	ref := newKernelVXLANReference(ctx, b)
	var refDirect, refVXLAN samples
	results := map[lab.Mode]samples{}
	retrans := map[lab.Mode]samples{}
	checks := map[lab.Mode]string{}
	for b.Loop() {
		for _, mode := range []lab.Mode{lab.ModeDirect, lab.ModeVXLAN} {
			if err := c.SetMode(ctx, mode); err != nil {
				b.Fatal(err)
			}
			if err := c.WaitRoutes(ctx, 60*time.Second); err != nil {
				b.Fatal(err)
			}
			recreatePods(ctx, b, c)
			published, eth0 := podMTU(ctx, b, c, "worker-1", "pod-1")
			ip2, err := c.WorkloadIP("pod-2")
			if err != nil {
				b.Fatal(err)
			}
			fits := dfPing(ctx, c.PodNS("pod-1"), ip2.String(), published-28)
			over := dfPing(ctx, c.PodNS("pod-1"), ip2.String(), published-27)
			var before int64
			for _, ns := range namespaces {
				before += fragCounters(ctx, b, ns)
			}
			gbps, rt := iperf3(ctx, b, c, "pod-1", "pod-2", seconds)
			var after int64
			for _, ns := range namespaces {
				after += fragCounters(ctx, b, ns)
			}
			results[mode] = append(results[mode], gbps)
			retrans[mode] = append(retrans[mode], float64(rt))
			check := fmt.Sprintf("pod MTU %d (pod eth0 %d): DF ping of %d bytes %s, of %d bytes %s; fragments during iperf3 %d",
				published, eth0, published, passFail(fits), published+1, passFail(over), after-before)
			if !fits || over || eth0 != published || after != before {
				check += " — FRAGMENTATION CHECK FAILED"
			}
			checks[mode] = check
		}
		d, v := ref.measure(ctx, b, seconds)
		refDirect, refVXLAN = append(refDirect, d), append(refVXLAN, v)
	}
	direct, vxlan := results[lab.ModeDirect], results[lab.ModeVXLAN]
	ratio := vxlan.median() / direct.median()
	reportMedian(b, direct, "direct-Gbit/s")
	reportMedian(b, vxlan, "vxlan-Gbit/s")
	b.ReportMetric(ratio, "vxlan/direct")
	figure(b, "datapath", "iperf3 TCP pod-1 → pod-2, %d s: VXLAN %s Gbit/s (retransmits %s) | reference Direct %s Gbit/s (retransmits %s) | ratio %.2f | goal ≥ 0.85: %s",
		seconds, vxlan, retrans[lab.ModeVXLAN], direct, retrans[lab.ModeDirect], ratio, verdict(ratio >= 0.85))
	figure(b, "datapath-ref", "kernel only, no tabby (two namespaces on one bridge, a hand-made vxlan device between them, MTU 1450): VXLAN %s Gbit/s, direct %s Gbit/s, ratio %.2f",
		refVXLAN, refDirect, refVXLAN.median()/refDirect.median())
	figure(b, "mtu-direct", "%s", checks[lab.ModeDirect])
	figure(b, "mtu-vxlan", "%s", checks[lab.ModeVXLAN])
}

func passFail(ok bool) string {
	if ok {
		return "pass"
	}
	return "fail"
}

// BenchmarkRestart (issue 8, figure 8): pod-1 (worker-1) pings pod-3 (worker-3, the other
// subnet) 100 times a second in the articles' lab in VXLAN mode; meanwhile worker-1's
// tabbyd is killed with SIGKILL and started again, and the benchmark waits until it is
// ready. Reference, in the same iteration: the same ping for the same time without a
// restart. Also printed: the time from the restart to readiness. Goal: no packet lost.
func BenchmarkRestart(b *testing.B) {
	ctx := context.Background()
	c := newLab(b, lab.ModeVXLAN)
	ip3, err := c.WorkloadIP("pod-3")
	if err != nil {
		b.Fatal(err)
	}
	// ping sends 100 echo requests a second from pod-1 to pod-3 while during runs, and
	// for 2 s before and after.
	ping := func(during func()) (sent, lost int, gap time.Duration) {
		b.Helper()
		p, err := startPinger(c.PodNS("pod-1"), ip3, 10*time.Millisecond)
		if err != nil {
			b.Fatal(err)
		}
		time.Sleep(2 * time.Second)
		during()
		time.Sleep(2 * time.Second)
		return p.stopPinger()
	}
	var lostRef, gapRef, lostRestart, sentRestart, gapRestart, ready samples
	for b.Loop() {
		var restartTook time.Duration
		tx, l, gap := ping(func() {
			if err := c.StopTabbyd("worker-1", true); err != nil {
				b.Fatal(err)
			}
			t0 := time.Now()
			if err := c.StartTabbyd("worker-1"); err != nil {
				b.Fatal(err)
			}
			var why string
			if !waitFor(60*time.Second, 20*time.Millisecond, func() bool {
				ok, text, err := c.Readiness(ctx, "worker-1")
				why = text
				if err != nil {
					why = err.Error()
				}
				return err == nil && ok
			}) {
				log, _ := os.ReadFile(filepath.Join(c.StateDir, "tabbyd-worker-1.log"))
				lines := strings.Split(strings.TrimSpace(string(log)), "\n")
				b.Fatalf("worker-1's tabbyd not ready 60 s after its restart: %s\nlast lines of its log:\n%s",
					why, strings.Join(lines[max(0, len(lines)-15):], "\n"))
			}
			restartTook = time.Since(t0)
			ready = append(ready, ms(restartTook))
		})
		lostRestart, sentRestart, gapRestart = append(lostRestart, float64(l)), append(sentRestart, float64(tx)), append(gapRestart, ms(gap))
		// The reference: as long a ping, nothing restarted.
		_, l, gap = ping(func() { time.Sleep(restartTook) })
		lostRef, gapRef = append(lostRef, float64(l)), append(gapRef, ms(gap))
	}
	reportMedian(b, lostRestart, "lost")
	var worst float64
	for _, l := range lostRestart {
		worst = max(worst, l)
	}
	figure(b, "restart", "kill -9 and restart of worker-1's tabbyd (VXLAN) under a 100/s ping pod-1 → pod-3: %s lost of %s sent, longest time without a reply %s ms, restart → ready %s ms | reference, the same ping as long without a restart: %s lost, longest gap %s ms | goal 0 lost: %s",
		lostRestart, sentRestart, gapRestart, ready, lostRef, gapRef, verdict(worst == 0))
}

// kernelVXLANReference is the kernel's own cost of VXLAN on this machine, without tabby:
// two host namespaces on one bridge (as the lab's worker-1 and worker-2 are) and a
// vxlan device made by hand between them.
type kernelVXLANReference struct {
	e      *env
	a, b   string // namespaces
	bUnder string // b's underlay address
	bInner string // b's vxlan address
}

func newKernelVXLANReference(ctx context.Context, tb testing.TB) *kernelVXLANReference {
	tb.Helper()
	e := newEnv(tb, "ka", "kb")
	r := &kernelVXLANReference{e: e, a: e.hostNS("ka"), b: e.hostNS("kb"), bUnder: e.hostIP("kb").String(), bInner: "10.201.0.2"}
	for i, side := range []struct{ ns, local, remote, inner string }{
		{r.a, e.hostIP("ka").String(), r.bUnder, "10.201.0.1/24"},
		{r.b, r.bUnder, e.hostIP("ka").String(), "10.201.0.2/24"},
	} {
		for _, args := range [][]string{
			{"link", "add", "vxref", "type", "vxlan", "id", "42", "local", side.local, "remote", side.remote, "dstport", "4789", "dev", lab.NIC},
			{"link", "set", "vxref", "mtu", "1450", "up"},
			{"addr", "add", side.inner, "dev", "vxref"},
		} {
			if out, err := exec.CommandContext(ctx, "ip", append([]string{"-n", side.ns}, args...)...).CombinedOutput(); err != nil {
				tb.Fatalf("reference vxlan %d: ip %s: %v: %s", i, strings.Join(args, " "), err, out)
			}
		}
	}
	return r
}

// measure runs iperf3 over the underlay and over the vxlan device.
func (r *kernelVXLANReference) measure(ctx context.Context, tb testing.TB, seconds int) (direct, vxlan float64) {
	tb.Helper()
	run := func(dst string) float64 {
		srv := lab.Command(r.b, "iperf3", "-s", "-1", "-B", dst)
		if err := srv.Start(); err != nil {
			tb.Fatal(err)
		}
		defer func() { _ = srv.Process.Kill(); _ = srv.Wait() }()
		for attempt := 0; ; attempt++ {
			out, err := nsRun(ctx, r.a, "iperf3", "-c", dst, "-t", strconv.Itoa(seconds), "-J")
			var res iperf3Result
			jerr := json.Unmarshal([]byte(out), &res)
			if err == nil && jerr == nil && res.Error == "" {
				return res.End.SumReceived.BitsPerSecond / 1e9
			}
			if attempt == 30 {
				tb.Fatalf("reference iperf3 to %s: %v %v %s", dst, err, jerr, res.Error)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	return run(r.bUnder), run(r.bInner)
}
