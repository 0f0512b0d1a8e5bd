package hushspec

import (
	"regexp"
	"strings"

	"golang.org/x/text/unicode/norm"
)

// globRegexp translates a path glob (core 3.14.1) into an anchored RE2
// expression: "*" is any run of characters other than '/', "?" one such
// character, "**/" at the start or after a '/' zero or more whole leading
// segments, "**" elsewhere any run including '/'. Everything else is
// literal. RE2 matching is linear in the path, so no glob can blow up.
func globRegexp(glob string) string {
	var b strings.Builder
	b.WriteString(`^`)
	for i := 0; i < len(glob); {
		switch {
		case strings.HasPrefix(glob[i:], "**/") && (i == 0 || glob[i-1] == '/'):
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

// nfc is Unicode NFC, with no allocation for text already in NFC (all
// ASCII text is).
func nfc(s string) string {
	if norm.NFC.IsNormalString(s) {
		return s
	}
	return norm.NFC.String(s)
}

// normalizePath is the target normalization of core 3.14.1: NFC, every
// '\' a '/', runs of '/' collapsed, "." and ".." resolved lexically (an
// absolute path never climbs above its root; a relative one keeps a
// leading ".."), and a trailing '/' removed unless the path is "/".
func normalizePath(p string) string {
	p = strings.ReplaceAll(nfc(p), `\`, "/")
	abs := strings.HasPrefix(p, "/")
	var out []string
	for _, seg := range strings.Split(p, "/") {
		switch seg {
		case "", ".":
		case "..":
			switch {
			case len(out) > 0 && out[len(out)-1] != "..":
				out = out[:len(out)-1]
			case !abs:
				out = append(out, "..")
			}
		default:
			out = append(out, seg)
		}
	}
	joined := strings.Join(out, "/")
	if abs {
		return "/" + joined
	}
	return joined
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
