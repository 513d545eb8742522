package peertable

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/tabby-net/tabby/internal/statusapi"
)

var update = flag.Bool("update", false, "rewrite the golden files")

func TestRenderGolden(t *testing.T) {
	loc := time.FixedZone("KST", 9*3600)
	now := time.Date(2022, 11, 21, 20, 0, 0, 0, loc)
	today := time.Date(2022, 11, 21, 18, 42, 27, 0, loc)
	tests := []struct {
		name  string
		peers []statusapi.Peer
	}{
		{"article", []statusapi.Peer{
			{Address: "10.30.0.206", Type: "node-to-node mesh", State: "up", Since: today, Info: "Established", Established: true},
			{Address: "10.30.0.56", Type: "node-to-node mesh", State: "up", Since: today, Info: "Established", Established: true},
			{Address: "10.30.1.66", Type: "node-to-node mesh", State: "up", Since: today, Info: "Established", Established: true},
		}},
		{"one", []statusapi.Peer{
			{Address: "10.30.0.206", Type: "node-to-node mesh", State: "up", Since: today, Info: "Established", Established: true},
		}},
		{"failures", []statusapi.Peer{
			{Address: "10.30.0.56", Type: "node-to-node mesh", State: "passive", Since: today,
				Info: "Passive: waiting for the peer to connect (check TCP 179 / MD5 password)"},
			{Address: "10.30.1.1:1790", Type: "node specific", State: "active", Since: today.Add(-48 * time.Hour),
				Info: "Connect: connection refused"},
			{Address: "192.0.2.1", Type: "global", State: "start", Info: "Start: not configured yet"},
		}},
		{"none", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var buf bytes.Buffer
			// The peers' times are in UTC on the wire; SINCE is in the reader's zone.
			for i := range tt.peers {
				tt.peers[i].Since = tt.peers[i].Since.UTC()
			}
			if err := Render(&buf, &statusapi.Status{Peers: tt.peers}, now); err != nil {
				t.Fatal(err)
			}
			golden := filepath.Join("testdata", tt.name+".golden")
			if *update {
				if err := os.WriteFile(golden, buf.Bytes(), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(buf.Bytes(), want) {
				t.Errorf("got:\n%s\nwant (%s):\n%s", buf.Bytes(), golden, want)
			}
		})
	}
}

func TestSince(t *testing.T) {
	loc := time.FixedZone("X", -5*3600)
	now := time.Date(2026, 3, 1, 0, 30, 0, 0, loc)
	for _, tt := range []struct {
		t    time.Time
		want string
	}{
		{time.Date(2026, 3, 1, 0, 10, 5, 0, loc), "00:10:05"},
		{time.Date(2026, 3, 1, 5, 10, 5, 0, time.UTC), "00:10:05"}, // same instant, other zone
		{time.Date(2026, 2, 28, 23, 59, 59, 0, loc), "2026-02-28"},
		{time.Time{}, ""},
	} {
		if got := Since(tt.t, now); got != tt.want {
			t.Errorf("Since(%v) = %q, want %q", tt.t, got, tt.want)
		}
	}
}
