package bgp

import (
	"strings"
	"time"

	"github.com/tabby-net/tabby/internal/statusapi"
)

// ReadinessGrace is how long after start every peer must be Established for the node to be
// ready; after it, one Established peer is enough (SPEC §9, as calico-node's readiness).
const ReadinessGrace = 30 * time.Second

// Readiness is the BGP part of tabbyd's readiness (SPEC §9): with no peers the node is
// ready; during the first 30 s after start every peer must be Established; after that at
// least one. The reason names the peers that are not established, in Calico's words:
// "BGP not established with 10.30.0.56,10.30.1.66".
func Readiness(peers []statusapi.Peer, sinceStart time.Duration) (ok bool, reason string) {
	if len(peers) == 0 {
		return true, ""
	}
	var down []string
	for _, p := range peers {
		if !p.Established {
			down = append(down, p.Address)
		}
	}
	if len(down) == 0 {
		return true, ""
	}
	if sinceStart >= ReadinessGrace && len(down) < len(peers) {
		return true, ""
	}
	return false, "BGP not established with " + strings.Join(down, ",")
}
