package namedns

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// ProcessOptions say how to start a long-running program inside a namespace.
type ProcessOptions struct {
	// Namespace the program runs in.
	Namespace string
	// Log receives the program's stdout and stderr (appended).
	Log string
	// PIDFile, when set, receives the PID, so that another process (a later `tabbylab
	// down`) can find it.
	PIDFile string
	// Env is added to this process's environment.
	Env []string
	// Detach puts the program in its own session, so that it outlives the command that
	// started it and a terminal's signals do not reach it.
	Detach bool
}

// Process is a program started inside a namespace. Its exit is collected in the background
// for as long as the starting process lives.
type Process struct {
	PID     int
	Log     string
	Started time.Time

	cmd  *exec.Cmd
	done chan struct{}
	err  error
}

// Start starts program inside o.Namespace.
func Start(o ProcessOptions, program string, args ...string) (*Process, error) {
	lf, err := os.OpenFile(o.Log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("log file for %s: %w", program, err)
	}
	defer lf.Close()
	cmd := Command(o.Namespace, program, args...)
	cmd.Stdout, cmd.Stderr = lf, lf
	cmd.Env = append(os.Environ(), o.Env...)
	if o.Detach {
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	}
	started := time.Now()
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s in %s: %w", program, o.Namespace, err)
	}
	p := &Process{PID: cmd.Process.Pid, Log: o.Log, Started: started, cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	if o.PIDFile != "" {
		if err := os.WriteFile(o.PIDFile, []byte(strconv.Itoa(p.PID)+"\n"), 0o644); err != nil {
			_ = p.Kill()
			return nil, fmt.Errorf("pid file for %s: %w", program, err)
		}
	}
	return p, nil
}

// Done is closed once the process has exited (every thread of it).
func (p *Process) Done() <-chan struct{} { return p.done }

// Running reports whether the process has not exited yet.
func (p *Process) Running() bool {
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// Err is the result of waiting for the process: nil after exit code 0. Only meaningful once
// Done is closed.
func (p *Process) Err() error { return p.err }

// ExitCode is the exit code, -1 when killed by a signal or still running.
func (p *Process) ExitCode() int {
	if p.Running() {
		return -1
	}
	return p.cmd.ProcessState.ExitCode()
}

// Signal sends sig without waiting.
func (p *Process) Signal(sig syscall.Signal) error {
	if !p.Running() {
		return nil
	}
	if err := p.cmd.Process.Signal(sig); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("signal %v to %d: %w", sig, p.PID, err)
	}
	return nil
}

// Stop sends sig and waits up to grace for the exit. A process still running then is
// killed, and Stop says so.
func (p *Process) Stop(sig syscall.Signal, grace time.Duration) error {
	if err := p.Signal(sig); err != nil {
		return err
	}
	select {
	case <-p.done:
		return nil
	case <-time.After(grace):
	}
	kerr := p.Kill()
	return errors.Join(fmt.Errorf("pid %d did not exit within %v of %v: killed", p.PID, grace, sig), kerr)
}

// Kill sends SIGKILL, as `kill -9` does, and waits for the process to go.
func (p *Process) Kill() error {
	if !p.Running() {
		return nil
	}
	if err := p.cmd.Process.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("kill -9 %d: %w", p.PID, err)
	}
	// A killed process exits only once each of its threads leaves the kernel, and a thread
	// in uninterruptible sleep (etcd's fsync on a busy disk) may take seconds to.
	select {
	case <-p.done:
		return nil
	case <-time.After(30 * time.Second):
		return fmt.Errorf("kill -9 %d: still exiting after 30s", p.PID)
	}
}

// Tail returns the last n lines of the process's log, for failure messages.
func (p *Process) Tail(n int) string { return TailFile(p.Log, n) }

// TailFile returns the last n lines of a file.
func TailFile(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return "(no log: " + err.Error() + ")"
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// Grep returns the lines of the process's log that contain s.
func (p *Process) Grep(s string) string {
	b, _ := os.ReadFile(p.Log)
	var out []string
	for line := range strings.Lines(string(b)) {
		if strings.Contains(line, s) {
			out = append(out, strings.TrimRight(line, "\n"))
		}
	}
	return strings.Join(out, "\n")
}

// LogLine returns the first line of the process's log that contains s, "" when none.
func (p *Process) LogLine(s string) string {
	f, err := os.Open(p.Log)
	if err != nil {
		return ""
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		if strings.Contains(sc.Text(), s) {
			return sc.Text()
		}
	}
	return ""
}
