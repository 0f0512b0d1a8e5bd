package agent

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"time"
)

// resolver answers "does this address belong to this name?" for the
// anti-spoofing check: static answers from the configuration first (as
// /etc/hosts would be), then DNS through the agent's own resolver.
//
// The check resolves the name the client sent and compares the address the
// client dialled against the answers, rather than dialling the name itself:
// the client keeps its choice among a name's addresses, and a mismatch is
// refused with a receipt that says so.
type resolver struct {
	static  map[string][]netip.Addr
	dns     *net.Resolver
	timeout time.Duration
}

func newResolver(static map[string][]netip.Addr) *resolver {
	m := make(map[string][]netip.Addr, len(static))
	for k, v := range static {
		m[strings.TrimSuffix(strings.ToLower(k), ".")] = v
	}
	return &resolver{static: m, dns: net.DefaultResolver, timeout: 2 * time.Second}
}

func (r *resolver) owns(ctx context.Context, name string, addr netip.Addr) (bool, error) {
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
	ctx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()
	as, err := r.dns.LookupNetIP(ctx, "ip", name)
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
