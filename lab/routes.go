package lab

import (
	"fmt"
	"io"
	"net"
	"slices"
	"sort"
	"strings"
	"text/tabwriter"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/tabby-net/tabby/internal/namedns"
)

// RouteTable renders a host's main routing table the way `route -n` prints it, which is
// how the articles show each mode, with one more column naming the route's protocol so
// that tabby's routes (proto tabby) stand out.
func (t *Topology) RouteTable(w io.Writer, host string) error {
	h, err := namedns.Handle(t.HostNS(host))
	if err != nil {
		return err
	}
	defer h.Close()
	routes, err := h.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
	if err != nil {
		return fmt.Errorf("list routes of %s: %w", host, err)
	}
	links := map[int]string{}
	ls, err := h.LinkList()
	if err != nil {
		return fmt.Errorf("list links of %s: %w", host, err)
	}
	for _, l := range ls {
		links[l.Attrs().Index] = l.Attrs().Name
	}
	rows := make([]routeRow, 0, len(routes))
	for _, r := range routes {
		rows = append(rows, toRow(r, links))
	}
	sort.Slice(rows, func(i, j int) bool { return rows[i].sortKey < rows[j].sortKey })
	fmt.Fprintln(w, "Kernel IP routing table")
	tw := tabwriter.NewWriter(w, 0, 8, 1, ' ', 0)
	fmt.Fprintln(tw, "Destination\tGateway\tGenmask\tFlags\tMetric\tIface\tProto")
	for _, r := range rows {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\t%s\n", r.dst, r.gw, r.mask, r.flags, r.metric, r.iface, r.proto)
	}
	return tw.Flush()
}

type routeRow struct {
	dst, gw, mask, flags, iface, proto string
	metric                             int
	sortKey                            string
}

func toRow(r netlink.Route, links map[int]string) routeRow {
	row := routeRow{dst: "0.0.0.0", gw: "0.0.0.0", mask: "0.0.0.0", flags: "U", metric: r.Priority, iface: links[r.LinkIndex]}
	ones := 0
	if r.Dst != nil {
		row.dst = r.Dst.IP.String()
		row.mask = net.IP(r.Dst.Mask).String()
		ones, _ = r.Dst.Mask.Size()
	}
	if r.Gw != nil {
		row.gw = r.Gw.String()
		row.flags += "G"
	}
	if ones == 32 {
		row.flags += "H"
	}
	if r.Type == unix.RTN_BLACKHOLE {
		// route(8) shows a reject route with "!" and no interface.
		row.flags = "!"
		row.iface = "*"
	}
	if row.iface == "" {
		row.iface = "*"
	}
	row.proto = protoName(int(r.Protocol))
	ip := net.ParseIP(row.dst).To4()
	row.sortKey = fmt.Sprintf("%03d.%03d.%03d.%03d/%02d", ip[0], ip[1], ip[2], ip[3], ones)
	return row
}

// TabbyRouteProtocol is tabby's route protocol number (SPEC §5).
const TabbyRouteProtocol = 95

func protoName(p int) string {
	switch p {
	case unix.RTPROT_KERNEL:
		return "kernel"
	case unix.RTPROT_BOOT:
		return "boot"
	case unix.RTPROT_STATIC:
		return "static"
	case TabbyRouteProtocol:
		return "tabby"
	}
	return fmt.Sprint(p)
}

// TabbyRoutes returns the routes of tabby's protocol in a host's main table as `ip route`
// text, one line each, sorted: the form the end-to-end tests compare. The protocol is
// always printed as its number: whether iproute2 names it "tabby" depends on a file
// tabbyd may have written to /etc/iproute2/rt_protos.d. The nexthop object a route uses
// (`nhid N`) is left out: its number is an allocation detail, and iproute2 prints the
// object's gateway and device beside it.
func (t *Topology) TabbyRoutes(host string) ([]string, error) {
	out, err := namedns.Command(t.HostNS(host), "ip", "-4", "route", "show", "table", "main").Output()
	if err != nil {
		return nil, fmt.Errorf("ip route in %s: %w", host, err)
	}
	want := fmt.Sprint(TabbyRouteProtocol)
	var lines []string
	for _, l := range strings.Split(string(out), "\n") {
		f := strings.Fields(l)
		if i := slices.Index(f, "nhid"); i >= 0 && i+1 < len(f) {
			f = slices.Delete(f, i, i+2)
		}
		ours := false
		for i := 0; i+1 < len(f); i++ {
			if f[i] == "proto" && (f[i+1] == want || f[i+1] == "tabby") {
				f[i+1] = want
				ours = true
			}
		}
		if ours {
			lines = append(lines, strings.Join(f, " "))
		}
	}
	sort.Strings(lines)
	return lines, nil
}
