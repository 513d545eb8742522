package lab

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tabby-net/tabby/internal/namedns"
)

// start starts a long-running program inside a namespace through namedns (detached when
// c.Detach is set), with its output appended to <StateDir>/<logName>.log and its PID in
// <StateDir>/<name>.pid, so that a later command (tabbylab down, StopTabbyd) can find it.
// This process keeps the handle (Process) while it lives.
func (c *Cluster) start(ns, name, logName string, env []string, program string, args ...string) (*namedns.Process, error) {
	if err := os.MkdirAll(c.StateDir, 0o755); err != nil {
		return nil, err
	}
	p, err := namedns.Start(namedns.ProcessOptions{
		Namespace: ns, Log: c.logFile(logName), PIDFile: c.pidFile(name), Env: env, Detach: c.Detach,
	}, program, args...)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	if c.procs == nil {
		c.procs = map[string]*namedns.Process{}
	}
	c.procs[name] = p
	c.mu.Unlock()
	return p, nil
}

// Process returns the process of that name ("etcd", "tabbyd-worker-1") that this Cluster
// value started last, nil if it started none.
func (c *Cluster) Process(name string) *namedns.Process {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.procs[name]
}

// stopPID stops one process by PID: SIGTERM, then SIGKILL after grace. A PID that no
// longer exists, or that now belongs to a program other than wantExe, is left alone.
func stopPID(pid int, wantExe string, grace time.Duration) error {
	if !pidRuns(pid, wantExe) {
		return nil
	}
	if err := unix.Kill(pid, unix.SIGTERM); err != nil && !errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("stop %d: %w", pid, err)
	}
	deadline := time.Now().Add(grace)
	for time.Now().Before(deadline) {
		if !pidRuns(pid, wantExe) {
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := unix.Kill(pid, unix.SIGKILL); err != nil && !errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("kill %d: %w", pid, err)
	}
	for i := 0; i < 100 && pidRuns(pid, wantExe); i++ {
		time.Sleep(10 * time.Millisecond)
	}
	return nil
}

// procState reads the state letter of a /proc/<pid>/stat or task stat line ('?' if there
// is none): it follows the parenthesised command name, which may itself hold parentheses.
func procState(stat []byte) byte {
	if i := bytes.LastIndexByte(stat, ')'); i > 0 && i+2 < len(stat) {
		return stat[i+2]
	}
	return '?'
}

// pidRuns reports whether pid is alive and, when wantExe is set, runs a program of that
// base name, so that a recycled PID is never killed. A zombie is alive while any of its
// threads is still exiting: the main thread of a killed Go program turns zombie first, and
// the program keeps its files and sockets (a restarted daemon could not bind its ports)
// until the last thread is gone. While a zombie exists its PID cannot be recycled.
func pidRuns(pid int, wantExe string) bool {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	if procState(stat) == 'Z' {
		threads, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
		return err == nil && len(threads) > 1
	}
	if wantExe == "" {
		return true
	}
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return false
	}
	argv0, _, _ := bytes.Cut(cmdline, []byte{0})
	return filepath.Base(string(argv0)) == wantExe
}

// ProcessesInLab returns the PIDs of every process whose network namespace is one of the
// lab's (prefix-*), matched by namespace inode.
func (t *Topology) ProcessesInLab() ([]int, error) {
	names, err := namedns.List(t.Prefix + "-")
	if err != nil {
		return nil, err
	}
	return procsInNamespaces(names)
}

// procsInNamespaces lists the processes whose network namespace is one of names.
func procsInNamespaces(names []string) ([]int, error) {
	inodes := map[uint64]bool{}
	for _, n := range names {
		var st unix.Stat_t
		if err := unix.Stat(namedns.Path(n), &st); err == nil {
			inodes[st.Ino] = true
		}
	}
	if len(inodes) == 0 {
		return nil, nil
	}
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil, err
	}
	self := os.Getpid()
	var out []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self {
			continue
		}
		var st unix.Stat_t
		if err := unix.Stat(fmt.Sprintf("/proc/%d/ns/net", pid), &st); err != nil || !inodes[st.Ino] {
			continue
		}
		out = append(out, pid)
	}
	return out, nil
}

// PIDRuns reports whether a process is alive (not a zombie).
func PIDRuns(pid int) bool { return pidRuns(pid, "") }

// stopAll sends SIGTERM to every process at once, waits up to grace for them to exit, and
// SIGKILLs the ones still there.
func stopAll(pids []int, grace time.Duration) error {
	var errs []error
	for _, pid := range pids {
		if err := unix.Kill(pid, unix.SIGTERM); err != nil && !errors.Is(err, unix.ESRCH) {
			errs = append(errs, fmt.Errorf("stop %d: %w", pid, err))
		}
	}
	deadline := time.Now().Add(grace)
	for {
		var left []int
		for _, pid := range pids {
			if pidRuns(pid, "") {
				left = append(left, pid)
			}
		}
		if len(left) == 0 {
			return errors.Join(errs...)
		}
		if time.Now().After(deadline) {
			for _, pid := range left {
				if err := killHard(pid); err != nil && !errors.Is(err, unix.ESRCH) {
					errs = append(errs, err)
				}
			}
			return errors.Join(errs...)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// readPID reads a PID file; a missing file is (0, nil).
func readPID(path string) (int, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return 0, fmt.Errorf("pid file %s: %w", path, err)
	}
	return pid, nil
}

// lookBin finds a tabby binary next to the running program first, then in binDir, then
// on PATH, so `bin/tabbylab` finds `bin/tabbyd`.
func lookBin(binDir, name string) (string, error) {
	var dirs []string
	if binDir != "" {
		dirs = append(dirs, binDir)
	}
	if exe, err := os.Executable(); err == nil {
		dirs = append(dirs, filepath.Dir(exe))
	}
	for _, d := range dirs {
		p := filepath.Join(d, name)
		if st, err := os.Stat(p); err == nil && !st.IsDir() {
			return filepath.Abs(p)
		}
	}
	p, err := exec.LookPath(name)
	if err != nil {
		return "", fmt.Errorf("%s not found in %v or PATH: run `make build`", name, dirs)
	}
	return p, nil
}
