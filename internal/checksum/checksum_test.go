package checksum

import (
	"encoding/binary"
	"testing"
)

func TestInternet(t *testing.T) {
	// The IPv4 header of RFC 1071's usual worked example (Wikipedia's "IPv4 header
	// checksum"), checksum field zeroed: 0xb861 goes there.
	hdr := []byte{
		0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11,
		0x00, 0x00, 0xc0, 0xa8, 0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
	}
	if got := Internet(hdr); got != 0xb861 {
		t.Fatalf("Internet(header) = %#04x, want 0xb861", got)
	}
	binary.BigEndian.PutUint16(hdr[10:], 0xb861)
	if got := Internet(hdr); got != 0 {
		t.Errorf("Internet(header with its checksum) = %#04x, want 0", got)
	}
	// An odd length pads the last byte with zero: {0x01} sums to 0x0100.
	if got := Internet([]byte{0x01}); got != ^uint16(0x0100) {
		t.Errorf("Internet({1}) = %#04x, want %#04x", got, ^uint16(0x0100))
	}
	// Carries fold back in: 0xffff + 0x0001 = 0x1_0000 → 0x0001.
	if got := Internet([]byte{0xff, 0xff, 0x00, 0x01}); got != ^uint16(0x0001) {
		t.Errorf("Internet(carry) = %#04x, want %#04x", got, ^uint16(0x0001))
	}
}
