package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/netip"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/spf13/cobra"

	"github.com/tabby-net/tabby/datastore"
	"github.com/tabby-net/tabby/datastore/ipam"
)

// newIPAMCmd is "tabbyctl ipam": calicoctl's ipam show, check, release and configure.
func newIPAMCmd(opts *globalOptions) *cobra.Command {
	return newGroupCommand("ipam", "show, check, release and configure IP address assignments",
		newIPAMShowCmd(opts), newIPAMCheckCmd(opts), newIPAMReleaseCmd(opts), newIPAMConfigureCmd(opts))
}

// withAllocator runs fn with an IPAM allocator on a fresh etcd connection, under the
// command's timeout.
func withAllocator(cmd *cobra.Command, opts *globalOptions, fn func(context.Context, *ipam.Allocator) error) error {
	ctx, c, release, err := opts.connect(cmd)
	if err != nil {
		return err
	}
	defer release()
	return fn(ctx, ipam.New(c, nil))
}

// parseIPFlag parses --ip; a bad address is a usage error.
func parseIPFlag(s string) (netip.Addr, error) {
	ip, err := netip.ParseAddr(s)
	if err != nil || !ip.Is4() {
		return netip.Addr{}, usageErrorf("--ip %q is not an IPv4 address", s)
	}
	return ip, nil
}

func newIPAMShowCmd(opts *globalOptions) *cobra.Command {
	var showBlocks, showConfiguration bool
	var ipFlag string
	cmd := &cobra.Command{
		Use:   "show [--show-blocks] [--ip=IP] [--show-configuration]",
		Short: "show how full the IP pools and their blocks are, or who holds one address",
		Long: `Prints one row per IP pool (and, with --show-blocks, per block) with the number of
addresses in total, in use and free, as calicoctl ipam show does. With --ip, says whether
that address is in use and by which handle, with its attributes ("node" names the node that
uses it, "type" marks tunnel addresses). With --show-configuration, prints the IPAM
configuration in force (strict affinity, automatic blocks, block limit per host).`,
		Args: usageArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if showConfiguration {
				return writeIPAMConfiguration(cmd, opts)
			}
			var ip netip.Addr
			if cmd.Flags().Changed("ip") {
				var err error
				if ip, err = parseIPFlag(ipFlag); err != nil {
					return err
				}
			}
			return withAllocator(cmd, opts, func(ctx context.Context, a *ipam.Allocator) error {
				out := cmd.OutOrStdout()
				if ip.IsValid() {
					al, err := a.AllocationOf(ctx, ip)
					if errors.Is(err, ipam.ErrNotAssigned) {
						_, err = fmt.Fprintf(out, "%s is not assigned\n", ip)
						return err
					}
					if err != nil {
						return err
					}
					return writeAllocation(out, al)
				}
				u, err := a.Show(ctx)
				if err != nil {
					return err
				}
				return writeUsage(out, u, showBlocks)
			})
		},
	}
	cmd.Flags().BoolVar(&showBlocks, "show-blocks", false, "show every block as well as the pools")
	cmd.Flags().StringVar(&ipFlag, "ip", "", "report whether this address is in use, and by whom")
	cmd.Flags().BoolVar(&showConfiguration, "show-configuration", false, "show the IPAM configuration")
	return cmd
}

// writeIPAMConfiguration prints the IPAM configuration in force as calicoctl's
// `ipam show --show-configuration` does.
func writeIPAMConfiguration(cmd *cobra.Command, opts *globalOptions) error {
	ctx, c, release, err := opts.connect(cmd)
	if err != nil {
		return err
	}
	defer release()
	cfg, err := c.GetIPAMConfiguration(ctx)
	if err != nil {
		return err
	}
	s := cfg.Spec
	auto := s.AutoAllocateBlocks == nil || *s.AutoAllocateBlocks
	return writeTable(cmd.OutOrStdout(), []string{"PROPERTY", "VALUE"}, [][]string{
		{"StrictAffinity", strconv.FormatBool(s.StrictAffinity)},
		{"AutoAllocateBlocks", strconv.FormatBool(auto)},
		{"MaxBlocksPerHost", strconv.Itoa(int(s.MaxBlocksPerHost))},
	})
}

func newIPAMCheckCmd(opts *globalOptions) *cobra.Command {
	return &cobra.Command{
		Use:   "check",
		Short: "check IPAM for leaked addresses and inconsistent handles and affinities",
		Long: `Cross-checks every block, block affinity and handle in etcd, read at one revision:
addresses their handle does not account for (leaks), handles counting addresses that do not
exist, affinities to missing blocks, blocks whose owner is ambiguous, affinities still
pending, and documents that cannot be read. Exits 1 when it finds any.`,
		Args: usageArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			return withAllocator(cmd, opts, func(ctx context.Context, a *ipam.Allocator) error {
				r, err := a.Check(ctx)
				if err != nil {
					return err
				}
				if err := writeReport(cmd.OutOrStdout(), r); err != nil {
					return err
				}
				if !r.OK() {
					return errSilentFailure
				}
				return nil
			})
		},
	}
}

func newIPAMReleaseCmd(opts *globalOptions) *cobra.Command {
	var ipFlag string
	cmd := &cobra.Command{
		Use:   "release --ip=IP",
		Short: "release one address, whoever holds it",
		Long: `Releases an address so that it can be assigned again, whatever handle holds it: for
addresses leaked by workloads that were not removed cleanly (see "tabbyctl ipam check").
It does not remove the address from a workload that still uses it.`,
		Args: usageArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if !cmd.Flags().Changed("ip") {
				return usageErrorf("--ip is required")
			}
			ip, err := parseIPFlag(ipFlag)
			if err != nil {
				return err
			}
			return withAllocator(cmd, opts, func(ctx context.Context, a *ipam.Allocator) error {
				err := a.ReleaseIP(ctx, ip)
				if errors.Is(err, ipam.ErrNotAssigned) {
					return fmt.Errorf("IP address %s is not assigned", ip)
				}
				if err != nil {
					return err
				}
				_, err = fmt.Fprintf(cmd.OutOrStdout(), "Successfully released IP address %s\n", ip)
				return err
			})
		},
	}
	cmd.Flags().StringVar(&ipFlag, "ip", "", "the address to release")
	return cmd
}

// writeUsage prints "ipam show" as calicoctl does: one "IP Pool" row per pool and, with
// showBlocks, a "Block" row per block after its pool's row (blocks outside every pool come
// last, without a pool row), in etcd key order.
func writeUsage(w io.Writer, u ipam.Usage, showBlocks bool) error {
	var rows [][]string
	for _, p := range u.Pools {
		rows = append(rows, usageRow("IP Pool", p.CIDR, p.Total, p.InUse))
		if showBlocks {
			for _, b := range p.Blocks {
				rows = append(rows, usageRow("Block", b.CIDR, b.Total, b.InUse))
			}
		}
	}
	if showBlocks {
		for _, b := range u.Orphans {
			rows = append(rows, usageRow("Block", b.CIDR, b.Total, b.InUse))
		}
	}
	return writeTable(w, []string{"GROUPING", "CIDR", "IPS TOTAL", "IPS IN USE", "IPS FREE"}, rows)
}

// usageRow formats the numbers as calicoctl does: "%.5g" (so a /8 pool's total prints as
// 1.6777e+07) and percentages rounded to the nearest integer.
func usageRow(grouping string, cidr netip.Prefix, total, inUse int) []string {
	t, u := float64(total), float64(inUse)
	return []string{
		grouping,
		cidr.String(),
		fmt.Sprintf("%.5g", t),
		fmt.Sprintf("%.5g (%.f%%)", u, 100*u/t),
		fmt.Sprintf("%.5g (%.f%%)", t-u, 100*(t-u)/t),
	}
}

// numericCell is what calicoctl's table writer right-aligns.
var numericCell = regexp.MustCompile(`^-?(?:\d{1,3}(?:,\d{3})*|\d+)(?:\.\d+)?$`)

// writeTable renders a table in the layout of the table writer calicoctl uses: +---+
// borders, headers centred, numbers right-aligned, everything else left-aligned.
func writeTable(w io.Writer, header []string, rows [][]string) error {
	widths := make([]int, len(header))
	for i, h := range header {
		widths[i] = utf8.RuneCountInString(h)
	}
	for _, r := range rows {
		for i, c := range r {
			widths[i] = max(widths[i], utf8.RuneCountInString(c))
		}
	}
	var b strings.Builder
	border := func() {
		b.WriteString("+")
		for _, wd := range widths {
			b.WriteString(strings.Repeat("-", wd+2) + "+")
		}
		b.WriteString("\n")
	}
	line := func(cells []string, align func(cell string, width int) string) {
		b.WriteString("|")
		for i, c := range cells {
			b.WriteString(" " + align(c, widths[i]) + " |")
		}
		b.WriteString("\n")
	}
	centre := func(c string, wd int) string {
		gap := wd - utf8.RuneCountInString(c)
		return strings.Repeat(" ", gap/2) + c + strings.Repeat(" ", gap-gap/2)
	}
	cell := func(c string, wd int) string {
		pad := strings.Repeat(" ", wd-utf8.RuneCountInString(c))
		if numericCell.MatchString(c) {
			return pad + c
		}
		return c + pad
	}
	border()
	line(header, centre)
	border()
	for _, r := range rows {
		line(r, cell)
	}
	border()
	_, err := io.WriteString(w, b.String())
	return err
}

// writeAllocation prints "ipam show --ip" for an address in use.
func writeAllocation(w io.Writer, al ipam.Allocation) error {
	var b strings.Builder
	fmt.Fprintf(&b, "IP %s is in use\n", al.IP)
	handle := al.Handle
	if handle == "" {
		handle = "<none>"
	}
	fmt.Fprintf(&b, "Handle ID: %s\n", handle)
	owner := al.BlockHost
	if owner == "" {
		owner = "no node"
	}
	fmt.Fprintf(&b, "Block: %s (affine to %s)\n", al.Block, owner)
	if n := al.Attrs[ipam.AttrNode]; n != "" && n != al.BlockHost {
		fmt.Fprintf(&b, "Borrowed by node %s\n", n)
	}
	if len(al.Attrs) == 0 {
		b.WriteString("No attributes defined\n")
	} else {
		b.WriteString("Attributes:\n")
		for _, k := range slices.Sorted(maps.Keys(al.Attrs)) {
			fmt.Fprintf(&b, "  %s: %s\n", k, al.Attrs[k])
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// writeReport prints "ipam check".
func writeReport(w io.Writer, r ipam.Report) error {
	var b strings.Builder
	fmt.Fprintf(&b, "Checking IPAM for inconsistencies (etcd revision %d)...\n", r.Revision)
	fmt.Fprintf(&b, "Found %d blocks, %d allocations, %d handles, %d block affinities.\n",
		r.Blocks, r.Allocations, r.Handles, r.Affinities)
	section := func(n int, title string, lines func()) {
		if n > 0 {
			fmt.Fprintf(&b, "\n%s: %d\n", title, n)
			lines()
		}
	}
	section(len(r.Leaks), "Leaked addresses (no handle accounts for them; free with tabbyctl ipam release --ip)", func() {
		for _, l := range r.Leaks {
			fmt.Fprintf(&b, "  %s in block %s, handle %q%s: %s\n", l.IP, l.Block, l.Handle, attrText(l.Attrs), l.Reason)
		}
	})
	section(len(r.OrphanHandles), "Handles counting addresses their block does not hold", func() {
		for _, h := range r.OrphanHandles {
			fmt.Fprintf(&b, "  handle %s counts %d in block %s, which holds %d for it\n", h.Handle, h.Counted, h.Block, h.Found)
		}
	})
	section(len(r.AffinitiesWithoutBlock), "Block affinities to blocks that do not exist", func() {
		for _, a := range r.AffinitiesWithoutBlock {
			fmt.Fprintf(&b, "  %s -> %s (%s)\n", a.Host, a.Block, a.State)
		}
	})
	section(len(r.DoubleClaims), "Blocks whose owner is ambiguous", func() {
		for _, d := range r.DoubleClaims {
			fmt.Fprintf(&b, "  %s: %s\n", d.Block, d.Reason)
		}
	})
	section(len(r.Pending), "Block affinities not confirmed (a claim or release in progress, or left by a node that died)", func() {
		for _, a := range r.Pending {
			fmt.Fprintf(&b, "  %s -> %s (%s)\n", a.Host, a.Block, a.State)
		}
	})
	section(len(r.Unreadable), "Documents that cannot be read", func() {
		for _, u := range r.Unreadable {
			fmt.Fprintf(&b, "  %s: %s\n", u.Key, u.Err)
		}
	})
	fmt.Fprintf(&b, "\nCheck complete; found %d problems.\n", r.Problems())
	_, err := io.WriteString(w, b.String())
	return err
}

// attrText renders secondary attributes as " (k=v k=v)".
func attrText(attrs map[string]string) string {
	if len(attrs) == 0 {
		return ""
	}
	parts := make([]string, 0, len(attrs))
	for _, k := range slices.Sorted(maps.Keys(attrs)) {
		parts = append(parts, k+"="+attrs[k])
	}
	return " (" + strings.Join(parts, " ") + ")"
}

// newIPAMConfigureCmd is calicoctl's `ipam configure`: it sets the IPAM configuration's
// strict affinity and, optionally, its block limit per host, in the IPAM config key that
// Calico's IPAM reads, with Calico's checks and messages.
func newIPAMConfigureCmd(opts *globalOptions) *cobra.Command {
	var strict string
	var maxBlocks int
	cmd := &cobra.Command{
		Use:   "configure --strictaffinity=true|false [--max-blocks-per-host=N]",
		Short: "set strict affinity and the block limit per host",
		Long: `Sets the cluster's IPAM configuration (IPAMConfiguration "default"): strict affinity (no
node borrows addresses from another node's blocks) and, optionally, the most blocks one
node may own (0: no limit; a limit needs strict affinity).`,
		Args: usageArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			enabled, err := strconv.ParseBool(strict)
			if err != nil {
				return usageErrorf("--strictaffinity %q: use true or false", strict)
			}
			setMax := cmd.Flags().Changed("max-blocks-per-host")
			ctx, c, release, err := opts.connect(cmd)
			if err != nil {
				return err
			}
			defer release()
			_, err = c.ModifyIPAMConfiguration(ctx, "", func(s *datastore.IPAMConfigurationSpec) error {
				s.StrictAffinity = enabled
				if setMax {
					s.MaxBlocksPerHost = int32(maxBlocks)
				}
				return nil
			})
			if err != nil {
				fmt.Fprintf(cmd.ErrOrStderr(), "Error: %v\n", err)
				return errSilentFailure
			}
			fmt.Fprintln(cmd.OutOrStdout(), "Successfully set StrictAffinity to:", enabled)
			if setMax {
				fmt.Fprintln(cmd.OutOrStdout(), "Successfully set MaxBlocksPerHost to:", maxBlocks)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&strict, "strictaffinity", "", "true: no node borrows addresses from another's blocks")
	cmd.Flags().IntVar(&maxBlocks, "max-blocks-per-host", 0, "the most blocks one node may own (0: no limit)")
	_ = cmd.MarkFlagRequired("strictaffinity")
	return cmd
}
