package lab

import (
	"fmt"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"time"
)

// Notifications plays systemd for one daemon: it receives the sd_notify datagrams (READY=1,
// STATUS=…, WATCHDOG=1) sent to its socket and keeps them.
type Notifications struct {
	Path string
	conn *net.UnixConn

	mu   sync.Mutex
	msgs []string
}

// ListenNotify listens on a new unixgram socket at path.
func ListenNotify(path string) (*Notifications, error) {
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		return nil, fmt.Errorf("notify socket: %w", err)
	}
	n := &Notifications{Path: path, conn: c}
	go func() {
		buf := make([]byte, 4096)
		for {
			k, err := c.Read(buf)
			if err != nil {
				return
			}
			n.mu.Lock()
			n.msgs = append(n.msgs, string(buf[:k]))
			n.mu.Unlock()
		}
	}()
	return n, nil
}

// Close stops listening and removes the socket.
func (n *Notifications) Close() {
	n.conn.Close()
	_ = os.Remove(n.Path) // gone already when the state directory was removed first
}

// Wait reports whether a notification holding the line want arrives within timeout (or
// has arrived already).
func (n *Notifications) Wait(want string, timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for {
		for _, m := range n.All() {
			for l := range strings.Lines(m) {
				if strings.TrimSpace(l) == want {
					return true
				}
			}
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// All returns every notification received so far.
func (n *Notifications) All() []string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return slices.Clone(n.msgs)
}
