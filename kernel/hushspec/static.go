package hushspec

import (
	"net/netip"
	"sort"
)

// BlockedAddr is an IP literal of the egress block list.
type BlockedAddr struct {
	Addr    netip.Addr
	Pattern string // as written in the policy
}

// EgressBlockedAddrs returns the IP literals of rules.egress.block. A block
// pattern decides before any allow pattern, so a connection to one of these
// addresses is denied whatever name it carries: the node agent refuses them
// at connect() in the kernel, without waiting for the first bytes. Sorted,
// for stable map updates.
func (p *Policy) EgressBlockedAddrs() []BlockedAddr {
	if p.egress == nil || p.egress.block == nil {
		return nil
	}
	out := make([]BlockedAddr, 0, len(p.egress.block.ips))
	for a, pat := range p.egress.block.ips {
		out = append(out, BlockedAddr{Addr: a, Pattern: pat})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Addr.Less(out[j].Addr) })
	return out
}

// IPWildcards returns the egress and browser_automation host patterns, as
// written, that put a wildcard over an IP address ("10.0.0.*"). Core 3.14.2
// makes them valid but never matching, which is rarely what their author
// meant; `policy check` warns about each.
func (p *Policy) IPWildcards() []string {
	var sets []*hostSet
	if p.egress != nil {
		sets = append(sets, p.egress.allow, p.egress.block)
	}
	if p.browser != nil {
		sets = append(sets, p.browser.allowedDomains, p.browser.blocked)
	}
	var out []string
	for _, s := range sets {
		out = append(out, s.never...)
	}
	return out
}
