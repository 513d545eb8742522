package rollout

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// checkWork looks at what tabbyd did, under its hardened unit, on worker-3 (the host in the
// other subnet, reached through VXLAN): routes, the vxlan device, forwarding, NAT in both
// iptables backends, the ipsets, the rt_protos file, BGP on 179 with MD5.
func (f *fleet) checkWork(ctx context.Context, t *testing.T, meshPassword string) {
	h := f.hosts["worker-3"]
	must := func(name string, args ...string) string {
		out, err := h.Output(ctx, name, args...)
		if err != nil {
			t.Error(err)
		}
		return out
	}
	u := f.unit(ctx, "worker-3")
	status, err := os.ReadFile(fmt.Sprintf("/proc/%s/status", mainPIDInRoot(t, h, u["MainPID"])))
	if err != nil {
		t.Fatal(err)
	}
	// The unit's CapabilityBoundingSet (CAP_NET_ADMIN, CAP_NET_RAW, CAP_NET_BIND_SERVICE,
	// CAP_SYS_MODULE: bits 12, 13, 10, 16), within what the container itself may hold
	// (systemd-nspawn withholds CAP_SYS_MODULE).
	const unitCaps = 1<<12 | 1<<13 | 1<<10 | 1<<16
	hostStatus, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", h.Leader()))
	if err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprintf("%016x", statusHex(t, string(hostStatus), "CapBnd:")&unitCaps)
	if got := fmt.Sprintf("%016x", statusHex(t, string(status), "CapBnd:")); got != want {
		t.Errorf("tabbyd's bounding set is %s, want %s (the unit's CapabilityBoundingSet within the host's)", got, want)
	}
	if statusHex(t, string(status), "NoNewPrivs:") != 1 {
		t.Error("tabbyd runs without NoNewPrivileges")
	}
	if routes := must("ip", "route", "show", "proto", "95"); strings.Count(routes, "192.168.") < 2 {
		t.Errorf("worker-3 has too few tabby routes:\n%s", routes)
	}
	if link := must("ip", "-d", "link", "show", "vxlan.tabby"); !strings.Contains(link, "vxlan id") {
		t.Errorf("no vxlan.tabby device on worker-3:\n%s", link)
	}
	if v := strings.TrimSpace(must("cat", "/proc/sys/net/ipv4/ip_forward")); v != "1" {
		t.Errorf("ip_forward is %s", v)
	}
	if sets := must("ipset", "list", "-n"); !strings.Contains(sets, "tabby40masq-ipam-pools") || !strings.Contains(sets, "tabby40all-ipam-pools") {
		t.Errorf("ipsets on worker-3:\n%s", sets)
	}
	if b, err := os.ReadFile(filepath.Join(h.Root, "etc/iproute2/rt_protos.d/tabby.conf")); err != nil || string(b) != "95\ttabby\n" {
		t.Errorf("rt_protos.d/tabby.conf: %q %v", b, err)
	}
	if nft := must("iptables-nft-save", "-t", "nat"); !strings.Contains(nft, "-A tabby-nat-outgoing") {
		t.Errorf("no NAT outgoing in iptables-nft on worker-3:\n%s", nft)
	}
	// BGP: the mesh sessions on 179, every one with the TCP MD5 signature option.
	deadline := time.Now().Add(60 * time.Second)
	for {
		sessions := must("ss", "-Htn", "state", "established", "( sport = :179 or dport = :179 )")
		if strings.Count(sessions, "\n") >= len(f.hosts)-1 {
			break
		}
		if time.Now().After(deadline) {
			t.Errorf("worker-3 has %d established BGP sessions, want %d:\n%s", strings.Count(sessions, "\n"), len(f.hosts)-1, sessions)
			break
		}
		time.Sleep(time.Second)
	}
	f.checkMD5(ctx, t, meshPassword)

	// The legacy backend: worker-2 is told to use it and must get its rules there.
	w2 := f.hosts["worker-2"]
	env := filepath.Join(w2.Root, "etc/tabby/tabbyd.env")
	old, _ := os.ReadFile(env)
	if err := os.WriteFile(env, append(append([]byte{}, old...), "TABBY_DATAPLANE_IPTABLESBACKEND=legacy\n"...), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := w2.Output(ctx, "systemctl", "restart", "tabbyd.service"); err != nil {
		t.Fatal(out, err)
	}
	f.waitActive(ctx, "worker-2", 60*time.Second)
	deadline = time.Now().Add(30 * time.Second)
	for {
		legacy, _ := w2.Output(ctx, "iptables-legacy-save", "-t", "nat")
		if strings.Contains(legacy, "-A tabby-nat-outgoing") {
			break
		}
		if time.Now().After(deadline) {
			j, _ := w2.Journal(ctx, "tabbyd.service")
			t.Errorf("no NAT outgoing in iptables-legacy on worker-2:\n%s\n%s", legacy, tail(j, 10))
			break
		}
		time.Sleep(500 * time.Millisecond)
	}
	if err := os.WriteFile(env, old, 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := w2.Output(ctx, "systemctl", "restart", "tabbyd.service"); err != nil {
		t.Fatal(out, err)
	}
	f.waitActive(ctx, "worker-2", 60*time.Second)
}

// checkMD5 proves the sessions are signed: a SYN to a host's port 179 from a peer's
// address without the key gets no answer (Linux drops unsigned segments on a socket with
// a key for that peer), while one from an address that is no peer is answered.
func (f *fleet) checkMD5(ctx context.Context, t *testing.T, meshPassword string) {
	// The password must be on the host, root-only, and nowhere in tabbyd's journal.
	h := f.hosts["worker-3"]
	p := filepath.Join(h.Root, "etc/tabby/secrets/bgp-secrets/mesh-password")
	st, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Errorf("%s has mode %v, want 0600", p, st.Mode().Perm())
	}
	if j, _ := h.Journal(ctx, "tabbyd.service"); strings.Contains(j, meshPassword) {
		t.Error("the BGP password is in tabbyd's journal")
	}
	// From master, a connection to worker-3:179 without the key: the kernel drops the
	// unsigned SYN, so it times out, where a listener without MD5 would accept it.
	m := f.hosts["master"]
	out, err := m.Output(ctx, "timeout", "3", "bash", "-c", "exec 3<>/dev/tcp/10.30.1.66/179")
	if err == nil {
		t.Errorf("an unsigned TCP connection from master to worker-3:179 was accepted: the session has no MD5 key (%s)", out)
	}
}

// mainPIDInRoot finds tabbyd's PID in the root PID namespace: the tabbyd process among
// the container's.
func mainPIDInRoot(t *testing.T, h *Host, inner string) string {
	t.Helper()
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if comm, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid)); err == nil && strings.TrimSpace(string(comm)) == "tabbyd" && isDescendant(pid, h.Leader()) {
			return strconv.Itoa(pid)
		}
	}
	t.Fatalf("tabbyd (pid %s in %s) not found in the root PID namespace", inner, h.Name)
	return ""
}

// statusHex reads a hexadecimal field of /proc/PID/status.
func statusHex(t *testing.T, status, field string) uint64 {
	t.Helper()
	for _, l := range strings.Split(status, "\n") {
		if v, ok := strings.CutPrefix(l, field); ok {
			n, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			if err != nil {
				t.Fatalf("%s %q: %v", field, v, err)
			}
			return n
		}
	}
	t.Fatalf("no %s in the status", field)
	return 0
}

func isDescendant(pid, ancestor int) bool {
	for pid > 1 {
		if pid == ancestor {
			return true
		}
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			return false
		}
		s := string(b)
		f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
		if len(f) < 2 {
			return false
		}
		pid, _ = strconv.Atoi(f[1])
	}
	return false
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// checkStopRestart: `systemctl stop`, then start, then restart of tabbyd on worker-1 while
// pods ping across hosts at 50/s: not one request lost.
func (f *fleet) checkStopRestart(ctx context.Context, t *testing.T, pods []*pod) {
	h := f.hosts["worker-1"]
	s := f.startStreams(pods)
	time.Sleep(2 * time.Second)
	for _, step := range [][]string{{"stop"}, {"start"}, {"restart"}} {
		if out, err := h.Output(ctx, "systemctl", "--no-block", step[0], "tabbyd.service"); err != nil {
			t.Error(out, err)
		}
		if step[0] == "stop" {
			time.Sleep(3 * time.Second)
			if u := f.unit(ctx, "worker-1"); u["ActiveState"] != "inactive" {
				t.Errorf("after stop tabbyd is %v", u)
			}
			continue
		}
		f.waitActive(ctx, "worker-1", 60*time.Second)
		time.Sleep(2 * time.Second)
	}
	lost, sent := s.stop(t)
	t.Logf("stop, start, restart of tabbyd on worker-1: %d requests sent, lost %v", sent, lost)
	if totalLost(lost) != 0 {
		t.Errorf("pings lost across stop/start/restart: %v", lost)
	}
}

// checkWatchdog freezes tabbyd on worker-3 with SIGSTOP: systemd's watchdog (WatchdogSec)
// must kill and restart it, and tabby's routes must stay in the kernel throughout.
func (f *fleet) checkWatchdog(ctx context.Context, t *testing.T) {
	h := f.hosts["worker-3"]
	before := f.unit(ctx, "worker-3")
	routes, err := h.Output(ctx, "ip", "route", "show", "proto", "95")
	if err != nil || routes == "" {
		t.Fatalf("no routes before the freeze: %v", err)
	}
	if out, err := h.Output(ctx, "kill", "-STOP", before["MainPID"]); err != nil {
		t.Fatal(out, err)
	}
	frozen := time.Now()
	deadline := frozen.Add(90 * time.Second)
	for {
		now, err := h.Output(ctx, "ip", "route", "show", "proto", "95")
		if err != nil || now != routes {
			t.Fatalf("routes changed while tabbyd was frozen:\nbefore:\n%s\nnow:\n%s", routes, now)
		}
		u := f.unit(ctx, "worker-3")
		if u["InvocationID"] != before["InvocationID"] && u["ActiveState"] == "active" {
			t.Logf("watchdog: frozen tabbyd replaced and ready after %s; result of the old one: watchdog", time.Since(frozen).Round(time.Second))
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("tabbyd frozen for 90s and not restarted: %v", u)
		}
		time.Sleep(500 * time.Millisecond)
	}
	j, _ := h.Output(ctx, "journalctl", "-u", "tabbyd.service", "--no-pager", "-o", "cat")
	if !strings.Contains(j, "Watchdog timeout") {
		t.Errorf("the journal does not say the watchdog fired:\n%s", tail(j, 15))
	}
	if now, _ := h.Output(ctx, "ip", "route", "show", "proto", "95"); now != routes {
		t.Errorf("routes differ after the restart:\nbefore:\n%s\nafter:\n%s", routes, now)
	}
}

// checkCrashLoop: with etcd unreachable, tabbyd on worker-2 is killed again and again; the
// unit has no start limit, so systemd keeps restarting it, and it becomes ready once etcd
// is back.
func (f *fleet) checkCrashLoop(ctx context.Context, t *testing.T) {
	h := f.hosts["worker-2"]
	if err := f.etcd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	resumed := false
	resume := func() {
		if !resumed {
			_ = f.etcd.Process.Signal(syscall.SIGCONT)
			resumed = true
		}
	}
	defer resume()
	const kills = 8
	first := f.unit(ctx, "worker-2")
	for i := 0; i < kills; i++ {
		u := f.unit(ctx, "worker-2")
		if u["MainPID"] == "0" {
			time.Sleep(300 * time.Millisecond)
			i--
			continue
		}
		if out, err := h.Output(ctx, "kill", "-KILL", u["MainPID"]); err != nil {
			t.Log(out, err)
		}
		// Wait for systemd's restart (RestartSec=2) before the next kill.
		deadline := time.Now().Add(20 * time.Second)
		for {
			n := f.unit(ctx, "worker-2")
			if n["MainPID"] != "0" && n["MainPID"] != u["MainPID"] {
				break
			}
			if n["Result"] == "start-limit-hit" || n["ActiveState"] == "failed" {
				t.Fatalf("after %d kills tabbyd hit a limit: %v", i+1, n)
			}
			if time.Now().After(deadline) {
				t.Fatalf("systemd did not restart tabbyd after kill %d: %v", i+1, n)
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	u := f.unit(ctx, "worker-2")
	n0, _ := strconv.Atoi(first["NRestarts"])
	n1, _ := strconv.Atoi(u["NRestarts"])
	if n1-n0 < kills {
		t.Errorf("NRestarts went from %d to %d after %d kills", n0, n1, kills)
	}
	if u["ActiveState"] == "active" {
		t.Errorf("tabbyd claims ready with etcd frozen: %v", u)
	}
	t.Logf("etcd down, %d kills: tabbyd %s/%s, restarts %d, status %q", kills, u["ActiveState"], u["SubState"], n1, u["StatusText"])
	resume()
	f.waitActive(ctx, "worker-2", 90*time.Second)
}

// buildNext packages the tree under a later version (the same code, another version
// string in the binaries) for the upgrade.
func (f *fleet) upgradeDeb(t *testing.T, env string) string {
	deb := os.Getenv(env)
	if deb == "" {
		t.Fatalf("%s is not set: make test-rollout builds the upgrade packages", env)
	}
	return deb
}

// hostVersion is the installed tabby package's version on a host.
func (f *fleet) hostVersion(ctx context.Context, host string) string {
	out, err := f.hosts[host].Output(ctx, "dpkg-query", "-W", "-f=${Version}", "tabby")
	if err != nil {
		f.t.Error(err)
	}
	return strings.TrimSpace(out)
}

// checkUpgrade: the playbook upgrades every host, one at a time, while pods ping across
// hosts at 50/s; nothing is lost, and each host's new tabbyd is running and ready.
func (f *fleet) checkUpgrade(ctx context.Context, t *testing.T, pods []*pod, secrets string) {
	deb := f.upgradeDeb(t, envDebUp)
	before := map[string]map[string]string{}
	for _, n := range f.order {
		before[n] = f.unit(ctx, n)
	}
	s := f.startStreams(pods)
	time.Sleep(time.Second)
	began := time.Now()
	out, err := f.playbook(ctx, "-e", "tabby_deb="+deb, "-e", "@"+secrets)
	took := time.Since(began)
	lost, sent := s.stop(t)
	if err != nil {
		t.Fatalf("upgrade: %v\n%s", err, out)
	}
	want := debVersion(deb)
	for _, n := range f.order {
		u := f.unit(ctx, n)
		if v := f.hostVersion(ctx, n); v != want {
			t.Errorf("%s runs package %s after the upgrade, want %s", n, v, want)
		}
		if u["InvocationID"] == before[n]["InvocationID"] || u["ActiveState"] != "active" {
			t.Errorf("%s: tabbyd was not replaced by a ready one: before %v, after %v", n, before[n], u)
		}
		start, _ := strconv.ParseFloat(u["ExecMainStartTimestampMonotonic"], 64)
		ready, _ := strconv.ParseFloat(u["ActiveEnterTimestampMonotonic"], 64)
		t.Logf("%s: new tabbyd ready %.2fs after its start", n, (ready-start)/1e6)
	}
	t.Logf("rolling upgrade to %s: %d hosts in %s (%.1fs per host), %d requests sent at %d/s per stream, lost %v",
		want, len(f.order), took.Round(100*time.Millisecond), took.Seconds()/float64(len(f.order)), sent, PingRate, lost)
	if totalLost(lost) != 0 {
		t.Errorf("pings lost during the rolling upgrade: %v", lost)
	}
}

// debVersion reads a package's version.
func debVersion(deb string) string {
	out, _ := exec.Command("dpkg-deb", "-f", deb, "Version").Output()
	return strings.TrimSpace(string(out))
}

// checkBrokenHost: the next upgrade carries a configuration tabbyd refuses on worker-2
// (a BGP hold time of 1s). The rollout must stop at worker-2, say which host and why, and
// leave worker-3 on the version it ran.
func (f *fleet) checkBrokenHost(ctx context.Context, t *testing.T, secrets string) {
	deb := f.upgradeDeb(t, envDebUp2)
	w3Before := f.hostVersion(ctx, "worker-3")
	broken := filepath.Join(f.dir, "inventory/broken.ini")
	if err := os.WriteFile(broken, []byte("[tabby]\nworker-2 tabby_bgp_hold_time=1s\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := f.playbook(ctx, "-i", broken, "-e", "tabby_deb="+deb, "-e", "@"+secrets,
		"-e", "tabby_readiness_retries=10", "-e", "tabby_readiness_delay=1")
	if err == nil {
		t.Fatalf("the rollout went through a host whose tabbyd cannot start:\n%s", out)
	}
	if !strings.Contains(out, "tabbyd on worker-2 is not ready") || !strings.Contains(out, "holdTime") {
		t.Errorf("the failed rollout does not say which host and why:\n%s", tail(out, 30))
	}
	if v := f.hostVersion(ctx, "worker-3"); v != w3Before {
		t.Errorf("worker-3 was upgraded to %s after worker-2 failed", v)
	}
	for _, n := range []string{"master", "worker-1"} {
		if v := f.hostVersion(ctx, n); v != debVersion(deb) {
			t.Errorf("%s before the broken host runs %s, want %s", n, v, debVersion(deb))
		}
	}
	t.Logf("the rollout stopped at worker-2:\n%s", grepLines(out, "tabbyd on worker-2"))
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
