package datastore_test

import (
	"context"
	"errors"
	"testing"

	"github.com/tabby-net/tabby/datastore"
	"github.com/tabby-net/tabby/datastore/etcdtest"
)

func TestCompareAndSwap(t *testing.T) {
	e := etcdtest.Start(t)
	c := e.Client
	ctx := context.Background()
	key := c.Keys.Resource(datastore.KindIPPool, "p1")

	rev, err := c.Create(ctx, key, []byte(`{"a":1}`))
	if err != nil {
		t.Fatalf("create: %v", err)
	}
	if _, err := c.Create(ctx, key, []byte(`{"a":2}`)); !errors.Is(err, datastore.ErrAlreadyExists) {
		t.Fatalf("second create: got %v, want ErrAlreadyExists", err)
	}
	rev2, err := c.Update(ctx, key, []byte(`{"a":3}`), rev)
	if err != nil {
		t.Fatalf("update: %v", err)
	}
	if _, err := c.Update(ctx, key, []byte(`{"a":4}`), rev); !errors.Is(err, datastore.ErrConflict) {
		t.Fatalf("stale update: got %v, want ErrConflict", err)
	}
	var ke *datastore.KeyError
	if err := c.Delete(ctx, key, rev); !errors.As(err, &ke) || ke.Key != key {
		t.Fatalf("stale delete: got %v, want a KeyError naming %s", err, key)
	}
	if err := c.Delete(ctx, key, rev2); err != nil {
		t.Fatalf("delete: %v", err)
	}
	if _, err := c.Get(ctx, key); !errors.Is(err, datastore.ErrNotFound) {
		t.Fatalf("get after delete: got %v, want ErrNotFound", err)
	}
	if _, err := c.Update(ctx, key, []byte(`{}`), rev2); !errors.Is(err, datastore.ErrNotFound) {
		t.Fatalf("update of missing key: got %v, want ErrNotFound", err)
	}
}
