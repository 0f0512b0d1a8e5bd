package config

import (
	"errors"
	"fmt"
	"io"
	"strings"
)

var errEOF = io.EOF

// Interpolate replaces ${VAR} and ${VAR:-default} with values from lookup.
// $$ is a literal $. An unset ${VAR} without a default is an error naming the
// variable and its line; a ${ that does not close is an error too. YAML
// comments (a # at the start of a line or after a blank, outside quotes) are
// left as they are, so a commented-out ${VAR} needs no value.
func Interpolate(s string, lookup func(string) (string, bool)) (string, error) {
	if !strings.Contains(s, "$") {
		return s, nil
	}
	var b strings.Builder
	b.Grow(len(s))
	for n, line := range strings.SplitAfter(s, "\n") {
		code, comment := splitComment(line)
		if err := interpolateLine(&b, code, n+1, lookup); err != nil {
			return "", err
		}
		b.WriteString(comment)
	}
	return b.String(), nil
}

// splitComment cuts a line at the start of its YAML comment, if any.
func splitComment(line string) (code, comment string) {
	var quote byte
	for i := 0; i < len(line); i++ {
		c := line[i]
		switch {
		case quote != 0:
			if c == '\\' && quote == '"' && i+1 < len(line) {
				i++
			} else if c == quote {
				quote = 0
			}
		case c == '"' || c == '\'':
			quote = c
		case c == '#' && (i == 0 || line[i-1] == ' ' || line[i-1] == '\t'):
			return line[:i], line[i:]
		}
	}
	return line, ""
}

func interpolateLine(b *strings.Builder, s string, line int, lookup func(string) (string, bool)) error {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c != '$' || i+1 >= len(s) {
			b.WriteByte(c)
			continue
		}
		switch s[i+1] {
		case '$':
			b.WriteByte('$')
			i++
			continue
		case '{':
		default:
			b.WriteByte(c)
			continue
		}
		end := strings.IndexByte(s[i+2:], '}')
		if end < 0 || strings.ContainsRune(s[i+2:i+2+end], '\n') {
			return fmt.Errorf("line %d: unterminated ${", line)
		}
		expr := s[i+2 : i+2+end]
		name, def, hasDef := strings.Cut(expr, ":-")
		if !validName(name) {
			return fmt.Errorf("line %d: invalid variable name %q in ${%s}", line, name, expr)
		}
		v, ok := lookup(name)
		switch {
		case ok && v != "":
		case hasDef:
			v = def
		case ok:
			// Set but empty, with no default: the empty value is what was asked for.
		default:
			return fmt.Errorf("line %d: %w: ${%s}", line, ErrUnsetVariable, name)
		}
		b.WriteString(v)
		i += 2 + end
	}
	return nil
}

// ErrUnsetVariable means kernel.yaml names a variable the environment lacks.
var ErrUnsetVariable = errors.New("environment variable not set")

func validName(s string) bool {
	if s == "" {
		return false
	}
	for i, r := range s {
		if r == '_' || (r >= 'A' && r <= 'Z') || (r >= 'a' && r <= 'z') || (i > 0 && r >= '0' && r <= '9') {
			continue
		}
		return false
	}
	return true
}
