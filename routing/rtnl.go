package routing

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync/atomic"
	"syscall"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// This file is tabby's own rtnetlink codec for the two things the netlink library does not
// know: nexthop objects (`ip nexthop`, RTM_*NEXTHOP) and routes that use one (RTA_NH_ID).
// The reconciler programs every route with a gateway through a nexthop object because the
// kernel finds a new route's next hop among the existing ones of the same device one by one
// (the gateway is not part of fib_info's hash): 5,000 routes through 5,000 node addresses
// cost 365 ms with plain gateways and under 100 ms with one nexthop object per node.

// rtaNHID is RTA_NH_ID (linux/rtnetlink.h) and nhaFDB is NHA_FDB (linux/nexthop.h), which
// x/sys/unix does not define.
const (
	rtaNHID = 30
	nhaFDB  = 11
)

// nlRoute is a route as tabby exchanges it with the kernel: the library's Route plus the id
// of the nexthop object it uses (0: none). A route read from the kernel that uses a nexthop
// also carries the nexthop's gateway, device and onlink flag, as the kernel's compatibility
// mode reports them (or, without it, as tabby's record of the nexthop knows them).
type nlRoute struct {
	netlink.Route
	NHID uint32
}

// nexthop is an IPv4 nexthop object: a gateway on a device, or a device alone.
type nexthop struct {
	ID        uint32
	Gw        netip.Addr
	LinkIndex int
	OnLink    bool
	Protocol  int
	// Other marks what tabby never creates (groups, blackholes, IPv6, FDB nexthops): its id
	// is taken, nothing more.
	Other bool
}

// routeUpdate is one notification of the route or nexthop groups.
type routeUpdate struct {
	// Type is RTM_NEWROUTE, RTM_DELROUTE, RTM_NEWNEXTHOP or RTM_DELNEXTHOP.
	Type    uint16
	NlFlags int
	Route   nlRoute // route notifications
	Nexthop nexthop // nexthop notifications
}

// isNexthopUnsupported reports whether a nexthop request failed because the kernel has no
// nexthop objects (before Linux 5.3).
func isNexthopUnsupported(err error) bool {
	return errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.EINVAL) || errors.Is(err, unix.EPROTONOSUPPORT)
}

// rtnl is the real netlinker: the library's handle for links, addresses and neighbours,
// and one more route socket in the same namespace for tabby's codec.
type rtnl struct {
	*netlink.Handle
	sock *nl.SocketHandle
}

// newRTNL opens the codec's socket in ns (nil: the caller's namespace).
func newRTNL(h *netlink.Handle, ns *netns.NsHandle) (*rtnl, error) {
	target := netns.None()
	if ns != nil {
		target = *ns
	}
	s, err := nl.GetNetlinkSocketAt(target, netns.None(), unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("open a route netlink socket: %w", err)
	}
	// Errors then carry the kernel's explanation ("Nexthop device is not up").
	_ = s.SetExtAck(true)
	return &rtnl{Handle: h, sock: &nl.SocketHandle{Socket: s}}, nil
}

// Close closes the codec's socket; the library handle stays the caller's.
func (r *rtnl) Close() { r.sock.Close() }

func (r *rtnl) request(typ, flags int, body []byte) *nl.NetlinkRequest {
	return &nl.NetlinkRequest{
		NlMsghdr: unix.NlMsghdr{Type: uint16(typ), Flags: unix.NLM_F_REQUEST | uint16(flags)},
		RawData:  body,
		Sockets:  map[int]*nl.SocketHandle{unix.NETLINK_ROUTE: r.sock},
	}
}

// attrs builds the attribute part of a message.
type attrs []byte

func (a *attrs) add(typ int, data []byte) {
	n := unix.SizeofRtAttr + len(data)
	*a = binary.NativeEndian.AppendUint16(*a, uint16(n))
	*a = binary.NativeEndian.AppendUint16(*a, uint16(typ))
	*a = append(*a, data...)
	for len(*a)%unix.RTA_ALIGNTO != 0 {
		*a = append(*a, 0)
	}
}

func (a *attrs) u32(typ int, v uint32) {
	var b [4]byte
	binary.NativeEndian.PutUint32(b[:], v)
	a.add(typ, b[:])
}

// rtMsg starts an IPv4 route message: an rtmsg for dst in the main table with protocol
// proto, with room for attributes up to size bytes in all.
func rtMsg(dst *net.IPNet, proto int, size int) []byte {
	b := make([]byte, unix.SizeofRtMsg, size)
	b[0] = unix.AF_INET
	if dst != nil {
		ones, _ := dst.Mask.Size()
		b[1] = byte(ones)
	}
	b[4] = byte(unix.RT_TABLE_MAIN)
	b[5] = byte(proto)
	return b
}

// encodeRoute serialises an IPv4 route: rtmsg, then its attributes.
func encodeRoute(r *nlRoute) []byte {
	b := rtMsg(r.Dst, int(r.Protocol), 96)
	if r.Table > 0 && r.Table < 256 {
		b[4] = byte(r.Table)
	}
	b[6] = byte(r.Scope)
	b[7] = byte(r.Type)
	binary.NativeEndian.PutUint32(b[8:], uint32(r.Flags))
	a := attrs(b)
	if r.Dst != nil {
		a.add(unix.RTA_DST, r.Dst.IP.To4())
	}
	if r.Table >= 256 {
		a.u32(unix.RTA_TABLE, uint32(r.Table))
	}
	if r.Priority > 0 {
		a.u32(unix.RTA_PRIORITY, uint32(r.Priority))
	}
	switch {
	case r.NHID != 0:
		a.u32(rtaNHID, r.NHID)
	default:
		if gw := r.Gw.To4(); gw != nil {
			a.add(unix.RTA_GATEWAY, gw)
		}
		if r.LinkIndex > 0 {
			a.u32(unix.RTA_OIF, uint32(r.LinkIndex))
		}
	}
	if r.MTU > 0 {
		var m attrs
		m.u32(unix.RTAX_MTU, uint32(r.MTU))
		a.add(unix.RTA_METRICS, m)
	}
	return a
}

// decodeRoute reads an IPv4 route message; ok is false for other families.
func decodeRoute(b []byte) (nlRoute, bool) {
	if len(b) < unix.SizeofRtMsg || b[0] != unix.AF_INET {
		return nlRoute{}, false
	}
	var r nlRoute
	r.Family = unix.AF_INET
	dstLen := int(b[1])
	r.Table = int(b[4])
	r.Protocol = netlink.RouteProtocol(b[5])
	r.Scope = netlink.Scope(b[6])
	r.Type = int(b[7])
	r.Flags = int(binary.NativeEndian.Uint32(b[8:]))
	list, err := nl.ParseRouteAttr(b[unix.SizeofRtMsg:])
	if err != nil {
		return nlRoute{}, false
	}
	for _, at := range list {
		v := at.Value
		switch at.Attr.Type &^ (unix.NLA_F_NESTED | unix.NLA_F_NET_BYTEORDER) {
		case unix.RTA_DST:
			if len(v) == 4 {
				r.Dst = &net.IPNet{IP: net.IP(v), Mask: net.CIDRMask(dstLen, 32)}
			}
		case unix.RTA_GATEWAY:
			if len(v) == 4 {
				r.Gw = net.IP(v)
			}
		case unix.RTA_OIF:
			r.LinkIndex = int(u32(v))
		case unix.RTA_PRIORITY:
			r.Priority = int(u32(v))
		case unix.RTA_TABLE:
			r.Table = int(u32(v))
		case rtaNHID:
			r.NHID = u32(v)
		case unix.RTA_MULTIPATH:
			// tabby never writes multipath routes; the marker is enough for callers to
			// leave such a route alone.
			r.MultiPath = []*netlink.NexthopInfo{{}}
		case unix.RTA_METRICS:
			metrics, err := nl.ParseRouteAttr(v)
			if err != nil {
				continue
			}
			for _, m := range metrics {
				if m.Attr.Type == unix.RTAX_MTU {
					r.MTU = int(u32(m.Value))
				}
			}
		}
	}
	return r, true
}

func u32(b []byte) uint32 {
	if len(b) < 4 {
		return 0
	}
	return binary.NativeEndian.Uint32(b)
}

// RouteDelete deletes a route of the given protocol by its key (destination, metric),
// whatever its next hop; nhid, when not 0, is the nexthop object only that route used,
// deleted in the same request after it. nhErr is the object's answer.
func (r *rtnl) RouteDelete(rt *nlRoute, nhid uint32) (nhErr, err error) {
	body := rtMsg(rt.Dst, int(rt.Protocol), 48)
	body[6] = byte(unix.RT_SCOPE_NOWHERE) // match whatever the scope
	a := attrs(body)
	if rt.Dst != nil {
		a.add(unix.RTA_DST, rt.Dst.IP.To4())
	}
	if rt.Priority > 0 {
		a.u32(unix.RTA_PRIORITY, uint32(rt.Priority))
	}
	del := message{unix.RTM_DELROUTE, unix.NLM_F_ACK, a}
	if nhid == 0 {
		_, err := r.request(del.typ, del.flags, del.body).Execute(unix.NETLINK_ROUTE, 0)
		return nil, err
	}
	errs, err := r.batch(del, message{unix.RTM_DELNEXTHOP, unix.NLM_F_ACK, nexthopIDBody(nhid)})
	if err != nil {
		return err, err
	}
	return errs[1], errs[0]
}

func nexthopIDBody(id uint32) []byte {
	a := attrs(make([]byte, unix.SizeofNhmsg, 16))
	a.u32(unix.NHA_ID, id)
	return a
}

// routeWrite is one route write: an add (exclusive: EEXIST if the prefix is taken) or a
// replace, with the new nexthop object the route uses, if any, sent just before it so that
// a route to a new next hop costs no round trip of its own.
type routeWrite struct {
	route   nlRoute
	replace bool
	nh      *nexthop
}

// writeAnswer is the kernel's answer to a routeWrite: nhErr the object's, err the route's.
type writeAnswer struct{ nhErr, err error }

// RouteWrites sends route writes in one request, the kernel handles the messages in order
// and answers each: a bulk pass costs one round trip per group, a single write one.
func (r *rtnl) RouteWrites(ws []routeWrite) []writeAnswer {
	msgs := make([]message, 0, 2*len(ws))
	for i := range ws {
		w := &ws[i]
		if w.nh != nil {
			msgs = append(msgs, message{unix.RTM_NEWNEXTHOP, unix.NLM_F_CREATE | unix.NLM_F_EXCL | unix.NLM_F_ACK, encodeNexthop(w.nh)})
		}
		flags := unix.NLM_F_CREATE | unix.NLM_F_ACK | unix.NLM_F_EXCL
		if w.replace {
			flags = unix.NLM_F_CREATE | unix.NLM_F_ACK | unix.NLM_F_REPLACE
		}
		msgs = append(msgs, message{unix.RTM_NEWROUTE, flags, encodeRoute(&w.route)})
	}
	answers := make([]writeAnswer, len(ws))
	errs, err := r.batch(msgs...)
	j := 0
	for i := range ws {
		if err != nil {
			answers[i] = writeAnswer{err, err}
			continue
		}
		if ws[i].nh != nil {
			answers[i].nhErr = errs[j]
			j++
		}
		answers[i].err = errs[j]
		j++
	}
	return answers
}

// message is one request of a batch.
type message struct {
	typ, flags int
	body       []byte
}

// batch sends several requests, each with NLM_F_ACK, in one datagram and returns the
// kernel's answer to each. err is set when the exchange itself failed.
func (r *rtnl) batch(msgs ...message) (answers []error, err error) {
	s := r.sock.Socket
	s.Lock()
	defer s.Unlock()
	var buf []byte
	first := uint32(0)
	for i, m := range msgs {
		seq := atomic.AddUint32(&r.sock.Seq, 1)
		if i == 0 {
			first = seq
		}
		n := unix.NLMSG_HDRLEN + len(m.body)
		buf = binary.NativeEndian.AppendUint32(buf, uint32(n))
		buf = binary.NativeEndian.AppendUint16(buf, uint16(m.typ))
		buf = binary.NativeEndian.AppendUint16(buf, uint16(unix.NLM_F_REQUEST|m.flags))
		buf = binary.NativeEndian.AppendUint32(buf, seq)
		buf = binary.NativeEndian.AppendUint32(buf, 0)
		buf = append(buf, m.body...)
		for len(buf)%unix.NLMSG_ALIGNTO != 0 {
			buf = append(buf, 0)
		}
	}
	if err := unix.Sendto(s.GetFd(), buf, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return nil, fmt.Errorf("send: %w", err)
	}
	answers = make([]error, len(msgs))
	pending := len(msgs)
	for pending > 0 {
		got, from, err := s.Receive()
		if err != nil {
			return nil, fmt.Errorf("receive: %w", err)
		}
		if from.Pid != nl.PidKernel {
			continue
		}
		for _, m := range got {
			i := int(m.Header.Seq - first)
			if m.Header.Type != unix.NLMSG_ERROR || i < 0 || i >= len(msgs) || len(m.Data) < 4 {
				continue
			}
			if errno := int32(binary.NativeEndian.Uint32(m.Data)); errno != 0 {
				answers[i] = syscall.Errno(-errno)
			}
			pending--
		}
	}
	return answers, nil
}

// RouteDump calls f with every IPv4 route of the main table.
func (r *rtnl) RouteDump(f func(nlRoute) bool) error {
	body := make([]byte, unix.SizeofRtMsg)
	body[0] = unix.AF_INET
	err := r.request(unix.RTM_GETROUTE, unix.NLM_F_DUMP, body).ExecuteIter(unix.NETLINK_ROUTE, unix.RTM_NEWROUTE, func(m []byte) bool {
		rt, ok := decodeRoute(m)
		if !ok || rt.Table != unix.RT_TABLE_MAIN {
			return true
		}
		return f(rt)
	})
	if errors.Is(err, nl.ErrDumpInterrupted) {
		return fmt.Errorf("route dump: %w", unix.EINTR)
	}
	return err
}

// encodeNexthop serialises a nexthop object: nhmsg, then NHA_ID, NHA_OIF, NHA_GATEWAY.
func encodeNexthop(nh *nexthop) []byte {
	b := make([]byte, unix.SizeofNhmsg, 40)
	b[0] = unix.AF_INET
	b[2] = byte(nh.Protocol)
	if nh.OnLink {
		binary.NativeEndian.PutUint32(b[4:], unix.RTNH_F_ONLINK)
	}
	a := attrs(b)
	a.u32(unix.NHA_ID, nh.ID)
	a.u32(unix.NHA_OIF, uint32(nh.LinkIndex))
	if nh.Gw.IsValid() {
		gw := nh.Gw.As4()
		a.add(unix.NHA_GATEWAY, gw[:])
	}
	return a
}

// decodeNexthop reads a nexthop message.
func decodeNexthop(b []byte) (nexthop, bool) {
	if len(b) < unix.SizeofNhmsg {
		return nexthop{}, false
	}
	nh := nexthop{Protocol: int(b[2]), OnLink: binary.NativeEndian.Uint32(b[4:])&unix.RTNH_F_ONLINK != 0}
	nh.Other = b[0] != unix.AF_INET
	list, err := nl.ParseRouteAttr(b[unix.SizeofNhmsg:])
	if err != nil {
		return nexthop{}, false
	}
	for _, at := range list {
		switch at.Attr.Type &^ (unix.NLA_F_NESTED | unix.NLA_F_NET_BYTEORDER) {
		case unix.NHA_ID:
			nh.ID = u32(at.Value)
		case unix.NHA_OIF:
			nh.LinkIndex = int(u32(at.Value))
		case unix.NHA_GATEWAY:
			if a, ok := netip.AddrFromSlice(at.Value); ok {
				nh.Gw = a.Unmap()
			}
		case unix.NHA_GROUP, unix.NHA_BLACKHOLE, nhaFDB, unix.NHA_ENCAP:
			nh.Other = true
		}
	}
	return nh, nh.ID != 0
}

// NexthopDel deletes a nexthop object, and with it every route that uses it.
func (r *rtnl) NexthopDel(id uint32) error {
	_, err := r.request(unix.RTM_DELNEXTHOP, unix.NLM_F_ACK, nexthopIDBody(id)).Execute(unix.NETLINK_ROUTE, 0)
	return err
}

// NexthopDump calls f with every nexthop object of the namespace.
func (r *rtnl) NexthopDump(f func(nexthop) bool) error {
	body := make([]byte, unix.SizeofNhmsg)
	err := r.request(unix.RTM_GETNEXTHOP, unix.NLM_F_DUMP, body).ExecuteIter(unix.NETLINK_ROUTE, unix.RTM_NEWNEXTHOP, func(m []byte) bool {
		if nh, ok := decodeNexthop(m); ok {
			return f(nh)
		}
		return true
	})
	if errors.Is(err, nl.ErrDumpInterrupted) {
		return fmt.Errorf("nexthop dump: %w", unix.EINTR)
	}
	return err
}

// subscribeRouteEvents delivers the namespace's IPv4 route and nexthop notifications on a
// channel that is closed when the subscription dies (the socket overflowed: events were
// lost) or done is closed.
func subscribeRouteEvents(ns *netns.NsHandle, done <-chan struct{}, force bool) (<-chan routeUpdate, error) {
	target := netns.None()
	if ns != nil {
		target = *ns
	}
	s, err := nl.SubscribeAt(target, netns.None(), unix.NETLINK_ROUTE, unix.RTNLGRP_IPV4_ROUTE, unix.RTNLGRP_NEXTHOP)
	if err != nil {
		return nil, fmt.Errorf("subscribe to route events: %w", err)
	}
	if err := s.SetReceiveBufferSize(subscribeBuffer, force); err != nil {
		s.Close()
		return nil, fmt.Errorf("subscribe to route events: receive buffer: %w", err)
	}
	ch := make(chan routeUpdate, eventBuffer)
	go func() {
		<-done
		s.Close()
	}()
	go func() {
		defer close(ch)
		for {
			msgs, from, err := s.Receive()
			if err != nil {
				return
			}
			if from.Pid != nl.PidKernel {
				continue
			}
			for _, m := range msgs {
				u := routeUpdate{Type: m.Header.Type, NlFlags: int(m.Header.Flags & (unix.NLM_F_REPLACE | unix.NLM_F_EXCL | unix.NLM_F_CREATE | unix.NLM_F_APPEND))}
				var ok bool
				switch m.Header.Type {
				case unix.RTM_NEWROUTE, unix.RTM_DELROUTE:
					u.Route, ok = decodeRoute(m.Data)
				case unix.RTM_NEWNEXTHOP, unix.RTM_DELNEXTHOP:
					u.Nexthop, ok = decodeNexthop(m.Data)
				}
				if !ok {
					continue
				}
				select {
				case ch <- u:
				case <-done:
					return
				}
			}
		}
	}()
	return ch, nil
}
