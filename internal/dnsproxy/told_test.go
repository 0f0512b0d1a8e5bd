package dnsproxy

import (
	"fmt"
	"net/netip"
	"slices"
	"testing"
	"time"
)

// TestToldNames: the names a workload was told an address for, unexpired,
// its own and no other workload's; none past the scan bound (the caller only
// loses an early dial).
func TestToldNames(t *testing.T) {
	tl := newTold(DefaultToldNames, DefaultToldAddrs)
	now := time.Unix(1000, 0)
	a, b := netip.MustParseAddr("198.51.100.7"), netip.MustParseAddr("198.51.100.8")
	tl.add(1, []string{"x.test", "y.test"}, []netip.Addr{a}, now, now.Add(time.Minute))
	tl.add(1, []string{"z.test"}, []netip.Addr{b}, now, now.Add(2*time.Minute))
	tl.add(2, []string{"w.test"}, []netip.Addr{a}, now, now.Add(time.Minute))
	for _, c := range []struct {
		workload uint32
		addr     netip.Addr
		at       time.Time
		want     []string
	}{
		{1, a, now, []string{"x.test", "y.test"}},
		{1, b, now, []string{"z.test"}},
		{2, a, now, []string{"w.test"}},
		{2, b, now, nil},
		{3, a, now, nil},
		{1, a, now.Add(time.Minute), nil}, // expired
		{1, b, now.Add(time.Minute), []string{"z.test"}},
	} {
		got := tl.names(c.workload, c.addr, c.at)
		slices.Sort(got)
		if !slices.Equal(got, c.want) {
			t.Errorf("names(%d, %s, +%s) = %v; want %v", c.workload, c.addr, c.at.Sub(now), got, c.want)
		}
	}
	for i := range toldNamesScan {
		tl.add(4, []string{fmt.Sprintf("n%d.test", i)}, []netip.Addr{a}, now, now.Add(time.Minute))
	}
	if got := tl.names(4, a, now); len(got) != toldNamesScan {
		t.Fatalf("%d names at the bound; want %d", len(got), toldNamesScan)
	}
	tl.add(4, []string{"one-more.test"}, []netip.Addr{b}, now, now.Add(time.Minute))
	if got := tl.names(4, a, now); got != nil {
		t.Fatalf("past the scan bound: %d names; want none", len(got))
	}
}
