package bgp_test

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tabby-net/tabby/bgp"
	"github.com/tabby-net/tabby/datastore"
	"github.com/tabby-net/tabby/internal/netnstest"
)

// birdProtocol returns `birdc show protocols all <name>`.
func birdProtocol(bird *birdProc, name string) (string, error) {
	return bird.Query("show protocols all", name)
}

// importWithdrawsReceived reads how many withdrawals BIRD received on a protocol.
func importWithdrawsReceived(proto string) (string, error) {
	m := regexp.MustCompile(`Import withdraws:\s+(\d+)`).FindStringSubmatch(proto)
	if m == nil {
		return "", fmt.Errorf("no import withdraw counter in:\n%s", proto)
	}
	return m[1], nil
}

// birdHasRoute reports, as an error, that BIRD has no route to prefix from proto.
func birdHasRoute(bird *birdProc, prefix, proto string) error {
	out, err := bird.Query("show route", prefix, "protocol", proto)
	if err != nil {
		return err
	}
	if !regexp.MustCompile(regexp.QuoteMeta(prefix) + `\s+unicast \[` + proto + ` `).MatchString(out) {
		return fmt.Errorf("no route %s from %s:\n%s", prefix, proto, out)
	}
	return nil
}

// routeImports returns BIRD's trace of every import of a protocol's route to a prefix
// that changed its table (added, removed, replaced), from BIRD's log (`debug { routes }`).
// A route sent again unchanged is traced as "ignored" and is not among them. The trace,
// not the timestamp `show route` prints, tells whether a route was replaced: BIRD prints
// a route's monotonic time converted to wall time at the moment of the query, and the
// millisecond it shows can differ from one query to the next.
func routeImports(bird *birdProc, proto, prefix string) ([]string, error) {
	log, err := os.ReadFile(bird.Log)
	if err != nil {
		return nil, err
	}
	re := regexp.MustCompile(regexp.QuoteMeta(proto) + `\.ipv4 > (added|removed)( \[[a-z]+\])? ` + regexp.QuoteMeta(prefix) + ` `)
	var out []string
	for _, line := range strings.Split(string(log), "\n") {
		if re.MatchString(line) {
			out = append(out, line)
		}
	}
	return out, nil
}

// presenceWatch polls BIRD for a route until stopped and records every moment it was
// missing: the proof that a graceful restart never withdrew it.
type presenceWatch struct {
	stop    chan struct{}
	done    chan struct{}
	mu      sync.Mutex
	polls   int
	missing []string
}

func watchPresence(bird *birdProc, prefix, proto string) *presenceWatch {
	w := &presenceWatch{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(w.done)
		for {
			err := birdHasRoute(bird, prefix, proto)
			w.mu.Lock()
			w.polls++
			if err != nil {
				w.missing = append(w.missing, time.Now().Format("15:04:05.000")+": "+err.Error())
			}
			w.mu.Unlock()
			select {
			case <-w.stop:
				return
			case <-time.After(100 * time.Millisecond):
			}
		}
	}()
	return w
}

func (w *presenceWatch) finish() (polls int, missing []string) {
	close(w.stop)
	<-w.done
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.polls, w.missing
}

// TestGracefulRestart: kill -9 a tabby speaker; BIRD keeps its routes while it is away
// (graceful restart active); the restarted speaker, finding the restart marker, sets the
// Restart State bit and refreshes the routes without their ever being withdrawn. A
// SIGTERM'd speaker sends no Cease, and BIRD keeps its routes again.
func TestGracefulRestart(t *testing.T) {
	netnstest.RequireRoot(t, "birdc")
	t.Parallel()

	lan := netnstest.NewLAN(t, "grlan")
	torNS := netnstest.New(t, "grtor")
	lan.Attach(t, torNS, "eth0", "10.99.0.254/24")
	nodeNS := netnstest.New(t, "grnode")
	lan.Attach(t, nodeNS, "eth0", "10.99.0.1/24")

	c := &cluster{
		nodes: []clusterNode{{name: "node-a", addr: "10.99.0.1", block: "10.244.1.0/26"}},
		peers: map[string]datastore.BGPPeerSpec{"tor": {PeerIP: "10.99.0.254", ASNumber: 65000}},
	}
	bird := startBIRD(t, torNS, filepath.Join(t.TempDir(), "bird"), birdConfig("10.99.0.254", 65000, "debug { states, routes };",
		`protocol bgp node_a from tabby { neighbor 10.99.0.1 as 64512; }`))
	const restartTime = 30 * time.Second // announced to BIRD; the restart takes a few seconds
	sp := newSpeaker(t, nodeNS, "node-a", c.snapshot(), speakerOptions{restartTime: restartTime})
	sp.waitEstablished(30*time.Second, "10.99.0.254")
	const prefix = "10.244.1.0/26"
	birdWaitRoutes(t, bird, []string{prefix + " via 10.99.0.1 [node_a]"}, nil)

	proto, err := birdProtocol(bird, "node_a")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(proto, "Restart time: 30") {
		t.Errorf("the speaker does not announce graceful restart with a 30 s restart time:\n%s", proto)
	}
	if strings.Contains(proto, "Restart recovery") {
		t.Errorf("a cold start announced itself as restarting:\n%s", proto)
	}
	imported, err := routeImports(bird, "node_a", prefix)
	if err != nil || len(imported) == 0 {
		t.Fatalf("no import of %s in BIRD's route trace (%v)", prefix, err)
	}
	watch := watchPresence(bird, prefix, "node_a")

	// kill -9: the session drops without a word; BIRD keeps the routes for the restart time.
	if err := sp.proc.Stop(syscall.SIGKILL, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	netnstest.Eventually(t, 20*time.Second, "BIRD in graceful-restart helper mode", func() error {
		proto, err := birdProtocol(bird, "node_a")
		if err != nil {
			return err
		}
		if !strings.Contains(proto, "Neighbor graceful restart active") {
			return fmt.Errorf("no graceful restart:\n%s", proto)
		}
		return birdHasRoute(bird, prefix, "node_a")
	})

	// The speaker comes back, restarting: it sets the Restart State bit and resends its
	// routes after End-of-RIB; BIRD refreshes them in place.
	sp.start()
	sp.waitEstablished(30*time.Second, "10.99.0.254")
	netnstest.Eventually(t, 30*time.Second, "BIRD leaves graceful-restart mode", func() error {
		proto, err := birdProtocol(bird, "node_a")
		if err != nil {
			return err
		}
		if strings.Contains(proto, "Neighbor graceful restart active") || !strings.Contains(proto, "Established") {
			return fmt.Errorf("still restarting:\n%s", proto)
		}
		if !strings.Contains(proto, "Restart recovery") {
			t.Errorf("the restarted speaker did not set the Restart State bit:\n%s", proto)
		}
		if n, err := importWithdrawsReceived(proto); err != nil || n != "0" {
			t.Errorf("BIRD received %s withdrawals (%v); want none:\n%s", n, err, proto)
		}
		return nil
	})
	after, err := routeImports(bird, "node_a", prefix)
	if err != nil {
		t.Fatal(err)
	}
	if len(after) != len(imported) {
		log, _ := os.ReadFile(bird.Log)
		t.Errorf("BIRD replaced or withdrew the route during the restart:\n%s\nBIRD's log:\n%s",
			strings.Join(after[len(imported):], "\n"), log)
	}
	if polls, missing := watch.finish(); len(missing) > 0 || polls < 10 {
		t.Errorf("the route was missing from BIRD's table during the restart (%d polls):\n%s", polls, strings.Join(missing, "\n"))
	}

	// SIGTERM: tabbyd's ordinary stop. No Cease; BIRD keeps the routes as for a crash.
	if err := sp.proc.Stop(syscall.SIGTERM, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	if code := sp.proc.ExitCode(); code != 0 {
		t.Errorf("speaker exited with %d on SIGTERM:\n%s", code, sp.log())
	}
	netnstest.Eventually(t, 20*time.Second, "BIRD keeps the routes of a SIGTERM'd speaker", func() error {
		proto, err := birdProtocol(bird, "node_a")
		if err != nil {
			return err
		}
		if strings.Contains(proto, "Cease") {
			t.Fatalf("the speaker sent a Cease on SIGTERM:\n%s", proto)
		}
		if log, _ := os.ReadFile(bird.Log); strings.Contains(string(log), "node_a: Received:") {
			t.Fatalf("the speaker sent a NOTIFICATION:\n%s", log)
		}
		if !strings.Contains(proto, "Neighbor graceful restart active") {
			return fmt.Errorf("no graceful restart:\n%s", proto)
		}
		return birdHasRoute(bird, prefix, "node_a")
	})

	// A deliberate stop (Stop(ctx, false)) is the opposite: routes withdrawn, a Cease,
	// and the restart marker removed, so that the next start is a cold one.
	marker := filepath.Join(sp.dir, "run", bgp.RestartMarkerName)
	if _, err := os.Stat(marker); err != nil {
		t.Fatalf("no restart marker after a SIGTERM: %v", err)
	}
	sp.start()
	sp.waitEstablished(30*time.Second, "10.99.0.254")
	var stopped string
	if err := sp.get("/stop", &stopped); err != nil {
		t.Fatal(err)
	}
	netnstest.Eventually(t, 20*time.Second, "BIRD drops the routes of a stopped speaker", func() error {
		if log, _ := os.ReadFile(bird.Log); !strings.Contains(string(log), "node_a: Received: Peer de-configured") {
			return fmt.Errorf("BIRD got no Cease (peer de-configured):\n%s", log)
		}
		proto, err := birdProtocol(bird, "node_a")
		if err != nil {
			return err
		}
		if strings.Contains(proto, "Neighbor graceful restart active") {
			return fmt.Errorf("BIRD treats a deliberate stop as a graceful restart:\n%s", proto)
		}
		if err := birdHasRoute(bird, prefix, "node_a"); err == nil {
			return fmt.Errorf("BIRD still has %s from node_a", prefix)
		}
		return nil
	})
	if _, err := os.Stat(marker); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("the restart marker survived a deliberate stop: %v", err)
	}
}
