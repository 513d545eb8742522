package lab

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/tabby-net/tabby/datastore"
)

// ExpectedRoutes computes, from what etcd holds now, the routes tabbyd must have
// installed on host (see the package function ExpectedRoutes).
func (c *Cluster) ExpectedRoutes(ctx context.Context, ds *datastore.Client, host string) ([]string, error) {
	rh, err := c.Topo.RouteHost(host)
	if err != nil {
		return nil, err
	}
	st, err := ReadState(ctx, ds)
	if err != nil {
		return nil, err
	}
	return ExpectedRoutes(st, rh)
}

// WaitRoutes polls until every host's tabby routes are exactly the ones the datastore
// calls for, or timeout passes; the error then shows what differs on each host. A mode
// change is several steps (pool → tunnel addresses → every node's routes), so there is no
// single event to wait for: polling the result is the honest check.
func (c *Cluster) WaitRoutes(ctx context.Context, timeout time.Duration) error {
	ds, err := c.Datastore()
	if err != nil {
		return err
	}
	defer ds.Close()
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var last string
	for {
		last = c.routeMismatch(ctx, ds)
		if last == "" {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("routes did not converge within %s:\n%s", timeout, strings.TrimRight(last, "\n"))
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// routeMismatch returns "" when every host has its expected routes, else what differs.
func (c *Cluster) routeMismatch(ctx context.Context, ds *datastore.Client) string {
	st, err := ReadState(ctx, ds)
	if err != nil {
		return err.Error()
	}
	var b strings.Builder
	for _, h := range c.Topo.Hosts {
		rh, err := c.Topo.RouteHost(h.Name)
		if err != nil {
			return err.Error()
		}
		want, err := ExpectedRoutes(st, rh)
		if err != nil {
			fmt.Fprintf(&b, "%s: %v\n", h.Name, err)
			continue
		}
		got, err := c.Topo.TabbyRoutes(h.Name)
		if err != nil {
			fmt.Fprintf(&b, "%s: %v\n", h.Name, err)
			continue
		}
		if !slices.Equal(want, got) {
			fmt.Fprintf(&b, "%s:\n%s", h.Name, RouteDiff(want, got))
		}
	}
	return b.String()
}
