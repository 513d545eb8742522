package bgp

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"

	api "github.com/osrg/gobgp/v3/api"
	gobgplog "github.com/osrg/gobgp/v3/pkg/log"
	"github.com/osrg/gobgp/v3/pkg/packet/bgp"
)

// BIRD's words for a session's state, as `tabbyctl node status` prints them.
const (
	StateUp          = "up"
	StateStart       = "start"
	StateIdle        = "idle"
	StateConnect     = "connect"
	StateActive      = "active"
	StatePassive     = "passive"
	StateOpenSent    = "opensent"
	StateOpenConfirm = "openconfirm"
)

// InfoEstablished is the INFO of an up session.
const InfoEstablished = "Established"

// noResponseHint is what an unanswered connection attempt most often means: TCP 179 is
// filtered (a security group, a firewall) or the MD5 passwords differ, since the kernel
// silently drops segments whose TCP-MD5 signature does not match.
const noResponseHint = "no response (check TCP 179 / MD5 password)"

// peerTracker remembers, per peer address, when its session last changed state and the
// last reason it went (or stayed) down. It is fed by GoBGP's peer events and log events,
// both on GoBGP's goroutines, so every method is quick and only takes its own lock.
type peerTracker struct {
	mu    sync.Mutex
	peers map[string]*peerRecord
	now   func() time.Time
}

type peerRecord struct {
	state api.PeerState_SessionState
	since time.Time
	// lastErr is "Phase: reason", e.g. "Connect: connection refused"; empty once up.
	lastErr string
}

func newPeerTracker(now func() time.Time) *peerTracker {
	return &peerTracker{peers: map[string]*peerRecord{}, now: now}
}

func (t *peerTracker) record(addr string) *peerRecord {
	r, ok := t.peers[addr]
	if !ok {
		r = &peerRecord{state: api.PeerState_IDLE, since: t.now()}
		t.peers[addr] = r
	}
	return r
}

// added starts a fresh record for a peer just configured.
func (t *peerTracker) added(addr string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.peers[addr] = &peerRecord{state: api.PeerState_IDLE, since: t.now()}
}

// removed forgets a peer.
func (t *peerTracker) removed(addr string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	delete(t.peers, addr)
}

// reset forgets every peer (the server they belonged to is gone).
func (t *peerTracker) reset() {
	t.mu.Lock()
	defer t.mu.Unlock()
	clear(t.peers)
}

// stateChanged records a state transition from a GoBGP peer event.
func (t *peerTracker) stateChanged(addr string, state api.PeerState_SessionState) {
	t.mu.Lock()
	defer t.mu.Unlock()
	r := t.record(addr)
	if r.state == state {
		return
	}
	r.state = state
	r.since = t.now()
	if state == api.PeerState_ESTABLISHED {
		r.lastErr = ""
	}
}

// get returns a copy of a peer's record.
func (t *peerTracker) get(addr string) (peerRecord, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	r, ok := t.peers[addr]
	if !ok {
		return peerRecord{}, false
	}
	return *r, true
}

// observeLog reads the reasons out of GoBGP's per-peer log events.
func (t *peerTracker) observeLog(msg string, fields gobgplog.Fields) {
	addr, _ := fields["Key"].(string)
	if addr == "" {
		return
	}
	var reason string
	switch msg {
	case "failed to connect":
		err, _ := fields["Error"].(error)
		reason = connectFailure(err)
	case "sent notification":
		reason = t.notificationReason(addr, fields, false)
	case "received notification":
		reason = t.notificationReason(addr, fields, true)
	case "hold timer expired":
		reason = t.phase(addr) + ": hold timer expired"
	case "Peer Down":
		// A more precise reason (a NOTIFICATION, a hold timer) was logged just before;
		// keep it. Otherwise the TCP connection was lost.
		t.mu.Lock()
		r := t.record(addr)
		if r.lastErr == "" {
			why, _ := fields["Reason"].(string)
			switch {
			case strings.HasPrefix(why, "graceful-restart"):
				r.lastErr = "Established: connection lost, peer restarting (graceful restart)"
			case why == "read-failed" || why == "write-failed":
				r.lastErr = "Established: connection lost"
			default:
				r.lastErr = "Established: " + why
			}
		}
		t.mu.Unlock()
		return
	default:
		return
	}
	if reason == "" {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	t.record(addr).lastErr = reason
}

// phase is the BIRD word (capitalised) for the state a peer is in now.
func (t *peerTracker) phase(addr string) string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return phaseWord(t.record(addr).state)
}

// notificationReason renders a NOTIFICATION sent or received, e.g. "OpenSent: bad peer AS"
// or "Established: received cease: administrative shutdown". OPEN errors can only happen
// in OpenSent, which names the phase even if the state event is still on its way.
func (t *peerTracker) notificationReason(addr string, fields gobgplog.Fields, received bool) string {
	var code, subcode uint8
	if e, ok := fields["Data"].(*bgp.MessageError); ok {
		code, subcode = e.TypeCode, e.SubTypeCode
	} else {
		c, ok1 := fields["Code"].(uint8)
		s, ok2 := fields["Subcode"].(uint8)
		if !ok1 || !ok2 {
			return ""
		}
		code, subcode = c, s
	}
	phase := t.phase(addr)
	if code == bgp.BGP_ERROR_OPEN_MESSAGE_ERROR {
		phase = "OpenSent"
	}
	text := notificationText(code, subcode)
	if received {
		text = "received " + text
	}
	return phase + ": " + text
}

// connectFailure turns a failed dial into BIRD-like words.
func connectFailure(err error) string {
	switch {
	case err == nil:
		return ""
	case errors.Is(err, syscall.ECONNREFUSED):
		return "Connect: connection refused"
	case errors.Is(err, os.ErrDeadlineExceeded) || isTimeout(err):
		return "Active: " + noResponseHint
	case errors.Is(err, syscall.EHOSTUNREACH):
		return "Connect: host unreachable"
	case errors.Is(err, syscall.ENETUNREACH):
		return "Connect: network unreachable"
	case errors.Is(err, syscall.EADDRNOTAVAIL):
		return "Connect: the node address is not on this host"
	}
	var se *os.SyscallError
	if errors.As(err, &se) {
		return "Connect: " + se.Err.Error()
	}
	return "Connect: " + err.Error()
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// phaseWord is BIRD's capitalised name of a BGP state, for the INFO column.
func phaseWord(s api.PeerState_SessionState) string {
	switch s {
	case api.PeerState_IDLE:
		return "Idle"
	case api.PeerState_CONNECT:
		return "Connect"
	case api.PeerState_ACTIVE:
		return "Active"
	case api.PeerState_OPENSENT:
		return "OpenSent"
	case api.PeerState_OPENCONFIRM:
		return "OpenConfirm"
	case api.PeerState_ESTABLISHED:
		return "Established"
	}
	return "Start"
}

// stateWord is BIRD's word for a session state, for the STATE column. GoBGP's Active
// covers both dialling and waiting to be dialled; a passive session only ever waits.
func stateWord(s api.PeerState_SessionState, passive bool) string {
	switch s {
	case api.PeerState_IDLE:
		return StateIdle
	case api.PeerState_CONNECT:
		return StateConnect
	case api.PeerState_ACTIVE:
		if passive {
			return StatePassive
		}
		return StateActive
	case api.PeerState_OPENSENT:
		return StateOpenSent
	case api.PeerState_OPENCONFIRM:
		return StateOpenConfirm
	case api.PeerState_ESTABLISHED:
		return StateUp
	}
	return StateStart
}

// notificationText names a NOTIFICATION's error code and subcode (RFC 4271, 4486, 8538)
// in the words BIRD uses.
func notificationText(code, subcode uint8) string {
	pick := func(prefix string, names []string) string {
		if int(subcode) < len(names) && names[subcode] != "" {
			return prefix + names[subcode]
		}
		if prefix == "" {
			return fmt.Sprintf("error %d/%d", code, subcode)
		}
		return fmt.Sprintf("%ssubcode %d", prefix, subcode)
	}
	switch code {
	case bgp.BGP_ERROR_MESSAGE_HEADER_ERROR:
		return pick("", []string{"", "connection not synchronized", "bad message length", "bad message type"})
	case bgp.BGP_ERROR_OPEN_MESSAGE_ERROR:
		return pick("", []string{"", "unsupported version number", "bad peer AS", "bad BGP identifier",
			"unsupported optional parameter", "authentication failure", "unacceptable hold time",
			"unsupported capability", "", "", "role mismatch"})
	case bgp.BGP_ERROR_UPDATE_MESSAGE_ERROR:
		return pick("", []string{"", "malformed attribute list", "unrecognized well-known attribute",
			"missing mandatory attribute", "invalid attribute flags", "invalid attribute length",
			"invalid ORIGIN attribute", "AS routing loop", "invalid NEXT_HOP attribute",
			"optional attribute error", "invalid network field", "malformed AS_PATH"})
	case bgp.BGP_ERROR_HOLD_TIMER_EXPIRED:
		return "hold timer expired"
	case bgp.BGP_ERROR_FSM_ERROR:
		return "finite state machine error"
	case bgp.BGP_ERROR_CEASE:
		return pick("cease: ", []string{"", "maximum number of prefixes reached", "administrative shutdown",
			"peer deconfigured", "administrative reset", "connection rejected", "other configuration change",
			"connection collision resolution", "out of resources", "hard reset"})
	case bgp.BGP_ERROR_ROUTE_REFRESH_MESSAGE_ERROR:
		return "invalid route refresh message"
	}
	return fmt.Sprintf("error %d/%d", code, subcode)
}

// passiveWaiting is the INFO of a passive session that never heard from its peer.
const passiveWaiting = "Passive: waiting for the peer to connect (check TCP 179 / MD5 password)"
