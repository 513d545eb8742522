// Package latest hands the newest of a series of values from its producers to the one
// goroutine that acts on them. It is how tabby's reconcilers take their desired state:
// producers publish a complete state without ever blocking, a burst of states wakes the
// consumer once, and the consumer only ever sees the newest one, so a slow consumer skips
// intermediate states instead of replaying them.
package latest

import "sync"

// Value holds the newest value Set and whether its consumer has taken it yet. Any number of
// goroutines may Set and Load; one consumer waits on Wake and calls Take.
type Value[T any] struct {
	wake chan struct{} // capacity 1: a pending wake-up absorbs any number of Sets

	mu      sync.Mutex
	v       T
	set     bool // a value was Set at least once
	pending bool // the value was Set since the last Take
}

// New returns an empty Value.
func New[T any]() *Value[T] {
	return &Value[T]{wake: make(chan struct{}, 1)}
}

// Set replaces the value, taken or not, and wakes the consumer. It never blocks.
func (l *Value[T]) Set(v T) {
	l.mu.Lock()
	l.v, l.set, l.pending = v, true, true
	l.mu.Unlock()
	select {
	case l.wake <- struct{}{}:
	default:
	}
}

// Wake receives a value after a Set. Wake-ups coalesce: after any number of Sets there is
// at most one, and a Take after it sees the newest value. A wake-up may find nothing to
// take (its value was taken before the consumer looked at Wake); Take says so.
func (l *Value[T]) Wake() <-chan struct{} { return l.wake }

// Take returns the value Set since the last Take and marks it taken; ok is false when
// nothing was Set since then.
func (l *Value[T]) Take() (v T, ok bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.pending {
		var zero T
		return zero, false
	}
	l.pending = false
	return l.v, true
}

// Pending reports whether a value waits to be taken.
func (l *Value[T]) Pending() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.pending
}

// Load returns the newest value whether taken or not, for readers other than the consumer
// (status); ok is false before the first Set. It does not mark the value taken.
func (l *Value[T]) Load() (v T, ok bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.v, l.set
}

// Send puts v into ch, a channel of capacity 1 that one receiver reads, replacing a value
// the receiver has not taken yet: the channel form of a Value, for an API that hands out a
// channel (to range over, or to close at the end). It never blocks, also with several
// senders.
func Send[T any](ch chan T, v T) {
	for {
		select {
		case ch <- v:
			return
		default:
		}
		select {
		case <-ch:
		default:
		}
	}
}
