package latest

import (
	"sync"
	"testing"
	"time"
)

func TestEmpty(t *testing.T) {
	l := New[int]()
	if _, ok := l.Take(); ok {
		t.Error("Take on an empty Value reported a value")
	}
	if _, ok := l.Load(); ok {
		t.Error("Load on an empty Value reported a value")
	}
	if l.Pending() {
		t.Error("an empty Value is pending")
	}
	select {
	case <-l.Wake():
		t.Error("an empty Value woke its consumer")
	default:
	}
}

// TestCoalescing: a burst of Sets wakes the consumer once, and it takes the newest value.
func TestCoalescing(t *testing.T) {
	l := New[int]()
	for i := 1; i <= 5; i++ {
		l.Set(i)
	}
	if !l.Pending() {
		t.Fatal("not pending after Set")
	}
	<-l.Wake()
	select {
	case <-l.Wake():
		t.Fatal("five Sets woke the consumer twice")
	default:
	}
	if v, ok := l.Take(); !ok || v != 5 {
		t.Fatalf("Take = %d, %v; want 5, true", v, ok)
	}
	if v, ok := l.Take(); ok {
		t.Fatalf("second Take = %d, true; want nothing new", v)
	}
	if v, ok := l.Load(); !ok || v != 5 {
		t.Errorf("Load after Take = %d, %v; want the newest value 5, true", v, ok)
	}
}

// TestSetAfterTakeWakesAgain: a Set after the consumer took the value wakes it again, also
// when the consumer has not drained the earlier wake-up yet.
func TestSetAfterTakeWakesAgain(t *testing.T) {
	l := New[string]()
	l.Set("a")
	if v, _ := l.Take(); v != "a" {
		t.Fatalf("Take = %q", v)
	}
	l.Set("b")
	<-l.Wake()
	if v, ok := l.Take(); !ok || v != "b" {
		t.Fatalf("Take = %q, %v; want b, true", v, ok)
	}
	// The wake-up of "a" was drained together with that of "b": nothing is left.
	select {
	case <-l.Wake():
		t.Fatal("a stale wake-up remained")
	default:
	}
}

// TestConcurrentProducers: Sets from many goroutines never block, and the consumer ends on
// the value of the last one.
func TestConcurrentProducers(t *testing.T) {
	l := New[int]()
	var wg sync.WaitGroup
	for p := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 1000 {
				l.Set(p*1000 + i)
			}
		}()
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	takes := 0
	for running := true; running; {
		select {
		case <-l.Wake():
			if _, ok := l.Take(); ok {
				takes++
			}
		case <-done:
			running = false
		case <-time.After(10 * time.Second):
			t.Fatal("producers blocked")
		}
	}
	l.Set(-1)
	<-l.Wake()
	if v, ok := l.Take(); !ok || v != -1 {
		t.Fatalf("Take = %d, %v; want the last value -1", v, ok)
	}
	t.Logf("8000 Sets, %d takes", takes)
}

func TestSendReplaces(t *testing.T) {
	ch := make(chan int, 1)
	Send(ch, 1)
	Send(ch, 2)
	if got := <-ch; got != 2 {
		t.Fatalf("received %d, want the newest value 2", got)
	}
	select {
	case v := <-ch:
		t.Fatalf("a second value %d was left", v)
	default:
	}
}

func TestSendConcurrent(t *testing.T) {
	ch := make(chan int, 1)
	var wg sync.WaitGroup
	for p := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 1000 {
				Send(ch, p*1000+i)
			}
		}()
	}
	finished := make(chan struct{})
	go func() { wg.Wait(); close(finished) }()
	select {
	case <-finished:
	case <-time.After(10 * time.Second):
		t.Fatal("concurrent senders blocked")
	}
	if len(ch) != 1 {
		t.Fatalf("channel holds %d values, want 1", len(ch))
	}
}
