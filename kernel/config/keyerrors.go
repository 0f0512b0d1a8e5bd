package config

import (
	"errors"
	"fmt"
	"reflect"
	"regexp"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
)

// ParseError lists what is wrong in kernel.yaml, each problem with its line
// and the key it is about, in the file's own words (YAML keys, never Go
// types).
type ParseError struct {
	Problems []Problem
}

// Problem is one mistake in kernel.yaml.
type Problem struct {
	// Line is 1-based; 0 when unknown.
	Line int
	// Key is the dotted path of the key, e.g. agent.workloads[0].egress.
	Key string
	// Msg says what is wrong.
	Msg string
}

func (p Problem) String() string {
	s := p.Msg
	if p.Key != "" {
		s = p.Key + ": " + s
	}
	if p.Line > 0 {
		s = fmt.Sprintf("line %d: %s", p.Line, s)
	}
	return s
}

func (e *ParseError) Error() string { return e.format("") }

// format writes the problems as FILE:LINE: KEY: MSG, one per line.
func (e *ParseError) format(file string) string {
	var b strings.Builder
	for i, p := range e.Problems {
		if i > 0 {
			b.WriteString("\n")
		}
		if file == "" {
			b.WriteString(p.String())
			continue
		}
		q := p
		q.Line = 0
		if p.Line > 0 {
			fmt.Fprintf(&b, "%s:%d: %s", file, p.Line, q.String())
		} else {
			fmt.Fprintf(&b, "%s: %s", file, q.String())
		}
	}
	return b.String()
}

// checkKeys walks the YAML tree beside Config's type and reports every key
// Config has no field for, with the nearest known key as a suggestion. It
// also returns the key path of each line, for naming type errors.
func checkKeys(root *yaml.Node) ([]Problem, map[int]string) {
	lines := map[int]string{}
	var probs []Problem
	var walk func(n *yaml.Node, t reflect.Type, path string)
	walk = func(n *yaml.Node, t reflect.Type, path string) {
		for n.Kind == yaml.DocumentNode && len(n.Content) > 0 {
			n = n.Content[0]
		}
		if n.Kind == yaml.AliasNode && n.Alias != nil {
			n = n.Alias
		}
		for t.Kind() == reflect.Pointer {
			t = t.Elem()
		}
		if path != "" {
			if _, ok := lines[n.Line]; !ok {
				lines[n.Line] = path
			}
		}
		switch {
		case n.Kind == yaml.MappingNode && t.Kind() == reflect.Struct:
			fields := yamlFields(t)
			for i := 0; i+1 < len(n.Content); i += 2 {
				k, v := n.Content[i], n.Content[i+1]
				kp := join(path, k.Value)
				lines[k.Line] = kp
				f, ok := fields[k.Value]
				if !ok {
					msg := fmt.Sprintf("unknown key %q", k.Value)
					if s := nearest(k.Value, fields); s != "" {
						msg += fmt.Sprintf(" (did you mean %q?)", s)
					}
					probs = append(probs, Problem{Line: k.Line, Key: path, Msg: msg})
					continue
				}
				walk(v, f, kp)
			}
		case n.Kind == yaml.MappingNode && t.Kind() == reflect.Map:
			for i := 0; i+1 < len(n.Content); i += 2 {
				kp := fmt.Sprintf("%s[%s]", path, n.Content[i].Value)
				lines[n.Content[i].Line] = kp
				walk(n.Content[i+1], t.Elem(), kp)
			}
		case n.Kind == yaml.SequenceNode && t.Kind() == reflect.Slice:
			for i, c := range n.Content {
				walk(c, t.Elem(), fmt.Sprintf("%s[%d]", path, i))
			}
		}
	}
	walk(root, reflect.TypeOf(Config{}), "")
	return probs, lines
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

// yamlFields maps a struct's YAML keys to their field types.
func yamlFields(t reflect.Type) map[string]reflect.Type {
	m := map[string]reflect.Type{}
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if name == "" || name == "-" {
			continue
		}
		m[name] = f.Type
	}
	return m
}

// nearest is the known key closest to a mistyped one, or "" when none is
// close (at most two edits, or one is a prefix of the other).
func nearest(key string, known map[string]reflect.Type) string {
	best, bestD := "", 3
	for k := range known {
		d := editDistance(strings.ToLower(key), k)
		if d < bestD || (d == bestD && k < best) {
			best, bestD = k, d
		}
	}
	return best
}

func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			c := prev[j-1]
			if a[i-1] != b[j-1] {
				c++
			}
			cur[j] = min(c, prev[j]+1, cur[j-1]+1)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

var typeErrRE = regexp.MustCompile("^line (\\d+): cannot unmarshal !!(\\w+)(?: `(.*)`)? into (.+)$")

// selfNamedRE matches a message that begins with a dotted key path.
var selfNamedRE = regexp.MustCompile(`^[a-z_][a-z0-9_]*(\.[a-z0-9_]+|\[[^\]]*\])+: `)

// keyTypeErrors rewrites yaml's type errors ("cannot unmarshal !!str `abc`
// into uint16") in terms of the key and what it wants.
func keyTypeErrors(err error, lines map[int]string) error {
	var msgs []string
	var te *yaml.TypeError
	if errors.As(err, &te) {
		msgs = te.Errors
	} else if strings.HasPrefix(err.Error(), "line ") {
		// An UnmarshalYAML of ours (Duration) speaks of a line already.
		msgs = []string{err.Error()}
	} else {
		return fmt.Errorf("parse: %w", err)
	}
	pe := &ParseError{}
	for _, msg := range msgs {
		m := typeErrRE.FindStringSubmatch(msg)
		if m == nil {
			// "line N: invalid duration": name the key too.
			p := Problem{Msg: msg}
			if rest, ok := strings.CutPrefix(msg, "line "); ok {
				if n, tail, ok := strings.Cut(rest, ": "); ok {
					if line, err := strconv.Atoi(n); err == nil {
						p = Problem{Line: line, Key: lines[line], Msg: tail}
						if selfNamedRE.MatchString(tail) {
							// A section's own check names its key already
							// ("kubernetes.default_policy: ..."); the line's
							// key would be another one of the section.
							p.Key = ""
						}
					}
				}
			}
			pe.Problems = append(pe.Problems, p)
			continue
		}
		line, _ := strconv.Atoi(m[1])
		got := map[string]string{"str": "a string", "int": "a number", "float": "a number", "bool": "true or false",
			"seq": "a list", "map": "a mapping", "null": "nothing", "timestamp": "a time"}[m[2]]
		if got == "" {
			got = m[2]
		}
		if m[3] != "" {
			got += " " + strconv.Quote(m[3])
		}
		pe.Problems = append(pe.Problems, Problem{Line: line, Key: lines[line], Msg: fmt.Sprintf("%s is not %s", got, want(m[4]))})
	}
	return pe
}

// want says in YAML's words what a Go type yaml named accepts.
func want(goType string) string {
	switch {
	case strings.HasPrefix(goType, "[]"):
		return "a list"
	case strings.HasPrefix(goType, "map["), strings.HasPrefix(goType, "config."):
		return "a mapping"
	case goType == "bool":
		return "true or false"
	case goType == "string":
		return "a string"
	case strings.HasPrefix(goType, "uint"):
		return "a non-negative whole number (" + goType + ")"
	case strings.HasPrefix(goType, "int"):
		return "a whole number"
	case strings.HasPrefix(goType, "float"):
		return "a number"
	}
	return "a " + goType
}
