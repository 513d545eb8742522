// Package backoff spaces out the retries of a failing operation: every failure doubles the
// wait, up to a cap, and a success starts over. It is the one retry policy of tabby's
// reconcilers and of the datastore syncer.
package backoff

import (
	"math/rand/v2"
	"time"
)

// Defaults of Backoff. A local reconciler's failures are mostly transient (a device being
// recreated, a table another tool holds locked for a moment), so the first retry comes
// soon; a failure that persists is retried twice a minute, often enough to heal without
// filling the log.
const (
	DefaultMin = 200 * time.Millisecond
	DefaultMax = 30 * time.Second
)

// Backoff is the retry state of one operation. The zero value uses DefaultMin and
// DefaultMax without jitter. It is not safe for concurrent use: it belongs to the one
// goroutine that retries.
type Backoff struct {
	// Min is the wait after the first failure; 0 means DefaultMin.
	Min time.Duration
	// Max caps the wait; 0 means DefaultMax (and a Max below Min means Min).
	Max time.Duration
	// Jitter draws each wait uniformly from [d/2, d] instead of d: for retries against a
	// shared server, so that the hosts of a cluster that failed together do not all come
	// back at the same instant.
	Jitter bool

	next time.Duration // the unjittered wait Next returns next; 0 means Min
}

// Next returns the wait before the next retry, and doubles the one after it up to Max.
func (b *Backoff) Next() time.Duration {
	lo, hi := b.bounds()
	d := b.next
	if d == 0 {
		d = lo
	}
	b.next = min(2*d, hi)
	if d > hi {
		d = hi
	}
	if b.Jitter {
		d = d/2 + rand.N(d/2+1)
	}
	return d
}

// Reset is called after a success: the next failure waits Min again.
func (b *Backoff) Reset() { b.next = 0 }

func (b *Backoff) bounds() (lo, hi time.Duration) {
	lo, hi = b.Min, b.Max
	if lo <= 0 {
		lo = DefaultMin
	}
	if hi <= 0 {
		hi = DefaultMax
	}
	return lo, max(lo, hi)
}
