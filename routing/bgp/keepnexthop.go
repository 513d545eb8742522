package bgp

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/netip"

	api "github.com/osrg/gobgp/v3/api"
)

// Names of the GoBGP objects that implement BGPPeer keepOriginalNextHop.
const (
	keepNextHopSet    = "tabby-keep-original-next-hop"
	keepNextHopPolicy = "tabby-keep-original-next-hop"
)

// applyKeepNextHop keeps GoBGP's export policy in line with the peers that want routes
// learned from others with their original next hop (BGPPeer keepOriginalNextHop). GoBGP v3
// applies export policies globally, with the destination peer as the "neighbor" a
// neighbor-set matches, so one policy serves every such peer: neighbor in the set → next
// hop unchanged. An empty neighbor set would match every peer, so with no such peer there
// is no policy at all. When the set changes, the affected sessions are soft-reset outbound
// so that routes already sent are sent again with the right next hop.
func (s *Speaker) applyKeepNextHop(ctx context.Context) error {
	want := map[netip.Addr]bool{}
	for addr, p := range s.cur.peers {
		if p.KeepOriginalNextHop {
			want[addr] = true
		}
	}
	if maps.Equal(want, s.cur.keepNextHop) {
		return nil
	}
	srv := s.cur.srv
	if len(s.cur.keepNextHop) > 0 {
		err := errors.Join(
			srv.DeletePolicyAssignment(ctx, &api.DeletePolicyAssignmentRequest{Assignment: &api.PolicyAssignment{
				Name: "global", Direction: api.PolicyDirection_EXPORT, Policies: []*api.Policy{{Name: keepNextHopPolicy}},
			}}),
			srv.DeletePolicy(ctx, &api.DeletePolicyRequest{Policy: &api.Policy{Name: keepNextHopPolicy}}),
			srv.DeleteDefinedSet(ctx, &api.DeleteDefinedSetRequest{
				DefinedSet: &api.DefinedSet{DefinedType: api.DefinedType_NEIGHBOR, Name: keepNextHopSet}, All: true,
			}),
		)
		if err != nil {
			return fmt.Errorf("remove the keep-original-next-hop policy: %w", err)
		}
	}
	old := s.cur.keepNextHop
	s.cur.keepNextHop = map[netip.Addr]bool{}
	if len(want) > 0 {
		var list []string
		for _, addr := range sortedAddrs(want) {
			list = append(list, netip.PrefixFrom(addr, addr.BitLen()).String())
		}
		err := srv.AddDefinedSet(ctx, &api.AddDefinedSetRequest{DefinedSet: &api.DefinedSet{
			DefinedType: api.DefinedType_NEIGHBOR, Name: keepNextHopSet, List: list,
		}})
		if err == nil {
			err = srv.AddPolicy(ctx, &api.AddPolicyRequest{Policy: &api.Policy{
				Name: keepNextHopPolicy,
				Statements: []*api.Statement{{
					Name:       keepNextHopPolicy,
					Conditions: &api.Conditions{NeighborSet: &api.MatchSet{Type: api.MatchSet_ANY, Name: keepNextHopSet}},
					Actions:    &api.Actions{RouteAction: api.RouteAction_NONE, Nexthop: &api.NexthopAction{Unchanged: true}},
				}},
			}})
		}
		if err == nil {
			err = srv.AddPolicyAssignment(ctx, &api.AddPolicyAssignmentRequest{Assignment: &api.PolicyAssignment{
				Name: "global", Direction: api.PolicyDirection_EXPORT,
				Policies: []*api.Policy{{Name: keepNextHopPolicy}}, DefaultAction: api.RouteAction_ACCEPT,
			}})
		}
		if err != nil {
			// Undo what was made (each step may not have happened; its error says so and
			// is of no interest), so that the next attempt starts from nothing.
			_ = srv.DeletePolicyAssignment(ctx, &api.DeletePolicyAssignmentRequest{Assignment: &api.PolicyAssignment{
				Name: "global", Direction: api.PolicyDirection_EXPORT, Policies: []*api.Policy{{Name: keepNextHopPolicy}},
			}})
			_ = srv.DeletePolicy(ctx, &api.DeletePolicyRequest{Policy: &api.Policy{Name: keepNextHopPolicy}})
			_ = srv.DeleteDefinedSet(ctx, &api.DeleteDefinedSetRequest{
				DefinedSet: &api.DefinedSet{DefinedType: api.DefinedType_NEIGHBOR, Name: keepNextHopSet}, All: true,
			})
			return fmt.Errorf("install the keep-original-next-hop policy: %w", err)
		}
		s.cur.keepNextHop = want
	}
	var errs []error
	for addr := range symmetricDifference(old, want) {
		if _, ok := s.cur.peers[addr]; !ok {
			continue
		}
		err := srv.ResetPeer(ctx, &api.ResetPeerRequest{Address: addr.String(), Soft: true, Direction: api.ResetPeerRequest_OUT})
		if err != nil {
			errs = append(errs, fmt.Errorf("resend routes to %s: %w", addr, err))
		}
	}
	return errors.Join(errs...)
}

func symmetricDifference(a, b map[netip.Addr]bool) map[netip.Addr]bool {
	out := map[netip.Addr]bool{}
	for k := range a {
		if !b[k] {
			out[k] = true
		}
	}
	for k := range b {
		if !a[k] {
			out[k] = true
		}
	}
	return out
}
