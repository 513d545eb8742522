package daemon

import (
	"context"
	"fmt"
	"sync"
)

// group runs the daemon's long-lived goroutines. The first one to fail cancels the
// others; Wait returns that first error. A goroutine that returns nil while the daemon is
// still running ends only itself.
type group struct {
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	once sync.Once
	err  error
}

func newGroup(parent context.Context) *group {
	ctx, cancel := context.WithCancel(parent)
	return &group{ctx: ctx, cancel: cancel}
}

// Go starts fn with the group's context.
func (g *group) Go(name string, fn func(ctx context.Context) error) {
	g.wg.Add(1)
	go func() {
		defer g.wg.Done()
		if err := fn(g.ctx); err != nil {
			g.once.Do(func() {
				g.err = fmt.Errorf("%s: %w", name, err)
				g.cancel()
			})
		}
	}()
}

// Stop cancels every goroutine of the group.
func (g *group) Stop() { g.cancel() }

// Wait waits for every goroutine and returns the first error.
func (g *group) Wait() error {
	g.wg.Wait()
	g.cancel()
	return g.err
}
