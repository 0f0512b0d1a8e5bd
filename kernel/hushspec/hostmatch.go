package hushspec

import (
	"fmt"
	"net/netip"
	"strings"
)

// hostSet is one compiled list of egress patterns (an allow or a block list).
// Exact names and IP literals sit in maps; wildcard patterns sit in a trie keyed
// by labels from the right, so a decision costs one map lookup per label of the
// target however many patterns there are.
type hostSet struct {
	exact map[string]string     // normalized name -> pattern as written
	ips   map[netip.Addr]string // address -> pattern as written
	root  *trieNode             // nil when there is no wildcard pattern
	never []string              // wildcards over IP addresses, as written: they match nothing
}

// trieNode is reached by consuming labels of a target from the right.
type trieNode struct {
	children map[string]*trieNode
	star     *trieNode  // a "*" label: any one label
	globs    []globEdge // a label with '*' inside it, e.g. "api-*"
	// end is the pattern (as written) that ends here: it matches when the
	// target has no labels left.
	end string
	// deep is the "**.suffix" pattern (as written) whose suffix ends here: it
	// matches when one or more labels are left, never zero (never the apex).
	deep string
}

type globEdge struct {
	glob string
	next *trieNode
}

// placeholder stands in for wildcard labels while the literal labels of a
// pattern go through host normalization; it is a plain LDH label, which
// normalization leaves as it is.
const placeholder = "hushspec-wildcard-label"

// compiledHostPattern is one pattern after normalization.
type compiledHostPattern struct {
	h      host     // for patterns without wildcards
	labels []string // for wildcard patterns, normalized, left to right
	never  bool     // a wildcard over an IP address: matches nothing
}

// compileHostPattern normalizes an egress pattern the same way targets are
// normalized. Wildcards: a "*" label matches exactly one label; a leading
// "**" label matches one or more labels; a label containing '*' among other
// characters (ASCII only) matches one label by glob.
func compileHostPattern(p string) (compiledHostPattern, error) {
	if !strings.Contains(p, "*") {
		h, err := normalizeTarget(p)
		if err != nil {
			return compiledHostPattern{}, err
		}
		return compiledHostPattern{h: h}, nil
	}
	if len(p) > 253+1 {
		return compiledHostPattern{}, fmt.Errorf("host pattern longer than 253 bytes")
	}
	s := strings.TrimSuffix(dotReplacer.Replace(p), ".")
	raw := strings.Split(s, ".")
	wild := make([]string, len(raw))
	sub := make([]string, len(raw))
	for i, l := range raw {
		switch {
		case l == "**":
			if i != 0 {
				return compiledHostPattern{}, fmt.Errorf("\"**\" is allowed only as the leftmost label")
			}
			wild[i] = l
		case l == "*":
			wild[i] = l
		case strings.Contains(l, "**"):
			return compiledHostPattern{}, fmt.Errorf("\"**\" must be a whole label, not part of %q", l)
		case strings.Contains(l, "*"):
			g := strings.ToLower(l)
			for j := 0; j < len(g); j++ {
				c := g[j]
				if !(c >= 'a' && c <= 'z') && !isDigit(c) && c != '-' && c != '_' && c != '*' {
					return compiledHostPattern{}, fmt.Errorf("label glob %q may hold only ASCII letters, digits, '-', '_' and '*'", l)
				}
			}
			wild[i] = g
		}
		if wild[i] != "" {
			sub[i] = placeholder
		} else {
			sub[i] = l
		}
	}
	// "10.0.0.*" reads as an address range, but core 3.14.2 says wildcards
	// never match IP literals: the document is valid and the pattern
	// matches nothing (policy check warns about it, see IPWildcards).
	numeric := true
	for i, l := range raw {
		if wild[i] == "" && !looksNumeric(l) {
			numeric = false
		}
	}
	if numeric && len(raw) > 1 {
		return compiledHostPattern{never: true}, nil
	}
	h, err := normalizeHostPart(p, strings.Join(sub, "."))
	if err != nil {
		return compiledHostPattern{}, err
	}
	if h.isIP {
		return compiledHostPattern{never: true}, nil
	}
	labels := strings.Split(h.name, ".")
	if len(labels) != len(raw) {
		return compiledHostPattern{}, fmt.Errorf("normalization changed the number of labels")
	}
	for i := range labels {
		if wild[i] != "" {
			labels[i] = wild[i]
		}
	}
	return compiledHostPattern{labels: labels}, nil
}

func newHostSet() *hostSet {
	return &hostSet{exact: map[string]string{}, ips: map[netip.Addr]string{}}
}

// add compiles and inserts pattern p.
func (s *hostSet) add(p string) error {
	c, err := compileHostPattern(p)
	if err != nil {
		return err
	}
	if c.never {
		s.never = append(s.never, p)
		return nil
	}
	if c.labels == nil {
		if c.h.isIP {
			if _, dup := s.ips[c.h.addr]; !dup {
				s.ips[c.h.addr] = p
			}
		} else if _, dup := s.exact[c.h.name]; !dup {
			s.exact[c.h.name] = p
		}
		return nil
	}
	if s.root == nil {
		s.root = &trieNode{}
	}
	n := s.root
	labels := c.labels
	deep := labels[0] == "**"
	if deep {
		labels = labels[1:]
	}
	for i := len(labels) - 1; i >= 0; i-- {
		n = n.step(labels[i])
	}
	if deep {
		if n.deep == "" {
			n.deep = p
		}
	} else if n.end == "" {
		n.end = p
	}
	return nil
}

func (n *trieNode) step(label string) *trieNode {
	switch {
	case label == "*":
		if n.star == nil {
			n.star = &trieNode{}
		}
		return n.star
	case strings.Contains(label, "*"):
		for _, g := range n.globs {
			if g.glob == label {
				return g.next
			}
		}
		next := &trieNode{}
		n.globs = append(n.globs, globEdge{glob: label, next: next})
		return next
	default:
		if n.children == nil {
			n.children = map[string]*trieNode{}
		}
		c := n.children[label]
		if c == nil {
			c = &trieNode{}
			n.children[label] = c
		}
		return c
	}
}

// match returns the pattern (as written) that matches h.
// empty reports whether the set holds no pattern.
func (s *hostSet) empty() bool {
	return s == nil || len(s.exact) == 0 && len(s.ips) == 0 && s.root == nil
}

func (s *hostSet) match(h host) (string, bool) {
	if s == nil {
		return "", false
	}
	if h.isIP {
		p, ok := s.ips[h.addr]
		return p, ok
	}
	if p, ok := s.exact[h.name]; ok {
		return p, true
	}
	if s.root == nil {
		return "", false
	}
	return s.root.match(h.name, len(h.name))
}

// match consumes labels of name[:end] from the right. Each trie node sits at
// one depth, so the search visits every node at most once: no pattern set can
// make it exponential.
func (n *trieNode) match(name string, end int) (string, bool) {
	if end == 0 {
		if n.end != "" {
			return n.end, true
		}
		return "", false
	}
	if n.deep != "" {
		return n.deep, true
	}
	dot := strings.LastIndexByte(name[:end], '.')
	label := name[dot+1 : end]
	next := 0
	if dot >= 0 {
		next = dot
	}
	if c := n.children[label]; c != nil {
		if p, ok := c.match(name, next); ok {
			return p, true
		}
	}
	if n.star != nil {
		if p, ok := n.star.match(name, next); ok {
			return p, true
		}
	}
	for i := range n.globs {
		if globLabel(n.globs[i].glob, label) {
			if p, ok := n.globs[i].next.match(name, next); ok {
				return p, true
			}
		}
	}
	return "", false
}

// globLabel matches one label against a glob whose only metacharacter is '*'
// (any run of characters, possibly empty). Backtracking only to the last star
// keeps it O(len(glob)*len(label)).
func globLabel(glob, s string) bool {
	gi, si := 0, 0
	star, mark := -1, 0
	for si < len(s) {
		switch {
		case gi < len(glob) && glob[gi] == '*':
			star, mark = gi, si
			gi++
		case gi < len(glob) && glob[gi] == s[si]:
			gi++
			si++
		case star >= 0:
			gi = star + 1
			mark++
			si = mark
		default:
			return false
		}
	}
	for gi < len(glob) && glob[gi] == '*' {
		gi++
	}
	return gi == len(glob)
}
