package main

import (
	"context"
	"strings"
	"testing"
	"time"
)

func TestHostLockExcludes(t *testing.T) {
	dir := t.TempDir() + "/run" // created by the lock
	first, err := acquireHostLock(context.Background(), dir)
	if err != nil {
		t.Fatal(err)
	}

	// flock is per open file description, so a second acquirer in this process contends
	// just as another plugin process would.
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if _, err := acquireHostLock(ctx, dir); err == nil || !strings.Contains(err.Error(), "still held by another tabby-cni") {
		t.Fatalf("second acquire while held: %v", err)
	}

	got := make(chan error, 1)
	go func() {
		l, err := acquireHostLock(context.Background(), dir)
		if err == nil {
			err = l.Release()
		}
		got <- err
	}()
	select {
	case err := <-got:
		t.Fatalf("acquired while still held (err %v)", err)
	case <-time.After(50 * time.Millisecond):
	}
	if err := first.Release(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-got:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("waiter did not get the lock after release")
	}
}
