package hushspec

import (
	"path"
	"regexp"
	"strings"
)

// globRegexp translates a path glob (core 3.1) into an anchored RE2
// expression: "*" is any run within one path segment, "**" any run across
// segments ("**/" also matches no segment at all, so "**/.ssh/**" matches
// ".ssh/id_rsa"), "?" one character other than '/'. Everything else is
// literal. RE2 matching is linear in the path, so no glob can blow up.
func globRegexp(glob string) string {
	var b strings.Builder
	b.WriteString(`^`)
	for i := 0; i < len(glob); {
		switch {
		case strings.HasPrefix(glob[i:], "**/"):
			b.WriteString(`(?:.*/)?`)
			i += 3
		case strings.HasPrefix(glob[i:], "**"):
			b.WriteString(`.*`)
			i += 2
		case glob[i] == '*':
			b.WriteString(`[^/]*`)
			i++
		case glob[i] == '?':
			b.WriteString(`[^/]`)
			i++
		default:
			j := i
			for j < len(glob) && glob[j] != '*' && glob[j] != '?' {
				j++
			}
			b.WriteString(regexp.QuoteMeta(glob[i:j]))
			i = j
		}
	}
	b.WriteString(`$`)
	return b.String()
}

// cleanPath normalizes a path target or glob lexically ("./src/../x" ->
// "x"), so that ".." cannot walk a target past a forbidden pattern and
// "./src/**" matches "src/a". An empty path stays empty.
func cleanPath(p string) string {
	if p == "" {
		return ""
	}
	return path.Clean(p)
}

// globSet is a compiled list of path globs, matched in order.
type globSet struct {
	res []*regexp.Regexp
	src []string
}

func (g *globSet) match(p string) (int, bool) {
	if g == nil {
		return -1, false
	}
	for i, re := range g.res {
		if re.MatchString(p) {
			return i, true
		}
	}
	return -1, false
}

func (g *globSet) empty() bool { return g == nil || len(g.res) == 0 }
