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
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tabby-net/tabby/internal/namedns"
)

// Process is a long-running program the lab started inside one of its namespaces.
type Process struct {
	Name string // "tabbyd-worker-1", "etcd"
	PID  int
}

// startInNS starts a program inside a namespace, detached in its own session so that it
// outlives the tabbylab command that started it, with its output in logFile. The PID is
// written to pidFile so a later `tabbylab down` can stop it.
func startInNS(ns, logFile, pidFile string, env []string, name string, args ...string) (*Process, error) {
	lf, err := os.OpenFile(logFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("log file for %s: %w", name, err)
	}
	defer lf.Close()
	cmd := namedns.Command(ns, name, args...)
	cmd.Stdout = lf
	cmd.Stderr = lf
	cmd.Env = append(os.Environ(), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s in %s: %w", name, ns, err)
	}
	// nsenter execs the program in place, so this PID is the program's own.
	pid := cmd.Process.Pid
	if err := os.WriteFile(pidFile, []byte(strconv.Itoa(pid)+"\n"), 0o644); err != nil {
		_ = cmd.Process.Kill()
		return nil, fmt.Errorf("pid file for %s: %w", name, err)
	}
	// Reap it in the background while this process lives; afterwards init does.
	go func() { _ = cmd.Wait() }()
	return &Process{Name: filepath.Base(pidFile), PID: pid}, nil
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
