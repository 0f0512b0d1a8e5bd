package agent

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"time"
)

// resolver answers "does this address belong to this name?" for the
// anti-spoofing check: static answers from the configuration first (as
// /etc/hosts would be), then what the agent's DNS proxy told the workload
// (exactly those addresses, while their TTL lasts), and only for a name the
// workload was told nothing of, DNS through the agent's own resolver.
//
// The check resolves the name the client sent and compares the address the
// client dialled against the answers, rather than dialling the name itself:
// the client keeps its choice among a name's addresses, and a mismatch is
// refused with a receipt that says so.
type resolver struct {
	static map[string][]netip.Addr
	// told, when set (before the first decision), is what the DNS proxy
	// told each workload (*dnsproxy.Proxy).
	told    toldAddrs
	dns     *net.Resolver
	timeout time.Duration
	now     func() time.Time

	// cache keeps DNS answers for cacheTTL, so that a burst of connections
	// to one name costs one lookup. Go's resolver does not cache.
	mu    sync.Mutex
	cache map[string]cached
}

// toldAddrs answers from what a workload was told: known says whether the
// workload holds any unexpired address of name, owns whether addr is one.
type toldAddrs interface {
	Told(workload uint32, name string, addr netip.Addr) (owns, known bool)
}

type cached struct {
	addrs   []netip.Addr
	expires time.Time
}

const (
	// cacheTTL bounds how stale an answer the check may use. Short: a name
	// that moves is followed within seconds.
	cacheTTL = 10 * time.Second
	// cacheMax bounds the cache; when full it is emptied, never grown.
	cacheMax = 4096
)

func newResolver(static map[string][]netip.Addr) *resolver {
	m := make(map[string][]netip.Addr, len(static))
	for k, v := range static {
		m[strings.TrimSuffix(strings.ToLower(k), ".")] = v
	}
	return &resolver{static: m, dns: net.DefaultResolver, timeout: 2 * time.Second, now: time.Now, cache: map[string]cached{}}
}

func (r *resolver) lookup(ctx context.Context, name string) ([]netip.Addr, error) {
	now := r.now()
	r.mu.Lock()
	c, ok := r.cache[name]
	r.mu.Unlock()
	if ok && now.Before(c.expires) {
		return c.addrs, nil
	}
	ctx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()
	as, err := r.dns.LookupNetIP(ctx, "ip", name)
	if err != nil {
		return nil, err // failures are not cached: the next connection asks again
	}
	r.mu.Lock()
	if len(r.cache) >= cacheMax {
		clear(r.cache)
	}
	r.cache[name] = cached{addrs: as, expires: now.Add(cacheTTL)}
	r.mu.Unlock()
	return as, nil
}

// Owns says whether addr is an address of name: the anti-spoofing check's
// kernel.AddressOwner.
func (r *resolver) Owns(ctx context.Context, workload uint32, name string, addr netip.Addr) (bool, error) {
	addr = addr.Unmap()
	name = strings.TrimSuffix(strings.ToLower(name), ".")
	if as, ok := r.static[name]; ok {
		for _, a := range as {
			if a.Unmap() == addr {
				return true, nil
			}
		}
		return false, nil
	}
	if r.told != nil && workload != 0 {
		if owns, known := r.told.Told(workload, name, addr); known {
			return owns, nil // what the workload was told, not a second opinion
		}
	}
	as, err := r.lookup(ctx, name)
	if err != nil {
		return false, fmt.Errorf("resolve %s: %w", name, err)
	}
	for _, a := range as {
		if a.Unmap() == addr {
			return true, nil
		}
	}
	return false, nil
}
