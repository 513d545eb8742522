package ipprefix

import (
	"net/netip"
	"slices"
	"testing"
)

func TestCompareOrdersByAddressThenLength(t *testing.T) {
	in := []netip.Prefix{
		netip.MustParsePrefix("10.0.1.0/24"),
		netip.MustParsePrefix("10.0.0.0/26"),
		netip.MustParsePrefix("10.0.0.0/16"),
		netip.MustParsePrefix("10.0.0.64/26"),
		netip.MustParsePrefix("9.255.0.0/16"),
	}
	want := []netip.Prefix{
		netip.MustParsePrefix("9.255.0.0/16"),
		netip.MustParsePrefix("10.0.0.0/16"),
		netip.MustParsePrefix("10.0.0.0/26"),
		netip.MustParsePrefix("10.0.0.64/26"),
		netip.MustParsePrefix("10.0.1.0/24"),
	}
	got := slices.SortedFunc(slices.Values(in), Compare)
	if !slices.Equal(got, want) {
		t.Errorf("sorted:\n got %v\nwant %v", got, want)
	}
	p := netip.MustParsePrefix("10.0.0.0/26")
	if Compare(p, p) != 0 {
		t.Errorf("Compare(%v, %v) != 0", p, p)
	}
}
