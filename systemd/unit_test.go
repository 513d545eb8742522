// Package systemd_test checks the systemd files tabby ships: that systemd itself accepts
// them, and that they say what SPEC §9 and the daemon rely on.
package systemd_test

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// unitSettings reads a unit file into section → key → values (a key may repeat).
func unitSettings(t *testing.T, path string) map[string]map[string][]string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out := map[string]map[string][]string{}
	section := ""
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "" || strings.HasPrefix(line, "#") || strings.HasPrefix(line, ";"):
		case strings.HasPrefix(line, "["):
			section = strings.Trim(line, "[]")
			out[section] = map[string][]string{}
		default:
			k, v, ok := strings.Cut(line, "=")
			if !ok || section == "" {
				t.Fatalf("%s: cannot parse %q", path, line)
			}
			out[section][k] = append(out[section][k], v)
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

func TestUnitSaysWhatTheDaemonNeeds(t *testing.T) {
	u := unitSettings(t, "tabbyd.service")
	want := map[string]map[string]string{
		"Unit": {
			"Wants": "network-online.target",
			"After": "network-online.target",
		},
		"Service": {
			"Type":                    "notify",
			"NotifyAccess":            "main",
			"WatchdogSec":             "30",
			"ExecStart":               "/usr/bin/tabbyd run --config /etc/tabby/tabbyd.yaml",
			"Restart":                 "always",
			"RestartSec":              "2",
			"KillSignal":              "SIGTERM",
			"CapabilityBoundingSet":   "CAP_NET_ADMIN CAP_NET_RAW CAP_NET_BIND_SERVICE CAP_SYS_MODULE",
			"ProtectSystem":           "strict",
			"NoNewPrivileges":         "yes",
			"RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6 AF_NETLINK",
			"MemoryDenyWriteExecute":  "yes",
			"LockPersonality":         "yes",
			"SystemCallArchitectures": "native",
		},
		"Install": {"WantedBy": "multi-user.target"},
	}
	for section, keys := range want {
		for k, v := range keys {
			if got := u[section][k]; len(got) != 1 || got[0] != v {
				t.Errorf("[%s] %s = %q, want %q", section, k, got, v)
			}
		}
	}
	// tabbyd must be able to write /proc/sys (forwarding, proxy ARP): never read-only.
	for _, k := range []string{"ProtectKernelTunables", "ProcSubset"} {
		if v := u["Service"][k]; len(v) > 0 {
			t.Errorf("%s=%v would hide or freeze /proc/sys", k, v)
		}
	}
}

// TestWritablePathsExistAtStart: ReadWritePaths= fails the unit's start when a path (not
// marked with "-") is missing, so each must be made by StateDirectory= or by tmpfiles.
func TestWritablePathsExistAtStart(t *testing.T) {
	u := unitSettings(t, "tabbyd.service")
	made := map[string]bool{}
	for _, d := range u["Service"]["StateDirectory"] {
		made["/var/lib/"+d] = true
	}
	tmpfiles, err := os.ReadFile("tabby.tmpfiles.conf")
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.Lines(string(tmpfiles)) {
		if f := strings.Fields(line); len(f) >= 2 && !strings.HasPrefix(f[0], "#") {
			made[f[1]] = true
		}
	}
	var paths []string
	for _, v := range u["Service"]["ReadWritePaths"] {
		paths = append(paths, strings.Fields(v)...)
	}
	for _, want := range []string{"/var/lib/tabby", "/run/tabby"} {
		if !slices.Contains(paths, want) {
			t.Errorf("ReadWritePaths %q lacks %s (SPEC §10 dataDir and runDir)", paths, want)
		}
	}
	for _, p := range paths {
		if !strings.HasPrefix(p, "-") && !made[p] {
			t.Errorf("ReadWritePaths=%s: neither StateDirectory= nor tabby.tmpfiles.conf creates it", p)
		}
	}
}

// TestSystemdAcceptsTheUnit runs `systemd-analyze verify`, which reports unknown keys, bad
// values and missing executables (on stderr, with exit status 0 for most of them: any output
// fails the test). ExecStart is pointed at a stand-in executable, as tabbyd is not installed
// on the build machine.
func TestSystemdAcceptsTheUnit(t *testing.T) {
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skip("systemd-analyze is not installed (package systemd): the unit was not checked by systemd")
	}
	dir := t.TempDir()
	stand := filepath.Join(dir, "tabbyd")
	if err := os.WriteFile(stand, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	unit, err := os.ReadFile("tabbyd.service")
	if err != nil {
		t.Fatal(err)
	}
	text := strings.ReplaceAll(string(unit), "/usr/bin/tabbyd", stand)
	path := filepath.Join(dir, "tabbyd.service")
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(analyze, "verify", "--man=no", path).CombinedOutput()
	if err != nil || len(strings.TrimSpace(string(out))) > 0 {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}
}

// TestTmpfilesCreatesTheDirectories applies tabby.tmpfiles.conf to a scratch root.
func TestTmpfilesCreatesTheDirectories(t *testing.T) {
	tmpfiles, err := exec.LookPath("systemd-tmpfiles")
	if err != nil {
		t.Skip("systemd-tmpfiles is not installed (package systemd): tabby.tmpfiles.conf was not checked")
	}
	if os.Geteuid() != 0 {
		t.Skip("systemd-tmpfiles chowns to root: needs root")
	}
	conf, err := filepath.Abs("tabby.tmpfiles.conf")
	if err != nil {
		t.Fatal(err)
	}
	root := t.TempDir()
	if out, err := exec.Command(tmpfiles, "--create", "--root="+root, conf).CombinedOutput(); err != nil || len(out) > 0 {
		t.Fatalf("systemd-tmpfiles: %v\n%s", err, out)
	}
	for path, mode := range map[string]os.FileMode{
		"/run/tabby":                os.ModeDir | 0o755,
		"/run/xtables.lock":         0o600,
		"/etc/iproute2/rt_protos.d": os.ModeDir | 0o755,
	} {
		fi, err := os.Stat(filepath.Join(root, path))
		if err != nil {
			t.Errorf("%s: %v", path, err)
			continue
		}
		if fi.Mode() != mode {
			t.Errorf("%s: mode %v, want %v", path, fi.Mode(), mode)
		}
	}
}
