package bgp

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	api "github.com/osrg/gobgp/v3/api"
	gobgplog "github.com/osrg/gobgp/v3/pkg/log"
	"github.com/osrg/gobgp/v3/pkg/packet/bgp"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/tabby-net/tabby/internal/statusapi"
)

func TestReadiness(t *testing.T) {
	mesh := func(addr string, up bool) statusapi.Peer {
		return statusapi.Peer{Address: addr, Type: statusapi.PeerTypeMesh, Established: up}
	}
	tor := func(addr string, up bool) statusapi.Peer {
		return statusapi.Peer{Address: addr, Type: statusapi.PeerTypeNodeSpecific, Established: up}
	}
	global := func(addr string, up bool) statusapi.Peer {
		return statusapi.Peer{Address: addr, Type: statusapi.PeerTypeGlobal, Established: up}
	}
	up, down1, down2 := mesh("10.30.0.206", true), mesh("10.30.0.56", false), mesh("10.30.1.66", false)
	later := ReadinessGrace + time.Second
	tests := []struct {
		name     string
		peers    []statusapi.Peer
		since    time.Duration
		explicit ExplicitPeers
		ok       bool
		reason   string
	}{
		{"no peers", nil, 0, ExplicitPeersAny, true, ""},
		{"no peers, all", nil, 0, ExplicitPeersAll, true, ""},
		{"all up early", []statusapi.Peer{up}, time.Second, ExplicitPeersAny, true, ""},
		{"one down early", []statusapi.Peer{up, down1, down2}, 10 * time.Second, ExplicitPeersAny, false, "BGP not established with 10.30.0.56,10.30.1.66"},
		{"one down early, all", []statusapi.Peer{up, down1, down2}, 10 * time.Second, ExplicitPeersAll, false, "BGP not established with 10.30.0.56,10.30.1.66"},
		{"one up later is enough", []statusapi.Peer{up, down1, down2}, later, ExplicitPeersAny, true, ""},
		{"none up later", []statusapi.Peer{down1, down2}, time.Hour, ExplicitPeersAny, false, "BGP not established with 10.30.0.56,10.30.1.66"},

		// The case: the only top-of-rack session is down, a mesh session is up.
		{"ToR down later, any (Calico)", []statusapi.Peer{up, tor("10.30.0.250", false)}, later, ExplicitPeersAny, true, ""},
		{"ToR down later, all", []statusapi.Peer{up, tor("10.30.0.250", false)}, later, ExplicitPeersAll, false, "BGP not established with 10.30.0.250"},
		{"global peer down later, all", []statusapi.Peer{up, tor("10.30.0.250", true), global("10.30.0.251", false)}, later, ExplicitPeersAll, false, "BGP not established with 10.30.0.251"},
		{"explicit peers up, mesh peer down later, all", []statusapi.Peer{down1, tor("10.30.0.250", true), global("10.30.0.251", true)}, later, ExplicitPeersAll, true, ""},
		{"only the mesh, some down later, all", []statusapi.Peer{up, down1}, later, ExplicitPeersAll, true, ""},
		{"everything down later, all: every peer named", []statusapi.Peer{down1, tor("10.30.0.250", false)}, later, ExplicitPeersAll, false, "BGP not established with 10.30.0.56,10.30.0.250"},
		{"ToR down early, any", []statusapi.Peer{up, tor("10.30.0.250", false)}, time.Second, ExplicitPeersAny, false, "BGP not established with 10.30.0.250"},
	}
	for _, tt := range tests {
		ok, reason := Readiness(tt.peers, tt.since, tt.explicit)
		if ok != tt.ok || reason != tt.reason {
			t.Errorf("%s: Readiness = %v %q, want %v %q", tt.name, ok, reason, tt.ok, tt.reason)
		}
	}
}

func TestParseExplicitPeers(t *testing.T) {
	for in, want := range map[string]ExplicitPeers{"any": ExplicitPeersAny, "all": ExplicitPeersAll} {
		if got, err := ParseExplicitPeers(in); err != nil || got != want {
			t.Errorf("ParseExplicitPeers(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, in := range []string{"", "All", "some"} {
		if _, err := ParseExplicitPeers(in); err == nil || !strings.Contains(err.Error(), fmt.Sprintf("%q", in)) {
			t.Errorf("ParseExplicitPeers(%q): err %v, want one naming the value", in, err)
		}
	}
}

func TestConnectFailure(t *testing.T) {
	refused := &net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("connect", syscall.ECONNREFUSED)}
	timeout := &net.OpError{Op: "dial", Net: "tcp", Err: os.ErrDeadlineExceeded}
	unreachable := &net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("connect", syscall.EHOSTUNREACH)}
	for err, want := range map[error]string{
		refused:     "Connect: connection refused",
		timeout:     "Active: no response (check TCP 179 / MD5 password)",
		unreachable: "Connect: host unreachable",
	} {
		if got := connectFailure(err); got != want {
			t.Errorf("connectFailure(%v) = %q, want %q", err, got, want)
		}
	}
}

// TestTrackerReasons feeds the tracker the log events GoBGP emits and checks the INFO.
func TestTrackerReasons(t *testing.T) {
	now := time.Date(2026, 1, 2, 18, 42, 27, 0, time.UTC)
	tests := []struct {
		name   string
		state  api.PeerState_SessionState
		msg    string
		fields gobgplog.Fields
		want   string
	}{
		{"refused", api.PeerState_ACTIVE, "failed to connect",
			gobgplog.Fields{"Error": &net.OpError{Op: "dial", Err: os.NewSyscallError("connect", syscall.ECONNREFUSED)}},
			"Connect: connection refused"},
		{"bad peer AS sent in OpenSent, even before the state event", api.PeerState_ACTIVE, "sent notification",
			gobgplog.Fields{"Data": bgp.NewMessageError(bgp.BGP_ERROR_OPEN_MESSAGE_ERROR, bgp.BGP_ERROR_SUB_BAD_PEER_AS, nil, "as number mismatch")},
			"OpenSent: bad peer AS"},
		{"cease received while established", api.PeerState_ESTABLISHED, "received notification",
			gobgplog.Fields{"Code": uint8(bgp.BGP_ERROR_CEASE), "Subcode": uint8(bgp.BGP_ERROR_SUB_ADMINISTRATIVE_SHUTDOWN)},
			"Established: received cease: administrative shutdown"},
		{"hold timer", api.PeerState_ESTABLISHED, "hold timer expired", gobgplog.Fields{}, "Established: hold timer expired"},
		{"connection lost", api.PeerState_ESTABLISHED, "Peer Down", gobgplog.Fields{"Reason": "read-failed"}, "Established: connection lost"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tr := newPeerTracker(func() time.Time { return now })
			tr.added("192.0.2.1")
			tr.stateChanged("192.0.2.1", tt.state)
			tt.fields["Topic"] = "Peer"
			tt.fields["Key"] = "192.0.2.1"
			tr.observeLog(tt.msg, tt.fields)
			rec, _ := tr.get("192.0.2.1")
			if rec.lastErr != tt.want {
				t.Errorf("reason = %q, want %q", rec.lastErr, tt.want)
			}
			tr.stateChanged("192.0.2.1", api.PeerState_ESTABLISHED)
			if rec, _ := tr.get("192.0.2.1"); rec.lastErr != "" && tt.state != api.PeerState_ESTABLISHED {
				t.Errorf("reason %q survives Established", rec.lastErr)
			}
		})
	}
}

func TestPeerStatus(t *testing.T) {
	since := time.Date(2026, 1, 2, 18, 42, 27, 0, time.UTC)
	uptime := since.Add(-time.Hour)
	live := func(s api.PeerState_SessionState) *api.Peer {
		return &api.Peer{
			State:  &api.PeerState{SessionState: s},
			Timers: &api.Timers{State: &api.TimersState{Uptime: timestamppb.New(uptime), Downtime: timestamppb.New(uptime)}},
		}
	}
	mesh := Peer{Address: netip.MustParseAddr("10.30.0.206"), Type: statusapi.PeerTypeMesh}
	passive := mesh
	passive.Passive = true
	other := Peer{Address: netip.MustParseAddr("192.0.2.1"), Port: 1790, Type: statusapi.PeerTypeGlobal}
	tests := []struct {
		name     string
		peer     Peer
		live     *api.Peer
		rec      *peerRecord
		applyErr string
		want     statusapi.Peer
	}{
		{"up", mesh, live(api.PeerState_ESTABLISHED), &peerRecord{since: since},
			"", statusapi.Peer{Address: "10.30.0.206", Type: "node-to-node mesh", State: "up", Since: since, Info: "Established", Established: true}},
		{"up, no record: GoBGP's uptime", mesh, live(api.PeerState_ESTABLISHED), nil,
			"", statusapi.Peer{Address: "10.30.0.206", Type: "node-to-node mesh", State: "up", Since: uptime, Info: "Established", Established: true}},
		{"refused", other, live(api.PeerState_ACTIVE), &peerRecord{since: since, lastErr: "Connect: connection refused"},
			"", statusapi.Peer{Address: "192.0.2.1:1790", Type: "global", State: "active", Since: since, Info: "Connect: connection refused"}},
		{"passive, never connected", passive, live(api.PeerState_ACTIVE), &peerRecord{since: since},
			"", statusapi.Peer{Address: "10.30.0.206", Type: "node-to-node mesh", State: "passive", Since: since, Info: passiveWaiting}},
		{"idle without reason", mesh, live(api.PeerState_IDLE), &peerRecord{since: since},
			"", statusapi.Peer{Address: "10.30.0.206", Type: "node-to-node mesh", State: "idle", Since: since, Info: "Idle"}},
		{"not in GoBGP", other, nil, nil, "add peer 192.0.2.1: boom",
			statusapi.Peer{Address: "192.0.2.1:1790", Type: "global", State: "start", Info: "Start: add peer 192.0.2.1: boom"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var rec peerRecord
			if tt.rec != nil {
				rec = *tt.rec
			}
			got := peerStatus(tt.peer, tt.live, rec, tt.rec != nil, tt.applyErr)
			if got != tt.want {
				t.Errorf("peerStatus =\n%+v\nwant\n%+v", got, tt.want)
			}
		})
	}
}

func TestNotificationText(t *testing.T) {
	for _, tt := range []struct {
		code, sub uint8
		want      string
	}{
		{2, 2, "bad peer AS"},
		{6, 2, "cease: administrative shutdown"},
		{6, 99, "cease: subcode 99"},
		{4, 0, "hold timer expired"},
		{42, 1, "error 42/1"},
	} {
		if got := notificationText(tt.code, tt.sub); got != tt.want {
			t.Errorf("notificationText(%d,%d) = %q, want %q", tt.code, tt.sub, got, tt.want)
		}
	}
}

func TestLoggerAdapterObservesPeerEvents(t *testing.T) {
	var seen []string
	var buf strings.Builder
	l := &gobgpLogger{
		log:     newTextLogger(&buf),
		observe: func(msg string, f gobgplog.Fields) { seen = append(seen, fmt.Sprint(msg, " ", f["Key"])) },
	}
	l.Debug("failed to connect", gobgplog.Fields{"Topic": "Peer", "Key": "192.0.2.1", "Error": errors.New("x")})
	l.Info("Add a peer configuration", gobgplog.Fields{"Topic": "Peer", "Key": "192.0.2.2"})
	l.Info("not about a peer", gobgplog.Fields{"Topic": "Server"})
	l.Info("nil stringer", gobgplog.Fields{"Topic": "Server", "Reason": (*bgp.MessageError)(nil)})
	if want := "[failed to connect 192.0.2.1 Add a peer configuration 192.0.2.2]"; fmt.Sprint(seen) != want {
		t.Errorf("observed %v, want %s", seen, want)
	}
	if l.GetLevel() != gobgplog.DebugLevel {
		t.Error("the adapter must claim Debug so that GoBGP logs failed connects")
	}
	out := buf.String()
	if strings.Contains(out, "failed to connect") {
		t.Errorf("a Debug event reached an Info handler:\n%s", out)
	}
	if !strings.Contains(out, "Add a peer configuration") || !strings.Contains(out, "Key=192.0.2.2") {
		t.Errorf("info event missing:\n%s", out)
	}
}

func newTextLogger(w io.Writer) *slog.Logger {
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelInfo}))
}
