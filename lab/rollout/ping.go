package rollout

import (
	"bytes"
	"fmt"
	"os/exec"
	"regexp"
	"strconv"
	"syscall"
	"time"
)

// Pinger sends 50 echo requests a second from a network namespace to an address until it
// is stopped, as a workload's steady traffic, and counts what came back.
type Pinger struct {
	cmd  *exec.Cmd
	out  bytes.Buffer
	done chan error
}

// PingRate is how many echo requests a Pinger sends per second.
const PingRate = 50

// StartPing starts ping inside the network namespace at nsPath (a pod's).
func StartPing(nsPath, dst string) (*Pinger, error) {
	p := &Pinger{done: make(chan error, 1)}
	// -i 0.02: 50 a second; -W 1: a reply later than a second counts as lost.
	p.cmd = exec.Command("nsenter", "--net="+nsPath, "--", "ping", "-n", "-q", "-i", "0.02", "-W", "1", dst)
	p.cmd.Stdout = &p.out
	p.cmd.Stderr = &p.out
	if err := p.cmd.Start(); err != nil {
		return nil, fmt.Errorf("ping %s in %s: %w", dst, nsPath, err)
	}
	go func() { p.done <- p.cmd.Wait() }()
	return p, nil
}

var pingSummary = regexp.MustCompile(`(\d+) packets transmitted, (\d+) received`)

// Stop ends ping (SIGINT, after which it prints its summary) and returns how many
// requests it sent and how many were answered.
func (p *Pinger) Stop() (sent, received int, err error) {
	// Replies to the last requests get their second to arrive.
	time.Sleep(time.Second)
	_ = p.cmd.Process.Signal(syscall.SIGINT)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
	m := pingSummary.FindStringSubmatch(p.out.String())
	if m == nil {
		return 0, 0, fmt.Errorf("ping printed no summary: %s", p.out.String())
	}
	sent, _ = strconv.Atoi(m[1])
	received, _ = strconv.Atoi(m[2])
	return sent, received, nil
}
