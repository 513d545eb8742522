// Package ipam assigns and releases workload and tunnel addresses with Calico's block
// protocol, on Calico's etcd layout (SPEC §2), so that tabby and (etcd-mode) calicoctl can
// work on the same data.
//
// # Model
//
// A pool is cut into blocks (/26 by default). A node claims whole blocks — the block key is
// created with a compare-and-swap, so a block has at most one owner ever — and hands out
// their addresses to its workloads; routing then needs one route per block, not per
// workload. Each block keeps, per address, an index into its attribute list (handle and
// secondary attributes) or null, plus a FIFO of free ordinals: allocation takes the front,
// release appends to the back, so a freed address is the last one reused. A handle
// document counts, per block, the addresses one holder (a container, a tunnel device) has,
// so that the holder can release everything by handle without scanning the blocks.
//
// Every write is a compare-and-swap against the revision the writer read, retried a bounded
// number of times after a re-read. Nothing is cached between calls.
//
// # Write order and crash windows
//
// A step of this protocol writes one key at a time, as Calico does (its Kubernetes
// datastore has no multi-key transactions, and calicoctl in etcd mode writes this way).
// The order of the writes is chosen so that any prefix of a step, which is what a crash or
// a context cancelled between two writes leaves behind, is harmless and is reported by
// Check:
//
//   - Assign: handle count +1, then the block. A crash between leaves a handle counting an
//     address its block does not hold (Check: orphan handle). It never leaves an allocation
//     that no handle counts, which would leak forever. The block write is conditional on the
//     handle's revision too, so a release or repair of the handle that slipped in between
//     makes the block write fail instead of creating such a leak. A refused block write takes
//     the handle count back; a block write whose outcome is unknown (context ended,
//     connection lost) is settled by reading the block again.
//   - Release: the block first, then handle count −n. A crash between leaves, again, a
//     handle that overcounts; the next ReleaseByHandle of that handle drops the excess.
//   - Claim a block: pending affinity, block create, confirm. A crash leaves a pending
//     affinity, to a missing block or to the host's own block. Pending affinities do not
//     count for routing; the host's next assignment completes them (Calico's
//     getBlockFromAffinity), and CleanupPending completes or removes them for hosts that
//     never come back.
//   - Release a block: affinity pendingDeletion, delete the block (or clear its affinity when
//     it still holds addresses), delete the affinity. A crash leaves a pendingDeletion
//     affinity, completed by the same two mechanisms. If the block write is refused because
//     an assignment slipped in, the affinity is put back to confirmed.
//
// Duplicates are impossible in every window: an address is taken only by a block write
// conditional on the block's revision, and a block is owned only through its create.
//
// # Concurrency
//
// An Allocator serializes the assignments of one node (Calico's CNI plugin takes a host
// lock for the same reason: a node's concurrent requests all want the same block). Across
// Allocators, processes and hosts, the compare-and-swaps keep the data consistent.
package ipam
