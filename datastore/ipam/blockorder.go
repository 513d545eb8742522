package ipam

import (
	"hash/fnv"
	"iter"
	"math/rand/v2"
	"net/netip"
)

// blockCandidates yields every block CIDR of a pool exactly once, in a pseudo-random order
// seeded from the host name.
//
// Why seeded from the host: two hosts starting at the same moment look at different blocks
// first and rarely collide, while one host asks for the same blocks in the same order every
// time, so its concurrent requests converge on one block instead of claiming several
// (Calico's randomBlockGenerator does the same with an FNV hash of the hostname).
//
// The walk is start + i*stride modulo the number of blocks: the number of blocks is a power
// of two and the stride is odd, so the walk is a full cycle that needs no memory, even for a
// /8 pool of /26 blocks (262,144 of them).
func blockCandidates(pool netip.Prefix, blockSize int, host string) iter.Seq[netip.Prefix] {
	return func(yield func(netip.Prefix) bool) {
		if blockSize < pool.Bits() || blockSize > 32 {
			return
		}
		n := uint64(1) << (blockSize - pool.Bits())
		h := fnv.New64a()
		h.Write([]byte(host))
		r := rand.New(rand.NewPCG(h.Sum64(), uint64(blockSize)<<32|uint64(pool.Bits())))
		start := r.Uint64N(n)
		stride := uint64(1)
		if n > 2 {
			stride = r.Uint64N(n/2)*2 + 1
		}
		base := pool.Masked().Addr().As4()
		bv := uint64(base[0])<<24 | uint64(base[1])<<16 | uint64(base[2])<<8 | uint64(base[3])
		step := uint64(1) << (32 - blockSize)
		for i := range n {
			idx := (start + i*stride) % n
			v := bv + idx*step
			addr := netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
			if !yield(netip.PrefixFrom(addr, blockSize)) {
				return
			}
		}
	}
}
