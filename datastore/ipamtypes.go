package datastore

// The IPAM records, stored under <root>/ipam/v2 with Calico's JSON field names (SPEC §2).

// AllocationBlock is one block of a pool (a /26 by default) and the state of each of its
// addresses. Allocations[i] is an index into Attributes, or nil when ordinal i is free;
// Unallocated is the FIFO of free ordinals.
type AllocationBlock struct {
	CIDR                        string                `json:"cidr"`
	Affinity                    *string               `json:"affinity"`
	StrictAffinity              bool                  `json:"strictAffinity"`
	Allocations                 []*int                `json:"allocations"`
	Unallocated                 []int                 `json:"unallocated"`
	Attributes                  []AllocationAttribute `json:"attributes"`
	Deleted                     bool                  `json:"deleted"`
	SequenceNumber              uint64                `json:"sequenceNumber"`
	SequenceNumberForAllocation map[string]uint64     `json:"sequenceNumberForAllocation"`
}

// AllocationAttribute says who holds an allocation: its handle, and free-form secondary
// attributes; "node" names the node that really uses the address (it differs from the
// block's affine host for borrowed addresses), "type" marks tunnel addresses.
type AllocationAttribute struct {
	HandleID  *string           `json:"handle_id"`
	Secondary map[string]string `json:"secondary"`
}

// Affinity prefix of AllocationBlock.Affinity ("host:<node>").
const AffinityHostPrefix = "host:"

// AffinityHost returns the node a block is affine to, or "" when it has no host affinity.
func (b *AllocationBlock) AffinityHost() string {
	if b == nil || b.Affinity == nil {
		return ""
	}
	if len(*b.Affinity) > len(AffinityHostPrefix) && (*b.Affinity)[:len(AffinityHostPrefix)] == AffinityHostPrefix {
		return (*b.Affinity)[len(AffinityHostPrefix):]
	}
	return ""
}

// AffinityState is the state of a block affinity.
type AffinityState string

const (
	AffinityConfirmed       AffinityState = "confirmed"
	AffinityPending         AffinityState = "pending"
	AffinityPendingDeletion AffinityState = "pendingDeletion"
)

// BlockAffinity is the value at <root>/ipam/v2/host/<node>/ipv4/block/<net>-<len>.
// An empty State means confirmed (older Calico versions stored an empty value).
type BlockAffinity struct {
	State   AffinityState `json:"state"`
	Deleted bool          `json:"deleted"`
}

// Confirmed reports whether the affinity is in force. Pending ones count as absent.
func (a BlockAffinity) Confirmed() bool {
	return !a.Deleted && (a.State == AffinityConfirmed || a.State == "")
}

// IPAMHandle counts, per block CIDR, the addresses one handle holds.
type IPAMHandle struct {
	Block   map[string]int `json:"block"`
	Deleted bool           `json:"deleted"`
}

// IPAMConfig is the cluster-wide IPAM configuration.
type IPAMConfig struct {
	StrictAffinity     bool `json:"strict_affinity"`
	AutoAllocateBlocks bool `json:"auto_allocate_blocks"`
	MaxBlocksPerHost   int  `json:"maxBlocksPerHost"`
}

// DefaultMaxBlocksPerHost is the per-host block limit when the config leaves it at 0.
const DefaultMaxBlocksPerHost = 20

// DefaultIPAMConfig is the configuration in force when none is stored.
func DefaultIPAMConfig() IPAMConfig {
	return IPAMConfig{StrictAffinity: false, AutoAllocateBlocks: true, MaxBlocksPerHost: DefaultMaxBlocksPerHost}
}
