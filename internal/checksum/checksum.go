// Package checksum computes the Internet checksum (RFC 1071) of the IPv4 headers and ICMP
// messages that tabbyctl's probe and the benchmarks' pinger build by hand.
package checksum

import "encoding/binary"

// Internet returns the ones' complement of the ones' complement sum of b's 16-bit words
// (an odd last byte is padded with zero). Computed over a header whose checksum field is
// zero it is the value to put there; over a header with its checksum in place it is 0
// when the header is intact.
func Internet(b []byte) uint16 {
	var sum uint32
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	if len(b)%2 == 1 {
		sum += uint32(b[len(b)-1]) << 8
	}
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}
