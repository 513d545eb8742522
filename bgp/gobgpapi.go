package bgp

import (
	"fmt"
	"net/netip"
	"time"

	api "github.com/osrg/gobgp/v3/api"
	"github.com/osrg/gobgp/v3/pkg/config/oc"
	"google.golang.org/protobuf/types/known/anypb"
)

// Translation between this package's types and GoBGP v3's API messages.

// ipv4Unicast is the one address family tabby speaks, named explicitly everywhere: GoBGP
// otherwise enables every family it knows.
func ipv4Unicast() *api.Family {
	return &api.Family{Afi: api.Family_AFI_IP, Safi: api.Family_SAFI_UNICAST}
}

// Timers are the BGP session timers (SPEC §7). Zero fields take the defaults.
type Timers struct {
	// ConnectRetry is the pause between connection attempts (GoBGP's default, 120 s, is
	// far too long for a node that just booted).
	ConnectRetry time.Duration
	// HoldTime is how long a silent peer is kept; KeepaliveInterval how often we speak.
	HoldTime          time.Duration
	KeepaliveInterval time.Duration
}

// DefaultTimers are SPEC §7's: connect retry 5 s, hold 90 s, keepalive 30 s.
func DefaultTimers() Timers {
	return Timers{ConnectRetry: 5 * time.Second, HoldTime: 90 * time.Second, KeepaliveInterval: 30 * time.Second}
}

func (t Timers) withDefaults() Timers {
	d := DefaultTimers()
	if t.ConnectRetry <= 0 {
		t.ConnectRetry = d.ConnectRetry
	}
	if t.HoldTime <= 0 {
		t.HoldTime = d.HoldTime
	}
	if t.KeepaliveInterval <= 0 {
		t.KeepaliveInterval = min(d.KeepaliveInterval, t.HoldTime/3)
	}
	return t
}

// seconds rounds a duration to whole seconds, at least 1: BGP timers are in seconds.
func seconds(d time.Duration) uint64 {
	s := uint64((d + time.Second/2) / time.Second)
	return max(s, 1)
}

func apiGlobal(g Global) *api.Global {
	port := int32(g.ListenPort)
	if port == 0 {
		port = DefaultListenPort
	}
	return &api.Global{
		Asn:        g.ASN,
		RouterId:   g.RouterID.String(),
		ListenPort: port,
		// IPv4 only: a "::" listener fails in a namespace without IPv6.
		ListenAddresses: []string{"0.0.0.0"},
		// Families are indexes into oc.IntToAfiSafiTypeMap, not RouteFamily values.
		Families: []uint32{uint32(oc.AfiSafiTypeToIntMap[oc.AFI_SAFI_TYPE_IPV4_UNICAST])},
	}
}

// grSettings are the graceful-restart times the speaker announces.
type grSettings struct {
	restartTime  time.Duration // default for peers without their own
	deferralTime time.Duration
}

// apiPeer builds GoBGP's neighbor configuration for one session. restarting sets the
// Restart State bit of the graceful-restart capability: this process is a restarting
// tabbyd, and the peer should keep our routes until we have sent End-of-RIB.
func apiPeer(p Peer, g Global, t Timers, gr grSettings, restarting bool) *api.Peer {
	t = t.withDefaults()
	restart := p.RestartTime
	if restart <= 0 {
		restart = gr.restartTime
	}
	restart = min(restart, maxRestartTime)
	port := uint32(p.Port)
	if port == 0 {
		port = DefaultListenPort
	}
	ebgp := p.ASN != g.ASN
	out := &api.Peer{
		Conf: &api.PeerConf{
			NeighborAddress: p.Address.String(),
			PeerAsn:         p.ASN,
			AuthPassword:    p.Password.Reveal(),
			Description:     p.Source,
		},
		Timers: &api.Timers{Config: &api.TimersConfig{
			ConnectRetry:      seconds(t.ConnectRetry),
			HoldTime:          seconds(t.HoldTime),
			KeepaliveInterval: seconds(t.KeepaliveInterval),
		}},
		Transport: &api.Transport{
			// Sessions come from the node address: peers (and the mesh's passive side)
			// recognise us by it, and it is the next hop of what we originate.
			LocalAddress: g.RouterID.String(),
			PassiveMode:  p.Passive,
			RemotePort:   port,
		},
		GracefulRestart: &api.GracefulRestart{
			Enabled:             true,
			RestartTime:         uint32(seconds(restart)),
			DeferralTime:        uint32(seconds(gr.deferralTime)),
			NotificationEnabled: true,
			LocalRestarting:     restarting,
		},
		AfiSafis: []*api.AfiSafi{{
			Config:            &api.AfiSafiConfig{Family: ipv4Unicast(), Enabled: true},
			MpGracefulRestart: &api.MpGracefulRestart{Config: &api.MpGracefulRestartConfig{Enabled: true}},
		}},
	}
	if p.RouteReflectorClient {
		out.RouteReflector = &api.RouteReflector{RouteReflectorClient: true, RouteReflectorClusterId: p.ClusterID}
	}
	if ebgp {
		// As Calico configures BIRD: eBGP peers may be more than one hop away (a ToR
		// reached through the host's gateway).
		out.EbgpMultihop = &api.EbgpMultihop{Enabled: true, MultihopTtl: 255}
	}
	return out
}

// apiPath builds the path for a prefix this node originates, next hop = the node address.
func apiPath(prefix netip.Prefix, nextHop netip.Addr) (*api.Path, error) {
	nlri, err := anypb.New(&api.IPAddressPrefix{Prefix: prefix.Addr().String(), PrefixLen: uint32(prefix.Bits())})
	if err != nil {
		return nil, fmt.Errorf("encode prefix %s: %w", prefix, err)
	}
	origin, err := anypb.New(&api.OriginAttribute{Origin: 0}) // IGP, as BIRD originates
	if err != nil {
		return nil, fmt.Errorf("encode origin: %w", err)
	}
	nh, err := anypb.New(&api.NextHopAttribute{NextHop: nextHop.String()})
	if err != nil {
		return nil, fmt.Errorf("encode next hop: %w", err)
	}
	return &api.Path{Family: ipv4Unicast(), Nlri: nlri, Pattrs: []*anypb.Any{origin, nh}}, nil
}

// pathRoute reads the prefix, next hop and source of a path from GoBGP. local reports a
// path this node originated (it has no neighbour).
func pathRoute(p *api.Path) (r LearnedRoute, local bool, err error) {
	if p.GetNlri() == nil {
		return LearnedRoute{}, false, fmt.Errorf("path without NLRI")
	}
	var nlri api.IPAddressPrefix
	if err := p.GetNlri().UnmarshalTo(&nlri); err != nil {
		return LearnedRoute{}, false, fmt.Errorf("path NLRI is not an IP prefix: %w", err)
	}
	addr, err := netip.ParseAddr(nlri.Prefix)
	if err != nil || !addr.Is4() || nlri.PrefixLen > 32 {
		return LearnedRoute{}, false, fmt.Errorf("path NLRI %s/%d is not an IPv4 prefix", nlri.Prefix, nlri.PrefixLen)
	}
	r.Prefix = netip.PrefixFrom(addr, int(nlri.PrefixLen)).Masked()
	for _, a := range p.GetPattrs() {
		var nh api.NextHopAttribute
		if a.MessageIs(&nh) {
			if err := a.UnmarshalTo(&nh); err == nil {
				r.NextHop, _ = netip.ParseAddr(nh.NextHop)
			}
			continue
		}
		var mp api.MpReachNLRIAttribute
		if a.MessageIs(&mp) {
			if err := a.UnmarshalTo(&mp); err == nil && len(mp.NextHops) > 0 {
				r.NextHop, _ = netip.ParseAddr(mp.NextHops[0])
			}
		}
	}
	r.Stale = p.GetStale()
	peer, err := netip.ParseAddr(p.GetNeighborIp())
	if err != nil || peer.IsUnspecified() {
		return r, true, nil
	}
	r.Peer = peer
	return r, false, nil
}
