package diagnose

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
)

// Print renders a report: one row per peer and check, then the findings with their fixes.
func Print(w io.Writer, r *Report) {
	fmt.Fprintf(w, "Diagnosing %s (%s on %s, host MTU %d)\n\n", r.Local.Node, r.Local.Addr, r.Local.NIC, r.Local.HostMTU)
	checks := []Check{CheckReach, CheckBGP, CheckIPIP, CheckVXLAN, CheckPoolAddrs, CheckMTU}
	tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
	head := []string{"PEER", "NODE"}
	for _, c := range checks {
		head = append(head, strings.ToUpper(string(c)))
	}
	fmt.Fprintln(tw, strings.Join(head, "\t"))
	for _, p := range r.Peers {
		row := []string{p.Address.String(), orDash(p.Node)}
		for _, c := range checks {
			status := "-"
			for _, res := range p.Results {
				if res.Check == c {
					status = res.Status
				}
			}
			row = append(row, status)
		}
		fmt.Fprintln(tw, strings.Join(row, "\t"))
	}
	tw.Flush()
	fmt.Fprintln(w)
	if r.OK() {
		fmt.Fprintln(w, "No problem found.")
		return
	}
	fmt.Fprintf(w, "%d problem(s) found:\n", len(r.Findings))
	for i, f := range r.Findings {
		who := "this host"
		if f.Peer != "" {
			who = f.Peer
		}
		fmt.Fprintf(w, "%d. [%s] %s: %s\n   fix: %s\n", i+1, f.Check, who, f.Problem, f.Fix)
	}
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
