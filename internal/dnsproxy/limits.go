package dnsproxy

import (
	"fmt"
	"sync"
	"time"
)

// Defaults of the per-workload query bounds (Options).
const (
	// DefaultRate is the queries per second a workload may sustain.
	DefaultRate = 100
	// DefaultBurst is the queries a workload may send at once.
	DefaultBurst = 200
	// DefaultDistinctNames is how many distinct names a workload may ask
	// within DefaultNameWindow: an application asks few names again and
	// again, a tunnel asks a new name for every chunk of data.
	DefaultDistinctNames = 256
	// DefaultNameWindow is the window the distinct names are counted in.
	DefaultNameWindow = time.Minute
	// maxWorkloads bounds the limiters kept; past it the idle ones go.
	maxWorkloads = 4096
)

// Bounds as receipts name them.
const (
	boundRate  = "dns.rate"
	boundNames = "dns.distinct_names"
)

// limiter is one workload's token bucket and its names of the window.
type limiter struct {
	tokens      float64
	last        time.Time
	windowStart time.Time
	names       map[string]struct{}
}

type limits struct {
	mu       sync.Mutex
	w        map[uint32]*limiter
	rate     float64
	burst    float64
	distinct int
	window   time.Duration
}

func newLimits(o *Options) *limits {
	return &limits{w: map[uint32]*limiter{}, rate: o.Rate, burst: float64(o.Burst), distinct: o.DistinctNames, window: o.NameWindow}
}

// admit takes a token for a query of workload for name ("" for a message
// with no name), or names the bound that refuses it. A refused query takes
// nothing: a flood does not hold the workload's later queries off longer
// than the bucket says.
func (l *limits) admit(workload uint32, name string, now time.Time) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	lm := l.w[workload]
	if lm == nil {
		if len(l.w) >= maxWorkloads {
			l.w = map[uint32]*limiter{} // forgetting gives full buckets, never less than the bound
		}
		lm = &limiter{tokens: l.burst, last: now, windowStart: now, names: map[string]struct{}{}}
		l.w[workload] = lm
	}
	if el := now.Sub(lm.last); el > 0 {
		lm.tokens = min(l.burst, lm.tokens+el.Seconds()*l.rate)
		lm.last = now
	}
	if now.Sub(lm.windowStart) >= l.window {
		lm.windowStart = now
		clear(lm.names)
	}
	if lm.tokens < 1 {
		return boundRate
	}
	if name != "" {
		if _, ok := lm.names[name]; !ok {
			if len(lm.names) >= l.distinct {
				return boundNames
			}
			lm.names[name] = struct{}{}
		}
	}
	lm.tokens--
	return ""
}

func (l *limits) reason(bound string) string {
	switch bound {
	case boundRate:
		return fmt.Sprintf("the workload sent more than %g queries per second (burst %g) (%s)", l.rate, l.burst, bound)
	case boundNames:
		return fmt.Sprintf("the workload asked more than %d distinct names within %s (%s)", l.distinct, l.window, bound)
	}
	return bound
}
