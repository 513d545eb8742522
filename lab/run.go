package lab

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// runCtx runs a command and kills it when ctx ends.
func runCtx(ctx context.Context, cmd *exec.Cmd) error {
	if err := cmd.Start(); err != nil {
		return err
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		_ = cmd.Process.Kill()
		<-done
		return ctx.Err()
	}
}

// killHard sends SIGKILL, as `kill -9` does, and waits for the process to go.
func killHard(pid int) error {
	if err := unix.Kill(pid, unix.SIGKILL); err != nil {
		return fmt.Errorf("kill -9 %d: %w", pid, err)
	}
	// A killed process exits only once each of its threads leaves the kernel, and a thread
	// in uninterruptible sleep (etcd's fsync on a busy disk) may take seconds to.
	const wait = 30 * time.Second
	for deadline := time.Now().Add(wait); pidRuns(pid, "") && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	if pidRuns(pid, "") {
		return fmt.Errorf("kill -9 %d: still exiting after %v; its threads: %s", pid, wait, threadStates(pid))
	}
	return nil
}

// threadStates lists a process's threads as "tid state wchan", to tell what a process
// that does not exit waits for.
func threadStates(pid int) string {
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		return err.Error()
	}
	var out []string
	for _, task := range tasks {
		stat, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/stat", pid, task.Name()))
		wchan, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/wchan", pid, task.Name()))
		out = append(out, fmt.Sprintf("%s %c %s", task.Name(), procState(stat), wchan))
	}
	return strings.Join(out, ", ")
}
