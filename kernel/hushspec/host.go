package hushspec

import (
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"unicode/utf8"

	"golang.org/x/net/idna"
	"golang.org/x/text/cases"
	"golang.org/x/text/language"
)

// maxTargetLen bounds the raw egress target (a URL may be long; a host is at
// most 253 bytes). Anything longer is refused before any Unicode work.
const maxTargetLen = 4096

// idnaProfile is UTS #46 lookup processing, non-transitional (ß and ς stay
// themselves, as IDNA2008 and every current browser have it), with DNS length
// checks. StrictDomainName is off only so that '_' (used in real service
// names) survives; every other non-LDH ASCII byte is refused by checkASCII.
var idnaProfile = idna.New(
	idna.MapForLookup(),
	idna.Transitional(false),
	idna.StrictDomainName(false),
	idna.VerifyDNSLength(true),
	idna.BidiRule(),
	idna.CheckHyphens(true),
	idna.CheckJoiners(true),
)

// NormalizeHost reduces an egress target to the form patterns are matched
// against: the host of a URL or host:port, without userinfo or port, without
// a trailing dot, lower-cased with the full context-sensitive Unicode mapping
// and converted to IDNA A-labels; or, for an IP literal, the canonical text of
// the address (IPv4-mapped IPv6 unmapped, zone removed). See docs/policy.md.
//
// The result is idempotent: NormalizeHost(NormalizeHost(x)) == NormalizeHost(x).
//
// A backslash is refused: Evaluate cuts an egress target at one, as core
// 3.14.2 reads URLs, but a name given as a host (a DNS name in presentation
// form, where "\000" is an escaped byte) that held one would otherwise be
// taken for the different name before it.
func NormalizeHost(target string) (string, error) {
	if strings.ContainsRune(target, '\\') {
		return "", hostErr(target, "a host name holds no backslash")
	}
	h, err := normalizeTarget(target)
	if err != nil {
		return "", err
	}
	return h.name, nil
}

// host is a normalized egress target.
type host struct {
	name string     // normalized text (A-label host name or address text)
	addr netip.Addr // valid only when isIP
	isIP bool
}

func hostErr(target, format string, args ...any) error {
	if len(target) > 80 {
		target = target[:80] + "..."
	}
	return fmt.Errorf("normalize host %q: %w: %s", target, ErrInvalidHost, fmt.Sprintf(format, args...))
}

// normalizeTarget is NormalizeHost with the parsed address kept, so that
// matching never re-parses it.
func normalizeTarget(target string) (host, error) {
	if len(target) == 0 {
		return host{}, hostErr(target, "empty target")
	}
	if len(target) > maxTargetLen {
		return host{}, hostErr(target, "target longer than %d bytes", maxTargetLen)
	}
	if h, ok := fastHost(target); ok {
		return host{name: h}, nil
	}
	if isLDHUpper(target) {
		// ASCII letters have no context-sensitive lowercase and IDNA maps
		// them to themselves, so ASCII lowercasing is the whole job.
		if h, ok := fastHost(strings.ToLower(target)); ok {
			return host{name: h}, nil
		}
	}
	return slowNormalize(target)
}

// slowNormalize is the full normalization every fast path must agree with.
func slowNormalize(target string) (host, error) {
	if !utf8.ValidString(target) {
		return host{}, hostErr(target, "not valid UTF-8")
	}
	hostPart, err := extractHost(target)
	if err != nil {
		return host{}, hostErr(target, "%s", err)
	}
	return normalizeHostPart(target, hostPart)
}

// extractHost reduces a URL, authority or host:port to its host text. Brackets
// around an IPv6 literal are removed here.
func extractHost(s string) (string, error) {
	if i := strings.Index(s, "://"); i >= 0 {
		if !isScheme(s[:i]) {
			return "", fmt.Errorf("malformed URL scheme %q", s[:i])
		}
		s = s[i+3:]
	} else {
		s = strings.TrimPrefix(s, "//")
	}
	// Core 3.14.2: a backslash ends the authority exactly as a slash does,
	// as browsers parse special-scheme URLs, so blocked.example\@allowed
	// names blocked.example, never the host after the '@'.
	if i := strings.IndexAny(s, "/\\?#"); i >= 0 {
		s = s[:i]
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; c <= 0x20 || c == 0x7f {
			return "", fmt.Errorf("control or space character at byte %d", i)
		}
	}
	if i := strings.LastIndexByte(s, '@'); i >= 0 {
		s = s[i+1:]
	}
	if s == "" {
		return "", fmt.Errorf("no host")
	}
	if s[0] == '[' {
		end := strings.IndexByte(s, ']')
		if end < 0 {
			return "", fmt.Errorf("unterminated '[' in IPv6 literal")
		}
		inner, rest := s[1:end], s[end+1:]
		if rest != "" {
			if rest[0] != ':' || !validPort(rest[1:]) {
				return "", fmt.Errorf("malformed port after IPv6 literal: %q", rest)
			}
		}
		// RFC 6874 writes the zone separator as %25 inside a URL.
		inner = strings.Replace(inner, "%25", "%", 1)
		if _, err := netip.ParseAddr(inner); err != nil || !strings.Contains(inner, ":") {
			return "", fmt.Errorf("bracketed text is not an IPv6 address: %q", inner)
		}
		return inner, nil
	}
	switch strings.Count(s, ":") {
	case 0:
	case 1:
		i := strings.IndexByte(s, ':')
		if !validPort(s[i+1:]) {
			return "", fmt.Errorf("malformed port %q", s[i+1:])
		}
		s = s[:i]
	default:
		// More than one colon without brackets can only be a bare IPv6
		// address (no port can be told apart from its last group).
		if _, err := netip.ParseAddr(s); err != nil {
			return "", fmt.Errorf("not an IPv6 address and not host:port: %q", s)
		}
	}
	if s == "" {
		return "", fmt.Errorf("no host")
	}
	return s, nil
}

func isScheme(s string) bool {
	if s == "" || !isAlpha(s[0]) {
		return false
	}
	for i := 1; i < len(s); i++ {
		c := s[i]
		if !isAlpha(c) && !isDigit(c) && c != '+' && c != '-' && c != '.' {
			return false
		}
	}
	return true
}

// validPort accepts an empty port (a URL may write "host:") or 1-5 digits
// within 0-65535.
func validPort(p string) bool {
	if len(p) > 5 {
		return false
	}
	n := 0
	for i := 0; i < len(p); i++ {
		if !isDigit(p[i]) {
			return false
		}
		n = n*10 + int(p[i]-'0')
	}
	return n <= 65535
}

func isAlpha(c byte) bool { return c|0x20 >= 'a' && c|0x20 <= 'z' }
func isDigit(c byte) bool { return c >= '0' && c <= '9' }

// isLDHUpper reports whether s holds only ASCII letters, digits, '-', '_'
// and '.', with at least one upper-case letter.
func isLDHUpper(s string) bool {
	upper := false
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'A' && c <= 'Z':
			upper = true
		case (c >= 'a' && c <= 'z') || isDigit(c) || c == '-' || c == '_' || c == '.':
		default:
			return false
		}
	}
	return upper
}

// casers pools root-locale lowercasers: a cases.Caser keeps state and is not
// safe for concurrent use, and building one per call costs more than the
// casing itself.
var casers = sync.Pool{New: func() any { c := cases.Lower(language.Und); return &c }}

// lowerLabel applies the full Unicode lowercase mapping with the
// SpecialCasing context rules (final sigma) of the root locale.
func lowerLabel(s string) string {
	c := casers.Get().(*cases.Caser)
	out := c.String(s)
	casers.Put(c)
	return out
}

// normalizeHostPart turns extracted host text into a normalized host.
func normalizeHostPart(target, s string) (host, error) {
	if strings.Contains(s, ":") {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return host{}, hostErr(target, "malformed IPv6 address: %v", err)
		}
		return ipHost(a), nil
	}
	// Ideographic and fullwidth full stops are label separators under UTS #46;
	// map them first so that casing sees the same labels IDNA will.
	s = dotReplacer.Replace(s)
	s = strings.TrimSuffix(s, ".")
	if a, err := netip.ParseAddr(s); err == nil {
		return ipHost(a), nil
	}
	if s == "" {
		return host{}, hostErr(target, "no host")
	}
	labels := strings.Split(s, ".")
	for i, l := range labels {
		if l == "" {
			return host{}, hostErr(target, "empty label")
		}
		// Each label is cased on its own: the final-sigma rule looks across
		// case-ignorable characters, and '.' is one, so casing the whole name
		// would let one label's letters change another's.
		labels[i] = lowerLabel(l)
	}
	ascii, err := idnaProfile.ToASCII(strings.Join(labels, "."))
	if err != nil {
		return host{}, hostErr(target, "IDNA: %v", err)
	}
	if err := checkASCII(ascii); err != nil {
		return host{}, hostErr(target, "%v", err)
	}
	// UTS #46 mapping deletes some characters (soft hyphen, joiners), so the
	// result is checked again: "1\u00ad.2.3.4" is the address 1.2.3.4, and
	// "0.\u00ad" has an empty last label.
	if a, err := netip.ParseAddr(ascii); err == nil {
		return ipHost(a), nil
	}
	if ascii == "" || strings.HasPrefix(ascii, ".") || strings.HasSuffix(ascii, ".") || strings.Contains(ascii, "..") {
		return host{}, hostErr(target, "empty label after IDNA mapping")
	}
	if looksNumeric(ascii) {
		// "127.1", "0x7f.1", "2130706433": resolvers read these as IPv4
		// addresses, so treating them as names would let them dodge an
		// address rule. Only dotted-quad text (parsed above) is accepted.
		return host{}, hostErr(target, "numeric host is not a dotted-quad IPv4 address")
	}
	return host{name: ascii}, nil
}

var dotReplacer = strings.NewReplacer("\u3002", ".", "\uff0e", ".", "\uff61", ".")

func ipHost(a netip.Addr) host {
	// Zones name an interface of this machine, not a destination; the
	// mapped form of an IPv4 address is the same destination as the address.
	a = a.WithZone("").Unmap()
	return host{name: a.String(), addr: a, isIP: true}
}

// checkASCII admits only letters, digits, '-', '_' and '.' in an A-label name.
func checkASCII(s string) error {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if (c >= 'a' && c <= 'z') || isDigit(c) || c == '-' || c == '_' || c == '.' {
			continue
		}
		return fmt.Errorf("character %q not allowed in a host name", c)
	}
	return nil
}

// looksNumeric reports whether the last label is a number as the WHATWG URL
// standard's IPv4 parser would take it (decimal, or 0x hexadecimal).
func looksNumeric(s string) bool {
	last := s[strings.LastIndexByte(s, '.')+1:]
	if last == "" {
		return false
	}
	if strings.HasPrefix(last, "0x") {
		for i := 2; i < len(last); i++ {
			c := last[i]
			if !isDigit(c) && (c < 'a' || c > 'f') {
				return false
			}
		}
		return true
	}
	for i := 0; i < len(last); i++ {
		if !isDigit(last[i]) {
			return false
		}
	}
	return true
}

// fastHost recognizes a target that is already a normalized ASCII host name
// (the common case: an SNI or Host header) and returns it, or the same text
// without a trailing dot, without allocating. It must agree with the slow path
// exactly; FuzzNormalizeHost checks that it does.
func fastHost(s string) (string, bool) {
	s = strings.TrimSuffix(s, ".")
	if len(s) == 0 || len(s) > 253 {
		return "", false
	}
	start := 0
	for i := 0; i <= len(s); i++ {
		if i < len(s) {
			c := s[i]
			if (c >= 'a' && c <= 'z') || isDigit(c) || c == '-' || c == '_' {
				continue
			}
			if c != '.' {
				return "", false
			}
		}
		l := s[start:i]
		if len(l) == 0 || len(l) > 63 || l[0] == '-' || l[len(l)-1] == '-' {
			return "", false
		}
		// Labels with "--" in positions 3-4 are reserved (xn-- A-labels need
		// full IDNA validation); leave them to the slow path.
		if len(l) >= 4 && l[2] == '-' && l[3] == '-' {
			return "", false
		}
		start = i + 1
	}
	// The last label must start with a letter: then it is neither an IPv4
	// address nor a numeric form.
	last := s[strings.LastIndexByte(s, '.')+1:]
	if last[0] < 'a' || last[0] > 'z' {
		return "", false
	}
	return s, true
}
