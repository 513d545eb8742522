package main

import (
	"bytes"
	"encoding/json"
	"net"
	"net/http"
	"path/filepath"
	"testing"
	"time"

	"github.com/tabby-net/tabby/cmd/tabbyctl/internal/peertable"
	"github.com/tabby-net/tabby/internal/statusapi"
)

// serveStatus answers the status socket with st, as tabbyd does.
func serveStatus(t *testing.T, st statusapi.Status) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "tabbyd.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != statusapi.Path {
			http.NotFound(w, r)
			return
		}
		_ = json.NewEncoder(w).Encode(st)
	})}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	return sock
}

func TestNodeStatus(t *testing.T) {
	since := time.Now().Truncate(time.Second)
	st := statusapi.Status{Node: "master", Peers: []statusapi.Peer{
		{Address: "10.30.0.206", Type: "node-to-node mesh", State: "up", Since: since, Info: "Established", Established: true},
		{Address: "10.30.0.56", Type: "node-to-node mesh", State: "active", Since: since, Info: "Connect: connection refused"},
	}}
	sock := serveStatus(t, st)
	r := ctl(t, nil, "", "--socket", sock, "node", "status").must(t)

	var want bytes.Buffer
	if err := peertable.Render(&want, &st, time.Now()); err != nil {
		t.Fatal(err)
	}
	if r.stdout != want.String() {
		t.Errorf("stdout:\n%s\nwant:\n%s", r.stdout, want.String())
	}
	if r.stderr != "" {
		t.Errorf("stderr: %s", r.stderr)
	}
}

func TestNodeStatusNotRunning(t *testing.T) {
	r := ctl(t, nil, "", "--socket", filepath.Join(t.TempDir(), "absent.sock"), "node", "status")
	if r.code != 1 || r.stdout != "tabbyd is not running.\n" || r.stderr != "" {
		t.Errorf("exit %d, stdout %q, stderr %q; want 1, %q, nothing", r.code, r.stdout, r.stderr, "tabbyd is not running.\n")
	}
}

func TestNodeUsage(t *testing.T) {
	for _, args := range [][]string{{"node"}, {"node", "status", "extra"}, {"node", "bogus"}} {
		if r := ctl(t, nil, "", args...); r.code != 2 {
			t.Errorf("%v: exit %d, want 2 (usage)\n%s", args, r.code, r.stderr)
		}
	}
}
