package lab

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// poll is the harness's one way to wait for a condition: it calls check until check
// returns nil, every interval, and gives up when ctx ends or timeout passes, returning
// check's last error. A check that knows waiting is useless (a daemon exited) returns
// stopPolling(err) to end the wait at once.
func poll(ctx context.Context, timeout, interval time.Duration, check func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := check()
		if err == nil {
			return nil
		}
		var s stopError
		if errors.As(err, &s) {
			return s.err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%w (after %s)", err, timeout)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (%w)", ctx.Err(), err)
		case <-time.After(interval):
		}
	}
}

// stopError ends a poll at once with err.
type stopError struct{ err error }

func (s stopError) Error() string { return s.err.Error() }

func stopPolling(err error) error { return stopError{err} }
