package hushspec

import (
	"math"
	"strings"
	"time"
)

// Conditional rule blocks (core 3.13). A condition is compiled once from the
// validated tree; evaluating it reads the action's runtime context and the
// effective posture state and allocates nothing unless a time window has to
// parse current_time.

// tri is a condition's value: true, false or unevaluable. Only false makes
// a block inert; unevaluable leaves it active, since an unevaluable
// condition must never switch a control off.
type tri uint8

const (
	triTrue tri = iota
	triFalse
	triUnknown
)

// and combines the members of all_of, and the fields of one condition
// object: false wins, then unevaluable.
func and(a, b tri) tri {
	if a == triFalse || b == triFalse {
		return triFalse
	}
	if a == triUnknown || b == triUnknown {
		return triUnknown
	}
	return triTrue
}

type condition struct {
	window     *timeWindow
	context    []contextKey // nil: no context predicate
	allOf      []*condition
	anyOf      []*condition
	not        *condition
	capability string
	rate       *rateCond
}

type timeWindow struct {
	start, end int // minutes after midnight
	loc        *time.Location
	days       uint8 // bit per time.Weekday; 0 is every day
}

type rateCond struct {
	counter   string
	threshold int64
	gte       bool
}

// compileCondition builds a condition from a validated `when` tree.
func compileCondition(m map[string]any) *condition {
	if m == nil {
		return nil
	}
	c := &condition{capability: str(m, "capability", "")}
	if tw := sub(m, "time_window"); tw != nil {
		w := &timeWindow{}
		w.start, _ = parseClock(str(tw, "start", ""))
		w.end, _ = parseClock(str(tw, "end", ""))
		w.loc, _ = loadZone(str(tw, "timezone", "UTC"))
		for _, d := range strs(tw, "days") {
			w.days |= 1 << dayIndex[strings.ToLower(d)]
		}
		c.window = w
	}
	if ctx := sub(m, "context"); ctx != nil {
		c.context = make([]contextKey, 0, len(ctx))
		for k, v := range ctx {
			c.context = append(c.context, contextKey{path: strings.Split(k, "."), want: v})
		}
	}
	for _, k := range []string{"all_of", "any_of"} {
		l, _ := m[k].([]any)
		for _, x := range l {
			sc := compileCondition(x.(map[string]any))
			if k == "all_of" {
				c.allOf = append(c.allOf, sc)
			} else {
				c.anyOf = append(c.anyOf, sc)
			}
		}
	}
	if n := sub(m, "not"); n != nil {
		c.not = compileCondition(n)
	}
	if r := sub(m, "rate"); r != nil {
		c.rate = &rateCond{counter: str(r, "counter", ""), threshold: integer(r, "threshold", 0), gte: str(r, "comparison", "") == "gte"}
	}
	return c
}

var dayIndex = map[string]time.Weekday{"sun": time.Sunday, "mon": time.Monday, "tue": time.Tuesday,
	"wed": time.Wednesday, "thu": time.Thursday, "fri": time.Friday, "sat": time.Saturday}

// condEnv is what conditions read for one evaluation.
type condEnv struct {
	ctx        map[string]any
	posture    *posture // nil: the policy has no posture extension
	state      string   // the effective posture state
	now        func() time.Time
	haveTime   bool
	when       time.Time
	timeFailed bool
}

func (e *condEnv) currentTime() (time.Time, bool) {
	if e.haveTime || e.timeFailed {
		return e.when, !e.timeFailed
	}
	if s, ok := e.ctx["current_time"]; ok {
		str, _ := s.(string)
		t, ok := parseCurrentTime(str)
		if !ok {
			e.timeFailed = true
			return time.Time{}, false
		}
		e.when, e.haveTime = t, true
		return t, true
	}
	e.when, e.haveTime = e.now(), true
	return e.when, true
}

func (c *condition) eval(e *condEnv) tri {
	v := triTrue
	if c.window != nil {
		v = and(v, c.window.eval(e))
	}
	if c.context != nil {
		v = and(v, evalContext(c.context, e.ctx))
	}
	for _, s := range c.allOf {
		v = and(v, s.eval(e))
	}
	if len(c.anyOf) > 0 { // an empty any_of is treated as absent
		a := triFalse
		for _, s := range c.anyOf {
			switch s.eval(e) {
			case triTrue:
				a = triTrue
			case triUnknown:
				if a == triFalse {
					a = triUnknown
				}
			}
			if a == triTrue {
				break
			}
		}
		v = and(v, a)
	}
	if c.not != nil {
		switch c.not.eval(e) {
		case triTrue:
			v = and(v, triFalse)
		case triUnknown:
			v = and(v, triUnknown)
		}
	}
	if c.capability != "" {
		switch {
		case e.posture == nil:
			v = and(v, triUnknown)
		case e.posture.grants(e.state, c.capability):
		default:
			v = and(v, triFalse)
		}
	}
	if c.rate != nil {
		v = and(v, c.rate.eval(e.ctx))
	}
	return v
}

func (w *timeWindow) eval(e *condEnv) tri {
	now, ok := e.currentTime()
	if !ok || w.loc == nil {
		return triUnknown
	}
	local := now.In(w.loc)
	if y := local.Year(); y < 1 || y > 9999 {
		return triUnknown
	}
	t := local.Hour()*60 + local.Minute()
	day := local.Weekday()
	in := true
	switch {
	case w.start == w.end:
	case w.start < w.end:
		in = t >= w.start && t < w.end
	default: // wraps midnight; the part before end belongs to the day before
		in = t >= w.start || t < w.end
		if t < w.end {
			day = (day + 6) % 7
		}
	}
	if !in {
		return triFalse
	}
	if w.days != 0 && w.days&(1<<day) == 0 {
		return triFalse
	}
	return triTrue
}

// parseCurrentTime reads the portable RFC 3339 grammar of core 3.13, and
// the same date-time with no offset as UTC.
func parseCurrentTime(s string) (time.Time, bool) {
	if len(s) < 19 || s[10] != 'T' {
		return time.Time{}, false
	}
	layout := "2006-01-02T15:04:05"
	rest := s[19:]
	if strings.HasPrefix(rest, ".") {
		i := 1
		for i < len(rest) && rest[i] >= '0' && rest[i] <= '9' {
			i++
		}
		if i == 1 {
			return time.Time{}, false
		}
		rest = rest[i:]
	}
	switch {
	case rest == "":
		t, err := time.Parse(layout, s[:19])
		return t, err == nil && t.Year() >= 1
	case rest == "Z", len(rest) == 6 && (rest[0] == '+' || rest[0] == '-') && rest[3] == ':':
		t, err := time.Parse(time.RFC3339Nano, s)
		if err != nil || t.UTC().Year() < 1 || t.UTC().Year() > 9999 {
			return time.Time{}, false
		}
		return t, true
	}
	return time.Time{}, false
}

// contextKey is one key of a context predicate: its dotted path, split,
// and the value expected there.
type contextKey struct {
	path []string
	want any
}

// evalContext: every key's expected value equals the context value at that
// dotted path; an absent key makes the condition false.
func evalContext(keys []contextKey, ctx map[string]any) tri {
	for _, k := range keys {
		got, ok := lookupPath(ctx, k.path)
		if !ok || !contextMatch(k.want, got) {
			return triFalse
		}
	}
	return triTrue
}

func lookupPath(ctx map[string]any, path []string) (any, bool) {
	var cur any = ctx
	for _, seg := range path {
		m, ok := cur.(map[string]any)
		if !ok {
			return nil, false
		}
		if cur, ok = m[seg]; !ok {
			return nil, false
		}
	}
	return cur, true
}

// contextMatch compares per core 3.13: strings, booleans and numbers only,
// type-sensitive, numbers by exact value; either side may be an array.
func contextMatch(exp, got any) bool {
	if l, ok := exp.([]any); ok {
		for _, e := range l {
			if contextMatch(e, got) {
				return true
			}
		}
		return false
	}
	if l, ok := got.([]any); ok {
		for _, g := range l {
			if scalarEqual(exp, g) {
				return true
			}
		}
		return false
	}
	return scalarEqual(exp, got)
}

func scalarEqual(a, b any) bool {
	switch x := a.(type) {
	case string:
		y, ok := b.(string)
		return ok && x == y
	case bool:
		y, ok := b.(bool)
		return ok && x == y
	}
	fa, ok1 := asNumber(a)
	fb, ok2 := asNumber(b)
	return ok1 && ok2 && fa == fb
}

func asNumber(v any) (float64, bool) {
	switch x := v.(type) {
	case int64:
		return float64(x), true
	case int:
		return float64(x), true
	case float64:
		return x, !math.IsNaN(x) && !math.IsInf(x, 0)
	}
	return 0, false
}

// eval compares the engine-supplied counter; a counter absent, or not a
// non-negative integer, is unevaluable.
func (r *rateCond) eval(ctx map[string]any) tri {
	counters, _ := ctx["counters"].(map[string]any)
	v, ok := counters[r.counter]
	if !ok {
		return triUnknown
	}
	f, ok := asNumber(v)
	if !ok || f < 0 || f != math.Trunc(f) || f > maxSafeInt {
		return triUnknown
	}
	n := int64(f)
	if (n >= r.threshold) == r.gte {
		return triTrue
	}
	return triFalse
}
