// Package statusapi is the JSON schema of tabbyd's status socket and a client for it.
// It is a leaf package so that tabbyctl can read a daemon's status without linking the
// daemon, GoBGP or netlink.
package statusapi

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"time"
)

// Path is the HTTP path the status socket serves the Status document on.
const Path = "/status"

// Peer types, as `tabbyctl node status` prints them (Calico's words).
const (
	PeerTypeMesh         = "node-to-node mesh"
	PeerTypeGlobal       = "global"
	PeerTypeNodeSpecific = "node specific"
)

// Peer is one BGP session as the speaker sees it.
type Peer struct {
	// Address is the peer's IP, with ":port" only when the port is not 179.
	Address string `json:"address"`
	// Type is one of the PeerType constants.
	Type string `json:"type"`
	// State is BIRD's word for the session: "up", "start", "connect", "active", "opensent",
	// "openconfirm", "idle" or "passive".
	State string `json:"state"`
	// Since is when the session entered State.
	Since time.Time `json:"since"`
	// Info is "Established" for an up session, otherwise why it is not up
	// (e.g. "Connect: connection refused", "OpenSent: bad peer AS").
	Info string `json:"info"`
	// Established is true when the session is up.
	Established bool `json:"established"`
}

// Status is what the daemon reports on its status socket.
type Status struct {
	Node    string `json:"node"`
	Version string `json:"version"`
	// NodeAddress is the node's IPv4 address with its prefix length.
	NodeAddress string `json:"nodeAddress"`
	// Ready is the same verdict as GET /readiness; NotReady lists its reasons.
	Ready    bool     `json:"ready"`
	NotReady []string `json:"notReady,omitempty"`
	// Peers is the IPv4 BGP peer table.
	Peers []Peer `json:"peers"`
	// Problems lists invalid resources and subsystem errors, one line each.
	Problems []string `json:"problems,omitempty"`
	// StoredOnly lists the resources that set fields tabby stores but does not act on
	// (accepted, as Calico accepts them, and reported instead of silently ignored).
	StoredOnly []string `json:"storedOnly,omitempty"`
	// Revision is the etcd revision of the snapshot last applied.
	Revision int64 `json:"revision"`
	// TunnelMTU and PodMTU are the MTUs the daemon computed and published.
	HostMTU int `json:"hostMTU"`
	PodMTU  int `json:"podMTU"`
}

// Fetch reads the status from a daemon's unix socket.
func Fetch(ctx context.Context, socket string) (*Status, error) {
	client := &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		},
	}}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://tabbyd"+Path, nil)
	if err != nil {
		return nil, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("tabbyd is not running or its status socket %s is unreachable: %w", socket, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("status socket %s: %s", socket, resp.Status)
	}
	var st Status
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		return nil, fmt.Errorf("status socket %s: decode: %w", socket, err)
	}
	return &st, nil
}
