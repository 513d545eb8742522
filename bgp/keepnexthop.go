package bgp

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"strings"

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
		if err := removeKeepNextHop(ctx, srv); err != nil {
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
			_ = removeKeepNextHop(ctx, srv)
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

// removeKeepNextHop deletes the policy assignment, the policy with its statement, and the
// neighbor set, in that order: each is in use by the one before. A step whose object is
// already gone is not an error, so that a half-installed policy can always be removed.
// DeletePolicy needs All: without it GoBGP removes only the statements named in the
// request (none) and keeps the policy, whose statement keeps the set in use.
func removeKeepNextHop(ctx context.Context, srv gobgpPolicies) error {
	steps := []struct {
		what string
		do   func() error
	}{
		{"assignment", func() error {
			return srv.DeletePolicyAssignment(ctx, &api.DeletePolicyAssignmentRequest{Assignment: &api.PolicyAssignment{
				Name: "global", Direction: api.PolicyDirection_EXPORT, Policies: []*api.Policy{{Name: keepNextHopPolicy}},
			}})
		}},
		{"policy", func() error {
			return srv.DeletePolicy(ctx, &api.DeletePolicyRequest{Policy: &api.Policy{Name: keepNextHopPolicy}, All: true})
		}},
		{"neighbor set", func() error {
			return srv.DeleteDefinedSet(ctx, &api.DeleteDefinedSetRequest{
				DefinedSet: &api.DefinedSet{DefinedType: api.DefinedType_NEIGHBOR, Name: keepNextHopSet}, All: true,
			})
		}},
	}
	for _, st := range steps {
		if err := st.do(); err != nil && !strings.Contains(err.Error(), "not found") {
			return fmt.Errorf("delete %s: %w", st.what, err)
		}
	}
	return nil
}

// gobgpPolicies is the part of GoBGP's server that manages policies.
type gobgpPolicies interface {
	DeletePolicyAssignment(context.Context, *api.DeletePolicyAssignmentRequest) error
	DeletePolicy(context.Context, *api.DeletePolicyRequest) error
	DeleteDefinedSet(context.Context, *api.DeleteDefinedSetRequest) error
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
