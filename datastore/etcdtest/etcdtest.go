// Package etcdtest starts a real in-process etcd for a test and removes it when the test
// ends, whatever the outcome.
package etcdtest

import (
	"context"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tabby-net/tabby/datastore"
	"github.com/tabby-net/tabby/datastore/etcdembed"
)

// Etcd is a running test server with a client connected to it.
type Etcd struct {
	*etcdembed.Server
	// Client talks to the server with tabby's datastore client, key root "/calico".
	Client *datastore.Client
}

// Start starts etcd on free loopback ports with its data in t.TempDir().
func Start(t testing.TB) *Etcd {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	srv, err := etcdembed.Start(ctx, etcdembed.Options{Dir: t.TempDir(), Fast: true})
	if err != nil {
		t.Fatalf("start etcd: %v", err)
	}
	t.Cleanup(srv.Close)
	c, err := datastore.New(datastore.Config{Endpoints: []string{srv.Endpoint}, DialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatalf("etcd client: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return &Etcd{Server: srv, Client: c}
}

// Raw returns the plain etcd client, for writing documents as etcdctl would.
func (e *Etcd) Raw() *clientv3.Client { return e.Client.Etcd() }
