package daemon

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/tabby-net/tabby/datastore"
)

// TestWiringSecretFileChangeReachesSpeaker: a password file replaced by rename (as Ansible
// does) reaches the speaker with no datastore write (SPEC §7): the secrets watcher is an
// input of the main loop like a new snapshot.
func TestWiringSecretFileChangeReachesSpeaker(t *testing.T) {
	var secretFile string
	w := startWiring(t, func(w *wiringTest) {
		cfg := datastore.NewBGPConfiguration("default")
		cfg.Spec.NodeMeshPassword = &datastore.BGPPassword{SecretKeyRef: &datastore.SecretKeyRef{Name: "mesh", Key: "password"}}
		if _, err := w.etcd.Client.CreateResource(context.Background(), cfg); err != nil {
			t.Fatal(err)
		}
		dir := filepath.Join(w.d.cfg.BGP.SecretsDir, "mesh")
		if err := os.MkdirAll(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		secretFile = filepath.Join(dir, "password")
		if err := os.WriteFile(secretFile, []byte("a-wrong-one\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	})
	w.addOtherNode()
	otherIP := "10.30.0.207"
	w.waitPeerPassword(otherIP, "a-wrong-one")

	tmp := secretFile + ".new"
	if err := os.WriteFile(tmp, []byte("the-right-one\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, secretFile); err != nil {
		t.Fatal(err)
	}
	w.waitPeerPassword(otherIP, "the-right-one")
}

// waitPeerPassword waits until the speaker was last given the peer with that password.
func (w *wiringTest) waitPeerPassword(addr, password string) {
	w.t.Helper()
	var seen string
	waitUntil(w.t, "peer "+addr+" with the password of the secret file", func() bool {
		w.speaker.mu.Lock()
		defer w.speaker.mu.Unlock()
		seen = "no such peer"
		for _, p := range w.speaker.peers {
			if p.Address.String() == addr {
				seen = "another password"
				return p.Password.Reveal() == password
			}
		}
		return false
	}, func() string { return seen })
}
