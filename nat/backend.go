package nat

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strings"

	"github.com/coreos/go-iptables/iptables"
)

// Values of Options.Backend (the dataplane.iptablesBackend setting).
const (
	// BackendAuto follows the host: the backend that already holds more rules, else the one
	// the host's `iptables` command uses.
	BackendAuto = "auto"
	// BackendNFT is iptables over nf_tables (iptables-nft).
	BackendNFT = "nft"
	// BackendLegacy is the legacy x_tables iptables (iptables-legacy).
	BackendLegacy = "legacy"
)

// backend is one iptables flavour as installed on this host. The two keep separate kernel
// tables and both are evaluated for every packet, so tabby must write into the one the rest
// of the host (docker, kube-proxy, the distribution's firewall) uses, or its rules end up
// ordered arbitrarily against theirs.
type backend struct {
	mode                             string // BackendNFT or BackendLegacy
	iptablesBin, saveBin, restoreBin string // absolute paths
	// ipt is go-iptables bound to this backend's binary; it knows the binary's version.
	ipt *iptables.IPTables
}

// findBackend locates the binaries of one backend: iptables-nft / iptables-legacy and their
// -save and -restore, or, on hosts from before iptables 1.8 where only `iptables` exists, that
// one if it is of the wanted mode.
func findBackend(ctx context.Context, mode string) (*backend, error) {
	b := &backend{mode: mode}
	var err error
	b.iptablesBin, err = exec.LookPath("iptables-" + mode)
	if err == nil {
		b.saveBin, err = exec.LookPath("iptables-" + mode + "-save")
	}
	if err == nil {
		b.restoreBin, err = exec.LookPath("iptables-" + mode + "-restore")
	}
	if err != nil {
		plain, perr := exec.LookPath("iptables")
		if perr != nil || defaultMode(ctx, plain) != mode {
			return nil, fmt.Errorf("iptables backend %s is not installed: %w", mode, err)
		}
		b.iptablesBin = plain
		if b.saveBin, err = exec.LookPath("iptables-save"); err != nil {
			return nil, fmt.Errorf("iptables backend %s: %w", mode, err)
		}
		if b.restoreBin, err = exec.LookPath("iptables-restore"); err != nil {
			return nil, fmt.Errorf("iptables backend %s: %w", mode, err)
		}
	}
	if b.ipt, err = iptables.New(iptables.Path(b.iptablesBin)); err != nil {
		return nil, fmt.Errorf("iptables backend %s (%s): %w", mode, b.iptablesBin, err)
	}
	return b, nil
}

// defaultMode is the mode of an `iptables` binary: "iptables v1.8.9 (nf_tables)" is nft,
// "(legacy)" or no mode at all (before 1.8) is legacy.
func defaultMode(ctx context.Context, bin string) string {
	out, err := exec.CommandContext(ctx, bin, "-V").Output()
	if err == nil && strings.Contains(string(out), "nf_tables") {
		return BackendNFT
	}
	return BackendLegacy
}

// selectBackend resolves the configured backend for the namespace r works in. For "auto" it
// does what kube-proxy's and Calico's detection do: count the rules each backend holds and
// take the busier one, since that is where the host's other firewall users live; on a tie
// (a fresh host) it follows the distribution's `iptables` alternative. The reason is for the
// log.
func selectBackend(ctx context.Context, r runner, want string) (b *backend, reason string, err error) {
	switch want {
	case BackendNFT, BackendLegacy:
		b, err = findBackend(ctx, want)
		return b, "configured", err
	case "", BackendAuto:
	default:
		return nil, "", fmt.Errorf("iptables backend %q: must be auto, nft or legacy", want)
	}
	counts := map[string]int{}
	found := map[string]*backend{}
	var errs []error
	for _, mode := range []string{BackendNFT, BackendLegacy} {
		cand, err := findBackend(ctx, mode)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		// Without -t, iptables-save lists only the tables that exist: counting creates none.
		out, err := r.output(ctx, "", cand.saveBin)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		found[mode] = cand
		counts[mode] = countRules(out)
	}
	switch {
	case len(found) == 0:
		return nil, "", fmt.Errorf("no usable iptables: %w", errors.Join(errs...))
	case len(found) == 1:
		for _, cand := range found {
			return cand, "the only one installed and readable", nil
		}
	}
	reason = fmt.Sprintf("nft holds %d rules, legacy %d", counts[BackendNFT], counts[BackendLegacy])
	switch {
	case counts[BackendNFT] > counts[BackendLegacy]:
		return found[BackendNFT], reason, nil
	case counts[BackendLegacy] > counts[BackendNFT]:
		return found[BackendLegacy], reason, nil
	}
	if plain, err := exec.LookPath("iptables"); err == nil {
		return found[defaultMode(ctx, plain)], reason + "; following the iptables command", nil
	}
	return found[BackendNFT], reason + "; no iptables command, preferring nft", nil
}

func countRules(save string) int {
	n := 0
	for line := range strings.Lines(save) {
		if strings.HasPrefix(line, "-A ") {
			n++
		}
	}
	return n
}

// hasWaitAndRandomFully reports whether this iptables is 1.6.2 or later, the release that
// brought both MASQUERADE --random-fully and iptables-restore --wait.
func (b *backend) hasWaitAndRandomFully() bool { return b.ipt.HasRandomFully() }

// saveAll reads every table of this backend in r's namespace.
func (b *backend) saveAll(ctx context.Context, r runner) (map[string]*tableState, error) {
	out, err := r.output(ctx, "", b.saveBin)
	if err != nil {
		return nil, err
	}
	return parseSave(out)
}

// restore applies an iptables-restore script without flushing anything it does not name.
// Each table's COMMIT is one atomic transaction.
func (b *backend) restore(ctx context.Context, r runner, script string) error {
	args := []string{"--noflush"}
	if b.hasWaitAndRandomFully() {
		// Legacy iptables serialises writers on /run/xtables.lock; wait for it instead of
		// failing when docker or another tabbyd holds it.
		args = append(args, "--wait=10")
	}
	_, err := r.output(ctx, script, b.restoreBin, args...)
	return err
}

// probeFeatures finds out what this host's iptables and kernel can do. --random-fully needs
// both a new enough iptables and kernel support, so it is tried for real in a scratch chain
// (not referenced from anywhere, so no packet ever sees it) and the chain removed again.
// The note says why a feature is missing, for the log.
func (b *backend) probeFeatures(ctx context.Context, r runner) (f features, note string, err error) {
	if !b.hasWaitAndRandomFully() {
		v1, v2, v3 := b.ipt.GetIptablesVersion()
		return f, fmt.Sprintf("iptables %d.%d.%d predates --random-fully", v1, v2, v3), nil
	}
	try := fmt.Sprintf("*nat\n:%s - [0:0]\n-A %s -j MASQUERADE --random-fully\nCOMMIT\n", probeChain, probeChain)
	if err := b.restore(ctx, r, try); err != nil {
		if ctx.Err() != nil {
			return f, "", ctx.Err()
		}
		return f, fmt.Sprintf("MASQUERADE --random-fully refused: %v", err), nil
	}
	remove := fmt.Sprintf("*nat\n-F %s\n-X %s\nCOMMIT\n", probeChain, probeChain)
	if err := b.restore(ctx, r, remove); err != nil {
		return f, "", fmt.Errorf("remove probe chain: %w", err)
	}
	return features{randomFully: true}, "", nil
}
