package lab

import (
	"context"
	"fmt"
	"os/exec"
	"strings"
	"time"

	"github.com/tabby-net/tabby/internal/namedns"
)

// natChain is tabby's NAT outgoing chain (SPEC §6), named here rather than imported from
// tabby's nat package, which the lab checks.
const natChain = "tabby-nat-outgoing"

// NATRulePresent reports whether a host's nat table has tabby's MASQUERADE rule for pool
// traffic. tabbyd picks the iptables backend the host uses, so both are read.
func (t *Topology) NATRulePresent(ctx context.Context, host string) (bool, error) {
	found := 0
	var errs []string
	for _, save := range []string{"iptables-nft-save", "iptables-legacy-save"} {
		path, err := exec.LookPath(save)
		if err != nil {
			continue
		}
		found++
		cmd := namedns.Command(t.HostNS(host), path, "-t", "nat")
		out, err := cmdOutput(ctx, cmd)
		if err != nil {
			errs = append(errs, fmt.Sprintf("%s: %v", save, err))
			continue
		}
		for _, l := range strings.Split(out, "\n") {
			if strings.HasPrefix(l, "-A "+natChain+" ") && strings.Contains(l, "MASQUERADE") {
				return true, nil
			}
		}
	}
	if found == 0 {
		return false, fmt.Errorf("neither iptables-nft-save nor iptables-legacy-save is installed")
	}
	if len(errs) == found {
		return false, fmt.Errorf("read the nat table of %s: %s", host, strings.Join(errs, "; "))
	}
	return false, nil
}

// WaitNAT waits until every host's MASQUERADE rule is present (on) or gone (off).
func (c *Cluster) WaitNAT(ctx context.Context, on bool, timeout time.Duration) error {
	return poll(ctx, timeout, 200*time.Millisecond, func() error {
		var wrong []string
		for _, h := range c.Topo.Hosts {
			present, err := c.Topo.NATRulePresent(ctx, h.Name)
			if err != nil {
				return stopPolling(err)
			}
			if present != on {
				wrong = append(wrong, h.Name)
			}
		}
		if len(wrong) > 0 {
			return fmt.Errorf("NAT outgoing rule still %s on %s", map[bool]string{true: "missing", false: "present"}[on], strings.Join(wrong, ", "))
		}
		return nil
	})
}

// cmdOutput runs a command under ctx and returns its standard output.
func cmdOutput(ctx context.Context, cmd *exec.Cmd) (string, error) {
	var b strings.Builder
	cmd.Stdout = &b
	err := runCtx(ctx, cmd)
	return b.String(), err
}

// cmdOutputCombined runs a command under ctx and returns its standard output and error.
func cmdOutputCombined(ctx context.Context, cmd *exec.Cmd) (string, error) {
	var b strings.Builder
	cmd.Stdout = &b
	cmd.Stderr = &b
	err := runCtx(ctx, cmd)
	return b.String(), err
}
