package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tabby-net/tabby/internal/namedns"
	"github.com/tabby-net/tabby/lab"
	"github.com/tabby-net/tabby/lab/labtest"
)

// newLab brings up the articles' lab (tabbylab's: four hosts in two subnets, a router,
// etcd, a tabbyd per host, pod-1..3 made by tabby-cni) under a tabby-bench-<random>
// prefix, and tears it down at cleanup. fabricMTU is the MTU of every link and host NIC;
// 0 keeps the lab's own (1500).
func newLab(tb testing.TB, mode lab.Mode, fabricMTU int) *lab.Cluster {
	tb.Helper()
	bin := binDir(tb)
	for _, tool := range []string{"iperf3", "ping", "nsenter"} {
		if _, err := exec.LookPath(tool); err != nil {
			tb.Skipf("needs %s (make deps installs it)", tool)
		}
	}
	c := labtest.New(tb, lab.NewArticlesCluster("", "", "", nil),
		labtest.Options{Purpose: "bench", StateDir: labtest.TmpfsDir(), BinDir: bin, Verbose: testing.Verbose()})
	if fabricMTU != 0 {
		c.Topo.MTU = fabricMTU
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if err := c.Up(ctx, mode); err != nil {
		tb.Fatalf("lab up: %v", err)
	}
	return c
}

// nsRun runs a command inside a namespace and returns its standard output.
func nsRun(ctx context.Context, ns string, name string, args ...string) (string, error) {
	cmd := namedns.Command(ns, name, args...)
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

// iperf3Run is what one iperf3 test measured.
type iperf3Run struct {
	gbps        float64 // the receiver's throughput
	retransmits int     // the sender's retransmissions
	// spurious is how many segments the receiver reported, by D-SACK, as received twice:
	// retransmissions of segments that were only reordered, not lost.
	spurious int64
	cpu      cpuTime // the whole machine's CPU time while the test ran
}

// cpuPerGB is the machine's CPU time per gigabyte moved, in milliseconds, in all and in
// softirq.
func (r iperf3Run) cpuPerGB(seconds int) (all, softirq float64) {
	gb := r.gbps / 8 * float64(seconds)
	return r.cpu.busy.Seconds() * 1000 / gb, r.cpu.softirq.Seconds() * 1000 / gb
}

// iperf3 runs one TCP test from pod `from` to pod `to` of the lab.
func iperf3(ctx context.Context, tb testing.TB, c *lab.Cluster, from, to string, seconds int, cpus hostCPUs) iperf3Run {
	tb.Helper()
	ip, err := c.WorkloadIP(to)
	if err != nil {
		tb.Fatal(err)
	}
	return iperf3Between(ctx, tb, c.PodNS(from), c.PodNS(to), ip.String(), seconds, cpus)
}

// hostCPUs gives each of a test's two hosts a CPU of its own (the first host the first
// CPU); nil leaves packets and processes wherever the kernel puts them.
type hostCPUs []int

// iperf3Args adds iperf3's CPU affinity (-A) for the host with index host.
func (h hostCPUs) iperf3Args(host int, args ...string) []string {
	if h == nil {
		return args
	}
	return append(args, "-A", strconv.Itoa(h[host]))
}

// iperf3Between runs one TCP test of seconds from namespace from to the address dst in
// namespace to, the server started for this one test (-1); with cpus, the client runs on
// the first host's CPU and the server on the second's.
func iperf3Between(ctx context.Context, tb testing.TB, from, to, dst string, seconds int, cpus hostCPUs) iperf3Run {
	tb.Helper()
	srv := namedns.Command(to, "iperf3", cpus.iperf3Args(1, "-s", "-1", "-B", dst)...)
	if err := srv.Start(); err != nil {
		tb.Fatal(err)
	}
	defer func() { _ = srv.Process.Kill(); _ = srv.Wait() }()
	var r iperf3Result
	var cpu cpuTime
	var spurious int64
	for attempt := 0; ; attempt++ {
		before, dsackBefore := machineCPU(tb), counters(ctx, tb, from, "/proc/net/netstat", "TcpExt", "TCPDSACKRecvSegs")
		out, err := nsRun(ctx, from, "iperf3", cpus.iperf3Args(0, "-c", dst, "-t", strconv.Itoa(seconds), "-J")...)
		cpu = machineCPU(tb).sub(before)
		spurious = counters(ctx, tb, from, "/proc/net/netstat", "TcpExt", "TCPDSACKRecvSegs") - dsackBefore
		r = iperf3Result{}
		jerr := json.Unmarshal([]byte(out), &r)
		if err == nil && jerr == nil && r.Error == "" {
			break
		}
		if attempt == 30 {
			tb.Fatalf("iperf3 %s → %s in %s: %v %v %s", from, dst, to, err, jerr, r.Error)
		}
		time.Sleep(100 * time.Millisecond) // the server is not listening yet
	}
	return iperf3Run{gbps: r.End.SumReceived.BitsPerSecond / 1e9, retransmits: r.End.SumSent.Retransmits, spurious: spurious, cpu: cpu}
}

// cpuTime is CPU time summed over all cores.
type cpuTime struct{ busy, softirq time.Duration }

func (a cpuTime) sub(b cpuTime) cpuTime { return cpuTime{a.busy - b.busy, a.softirq - b.softirq} }

// machineCPU reads from /proc/stat the time all cores spent busy (user, system, irq,
// softirq; not idle, iowait or steal) and the part in softirq, where forwarding,
// encapsulation and decapsulation run. It is the whole machine's time: throughput on
// this path follows CPU per byte, and on a shared machine other work shows in it too,
// which the printed load average tells.
func machineCPU(tb testing.TB) cpuTime {
	tb.Helper()
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		tb.Fatal(err)
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line) // cpu user nice system idle iowait irq softirq steal …
	if len(f) < 8 || f[0] != "cpu" {
		tb.Fatalf("/proc/stat starts with %q", line)
	}
	// /proc/stat counts in USER_HZ, 100 per second on every Linux architecture.
	const tick = 10 * time.Millisecond
	var busy time.Duration
	for i, v := range f[1:] {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			tb.Fatalf("/proc/stat: %q: %v", line, err)
		}
		switch i {
		case 0, 1, 2, 5, 6: // user, nice, system, irq, softirq (guest time is in user)
			busy += time.Duration(n) * tick
		}
	}
	softirq, _ := strconv.ParseInt(f[7], 10, 64)
	return cpuTime{busy: busy, softirq: time.Duration(softirq) * tick}
}

// fragCounters sums the IPv4 fragmentation and reassembly counters of a namespace.
func fragCounters(ctx context.Context, tb testing.TB, ns string) int64 {
	tb.Helper()
	return counters(ctx, tb, ns, "/proc/net/snmp", "Ip", "FragCreates", "FragOKs", "FragFails", "ReasmReqds")
}

// counters sums the named counters of one group ("Ip", "TcpExt") of a namespace's
// /proc/net/snmp or /proc/net/netstat, where each group is a line of names followed by
// a line of values.
func counters(ctx context.Context, tb testing.TB, ns, file, group string, names ...string) int64 {
	tb.Helper()
	out, err := nsRun(ctx, ns, "cat", file)
	if err != nil {
		tb.Fatal(err)
	}
	var header, values []string
	for line := range strings.Lines(out) {
		if rest, ok := strings.CutPrefix(line, group+": "); ok {
			if header == nil {
				header = strings.Fields(rest)
			} else {
				values = strings.Fields(rest)
			}
		}
	}
	var sum int64
	for i, n := range header {
		if slices.Contains(names, n) && i < len(values) {
			v, err := strconv.ParseInt(values[i], 10, 64)
			if err != nil {
				tb.Fatalf("%s in %s: %s %q: %v", file, ns, n, values[i], err)
			}
			sum += v
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

// processOn makes the CPU cpu process every packet that enters the namespaces (Receive
// Packet Steering on each of their devices but lo): the namespaces of one lab host, its
// own and its pods', so that its packet work runs on its own CPU as on a machine of its
// own. Without it a veth hands a packet to the CPU that sent it, and one CPU carries a
// flow through both hosts. sysfs shows a namespace's devices only when mounted from
// inside it, which `ip netns exec` does; the root namespace's devices are never touched.
func processOn(ctx context.Context, tb testing.TB, cpu int, namespaces ...string) {
	tb.Helper()
	mask := strconv.FormatUint(1<<cpu, 16)
	for _, ns := range namespaces {
		out, err := exec.CommandContext(ctx, "ip", "netns", "exec", ns, "sh", "-euc", `
			n=0
			for f in /sys/class/net/*/queues/rx-*/rps_cpus; do
				case $f in /sys/class/net/lo/*) continue ;; esac
				echo "$1" > "$f"
				n=$((n + 1))
			done
			[ "$n" -gt 0 ] || { echo "no device to steer" >&2; exit 1; }`, "sh", mask).CombinedOutput()
		if err != nil {
			tb.Fatalf("steer the packets of %s to CPU %d: %v: %s", ns, cpu, err, out)
		}
	}
}

// BenchmarkDatapath (issue 8, figure 7): iperf3 TCP between pod-1 (worker-1) and pod-2
// (worker-2) of the articles' lab, over Direct and over VXLAN, alternately; the pods are
// plugged in again after each mode switch so that they use that mode's published pod
// MTU. For each mode it also checks fragmentation: DF pings of exactly the pod MTU pass,
// one byte more does not, and the hosts' and pods' IPv4 fragmentation and reassembly
// counters do not move during the iperf3 run. Direct is the reference for VXLAN; the
// same path made by hand without tabby (kernelDatapath), measured in the same
// iteration, tells how much of the difference is the kernel's. Every run also records
// the machine's CPU time per gigabyte moved and how many retransmissions the receiver
// reported as duplicates (reordered, not lost). Goal: VXLAN ≥ 0.85 × Direct.
func BenchmarkDatapath(b *testing.B) { benchmarkDatapath(b, 0, false) }

// BenchmarkDatapathJumbo is BenchmarkDatapath on a fabric of MTU 9001, the MTU of EC2
// instances inside a VPC, where the articles' clusters run: pod MTU 9001 Direct, 8951
// VXLAN (Calico's figure on AWS).
func BenchmarkDatapathJumbo(b *testing.B) { benchmarkDatapath(b, ec2MTU, false) }

// BenchmarkDatapathHostCPU is BenchmarkDatapath with each of the two hosts on a CPU of
// its own, as two machines would be: every packet entering worker-1 or pod-1 is
// processed on CPU 0, every one entering worker-2 or pod-2 on CPU 1 (processOn), and the
// iperf3 client and server run on their host's CPU. So VXLAN's encapsulation costs the
// sending host's CPU and its decapsulation the receiving host's, where on the shared
// path both land on the one CPU that carries the flow. The hand-made path is measured the
// same way.
func BenchmarkDatapathHostCPU(b *testing.B) {
	if runtime.NumCPU() < 2 {
		b.Skipf("one CPU per lab host needs 2 CPUs, this machine has %d; BenchmarkDatapath measures the shared path", runtime.NumCPU())
	}
	benchmarkDatapath(b, 0, true)
}

// ec2MTU is the MTU of an EC2 instance's network interface inside a VPC.
const ec2MTU = 9001

// benchmarkDatapath measures tabby's Direct and VXLAN paths on a lab of fabricMTU (0: the
// lab's own 1500), and on the lab's MTU also the same path made by hand; with hostCPU,
// each host on a CPU of its own.
func benchmarkDatapath(b *testing.B, fabricMTU int, hostCPU bool) {
	ctx := context.Background()
	c := newLab(b, lab.ModeDirect, fabricMTU)
	const seconds = 5
	namespaces := []string{c.Topo.HostNS("worker-1"), c.Topo.HostNS("worker-2"), c.PodNS("pod-1"), c.PodNS("pod-2")}
	var cpus hostCPUs
	if hostCPU {
		cpus = hostCPUs{0, 1}
	}
	var ref *kernelDatapath
	if fabricMTU == 0 {
		ref = newKernelDatapath(ctx, b)
		if cpus != nil {
			for i := range 2 {
				processOn(ctx, b, cpus[i], ref.host[i], ref.pod[i])
			}
		}
	}
	results := map[lab.Mode]*modeStats{lab.ModeDirect: {}, lab.ModeVXLAN: {}}
	refResults := map[lab.Mode]*modeStats{lab.ModeDirect: {}, lab.ModeVXLAN: {}}
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
			if cpus != nil {
				processOn(ctx, b, cpus[0], c.Topo.HostNS("worker-1"), c.PodNS("pod-1"))
				processOn(ctx, b, cpus[1], c.Topo.HostNS("worker-2"), c.PodNS("pod-2"))
			}
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
			results[mode].add(iperf3(ctx, b, c, "pod-1", "pod-2", seconds, cpus), seconds)
			var after int64
			for _, ns := range namespaces {
				after += fragCounters(ctx, b, ns)
			}
			check := fmt.Sprintf("fabric MTU %d, pod MTU %d (pod eth0 %d): DF ping of %d bytes %s, of %d bytes %s; fragments during iperf3 %d",
				c.Topo.MTU, published, eth0, published, passFail(fits), published+1, passFail(over), after-before)
			if !fits || over || eth0 != published || after != before {
				check += " — FRAGMENTATION CHECK FAILED"
			}
			checks[mode] = check
		}
		if ref != nil {
			for _, mode := range []lab.Mode{lab.ModeDirect, lab.ModeVXLAN} {
				ref.setMode(ctx, b, mode)
				refResults[mode].add(ref.measure(ctx, b, seconds, cpus), seconds)
			}
		}
	}
	name, where := "datapath", ""
	if fabricMTU != 0 {
		name = fmt.Sprintf("datapath-%d", fabricMTU)
	}
	if cpus != nil {
		name, where = name+"-hostcpu", ", each host on a CPU of its own"
	}
	direct, vxlan := results[lab.ModeDirect], results[lab.ModeVXLAN]
	ratio := vxlan.gbps.median() / direct.gbps.median()
	reportMedian(b, direct.gbps, "direct-Gbit/s")
	reportMedian(b, vxlan.gbps, "vxlan-Gbit/s")
	b.ReportMetric(ratio, "vxlan/direct")
	figure(b, name, "iperf3 TCP pod-1 → pod-2, %d s, fabric MTU %d%s: VXLAN %s Gbit/s (retransmits %s, of them reported received twice %s) | reference Direct %s Gbit/s (retransmits %s, received twice %s) | ratio %.2f | goal ≥ 0.85: %s",
		seconds, c.Topo.MTU, where, vxlan.gbps, vxlan.retrans, vxlan.spurious, direct.gbps, direct.retrans, direct.spurious, ratio, verdict(ratio >= 0.85))
	cpu := fmt.Sprintf("machine CPU per GB moved (both cores, ms; of it softirq): tabby Direct %s (%s), VXLAN %s (%s)",
		direct.cpu, direct.softirq, vxlan.cpu, vxlan.softirq)
	if ref != nil {
		refDirect, refVXLAN := refResults[lab.ModeDirect], refResults[lab.ModeVXLAN]
		refRatio := refVXLAN.gbps.median() / refDirect.gbps.median()
		b.ReportMetric(refRatio, "kernel-vxlan/direct")
		figure(b, name+"-ref", "kernel only, no tabby: the lab's path made by hand (pod, forwarding host, bridge, forwarding host, pod; a vxlan device set up as vxlan.tabby; conntrack on)%s: VXLAN %s Gbit/s, Direct %s Gbit/s, ratio %.2f",
			where, refVXLAN.gbps, refDirect.gbps, refRatio)
		cpu += fmt.Sprintf(" | kernel only Direct %s (%s), VXLAN %s (%s)", refDirect.cpu, refDirect.softirq, refVXLAN.cpu, refVXLAN.softirq)
	}
	figure(b, name+"-cpu", "%s", cpu)
	figure(b, name+"-mtu-direct", "%s", checks[lab.ModeDirect])
	figure(b, name+"-mtu-vxlan", "%s", checks[lab.ModeVXLAN])
}

// modeStats gathers the iperf3 runs of one path in one mode.
type modeStats struct {
	gbps, retrans, spurious samples
	cpu, softirq            samples // ms of CPU per GB moved
}

func (m *modeStats) add(r iperf3Run, seconds int) {
	cpu, softirq := r.cpuPerGB(seconds)
	m.gbps = append(m.gbps, r.gbps)
	m.retrans = append(m.retrans, float64(r.retransmits))
	m.spurious = append(m.spurious, float64(r.spurious))
	m.cpu = append(m.cpu, cpu)
	m.softirq = append(m.softirq, softirq)
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
	c := newLab(b, lab.ModeVXLAN, 0)
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
			if _, err := c.StartTabbyd("worker-1", c.Tabbyd); err != nil {
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

// kernelDatapath is the lab's pod-to-pod path made by hand with ip(8), without tabby:
// what the kernel itself makes of Direct and of VXLAN on this machine. Two host
// namespaces on the router's bridge (as worker-1 and worker-2 are), both forwarding, each
// with a pod namespace behind a veth wired as tabby-cni wires it (a /32 on eth0, the
// gateway 169.254.1.1 answered by proxy ARP, a /32 route to the pod on the host), and a
// MASQUERADE rule for pod traffic leaving the pods' range: it never matches here, but
// its nat table makes conntrack follow every packet, as tabby's NAT chains (SPEC §6) do
// on every tabby host. Direct routes the other pod's /24 via the other host. VXLAN
// routes it through a vxlan device made as tabby makes vxlan.tabby (VNI 4096, port 4789,
// learning off, a permanent neighbour and FDB entry for the other end, an onlink route
// carrying MTU 1450), with both pods' veths at MTU 1450.
type kernelDatapath struct {
	host, pod [2]string     // namespaces
	underlay  [2]netip.Addr // the hosts' eth0 addresses
}

// The hand-made path's addressing: pod i (from 0) has 10.201.<i+1>.2 in 10.201.<i+1>.0/24,
// host i's vxlan device 10.202.0.<i+1> and the MAC 66:00:00:00:00:0<i+1>.
func kernelPodIP(i int) string  { return fmt.Sprintf("10.201.%d.2", i+1) }
func kernelPodNet(i int) string { return fmt.Sprintf("10.201.%d.0/24", i+1) }
func kernelVTEP(i int) string   { return fmt.Sprintf("10.202.0.%d", i+1) }
func kernelMAC(i int) string    { return fmt.Sprintf("66:00:00:00:00:0%d", i+1) }

func newKernelDatapath(ctx context.Context, tb testing.TB) *kernelDatapath {
	tb.Helper()
	e := newEnv(tb, "ka", "kb")
	k := &kernelDatapath{}
	for i, name := range []string{"ka", "kb"} {
		k.host[i], k.underlay[i] = e.hostNS(name), e.hostIP(name)
		// The topology's prefix, so that the env's cleanup removes the pods too.
		k.pod[i] = e.hostNS(name + "-pod")
	}
	for i := range 2 {
		h, p, o := k.host[i], k.pod[i], 1-i
		if out, err := exec.CommandContext(ctx, "ip", "netns", "add", p).CombinedOutput(); err != nil {
			tb.Fatalf("kernel datapath: ip netns add %s: %v: %s", p, err, out)
		}
		for _, cmd := range []struct {
			ns   string
			args []string
		}{
			{p, []string{"ip", "link", "set", "lo", "up"}},
			{h, []string{"ip", "link", "add", "kveth", "type", "veth", "peer", "name", "eth0", "netns", p}},
			{h, []string{"ip", "link", "set", "kveth", "address", "ee:ee:ee:ee:ee:ee", "up"}},
			{h, []string{"sysctl", "-qw", "net.ipv4.conf.kveth.proxy_arp=1", "net.ipv4.neigh.kveth.proxy_delay=0"}},
			{h, []string{"ip", "route", "add", kernelPodIP(i) + "/32", "dev", "kveth", "scope", "link"}},
			{p, []string{"ip", "addr", "add", kernelPodIP(i) + "/32", "dev", "eth0"}},
			{p, []string{"ip", "link", "set", "eth0", "up"}},
			{p, []string{"ip", "route", "add", "169.254.1.1", "dev", "eth0", "scope", "link"}},
			{p, []string{"ip", "route", "add", "default", "via", "169.254.1.1", "dev", "eth0"}},
			{h, []string{"ip", "link", "add", "kvxlan", "address", kernelMAC(i), "type", "vxlan", "id", "4096",
				"local", k.underlay[i].String(), "dev", lab.NIC, "dstport", "4789", "nolearning"}},
			{h, []string{"ip", "link", "set", "kvxlan", "mtu", "1450", "up"}},
			{h, []string{"ip", "addr", "add", kernelVTEP(i) + "/32", "dev", "kvxlan"}},
			{h, []string{"ip", "neigh", "add", kernelVTEP(o), "lladdr", kernelMAC(o), "dev", "kvxlan", "nud", "permanent"}},
			{h, []string{"bridge", "fdb", "append", kernelMAC(o), "dev", "kvxlan", "dst", k.underlay[o].String(), "self", "permanent"}},
			{h, []string{"iptables", "-t", "nat", "-A", "POSTROUTING", "-s", "10.201.0.0/16", "!", "-d", "10.201.0.0/16", "-j", "MASQUERADE"}},
		} {
			if _, err := nsRun(ctx, cmd.ns, cmd.args[0], cmd.args[1:]...); err != nil {
				tb.Fatalf("kernel datapath: %v", err)
			}
		}
	}
	return k
}

// setMode routes each pod's traffic to the other pod directly or through the vxlan
// devices, and gives the pods' veths the MTU of that mode.
func (k *kernelDatapath) setMode(ctx context.Context, tb testing.TB, mode lab.Mode) {
	tb.Helper()
	for i := range 2 {
		o := 1 - i
		route := []string{"ip", "route", "replace", kernelPodNet(o), "via", k.underlay[o].String(), "dev", lab.NIC}
		mtu := "1500"
		if mode == lab.ModeVXLAN {
			route = []string{"ip", "route", "replace", kernelPodNet(o), "via", kernelVTEP(o), "dev", "kvxlan", "onlink", "mtu", "1450"}
			mtu = "1450"
		}
		for _, cmd := range []struct {
			ns   string
			args []string
		}{
			{k.host[i], route},
			{k.host[i], []string{"ip", "link", "set", "kveth", "mtu", mtu}},
			{k.pod[i], []string{"ip", "link", "set", "eth0", "mtu", mtu}},
		} {
			if _, err := nsRun(ctx, cmd.ns, cmd.args[0], cmd.args[1:]...); err != nil {
				tb.Fatalf("kernel datapath, mode %s: %v", mode, err)
			}
		}
	}
}

// measure runs iperf3 from the first pod to the second.
func (k *kernelDatapath) measure(ctx context.Context, tb testing.TB, seconds int, cpus hostCPUs) iperf3Run {
	tb.Helper()
	return iperf3Between(ctx, tb, k.pod[0], k.pod[1], kernelPodIP(1), seconds, cpus)
}
