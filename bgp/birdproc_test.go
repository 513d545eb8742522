package bgp_test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tabby-net/tabby/internal/namedns"
	"github.com/tabby-net/tabby/internal/netnstest"
)

// birdProc is a BIRD2 daemon running in a test's namespace with its own config and control
// socket: the peer the speaker is tested against.
type birdProc struct {
	Proc   *namedns.Process
	Socket string
	Config string
	Log    string // BIRD's stderr (configure `log stderr all;` to have it)
}

// startBIRD writes config to dir and runs `bird -f` in ns; it waits until birdc answers.
func startBIRD(t testing.TB, ns *netnstest.NS, dir, config string) *birdProc {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	b := &birdProc{Socket: filepath.Join(dir, "bird.ctl"), Config: filepath.Join(dir, "bird.conf"), Log: filepath.Join(dir, "bird.log")}
	if err := os.WriteFile(b.Config, []byte(config), 0o644); err != nil {
		t.Fatal(err)
	}
	b.Proc = netnstest.Start(t, ns.Name, nil, b.Log, "/usr/sbin/bird", "-f", "-s", b.Socket, "-c", b.Config)
	netnstest.Eventually(t, 10*time.Second, "BIRD control socket", func() error {
		if !b.Proc.Running() {
			log, _ := os.ReadFile(b.Log)
			t.Fatalf("bird exited: %v\n%s", b.Proc.Err(), log)
		}
		_, err := b.Query("show status")
		return err
	})
	return b
}

// Query runs a birdc command and returns its output.
func (b *birdProc) Query(args ...string) (string, error) {
	out, err := exec.Command("birdc", append([]string{"-s", b.Socket}, args...)...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("birdc %s: %w: %s", strings.Join(args, " "), err, out)
	}
	return string(out), nil
}
