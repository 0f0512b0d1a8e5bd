package hushspec

import (
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"unicode/utf8"
)

// The HushSpec regex profile (core 3.14.3, grammars 9). A pattern is parsed
// here by hand, because no library knows the profile: which RE2 constructs
// are refused, and the fixed semantics of the rest. The parser both checks
// the pattern and writes it out as Go RE2 syntax with the profile's meaning:
//
//   - \s is [\t\n\v\f\r ] (Go's \s lacks \v), \S its complement;
//   - the i flag folds ASCII letters only, so it is never passed to Go (whose
//     folding is Unicode: k would match the Kelvin sign); each ASCII letter
//     becomes a two-letter class instead;
//   - \d, \w, \b, ., ^, $ and the m and s flags already mean in Go what the
//     profile says ($ is end of text unless m).
//
// Go then compiles the translation, which bounds its size (a repeat count
// over 1000 is refused there).

const maxRegexLen = 2048 // bytes (core 3.14.3)

var errRegexProfile = errors.New("outside the HushSpec regex profile")

// compileProfileRegex checks src against the profile and compiles it with
// the profile's semantics.
func compileProfileRegex(src string) (*regexp.Regexp, error) {
	goSrc, err := translateRegex(src)
	if err != nil {
		return nil, err
	}
	re, err := regexp.Compile(goSrc)
	if err != nil {
		return nil, fmt.Errorf("%q does not compile: %v", clip(src), err)
	}
	return re, nil
}

type regexParser struct {
	src  string
	pos  int
	fold bool // the i flag
	out  strings.Builder
}

func (p *regexParser) errorf(format string, args ...any) error {
	return fmt.Errorf("%w: %q at byte %d: %s", errRegexProfile, clip(p.src), p.pos, fmt.Sprintf(format, args...))
}

func translateRegex(src string) (string, error) {
	if len(src) > maxRegexLen {
		return "", fmt.Errorf("%w: pattern is %d bytes, more than %d", errRegexProfile, len(src), maxRegexLen)
	}
	if !utf8.ValidString(src) {
		return "", fmt.Errorf("%w: pattern is not valid UTF-8", errRegexProfile)
	}
	p := &regexParser{src: src}
	var goFlags string
	// One or more leading flag groups, each a non-empty subset of i, m, s.
	for strings.HasPrefix(p.src[p.pos:], "(?") {
		end := strings.IndexByte(p.src[p.pos:], ')')
		if end < 0 {
			break
		}
		flags := p.src[p.pos+2 : p.pos+end]
		if flags == "" || strings.Trim(flags, "ims") != "" {
			break // not a flag group: a group the parser below judges
		}
		for i, c := range flags {
			if strings.ContainsRune(flags[i+1:], c) {
				return "", p.errorf("flag %c repeated in a flag group", c)
			}
			switch c {
			case 'i':
				p.fold = true
			case 'm', 's':
				if !strings.ContainsRune(goFlags, c) {
					goFlags += string(c)
				}
			}
		}
		p.pos += end + 1
	}
	if goFlags != "" {
		p.out.WriteString("(?" + goFlags + ")")
	}
	if _, err := p.alternation(0); err != nil {
		return "", err
	}
	if p.pos < len(p.src) {
		return "", p.errorf("unmatched )")
	}
	return p.out.String(), nil
}

// alternation parses until ")" or the end; it reports whether any piece in
// it carries an unbounded quantifier (for the nested-quantifier rule).
func (p *regexParser) alternation(depth int) (bool, error) {
	if depth > 100 {
		return false, p.errorf("groups nest too deeply")
	}
	unbounded := false
	for p.pos < len(p.src) {
		c := p.src[p.pos]
		switch c {
		case ')':
			return unbounded, nil
		case '|':
			p.out.WriteByte('|')
			p.pos++
			continue
		}
		u, err := p.piece(depth)
		if err != nil {
			return false, err
		}
		unbounded = unbounded || u
	}
	return unbounded, nil
}

// piece parses an atom and its optional quantifier.
func (p *regexParser) piece(depth int) (bool, error) {
	start := p.pos
	bodyUnbounded, quantifiable, err := p.atom(depth)
	if err != nil {
		return false, err
	}
	if p.pos >= len(p.src) {
		return bodyUnbounded, nil
	}
	q, unbounded, err := p.quantifier()
	if err != nil || q == "" {
		return bodyUnbounded, err
	}
	if !quantifiable {
		return false, p.errorf("quantifier %s follows nothing it can repeat", q)
	}
	if unbounded && bodyUnbounded && p.src[start] == '(' {
		return false, p.errorf("a group whose body is unbounded is itself quantified without bound (nested quantifier, as in (a+)+)")
	}
	p.out.WriteString(q)
	return unbounded || bodyUnbounded, nil
}

// quantifier parses ?, *, +, {n}, {n,}, {n,m} and a lazy ?; it refuses
// possessive and stacked quantifiers.
func (p *regexParser) quantifier() (q string, unbounded bool, err error) {
	switch c := p.src[p.pos]; c {
	case '?', '*', '+':
		q, unbounded = string(c), c != '?'
		p.pos++
	case '{':
		end := strings.IndexByte(p.src[p.pos:], '}')
		if end < 0 {
			return "", false, p.errorf("unclosed {")
		}
		body := p.src[p.pos+1 : p.pos+end]
		lo, hi, comma := strings.Cut(body, ",")
		if !allDigits(lo) || (comma && hi != "" && !allDigits(hi)) {
			if strings.HasPrefix(body, ",") {
				return "", false, p.errorf("{,n} is not a quantifier of the profile")
			}
			return "", false, p.errorf("{%s} is not a quantifier", clip(body))
		}
		if comma && hi != "" {
			a, _ := strconv.Atoi(lo)
			b, _ := strconv.Atoi(hi)
			if a > b {
				return "", false, p.errorf("{%s}: minimum above maximum", body)
			}
		}
		q, unbounded = "{"+body+"}", comma && hi == ""
		p.pos += end + 1
	default:
		return "", false, nil
	}
	if p.pos < len(p.src) && p.src[p.pos] == '?' {
		q += "?"
		p.pos++
	}
	if p.pos < len(p.src) {
		switch p.src[p.pos] {
		case '+':
			return "", false, p.errorf("possessive quantifiers are not allowed")
		case '*', '?', '{':
			return "", false, p.errorf("a quantifier cannot follow a quantifier")
		}
	}
	return q, unbounded, nil
}

func allDigits(s string) bool {
	if s == "" || len(s) > 6 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// atom parses one atom; it reports whether its body is unbounded (a group)
// and whether a quantifier may follow it.
func (p *regexParser) atom(depth int) (unbounded, quantifiable bool, err error) {
	c := p.src[p.pos]
	switch c {
	case '(':
		return p.group(depth)
	case '[':
		return false, true, p.class()
	case '.':
		p.out.WriteByte('.')
		p.pos++
		return false, true, nil
	case '^', '$':
		p.out.WriteByte(c)
		p.pos++
		return false, false, nil
	case '\\':
		q, err := p.escape()
		return false, q, err
	case ']', '{', '}', '?', '*', '+':
		return false, false, p.errorf("%c must be escaped", c)
	}
	r, n := utf8.DecodeRuneInString(p.src[p.pos:])
	if r < 0x20 {
		return false, false, p.errorf("control character U+%04X must be written as an escape", r)
	}
	p.pos += n
	p.literal(r)
	return false, true, nil
}

// literal writes one literal scalar, folding ASCII letters under i.
func (p *regexParser) literal(r rune) {
	if p.fold && isASCIILetter(r) {
		fmt.Fprintf(&p.out, "[%c%c]", r|0x20, r&^0x20)
		return
	}
	p.out.WriteString(regexp.QuoteMeta(string(r)))
}

func isASCIILetter(r rune) bool { return r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' }

func (p *regexParser) group(depth int) (bool, bool, error) {
	rest := p.src[p.pos:]
	switch {
	case strings.HasPrefix(rest, "(?:"):
		p.out.WriteString("(?:")
		p.pos += 3
	case strings.HasPrefix(rest, "(?P<"), strings.HasPrefix(rest, "(?<"):
		open := 3
		if rest[2] == 'P' {
			open = 4
		}
		end := strings.IndexByte(rest, '>')
		if end < 0 || !groupNameRE.MatchString(rest[open:end]) {
			return false, false, p.errorf("bad group name")
		}
		p.out.WriteString("(?P<" + rest[open:end] + ">")
		p.pos += end + 1
	case strings.HasPrefix(rest, "(?"):
		return false, false, p.errorf("%s: lookaround, backreferences, atomic groups, comments, conditionals, recursion and flag groups after the start are not allowed", clip(rest[:min(len(rest), 4)]))
	default:
		p.out.WriteByte('(')
		p.pos++
	}
	unbounded, err := p.alternation(depth + 1)
	if err != nil {
		return false, false, err
	}
	if p.pos >= len(p.src) {
		return false, false, p.errorf("missing )")
	}
	p.out.WriteByte(')')
	p.pos++
	return unbounded, true, nil
}

var groupNameRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

const asciiSpace = `\t\n\x0B\f\r `

// escape parses an escape outside a bracket class; it reports whether a
// quantifier may follow (not after \b or \B).
func (p *regexParser) escape() (bool, error) {
	if p.pos+1 >= len(p.src) {
		return false, p.errorf("trailing backslash")
	}
	c := p.src[p.pos+1]
	switch c {
	case 'd', 'D', 'w', 'W':
		p.out.WriteString(`\` + string(c))
	case 's':
		p.out.WriteString(`[` + asciiSpace + `]`)
	case 'S':
		p.out.WriteString(`[^` + asciiSpace + `]`)
	case 'b', 'B':
		p.out.WriteString(`\` + string(c))
		p.pos += 2
		return false, nil
	default:
		r, err := p.escapedScalar()
		if err != nil {
			return false, err
		}
		p.literal(r)
		return true, nil
	}
	p.pos += 2
	return true, nil
}

// escapedScalar reads \t \n \r \f \v \xHH or \ before punctuation.
func (p *regexParser) escapedScalar() (rune, error) {
	c := p.src[p.pos+1]
	var r rune
	switch {
	case c == 't':
		r = '\t'
	case c == 'n':
		r = '\n'
	case c == 'r':
		r = '\r'
	case c == 'f':
		r = '\f'
	case c == 'v':
		r = '\v'
	case c == 'x':
		if p.pos+4 > len(p.src) || !isHex(p.src[p.pos+2]) || !isHex(p.src[p.pos+3]) {
			return 0, p.errorf(`\x takes exactly two hex digits`)
		}
		v, _ := strconv.ParseUint(p.src[p.pos+2:p.pos+4], 16, 8)
		p.pos += 4
		return rune(v), nil
	case c >= 0x21 && c <= 0x2f, c >= 0x3a && c <= 0x40, c >= 0x5b && c <= 0x60, c >= 0x7b && c <= 0x7e:
		r = rune(c)
	default:
		return 0, p.errorf(`\%c is not an escape of the profile (no \A \z \Z \G \p, backreferences or other letter escapes)`, c)
	}
	p.pos += 2
	return r, nil
}

func isHex(c byte) bool { return c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F' }

// class parses a bracket class into an explicit set of ranges and writes it.
func (p *regexParser) class() error {
	p.pos++ // [
	negate := false
	if p.pos < len(p.src) && p.src[p.pos] == '^' {
		negate = true
		p.pos++
	}
	var ranges [][2]rune
	items := 0
	for {
		if p.pos >= len(p.src) {
			return p.errorf("missing ]")
		}
		c := p.src[p.pos]
		if c == ']' {
			if items == 0 {
				return p.errorf("empty bracket class")
			}
			p.pos++
			break
		}
		if c == '[' {
			return p.errorf("[ inside a bracket class must be escaped (no POSIX classes)")
		}
		items++
		if c == '\\' && p.pos+1 < len(p.src) {
			switch e := p.src[p.pos+1]; e {
			case 'd':
				ranges = append(ranges, [2]rune{'0', '9'})
				p.pos += 2
				continue
			case 'w':
				ranges = append(ranges, [2]rune{'0', '9'}, [2]rune{'A', 'Z'}, [2]rune{'_', '_'}, [2]rune{'a', 'z'})
				p.pos += 2
				continue
			case 's':
				ranges = append(ranges, [2]rune{'\t', '\r'}, [2]rune{' ', ' '})
				p.pos += 2
				continue
			case 'D', 'W', 'S', 'b', 'B':
				return p.errorf(`\%c is not allowed inside a bracket class`, e)
			}
		}
		lo, err := p.classAtom()
		if err != nil {
			return err
		}
		hi := lo
		if p.pos+1 < len(p.src) && p.src[p.pos] == '-' && p.src[p.pos+1] != ']' {
			p.pos++
			if hi, err = p.classAtom(); err != nil {
				return err
			}
			if hi < lo {
				return p.errorf("range end below its start")
			}
			if lo > 0xFFFF || hi > 0xFFFF {
				return p.errorf("a range endpoint outside the Basic Multilingual Plane")
			}
		}
		ranges = append(ranges, [2]rune{lo, hi})
	}
	if p.fold {
		for _, r := range ranges {
			for _, span := range [][2]rune{{'a', 'z'}, {'A', 'Z'}} {
				a, b := max(r[0], span[0]), min(r[1], span[1])
				if a <= b {
					ranges = append(ranges, [2]rune{a ^ 0x20, b ^ 0x20})
				}
			}
		}
	}
	p.out.WriteByte('[')
	if negate {
		p.out.WriteByte('^')
	}
	for _, r := range ranges {
		fmt.Fprintf(&p.out, `\x{%x}-\x{%x}`, r[0], r[1])
	}
	p.out.WriteByte(']')
	return nil
}

// classAtom reads one scalar of a bracket class: an escape or any scalar
// other than [ ] \.
func (p *regexParser) classAtom() (rune, error) {
	if p.pos >= len(p.src) {
		return 0, p.errorf("missing ]")
	}
	c := p.src[p.pos]
	switch c {
	case '\\':
		if p.pos+1 >= len(p.src) {
			return 0, p.errorf("trailing backslash")
		}
		return p.escapedScalar()
	case '[', ']':
		return 0, p.errorf("%c must be escaped inside a bracket class", c)
	}
	r, n := utf8.DecodeRuneInString(p.src[p.pos:])
	if r < 0x20 {
		return 0, p.errorf("control character U+%04X must be written as an escape", r)
	}
	p.pos += n
	return r, nil
}
