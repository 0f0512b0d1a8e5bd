package dnsproxy

import (
	"net/netip"
	"sync"
	"time"

	"github.com/backbay-labs/chio-agent/kernel"
)

// Defaults of what the proxy remembers of its answers (Options).
const (
	// DefaultTTLFloor: an answer is remembered at least this long, however
	// short its TTL, since clients use an address for a while after its
	// TTL (a connection pool, a retry).
	DefaultTTLFloor = 60 * time.Second
	// DefaultTTLCap: an answer is remembered at most this long, however
	// long its TTL, so that an address a name left is not its forever.
	DefaultTTLCap = time.Hour
	// DefaultToldNames bounds the names remembered per workload.
	DefaultToldNames = 4096
	// DefaultToldAddrs bounds the addresses remembered per name.
	DefaultToldAddrs = 64
)

// told is what each workload was told: name (normalised as egress hosts
// are) → address → until when. Bounded per workload by names and per name
// by addresses; past a bound the entry that expires first goes.
type told struct {
	mu       sync.Mutex
	w        map[uint32]map[string]map[netip.Addr]time.Time
	maxNames int
	maxAddrs int
}

func newTold(maxNames, maxAddrs int) *told {
	return &told{w: map[uint32]map[string]map[netip.Addr]time.Time{}, maxNames: maxNames, maxAddrs: maxAddrs}
}

// add remembers that workload was told addrs for each of names until until.
func (t *told) add(workload uint32, names []string, addrs []netip.Addr, now, until time.Time) {
	if len(addrs) == 0 {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	ws := t.w[workload]
	if ws == nil {
		ws = map[string]map[netip.Addr]time.Time{}
		t.w[workload] = ws
	}
	for _, name := range names {
		as := ws[name]
		if as == nil {
			if len(ws) >= t.maxNames {
				evictName(ws, now)
			}
			as = map[netip.Addr]time.Time{}
			ws[name] = as
		}
		for _, a := range addrs {
			if _, ok := as[a]; !ok && len(as) >= t.maxAddrs {
				evictAddr(as, now)
			}
			if as[a].Before(until) {
				as[a] = until
			}
		}
	}
}

// evictName drops the expired names, or if none, the name whose last
// address expires first.
func evictName(ws map[string]map[netip.Addr]time.Time, now time.Time) {
	var victim string
	var first time.Time
	for n, as := range ws {
		last := evictExpired(as, now)
		if len(as) == 0 {
			delete(ws, n)
			continue
		}
		if victim == "" || last.Before(first) {
			victim, first = n, last
		}
	}
	if victim != "" && len(ws) > 0 {
		delete(ws, victim)
	}
}

// evictExpired drops expired addresses and returns the last expiry left.
func evictExpired(as map[netip.Addr]time.Time, now time.Time) time.Time {
	var last time.Time
	for a, until := range as {
		if !now.Before(until) {
			delete(as, a)
		} else if until.After(last) {
			last = until
		}
	}
	return last
}

// evictAddr drops the expired addresses, or if none, the one expiring first.
func evictAddr(as map[netip.Addr]time.Time, now time.Time) {
	n := len(as)
	evictExpired(as, now)
	if len(as) < n {
		return
	}
	var victim netip.Addr
	var first time.Time
	for a, until := range as {
		if !victim.IsValid() || until.Before(first) {
			victim, first = a, until
		}
	}
	delete(as, victim)
}

// lookup answers for the anti-spoofing check: known says whether workload
// holds an unexpired address of name, owns whether addr is one of them.
func (t *told) lookup(workload uint32, name string, addr netip.Addr, now time.Time) (owns, known bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	as := t.w[workload][name]
	for a, until := range as {
		if now.Before(until) {
			known = true
			if a == addr {
				owns = true
			}
		}
	}
	return owns, known
}

// forget drops everything workload was told.
func (t *told) forget(workload uint32) {
	t.mu.Lock()
	delete(t.w, workload)
	t.mu.Unlock()
}

// Told says whether the proxy told workload that addr is an address of name
// (normalised as egress hosts are) and the answer still holds: known is
// whether it told the workload any address of name that still holds. The
// agent's anti-spoofing check asks this first (agent/resolver.go).
func (p *Proxy) Told(workload uint32, name string, addr netip.Addr) (owns, known bool) {
	n, err := kernel.DNSName(name)
	if err != nil {
		return false, false
	}
	return p.told.lookup(workload, n, addr.Unmap().WithZone(""), p.opts.Clock())
}

// ToldAddrs lists the unexpired addresses workload was told for name, for
// status and tests.
func (p *Proxy) ToldAddrs(workload uint32, name string) []netip.Addr {
	n, err := kernel.DNSName(name)
	if err != nil {
		return nil
	}
	now := p.opts.Clock()
	p.told.mu.Lock()
	defer p.told.mu.Unlock()
	var out []netip.Addr
	for a, until := range p.told.w[workload][n] {
		if now.Before(until) {
			out = append(out, a)
		}
	}
	return out
}

// Forget drops what workload was told, when it is no longer protected.
func (p *Proxy) Forget(workload uint32) { p.told.forget(workload) }
