package datastore

import (
	"encoding/json"
	"fmt"
)

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

// IPAMConfig is the cluster-wide IPAM configuration, as Calico stores it at
// <root>/ipam/v2/config (libcalico-go's model.IPAMConfig: omitempty fields, so a field
// absent from a stored document is false or 0).
type IPAMConfig struct {
	StrictAffinity     bool `json:"strict_affinity,omitempty"`
	AutoAllocateBlocks bool `json:"auto_allocate_blocks,omitempty"`
	// MaxBlocksPerHost limits the blocks affine to one node; 0 means no limit, as in Calico.
	MaxBlocksPerHost int `json:"maxBlocksPerHost,omitempty"`
}

// DefaultIPAMConfig is the configuration in force when none is stored: what Calico's IPAM
// creates on first use.
func DefaultIPAMConfig() IPAMConfig {
	return IPAMConfig{StrictAffinity: false, AutoAllocateBlocks: true, MaxBlocksPerHost: 0}
}

// BlockLimitReached reports whether a node that has owned blocks may claim no more.
func (c IPAMConfig) BlockLimitReached(owned int) bool {
	return c.MaxBlocksPerHost > 0 && owned >= c.MaxBlocksPerHost
}

// DecodeIPAMConfig reads the document at the IPAM config key as Calico reads it: no
// document (an empty value) is DefaultIPAMConfig; a stored document is taken field by field, a
// field it leaves out being false or 0. A negative maxBlocksPerHost is refused.
func DecodeIPAMConfig(value []byte) (IPAMConfig, error) {
	if len(value) == 0 {
		return DefaultIPAMConfig(), nil
	}
	var cfg IPAMConfig
	if err := json.Unmarshal(value, &cfg); err != nil {
		return IPAMConfig{}, fmt.Errorf("IPAM config: %w", err)
	}
	if cfg.MaxBlocksPerHost < 0 {
		return IPAMConfig{}, fmt.Errorf("IPAM config: maxBlocksPerHost %d is negative", cfg.MaxBlocksPerHost)
	}
	return cfg, nil
}
