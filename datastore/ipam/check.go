package ipam

import (
	"context"
	"fmt"
	"maps"
	"net/netip"
	"slices"

	"github.com/tabby-net/tabby/datastore"
)

// Report is what Check found. Everything is read at one revision; an assignment or release
// in progress at that moment can show up as a handle that counts one address more than its
// block holds.
type Report struct {
	Revision int64
	// Totals.
	Blocks, Allocations, Handles, Affinities int

	// Leaks are allocations their handle does not account for: no handle, a handle that
	// does not exist, or one that counts fewer addresses in the block. ReleaseByHandle
	// would never free them.
	Leaks []Leak
	// OrphanHandles count more addresses in a block than the block holds for them.
	OrphanHandles []HandleMismatch
	// AffinitiesWithoutBlock point at a block that does not exist.
	AffinitiesWithoutBlock []AffinityRef
	// DoubleClaims are blocks whose own affinity and the affinity keys disagree.
	DoubleClaims []DoubleClaim
	// Pending lists affinities that are pending or pendingDeletion: a claim or release in
	// progress, or one whose claimer died (CleanupPending repairs those).
	Pending []AffinityRef
	// Unreadable lists documents that could not be decoded.
	Unreadable []Unreadable
}

// Leak is one allocation its handle does not account for.
type Leak struct {
	IP     netip.Addr
	Block  netip.Prefix
	Handle string
	Attrs  map[string]string
	Reason string
}

// HandleMismatch is a handle whose count for a block differs from what the block holds.
type HandleMismatch struct {
	Handle  string
	Block   netip.Prefix
	Counted int
	Found   int
}

// AffinityRef is one affinity key.
type AffinityRef struct {
	Host  string
	Block netip.Prefix
	State datastore.AffinityState
}

// DoubleClaim is a block whose ownership is ambiguous.
type DoubleClaim struct {
	Block netip.Prefix
	// BlockHost is the host the block itself names ("" for none).
	BlockHost string
	// Affinities are every affinity key for the block.
	Affinities []AffinityRef
	Reason     string
}

// Problems counts everything the report flags.
func (r Report) Problems() int {
	return len(r.Leaks) + len(r.OrphanHandles) + len(r.AffinitiesWithoutBlock) + len(r.DoubleClaims) +
		len(r.Pending) + len(r.Unreadable)
}

// OK reports whether nothing is wrong.
func (r Report) OK() bool { return r.Problems() == 0 }

// Check cross-checks blocks, affinities and handles.
func (a *Allocator) Check(ctx context.Context) (Report, error) {
	st, err := a.readState(ctx)
	if err != nil {
		return Report{}, err
	}
	r := Report{Revision: st.rev, Blocks: len(st.blocks), Handles: len(st.handles), Affinities: len(st.affinities), Unreadable: st.unreadable}

	blocks := map[netip.Prefix]storedBlock{}
	for _, sb := range st.blocks {
		blocks[sb.cidr] = sb
	}
	affsByBlock := map[netip.Prefix][]AffinityRef{}
	for _, sa := range st.affinities {
		ref := AffinityRef{Host: sa.host, Block: sa.cidr, State: sa.state()}
		affsByBlock[sa.cidr] = append(affsByBlock[sa.cidr], ref)
		if ref.State != datastore.AffinityConfirmed {
			r.Pending = append(r.Pending, ref)
		}
		if _, ok := blocks[sa.cidr]; !ok {
			r.AffinitiesWithoutBlock = append(r.AffinitiesWithoutBlock, ref)
		}
	}

	// Allocations against handles, block by block.
	for _, sb := range st.blocks {
		counts := countsByHandle(sb.b)
		for _, n := range counts {
			r.Allocations += n
		}
		for _, h := range slices.Sorted(maps.Keys(counts)) {
			found := counts[h]
			counted := 0
			reason := ""
			switch sh, ok := st.handles[h]; {
			case h == "":
				reason = "allocation has no handle"
			case !ok:
				reason = fmt.Sprintf("handle %s does not exist", h)
			default:
				counted = sh.h.Block[sb.cidr.String()]
				if counted < found {
					reason = fmt.Sprintf("handle %s counts %d of the %d addresses it holds in this block", h, counted, found)
				}
			}
			if reason == "" {
				continue
			}
			for _, o := range ordinalsOfHandle(sb.b, h) {
				at := sb.b.Attributes[*sb.b.Allocations[o]]
				r.Leaks = append(r.Leaks, Leak{IP: ordinalAddr(sb.cidr, o), Block: sb.cidr, Handle: h, Attrs: at.Secondary, Reason: reason})
			}
		}
		// Affinity agreement.
		host := sb.b.AffinityHost()
		refs := affsByBlock[sb.cidr]
		var others []string
		hostHasKey := false
		for _, ref := range refs {
			if ref.Host == host {
				hostHasKey = true
			} else {
				others = append(others, ref.Host)
			}
		}
		switch {
		case len(others) > 0 && host != "":
			r.DoubleClaims = append(r.DoubleClaims, DoubleClaim{Block: sb.cidr, BlockHost: host, Affinities: refs,
				Reason: fmt.Sprintf("block is affine to %s but %v also hold an affinity to it", host, others)})
		case len(others) > 0:
			r.DoubleClaims = append(r.DoubleClaims, DoubleClaim{Block: sb.cidr, Affinities: refs,
				Reason: fmt.Sprintf("block has no affinity but %v hold an affinity to it", others)})
		case host != "" && !hostHasKey:
			r.DoubleClaims = append(r.DoubleClaims, DoubleClaim{Block: sb.cidr, BlockHost: host,
				Reason: fmt.Sprintf("block is affine to %s but %s has no affinity key for it", host, host)})
		}
	}

	// Handles against allocations.
	for _, id := range slices.Sorted(maps.Keys(st.handles)) {
		sh := st.handles[id]
		for _, cidr := range handleBlocks(sh, a) {
			counted := sh.h.Block[cidr.String()]
			found := 0
			if sb, ok := blocks[cidr]; ok {
				found = len(ordinalsOfHandle(sb.b, id))
			}
			if counted > found {
				r.OrphanHandles = append(r.OrphanHandles, HandleMismatch{Handle: id, Block: cidr, Counted: counted, Found: found})
			}
		}
	}
	return r, nil
}
