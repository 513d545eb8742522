// Package peertable renders tabbyd's BGP peers the way `calicoctl node status` prints
// BIRD's, for `tabbyctl node status`. It depends only on the status socket's schema, so
// that tabbyctl links neither GoBGP nor the daemon.
package peertable

import (
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/tabby-net/tabby/internal/statusapi"
)

// columns is the number of columns of the peer table.
const columns = 5

// header returns calicoctl's column titles, upper-cased as its table writer prints them.
func header() [columns]string {
	return [columns]string{"PEER ADDRESS", "PEER TYPE", "STATE", "SINCE", "INFO"}
}

// Render writes the whole `node status` report:
//
//	tabbyd is running.
//	IPv4 BGP status
//	+--------------+-------------------+-------+----------+-------------+
//	| PEER ADDRESS |     PEER TYPE     | STATE |  SINCE   |    INFO     |
//	+--------------+-------------------+-------+----------+-------------+
//	| 10.30.0.206  | node-to-node mesh | up    | 18:42:27 | Established |
//	+--------------+-------------------+-------+----------+-------------+
//
//	IPv6 BGP status
//	No IPv6 peers found.
//
// now decides whether SINCE is a time (today, in now's location) or a date, as BIRD does.
func Render(w io.Writer, st *statusapi.Status, now time.Time) error {
	var b strings.Builder
	b.WriteString("tabbyd is running.\n")
	b.WriteString("IPv4 BGP status\n")
	if len(st.Peers) == 0 {
		b.WriteString("No IPv4 peers found.\n")
	} else {
		rows := make([][columns]string, 0, len(st.Peers))
		for _, p := range st.Peers {
			rows = append(rows, [columns]string{p.Address, p.Type, p.State, Since(p.Since, now), p.Info})
		}
		writeTable(&b, rows)
	}
	// tabby speaks IPv4 BGP only.
	b.WriteString("\nIPv6 BGP status\nNo IPv6 peers found.\n")
	_, err := io.WriteString(w, b.String())
	return err
}

// Since formats when a session entered its state as BIRD's default "iso short" format
// does: the time of day for today, the date for anything older. A zero time is blank.
func Since(t, now time.Time) string {
	if t.IsZero() {
		return ""
	}
	t = t.In(now.Location())
	ty, tm, td := t.Date()
	ny, nm, nd := now.Date()
	if ty == ny && tm == nm && td == nd {
		return t.Format("15:04:05")
	}
	return t.Format("2006-01-02")
}

// writeTable draws the table as calicoctl's table writer does: columns as wide as their
// widest cell, one space of padding, titles centred (the extra space on the right), cells
// left-aligned.
func writeTable(b *strings.Builder, rows [][columns]string) {
	titles := header()
	var width [columns]int
	for i, h := range titles {
		width[i] = len(h)
	}
	for _, r := range rows {
		for i, c := range r {
			width[i] = max(width[i], len(c))
		}
	}
	line := func() {
		b.WriteString("+")
		for _, w := range width {
			b.WriteString(strings.Repeat("-", w+2) + "+")
		}
		b.WriteString("\n")
	}
	line()
	b.WriteString("|")
	for i, h := range titles {
		gap := width[i] - len(h)
		left := gap / 2
		fmt.Fprintf(b, " %s%s%s |", strings.Repeat(" ", left), h, strings.Repeat(" ", gap-left))
	}
	b.WriteString("\n")
	line()
	for _, r := range rows {
		b.WriteString("|")
		for i, c := range r {
			fmt.Fprintf(b, " %-*s |", width[i], c)
		}
		b.WriteString("\n")
	}
	line()
}
