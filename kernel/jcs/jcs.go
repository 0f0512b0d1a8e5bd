package jcs

import (
	"fmt"
	"slices"
	"unicode/utf16"
	"unicode/utf8"
)

// MaxDepth bounds the nesting of arrays and objects. Receipts and tokens
// nest a handful of levels; the bound only exists so hostile input cannot
// exhaust the stack of the process that holds the signing key.
const MaxDepth = 512

// Canonicalize parses data as one JSON text and returns its RFC 8785
// canonical form. Errors wrap ErrSyntax, ErrDuplicateKey, ErrInvalidUTF8,
// ErrNumberRange or ErrTooDeep inside a *SyntaxError giving the offset.
func Canonicalize(data []byte) ([]byte, error) {
	return Append(make([]byte, 0, len(data)), data)
}

// Append appends the canonical form of the JSON text data to dst, so hot
// paths can reuse a buffer. On error dst is returned unchanged in content.
func Append(dst, data []byte) ([]byte, error) {
	if isCanonical(data) {
		return append(dst, data...), nil
	}
	return appendParsed(dst, data)
}

// appendParsed is Append without the already-canonical shortcut: parse
// into a tree, sort, write back.
func appendParsed(dst, data []byte) ([]byte, error) {
	out, err := appendText(dst, data)
	if err != nil {
		return dst, fmt.Errorf("canonicalize json: %w", err)
	}
	return out, nil
}

// appendText parses data as exactly one JSON value and appends its
// canonical form, without an error prefix (callers add their own): the one
// parse behind Canonicalize and Marshal's embedded json.RawMessage.
func appendText(dst, data []byte) ([]byte, error) {
	p := parser{data: data}
	p.skipSpace()
	v, err := p.value()
	if err != nil {
		return dst, err
	}
	p.skipSpace()
	if p.pos != len(p.data) {
		return dst, p.errf(ErrSyntax, "trailing data after the top-level value")
	}
	return appendNode(dst, &v), nil
}

type kind uint8

const (
	kindNull kind = iota
	kindFalse
	kindTrue
	kindNumber // s holds the canonical number text
	kindString // s holds the unescaped string
	kindArray
	kindObject
)

// node is a parsed JSON value. Numbers are canonicalized while parsing so
// that a bad number is reported at its offset.
type node struct {
	kind    kind
	s       string
	elems   []node
	members []member
}

type member struct {
	key string
	val node
}

type parser struct {
	data  []byte
	pos   int
	depth int
}

func (p *parser) errf(sentinel error, format string, args ...any) error {
	return &SyntaxError{Offset: p.pos, Msg: fmt.Sprintf(format, args...), Err: sentinel}
}

func (p *parser) skipSpace() {
	for p.pos < len(p.data) {
		switch p.data[p.pos] {
		case ' ', '\t', '\n', '\r':
			p.pos++
		default:
			return
		}
	}
}

func (p *parser) value() (node, error) {
	if p.pos >= len(p.data) {
		return node{}, p.errf(ErrSyntax, "unexpected end of input")
	}
	switch c := p.data[p.pos]; {
	case c == '{':
		return p.object()
	case c == '[':
		return p.array()
	case c == '"':
		s, err := p.str()
		return node{kind: kindString, s: s}, err
	case c == '-' || (c >= '0' && c <= '9'):
		s, err := p.number()
		return node{kind: kindNumber, s: s}, err
	case c == 't':
		return node{kind: kindTrue}, p.literal("true")
	case c == 'f':
		return node{kind: kindFalse}, p.literal("false")
	case c == 'n':
		return node{kind: kindNull}, p.literal("null")
	default:
		return node{}, p.errf(ErrSyntax, "unexpected character %q", rune(c))
	}
}

func (p *parser) literal(word string) error {
	if len(p.data)-p.pos < len(word) || string(p.data[p.pos:p.pos+len(word)]) != word {
		return p.errf(ErrSyntax, "invalid literal, want %s", word)
	}
	p.pos += len(word)
	return nil
}

// container parses the array (k kindArray) or object (kindObject) at
// p.pos: its elements or members, separated by commas, up to the closing
// bracket. Members come in source order; object sorts them.
func (p *parser) container(k kind) (node, error) {
	end, name := byte(']'), "array"
	if k == kindObject {
		end, name = '}', "object"
	}
	p.depth++
	if p.depth > MaxDepth {
		return node{}, p.errf(ErrTooDeep, "more than %d levels", MaxDepth)
	}
	defer func() { p.depth-- }()
	p.pos++ // '[' or '{'
	n := node{kind: k}
	p.skipSpace()
	if p.pos < len(p.data) && p.data[p.pos] == end {
		p.pos++
		return n, nil
	}
	for {
		p.skipSpace()
		if k == kindArray {
			v, err := p.value()
			if err != nil {
				return node{}, err
			}
			n.elems = append(n.elems, v)
		} else if err := p.member(&n); err != nil {
			return node{}, err
		}
		p.skipSpace()
		if p.pos >= len(p.data) {
			return node{}, p.errf(ErrSyntax, "unterminated %s", name)
		}
		switch p.data[p.pos] {
		case ',':
			p.pos++
		case end:
			p.pos++
			return n, nil
		default:
			return node{}, p.errf(ErrSyntax, "want ',' or '%c' in %s, got %q", end, name, rune(p.data[p.pos]))
		}
	}
}

// member parses one "key": value of an object into n.
func (p *parser) member(n *node) error {
	if p.pos >= len(p.data) || p.data[p.pos] != '"' {
		return p.errf(ErrSyntax, "want a string object key")
	}
	k, err := p.str()
	if err != nil {
		return err
	}
	p.skipSpace()
	if p.pos >= len(p.data) || p.data[p.pos] != ':' {
		return p.errf(ErrSyntax, "want ':' after object key")
	}
	p.pos++
	p.skipSpace()
	v, err := p.value()
	if err != nil {
		return err
	}
	n.members = append(n.members, member{key: k, val: v})
	return nil
}

func (p *parser) array() (node, error) { return p.container(kindArray) }

// object parses an object, sorts its members into canonical order and
// refuses a key given twice.
func (p *parser) object() (node, error) {
	start := p.pos
	n, err := p.container(kindObject)
	if err != nil {
		return node{}, err
	}
	slices.SortFunc(n.members, func(a, b member) int { return CompareKeys(a.key, b.key) })
	for i := 1; i < len(n.members); i++ {
		if n.members[i-1].key == n.members[i].key {
			return node{}, &SyntaxError{Offset: start, Msg: fmt.Sprintf("key %q in the object starting here", n.members[i].key), Err: ErrDuplicateKey}
		}
	}
	return n, nil
}

// str parses a string literal at p.pos (which holds '"') and returns its
// unescaped value, validated as UTF-8.
func (p *parser) str() (string, error) {
	p.pos++ // opening quote
	start := p.pos
	// Fast path: plain ASCII with no escapes needs no copy of its own.
	for p.pos < len(p.data) {
		c := p.data[p.pos]
		if c == '"' {
			s := string(p.data[start:p.pos])
			p.pos++
			return s, nil
		}
		if c == '\\' || c < 0x20 || c >= utf8.RuneSelf {
			break
		}
		p.pos++
	}
	buf := make([]byte, 0, p.pos-start+16)
	buf = append(buf, p.data[start:p.pos]...)
	for p.pos < len(p.data) {
		c := p.data[p.pos]
		switch {
		case c == '"':
			p.pos++
			return string(buf), nil
		case c < 0x20:
			return "", p.errf(ErrSyntax, "raw control character %#02x in string", c)
		case c == '\\':
			var err error
			if buf, err = p.escape(buf); err != nil {
				return "", err
			}
		case c < utf8.RuneSelf:
			buf = append(buf, c)
			p.pos++
		default:
			r, size := utf8.DecodeRune(p.data[p.pos:])
			if r == utf8.RuneError && size <= 1 {
				return "", p.errf(ErrInvalidUTF8, "byte %#02x in string", c)
			}
			buf = append(buf, p.data[p.pos:p.pos+size]...)
			p.pos += size
		}
	}
	return "", &SyntaxError{Offset: start - 1, Msg: "unterminated string", Err: ErrSyntax}
}

// escape decodes the escape sequence at p.pos (a backslash) onto buf.
func (p *parser) escape(buf []byte) ([]byte, error) {
	if p.pos+1 >= len(p.data) {
		return buf, p.errf(ErrSyntax, "unterminated escape")
	}
	c := p.data[p.pos+1]
	var out byte
	switch c {
	case '"', '\\', '/':
		out = c
	case 'b':
		out = '\b'
	case 'f':
		out = '\f'
	case 'n':
		out = '\n'
	case 'r':
		out = '\r'
	case 't':
		out = '\t'
	case 'u':
		r, ok := p.hex4(p.pos + 2)
		if !ok {
			return buf, p.errf(ErrSyntax, "invalid \\u escape")
		}
		switch {
		case utf16.IsSurrogate(r) && r < 0xDC00:
			// A high surrogate must be followed by a \u low surrogate.
			lo, ok := rune(0), false
			if p.pos+7 < len(p.data) && p.data[p.pos+6] == '\\' && p.data[p.pos+7] == 'u' {
				lo, ok = p.hex4(p.pos + 8)
			}
			if !ok || lo < 0xDC00 || lo > 0xDFFF {
				return buf, p.errf(ErrInvalidUTF8, "high surrogate \\u%04x without a low surrogate", r)
			}
			buf = utf8.AppendRune(buf, utf16.DecodeRune(r, lo))
			p.pos += 12
			return buf, nil
		case utf16.IsSurrogate(r):
			return buf, p.errf(ErrInvalidUTF8, "lone low surrogate \\u%04x", r)
		}
		buf = utf8.AppendRune(buf, r)
		p.pos += 6
		return buf, nil
	default:
		return buf, p.errf(ErrSyntax, "invalid escape \\%c", rune(c))
	}
	p.pos += 2
	return append(buf, out), nil
}

func (p *parser) hex4(at int) (rune, bool) {
	if at+4 > len(p.data) {
		return 0, false
	}
	var r rune
	for _, c := range p.data[at : at+4] {
		r <<= 4
		switch {
		case c >= '0' && c <= '9':
			r |= rune(c - '0')
		case c >= 'a' && c <= 'f':
			r |= rune(c - 'a' + 10)
		case c >= 'A' && c <= 'F':
			r |= rune(c - 'A' + 10)
		default:
			return 0, false
		}
	}
	return r, true
}

// number scans an RFC 8259 number at p.pos and returns its canonical text.
func (p *parser) number() (string, error) {
	start := p.pos
	d := p.data
	i := p.pos
	if i < len(d) && d[i] == '-' {
		i++
	}
	switch {
	case i < len(d) && d[i] == '0':
		i++
	case i < len(d) && d[i] >= '1' && d[i] <= '9':
		i = skipDigits(d, i)
	default:
		p.pos = i
		return "", p.errf(ErrSyntax, "invalid number")
	}
	integer := true
	if i < len(d) && d[i] == '.' {
		integer = false
		j := i + 1
		if i = skipDigits(d, j); i == j {
			p.pos = i
			return "", p.errf(ErrSyntax, "number needs digits after '.'")
		}
	}
	if i < len(d) && (d[i] == 'e' || d[i] == 'E') {
		integer = false
		i++
		if i < len(d) && (d[i] == '+' || d[i] == '-') {
			i++
		}
		j := i
		if i = skipDigits(d, j); i == j {
			p.pos = i
			return "", p.errf(ErrSyntax, "number needs digits in its exponent")
		}
	}
	p.pos = i
	out, err := appendNumberLiteral(nil, d[start:i], integer)
	if err != nil {
		return "", &SyntaxError{Offset: start, Msg: string(d[start:i]), Err: err}
	}
	return string(out), nil
}

// skipDigits returns the index of the first byte at or after i in d that
// is not an ASCII digit.
func skipDigits(d []byte, i int) int {
	for i < len(d) && d[i] >= '0' && d[i] <= '9' {
		i++
	}
	return i
}

// CompareKeys orders two strings by their UTF-16 code units, as RFC 8785
// sorts object members. It differs from byte order only where a character
// at or above U+E000 meets one beyond the BMP (whose UTF-16 form starts
// with a surrogate, 0xD800..0xDBFF).
func CompareKeys(a, b string) int {
	for i, j := 0, 0; i < len(a) && j < len(b); {
		ca, cb := a[i], b[j]
		if ca < utf8.RuneSelf && cb < utf8.RuneSelf {
			if ca != cb {
				return int(ca) - int(cb)
			}
			i++
			j++
			continue
		}
		ra, na := utf8.DecodeRuneInString(a[i:])
		rb, nb := utf8.DecodeRuneInString(b[j:])
		if ra != rb {
			ua, ub := firstUnit(ra), firstUnit(rb)
			if ua != ub {
				return int(ua) - int(ub)
			}
			// Same high surrogate: the low surrogates order as the runes do.
			if ra < rb {
				return -1
			}
			return 1
		}
		i += na
		j += nb
	}
	// One is a prefix of the other (or they are equal).
	return len(a) - len(b)
}

func firstUnit(r rune) rune {
	if r < 0x10000 {
		return r
	}
	return 0xD800 + (r-0x10000)>>10
}

func appendNode(dst []byte, n *node) []byte {
	switch n.kind {
	case kindNull:
		return append(dst, "null"...)
	case kindFalse:
		return append(dst, "false"...)
	case kindTrue:
		return append(dst, "true"...)
	case kindNumber:
		return append(dst, n.s...)
	case kindString:
		return AppendString(dst, n.s)
	case kindArray:
		dst = append(dst, '[')
		for i := range n.elems {
			if i > 0 {
				dst = append(dst, ',')
			}
			dst = appendNode(dst, &n.elems[i])
		}
		return append(dst, ']')
	default: // kindObject
		dst = append(dst, '{')
		for i := range n.members {
			if i > 0 {
				dst = append(dst, ',')
			}
			dst = AppendString(dst, n.members[i].key)
			dst = append(dst, ':')
			dst = appendNode(dst, &n.members[i].val)
		}
		return append(dst, '}')
	}
}

const hexDigits = "0123456789abcdef"

// AppendString appends s as a canonical JSON string literal. s must be
// valid UTF-8 (invalid bytes are copied as they are, which no canonical
// parser would accept back; Marshal checks before calling).
func AppendString(dst []byte, s string) []byte {
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 0x20 && c != '"' && c != '\\' {
			continue
		}
		dst = append(dst, s[start:i]...)
		switch c {
		case '"', '\\':
			dst = append(dst, '\\', c)
		case '\b':
			dst = append(dst, '\\', 'b')
		case '\t':
			dst = append(dst, '\\', 't')
		case '\n':
			dst = append(dst, '\\', 'n')
		case '\f':
			dst = append(dst, '\\', 'f')
		case '\r':
			dst = append(dst, '\\', 'r')
		default:
			dst = append(dst, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xF])
		}
		start = i + 1
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}
