package bgp_test

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/tabby-net/tabby/datastore"
	"github.com/tabby-net/tabby/internal/netnstest"
)

// TestCorrectedSecretFileRestoresSession: two tabby speakers peer over the mesh with a
// password; one host's secret file holds a wrong one, so the session stays down. The file
// is then corrected the way Ansible does it (a new file renamed over the old one), with no
// new snapshot and no signal: the session comes up on its own (SPEC §7).
func TestCorrectedSecretFileRestoresSession(t *testing.T) {
	netnstest.RequireRoot(t)
	t.Parallel()

	lan := netnstest.NewLAN(t, "pwlan")
	nsA, nsB := netnstest.New(t, "pwa"), netnstest.New(t, "pwb")
	lan.Attach(t, nsA, "eth0", "10.99.0.1/24")
	lan.Attach(t, nsB, "eth0", "10.99.0.2/24")
	secretsA, secretsB := t.TempDir(), t.TempDir()
	writeSecretFile(t, secretsA, "mesh", "password", "the-right-one")
	writeSecretFile(t, secretsB, "mesh", "password", "a-wrong-one")
	c := &cluster{
		nodes: []clusterNode{
			{name: "node-a", addr: "10.99.0.1", block: "10.244.1.0/26"},
			{name: "node-b", addr: "10.99.0.2", block: "10.244.2.0/26"},
		},
		config: func(s *datastore.BGPConfigurationSpec) {
			s.NodeMeshPassword = secretRef("mesh", "password")
		},
	}
	a := newSpeaker(t, nsA, "node-a", c.snapshot(), speakerOptions{secretsDir: secretsA})
	b := newSpeaker(t, nsB, "node-b", c.snapshot(), speakerOptions{secretsDir: secretsB})

	// Down, and staying down across several connect retries: the passwords differ.
	netnstest.Eventually(t, 10*time.Second, "both speakers configured with the peer", func() error {
		for s, peer := range map[*speaker]string{a: "10.99.0.2", b: "10.99.0.1"} {
			st, err := s.statusByAddr()
			if err != nil {
				return err
			}
			if _, ok := st[peer]; !ok {
				return fmt.Errorf("%s has no peer %s: %v", s.node, peer, st)
			}
		}
		return nil
	})
	deadline := time.Now().Add(4 * fastTimers().ConnectRetry)
	for time.Now().Before(deadline) {
		st, err := b.statusByAddr()
		if err != nil {
			t.Fatal(err)
		}
		if st["10.99.0.1"].Established {
			t.Fatalf("the session came up with different passwords: %+v", st["10.99.0.1"])
		}
		time.Sleep(200 * time.Millisecond)
	}

	tmp := filepath.Join(secretsB, "mesh", ".password.new")
	if err := os.WriteFile(tmp, []byte("the-right-one\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	corrected := time.Now()
	if err := os.Rename(tmp, filepath.Join(secretsB, "mesh", "password")); err != nil {
		t.Fatal(err)
	}
	// The bound is generous for a loaded machine; the figure is logged.
	b.waitEstablished(10*time.Second, "10.99.0.1")
	t.Logf("session Established %s after the secret file was corrected (connect retry %s)",
		time.Since(corrected).Round(10*time.Millisecond), fastTimers().ConnectRetry)
	a.waitEstablished(10*time.Second, "10.99.0.2")
}
