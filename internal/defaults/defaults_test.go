package defaults

import (
	"testing"
	"time"
)

func TestSetFillsOnlyUnsetFields(t *testing.T) {
	cases := []struct {
		in, want int
	}{{0, 7}, {-3, 7}, {1, 1}, {9, 9}}
	for _, c := range cases {
		v := c.in
		Set(&v, 7)
		if v != c.want {
			t.Errorf("Set(%d, 7) = %d, want %d", c.in, v, c.want)
		}
	}
	d := time.Duration(0)
	Set(&d, time.Second)
	if d != time.Second {
		t.Errorf("duration: got %s, want 1s", d)
	}
	r := 2.5
	Set(&r, 100)
	if r != 2.5 {
		t.Errorf("a set rate changed: %v", r)
	}
}
