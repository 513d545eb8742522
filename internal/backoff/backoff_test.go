package backoff

import (
	"testing"
	"time"
)

func TestGrowthCapAndReset(t *testing.T) {
	b := Backoff{Min: 100 * time.Millisecond, Max: time.Second}
	want := []time.Duration{100, 200, 400, 800, 1000, 1000}
	for i, w := range want {
		if got := b.Next(); got != w*time.Millisecond {
			t.Fatalf("wait %d = %v, want %v", i+1, got, w*time.Millisecond)
		}
	}
	b.Reset()
	if got := b.Next(); got != 100*time.Millisecond {
		t.Errorf("after Reset: %v, want the minimum 100ms", got)
	}
}

func TestZeroValueUsesDefaults(t *testing.T) {
	var b Backoff
	if got := b.Next(); got != DefaultMin {
		t.Errorf("first wait %v, want DefaultMin %v", got, DefaultMin)
	}
	var last time.Duration
	for range 64 {
		last = b.Next()
	}
	if last != DefaultMax {
		t.Errorf("wait after many failures %v, want DefaultMax %v", last, DefaultMax)
	}
}

func TestMaxBelowMin(t *testing.T) {
	b := Backoff{Min: 2 * time.Second, Max: time.Second}
	for i := range 3 {
		if got := b.Next(); got != 2*time.Second {
			t.Fatalf("wait %d = %v, want Min (a Max below Min means Min)", i+1, got)
		}
	}
}

// TestJitter: each wait lies in [d/2, d] of the unjittered one, the waits are not all the
// same, and the growth underneath is unchanged.
func TestJitter(t *testing.T) {
	plain := Backoff{Min: 64 * time.Millisecond, Max: 4 * time.Second}
	jittered := Backoff{Min: 64 * time.Millisecond, Max: 4 * time.Second, Jitter: true}
	seen := map[time.Duration]bool{}
	for i := range 12 {
		d := plain.Next()
		got := jittered.Next()
		if got < d/2 || got > d {
			t.Fatalf("wait %d = %v, want within [%v, %v]", i+1, got, d/2, d)
		}
		seen[got] = true
	}
	if len(seen) < 2 {
		t.Errorf("12 jittered waits were all %v", seen)
	}
}
