package hushspec

import (
	"fmt"
	"time"
	// The time-zone database is compiled in, so that whether a `when`
	// timezone is "an IANA identifier known to the engine" (core 3.13) does
	// not depend on the machine the agent runs on: a policy valid on one
	// node is valid on every node.
	_ "time/tzdata"
)

// loadZone resolves a `time_window.timezone`: a fixed offset +HH or +HH:MM
// (core 3.13 grammar) or an IANA identifier. "Local" names the machine's
// zone, not an IANA one, and is refused.
func loadZone(s string) (*time.Location, error) {
	if s == "" || s == "Local" {
		return nil, fmt.Errorf("not a time zone: %q", s)
	}
	if s[0] == '+' || s[0] == '-' {
		off, ok := parseOffset(s)
		if !ok {
			return nil, fmt.Errorf("not a fixed offset: %q", s)
		}
		return time.FixedZone(s, off), nil
	}
	return time.LoadLocation(s)
}

// parseOffset reads ("+" / "-") HH [":" MM] with 00 <= HH <= 23 and
// 00 <= MM <= 59, as seconds east of UTC.
func parseOffset(s string) (int, bool) {
	if len(s) != 3 && len(s) != 6 {
		return 0, false
	}
	digit := func(c byte) bool { return c >= '0' && c <= '9' }
	if !digit(s[1]) || !digit(s[2]) {
		return 0, false
	}
	h, m := int(s[1]-'0')*10+int(s[2]-'0'), 0
	if len(s) == 6 {
		if s[3] != ':' || !digit(s[4]) || !digit(s[5]) {
			return 0, false
		}
		m = int(s[4]-'0')*10 + int(s[5]-'0')
	}
	if h > 23 || m > 59 {
		return 0, false
	}
	off := h*3600 + m*60
	if s[0] == '-' {
		off = -off
	}
	return off, true
}
