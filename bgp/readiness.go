package bgp

import (
	"fmt"
	"strings"
	"time"

	"github.com/tabby-net/tabby/internal/statusapi"
)

// ReadinessGrace is how long after start every peer must be Established for the node to be
// ready; after it, one Established peer is enough (SPEC §9, as calico-node's readiness).
const ReadinessGrace = 30 * time.Second

// ExplicitPeers is the readiness rule for the sessions of explicit BGPPeers (global and
// node specific, as opposed to the node-to-node mesh) once ReadinessGrace is over.
type ExplicitPeers string

const (
	// ExplicitPeersAny is Calico's rule (calico-node -bird-ready): after the grace, one
	// Established session of any kind is enough, so that nodes going down do not make the
	// whole mesh unready. A host whose only top-of-rack session is down but that has one
	// mesh session up counts as ready.
	ExplicitPeersAny ExplicitPeers = "any"
	// ExplicitPeersAll requires, after the grace too, every explicit BGPPeer's session to
	// be Established; mesh sessions keep Calico's rule. For hosts whose routes reach the
	// fabric only through their routers.
	ExplicitPeersAll ExplicitPeers = "all"
)

// ParseExplicitPeers reads the rule's name.
func ParseExplicitPeers(s string) (ExplicitPeers, error) {
	switch r := ExplicitPeers(s); r {
	case ExplicitPeersAny, ExplicitPeersAll:
		return r, nil
	}
	return "", fmt.Errorf("%q is neither %q nor %q", s, ExplicitPeersAny, ExplicitPeersAll)
}

// Readiness is the BGP part of tabbyd's readiness (SPEC §9): with no peers the node is
// ready; during the first 30 s after start every peer must be Established; after that at
// least one, and with ExplicitPeersAll every explicit BGPPeer's. The reason names the peers
// whose sessions make the node unready, in Calico's words:
// "BGP not established with 10.30.0.56,10.30.1.66".
func Readiness(peers []statusapi.Peer, sinceStart time.Duration, explicit ExplicitPeers) (ok bool, reason string) {
	var down, explicitDown []string
	for _, p := range peers {
		if p.Established {
			continue
		}
		down = append(down, p.Address)
		if p.Type != statusapi.PeerTypeMesh {
			explicitDown = append(explicitDown, p.Address)
		}
	}
	switch {
	case len(down) == 0:
		return true, ""
	case sinceStart < ReadinessGrace || len(down) == len(peers):
		return false, notEstablished(down)
	case explicit == ExplicitPeersAll && len(explicitDown) > 0:
		return false, notEstablished(explicitDown)
	}
	return true, ""
}

func notEstablished(addrs []string) string {
	return "BGP not established with " + strings.Join(addrs, ",")
}
