package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"
)

// lockPollInterval is how often a waiting plugin retries the host lock. Short, because an
// ADD holds it for tens of milliseconds; a blocking flock would ignore the context.
const lockPollInterval = 10 * time.Millisecond

// hostLock is the exclusive flock that serializes the plugin's commands on one host
// (<run_dir>/cni.lock). Without it two ADDs could race on IPAM's per-host block claim and on
// interface names, and a DEL could tear down what a concurrent ADD of the same container
// just built. The kernel drops the lock when the process dies, so a killed plugin never
// wedges the host.
type hostLock struct {
	f *os.File
}

// acquireHostLock waits for the lock until ctx ends.
func acquireHostLock(ctx context.Context, runDir string) (*hostLock, error) {
	if err := os.MkdirAll(runDir, 0o755); err != nil {
		return nil, fmt.Errorf("host lock: %w", err)
	}
	path := filepath.Join(runDir, "cni.lock")
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("host lock: %w", err)
	}
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			return &hostLock{f: f}, nil
		}
		if !errors.Is(err, unix.EWOULDBLOCK) && !errors.Is(err, unix.EINTR) {
			f.Close()
			return nil, fmt.Errorf("host lock %s: %w", path, err)
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, fmt.Errorf("host lock %s: still held by another tabby-cni: %w", path, context.Cause(ctx))
		case <-time.After(lockPollInterval):
		}
	}
}

// Release gives the lock up. Closing the descriptor releases the flock.
func (l *hostLock) Release() error {
	return l.f.Close()
}

// underHostLock runs fn with the host lock held and the address book open, which is how
// every command that touches a workload must run: the lock serializes ADD, DEL and CHECK
// on this host, and the book is released before the lock.
func underHostLock(ctx context.Context, cfg *config, log *slog.Logger, fn func(*addressBook) error) error {
	lock, err := acquireHostLock(ctx, cfg.RunDir)
	if err != nil {
		return err
	}
	defer lock.Release()
	book, err := openAddressBook(ctx, cfg, log)
	if err != nil {
		return err
	}
	defer book.Close()
	return fn(book)
}
