package lab

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/tabby-net/tabby/internal/namedns"
)

// RouterAS is the router's AS when BIRD runs on it; the hosts keep tabby's default 64512,
// so the sessions are eBGP as towards a top-of-rack router.
const RouterAS = 64513

// birdConfig peers the router with every host and installs what it learns in its kernel,
// which is what makes Direct mode work across subnets: the router learns the blocks.
func (c *Cluster) birdConfig() string {
	var b strings.Builder
	fmt.Fprintf(&b, "# written by tabbylab\nlog stderr { warning, error, fatal };\nrouter id %s;\nprotocol device {}\n", c.Topo.Segments[0].Router.Addr())
	b.WriteString("protocol kernel {\n  ipv4 { import none; export all; };\n  merge paths on;\n}\n")
	fmt.Fprintf(&b, "template bgp tabbyhost {\n  local as %d;\n  connect retry time 1;\n  ipv4 { import all; export none; };\n}\n", RouterAS)
	for _, h := range c.Topo.Hosts {
		fmt.Fprintf(&b, "protocol bgp %s from tabbyhost { neighbor %s as 64512; }\n", birdName(h.Name), h.Addr.Addr())
	}
	return b.String()
}

func birdName(host string) string {
	return "host_" + strings.NewReplacer("-", "_", ".", "_").Replace(host)
}

// birdPeers are the BGPPeer resources that make every host peer with the router's address
// in its own subnet, chosen by the subnet label tabbylab gives each node. Every host also
// passes on the blocks it learned from the others over the mesh; keepOriginalNextHop makes
// it keep the owner's address as next hop, as Calico recommends towards a top-of-rack
// router. Without it the router may send worker-3's block to worker-2, whose Direct route
// to it leads back through the router: a loop.
func (c *Cluster) birdPeers() string {
	var b strings.Builder
	for _, s := range c.Topo.Segments {
		fmt.Fprintf(&b, `---
apiVersion: projectcalico.org/v3
kind: BGPPeer
metadata:
  name: router-%s
spec:
  peerIP: %s
  asNumber: %d
  nodeSelector: subnet == '%s'
  keepOriginalNextHop: true
`, s.Name, s.Router.Addr(), RouterAS, s.Name)
	}
	return b.String()
}

// BirdSocket is the control socket of the router's BIRD.
func (c *Cluster) BirdSocket() string { return filepath.Join(c.StateDir, "bird.ctl") }

// SetBird starts BIRD2 on the router and peers every host with it, or undoes both.
func (c *Cluster) SetBird(ctx context.Context, on bool) error {
	if !on {
		for _, s := range c.Topo.Segments {
			if _, err := c.Ctl(ctx, "master", "delete", "bgppeer", "router-"+s.Name); err != nil && !strings.Contains(err.Error(), "not found") {
				return err
			}
		}
		pid, err := readPID(c.pidFile("bird"))
		if err != nil {
			return err
		}
		if pid > 0 {
			if err := stopPID(pid, "bird", 5*time.Second); err != nil {
				return err
			}
		}
		if err := os.Remove(c.pidFile("bird")); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
		return nil
	}
	conf := filepath.Join(c.StateDir, "bird.conf")
	if err := os.WriteFile(conf, []byte(c.birdConfig()), 0o644); err != nil {
		return err
	}
	if pid, _ := readPID(c.pidFile("bird")); pid == 0 || !pidRuns(pid, "bird") {
		if _, err := c.start(c.Topo.RouterNS(), "bird", "bird", nil,
			"bird", "-f", "-c", conf, "-s", c.BirdSocket()); err != nil {
			return fmt.Errorf("start BIRD on the router: %w", err)
		}
	}
	_, err := c.ctlWithInput(ctx, "master", strings.NewReader(c.birdPeers()), "apply", "-f", "-")
	return err
}

// BirdRoutes returns the routes the router's BIRD has learned and uses, one per prefix
// (`birdc show route primary`: every host offers every block, keeping its next hop).
func (c *Cluster) BirdRoutes(ctx context.Context) (string, error) {
	cmd := namedns.Command(c.Topo.RouterNS(), "birdc", "-s", c.BirdSocket(), "show", "route", "primary")
	out, err := cmdOutputCombined(ctx, cmd)
	if err != nil {
		return "", fmt.Errorf("birdc show route: %w: %s", err, out)
	}
	return string(out), nil
}

// WaitBirdRoutes waits until the router's BIRD has learned every block that has an owner in
// the datastore: only then does Direct mode work across the subnets.
func (c *Cluster) WaitBirdRoutes(ctx context.Context, timeout time.Duration) error {
	ds, err := c.Datastore()
	if err != nil {
		return err
	}
	defer ds.Close()
	return poll(ctx, timeout, 250*time.Millisecond, func() error {
		st, err := ReadState(ctx, ds)
		if err != nil {
			return fmt.Errorf("BIRD on the router: %w", err)
		}
		routes, err := c.BirdRoutes(ctx)
		if err != nil {
			return fmt.Errorf("BIRD on the router: %w", err)
		}
		var missing []string
		for cidr := range st.Blocks {
			if _, owned := st.Owner(cidr); owned && !strings.Contains(routes, cidr.String()+" ") {
				missing = append(missing, cidr.String())
			}
		}
		if len(missing) > 0 {
			sort.Strings(missing)
			return fmt.Errorf("BIRD on the router has not learned %s", strings.Join(missing, ", "))
		}
		return nil
	})
}

// BirdRunning reports whether the router's BIRD runs.
func (c *Cluster) BirdRunning() bool {
	pid, err := readPID(c.pidFile("bird"))
	return err == nil && pid > 0 && pidRuns(pid, "bird")
}
