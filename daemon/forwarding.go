package daemon

import (
	"bytes"
	"fmt"
	"os"
)

// ipForwardPath is IPv4 forwarding of the network namespace tabbyd runs in: /proc/sys/net
// shows the namespace of the process that opens it.
const ipForwardPath = "/proc/sys/net/ipv4/ip_forward"

// ensureIPForwarding turns IPv4 forwarding on, as Felix does: a host that routes
// workloads forwards their packets between the workload veths, the NIC and the tunnels.
// It reports whether it changed anything.
func ensureIPForwarding() (bool, error) {
	cur, err := os.ReadFile(ipForwardPath)
	if err != nil {
		return false, fmt.Errorf("IP forwarding: %w", err)
	}
	if string(bytes.TrimSpace(cur)) == "1" {
		return false, nil
	}
	if err := os.WriteFile(ipForwardPath, []byte("1"), 0o644); err != nil {
		return false, fmt.Errorf("IP forwarding is off and cannot be turned on: %w", err)
	}
	return true, nil
}
