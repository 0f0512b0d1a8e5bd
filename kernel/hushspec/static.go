package hushspec

import (
	"net/netip"
	"sort"
	"strings"
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

// DeadPathGlobs returns the path globs, as written, that no target can
// match: a target is normalized before matching (core 3.14.1: no "." or ".."
// segment, no "//", no backslash, no trailing "/"), and a pattern is not,
// so "./src/**" or "/data/../x" matches nothing. HushSpec 0.1 engines
// cleaned patterns too; a 0.1 policy read with the 1.0 meaning may hold
// such a pattern, and in forbidden_paths it silently stops forbidding.
// `policy check` warns about each.
func (p *Policy) DeadPathGlobs() []string {
	var sets []*globSet
	if p.forbidden != nil {
		sets = append(sets, p.forbidden.patterns, p.forbidden.exceptions)
	}
	if p.allowlist != nil {
		sets = append(sets, p.allowlist.read, p.allowlist.write, p.allowlist.patch)
	}
	if p.secrets != nil {
		sets = append(sets, p.secrets.skip)
	}
	var out []string
	for _, s := range sets {
		for _, g := range s.src {
			if deadGlob(g) {
				out = append(out, g)
			}
		}
	}
	return out
}

func deadGlob(g string) bool {
	if strings.ContainsRune(g, '\\') || strings.Contains(g, "//") || (len(g) > 1 && strings.HasSuffix(g, "/")) {
		return true
	}
	leading := true // a relative target keeps its leading ".." segments
	for _, seg := range strings.Split(g, "/") {
		switch {
		case seg == ".":
			return true
		case seg == "..":
			if !leading {
				return true
			}
		default:
			leading = false
		}
	}
	return false
}
