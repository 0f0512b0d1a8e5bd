package sidecar

import (
	"bytes"
	"fmt"
	"io"
	"net/url"
	"sort"
	"strings"
	"unicode/utf8"

	"go.yaml.in/yaml/v3"

	"github.com/backbay-labs/chio-agent/internal/regfile"
)

// Bounds on an OpenAPI document: a spec is operator input, but it may come
// from a generator or a download, and a hostile one must not exhaust memory.
const (
	// MaxSpecBytes bounds the document read.
	MaxSpecBytes = 8 << 20
	// MaxOperations bounds the operations one spec may define.
	MaxOperations = 10000
	// maxSegments bounds the segments of a path template and of a request
	// path that is matched.
	maxSegments = 128
)

// methods OpenAPI 3 allows on a path item, in its order.
var specMethods = []string{"get", "put", "post", "delete", "options", "head", "patch", "trace"}

// Operation is one operation of the spec: a method on a path template.
type Operation struct {
	// ID is the operationId: the tool name the kernel decides on.
	ID string
	// Method is the HTTP method, upper case.
	Method string
	// Route is the path template as the sidecar serves it: the base path
	// of the spec's first server followed by the template as written
	// (`/v1/pets/{petId}`). Receipts record it, not the concrete path.
	Route string
	// Params are the template's parameter names, in path order.
	Params []string

	segs []segment
}

// segment is one path segment of a template: a literal, or a parameter
// with an optional literal prefix and suffix (`{name}.json`).
type segment struct {
	literal        string
	param          string
	prefix, suffix string
}

func (s segment) isParam() bool { return s.param != "" }

// shapeKey identifies segments that match the same requests: templates
// differing only in parameter names are the same route.
func (s segment) shapeKey() string {
	if s.isParam() {
		return "P\x00" + s.prefix + "\x00" + s.suffix
	}
	return "L\x00" + s.literal
}

// Spec is a parsed OpenAPI 3.x document, reduced to what routing needs.
type Spec struct {
	// Title and Version come from info.
	Title, Version string
	// BasePath is the path of the first server's URL ("" for none or /).
	BasePath string
	// Operations in document order.
	Operations []*Operation

	root *node
}

// node is one level of the routing trie.
type node struct {
	literals map[string]*node
	params   []*paramEdge // most specific (longest prefix+suffix) first
	ops      map[string]*Operation
}

type paramEdge struct {
	seg  segment
	next *node
}

// LoadSpec reads and parses an OpenAPI document from a file.
func LoadSpec(path string) (*Spec, error) {
	f, err := regfile.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read openapi spec: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, MaxSpecBytes+1))
	if err != nil {
		return nil, fmt.Errorf("read openapi spec %s: %w", path, err)
	}
	if len(data) > MaxSpecBytes {
		return nil, fmt.Errorf("read openapi spec %s: %w: larger than %d bytes", path, ErrInvalidSpec, MaxSpecBytes)
	}
	s, err := ParseSpec(data)
	if err != nil {
		return nil, fmt.Errorf("openapi spec %s: %w", path, err)
	}
	return s, nil
}

type rawSpec struct {
	OpenAPI string `yaml:"openapi"`
	Swagger string `yaml:"swagger"`
	Info    struct {
		Title   string `yaml:"title"`
		Version string `yaml:"version"`
	} `yaml:"info"`
	Servers []struct {
		URL       string `yaml:"url"`
		Variables map[string]struct {
			Default string `yaml:"default"`
		} `yaml:"variables"`
	} `yaml:"servers"`
	Paths yaml.Node `yaml:"paths"`
}

// ParseSpec parses an OpenAPI 3.x document in YAML or JSON. It keeps the
// paths, their operations and operationIds and the first server's base
// path, and refuses what it cannot route unambiguously: a missing or
// duplicate operationId, a path-item $ref, two templates for the same
// route, a malformed template. Errors name the path and line.
func ParseSpec(data []byte) (s *Spec, err error) {
	if len(data) > MaxSpecBytes {
		return nil, fmt.Errorf("%w: larger than %d bytes", ErrInvalidSpec, MaxSpecBytes)
	}
	// yaml.v3 is robust, but a parser fed operator files must never take
	// the process down with it.
	defer func() {
		if r := recover(); r != nil {
			s, err = nil, fmt.Errorf("%w: parser failure: %v", ErrInvalidSpec, r)
		}
	}()
	var raw rawSpec
	dec := yaml.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&raw); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidSpec, err)
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); err != io.EOF {
		return nil, fmt.Errorf("%w: more than one YAML document", ErrInvalidSpec)
	}
	if raw.Swagger != "" {
		return nil, fmt.Errorf("%w: swagger %q (OpenAPI 2) is not supported; convert it to OpenAPI 3", ErrInvalidSpec, raw.Swagger)
	}
	if !strings.HasPrefix(raw.OpenAPI, "3.") {
		return nil, fmt.Errorf("%w: openapi: version %q is not 3.x", ErrInvalidSpec, raw.OpenAPI)
	}
	s = &Spec{Title: raw.Info.Title, Version: raw.Info.Version, root: newNode()}
	if len(raw.Servers) > 0 {
		base, err := basePath(raw.Servers[0].URL, func(name string) (string, bool) {
			v, ok := raw.Servers[0].Variables[name]
			return v.Default, ok
		})
		if err != nil {
			return nil, fmt.Errorf("%w: servers[0].url: %w", ErrInvalidSpec, err)
		}
		s.BasePath = base
	}
	if raw.Paths.Kind == 0 {
		return nil, fmt.Errorf("%w: no paths", ErrInvalidSpec)
	}
	if raw.Paths.Kind != yaml.MappingNode {
		return nil, fmt.Errorf("%w: line %d: paths must be a mapping", ErrInvalidSpec, raw.Paths.Line)
	}
	ids := map[string]*Operation{}
	shapes := map[string]string{}
	for i := 0; i+1 < len(raw.Paths.Content); i += 2 {
		k, v := raw.Paths.Content[i], raw.Paths.Content[i+1]
		tmpl := k.Value
		if strings.HasPrefix(tmpl, "x-") {
			continue // specification extension
		}
		segs, params, err := parseTemplate(tmpl)
		if err != nil {
			return nil, fmt.Errorf("%w: line %d: paths.%s: %w", ErrInvalidSpec, k.Line, tmpl, err)
		}
		var shape strings.Builder
		for _, sg := range segs {
			shape.WriteString(sg.shapeKey())
			shape.WriteByte('/')
		}
		if prev, dup := shapes[shape.String()]; dup {
			return nil, fmt.Errorf("%w: line %d: paths.%s: matches the same requests as %s (templates differing only in names are one route)", ErrInvalidSpec, k.Line, tmpl, prev)
		}
		shapes[shape.String()] = tmpl
		if v.Kind != yaml.MappingNode {
			return nil, fmt.Errorf("%w: line %d: paths.%s: a path item must be a mapping", ErrInvalidSpec, v.Line, tmpl)
		}
		full, fullSegs := s.BasePath+tmpl, segs
		if s.BasePath != "" {
			baseSegs, _, _ := parseTemplate(s.BasePath)
			fullSegs = append(append([]segment{}, baseSegs...), segs...)
		}
		for j := 0; j+1 < len(v.Content); j += 2 {
			mk, mv := v.Content[j], v.Content[j+1]
			key := mk.Value
			switch {
			case key == "$ref":
				return nil, fmt.Errorf("%w: line %d: paths.%s.$ref: path item references are not supported; inline the path item", ErrInvalidSpec, mk.Line, tmpl)
			case key == "summary" || key == "description" || key == "servers" || key == "parameters" || strings.HasPrefix(key, "x-"):
				continue
			case !isSpecMethod(key):
				return nil, fmt.Errorf("%w: line %d: paths.%s: unknown field %q", ErrInvalidSpec, mk.Line, tmpl, key)
			}
			var op struct {
				OperationID string `yaml:"operationId"`
			}
			if mv.Kind != yaml.MappingNode {
				return nil, fmt.Errorf("%w: line %d: paths.%s.%s: an operation must be a mapping", ErrInvalidSpec, mv.Line, tmpl, key)
			}
			if err := mv.Decode(&op); err != nil {
				return nil, fmt.Errorf("%w: line %d: paths.%s.%s: %w", ErrInvalidSpec, mv.Line, tmpl, key, err)
			}
			if op.OperationID == "" {
				return nil, fmt.Errorf("%w: line %d: paths.%s.%s: operationId is required: it is the tool name the policy decides on", ErrInvalidSpec, mv.Line, tmpl, key)
			}
			if !utf8.ValidString(op.OperationID) || strings.ContainsFunc(op.OperationID, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
				return nil, fmt.Errorf("%w: line %d: paths.%s.%s: operationId %q holds control characters", ErrInvalidSpec, mv.Line, tmpl, key, op.OperationID)
			}
			if op.OperationID == UnmatchedToolName {
				return nil, fmt.Errorf("%w: line %d: paths.%s.%s: operationId %q is reserved for requests that match no operation", ErrInvalidSpec, mv.Line, tmpl, key, op.OperationID)
			}
			if prev, dup := ids[op.OperationID]; dup {
				return nil, fmt.Errorf("%w: line %d: paths.%s.%s: operationId %q is already used by %s %s", ErrInvalidSpec, mv.Line, tmpl, key, op.OperationID, prev.Method, prev.Route)
			}
			if len(s.Operations) >= MaxOperations {
				return nil, fmt.Errorf("%w: more than %d operations", ErrInvalidSpec, MaxOperations)
			}
			o := &Operation{ID: op.OperationID, Method: strings.ToUpper(key), Route: full, Params: params, segs: fullSegs}
			ids[o.ID] = o
			s.Operations = append(s.Operations, o)
			s.root.insert(o)
		}
	}
	if len(s.Operations) == 0 {
		return nil, fmt.Errorf("%w: no operations under paths", ErrInvalidSpec)
	}
	return s, nil
}

func isSpecMethod(k string) bool {
	for _, m := range specMethods {
		if k == m {
			return true
		}
	}
	return false
}

// basePath is the path of a server URL, its variables replaced by their
// defaults, without a trailing slash ("" for the root).
func basePath(raw string, vars func(string) (string, bool)) (string, error) {
	var b strings.Builder
	for rest := raw; rest != ""; {
		i := strings.IndexByte(rest, '{')
		if i < 0 {
			b.WriteString(rest)
			break
		}
		j := strings.IndexByte(rest[i:], '}')
		if j < 0 {
			return "", fmt.Errorf("%q: unterminated {", raw)
		}
		name := rest[i+1 : i+j]
		v, ok := vars(name)
		if !ok {
			return "", fmt.Errorf("%q: variable %q has no default", raw, name)
		}
		b.WriteString(rest[:i])
		b.WriteString(v)
		rest = rest[i+j+1:]
	}
	u, err := url.Parse(b.String())
	if err != nil {
		return "", fmt.Errorf("%q: %w", raw, err)
	}
	p := strings.TrimRight(u.Path, "/")
	if p == "" {
		return "", nil
	}
	if !strings.HasPrefix(p, "/") {
		return "", fmt.Errorf("%q: path %q is not absolute", raw, p)
	}
	if _, _, err := parseTemplate(p); err != nil {
		return "", fmt.Errorf("%q: %w", raw, err)
	}
	if strings.ContainsAny(p, "{}") {
		return "", fmt.Errorf("%q: templates in the base path are not supported", raw)
	}
	return p, nil
}

// parseTemplate splits a path template into segments. Each segment is a
// literal or holds one {name}, optionally between a literal prefix and
// suffix.
func parseTemplate(t string) ([]segment, []string, error) {
	if !strings.HasPrefix(t, "/") {
		return nil, nil, fmt.Errorf("must start with /")
	}
	if !utf8.ValidString(t) {
		return nil, nil, fmt.Errorf("not valid UTF-8")
	}
	parts := strings.Split(t[1:], "/")
	if len(parts) > maxSegments {
		return nil, nil, fmt.Errorf("more than %d segments", maxSegments)
	}
	var segs []segment
	var params []string
	seen := map[string]bool{}
	for i, p := range parts {
		if p == "" && i != len(parts)-1 {
			return nil, nil, fmt.Errorf("empty segment (//)")
		}
		if p == "." || p == ".." {
			return nil, nil, fmt.Errorf("dot segment %q", p)
		}
		open := strings.Count(p, "{")
		if open != strings.Count(p, "}") {
			return nil, nil, fmt.Errorf("segment %q: unbalanced braces", p)
		}
		switch open {
		case 0:
			segs = append(segs, segment{literal: p})
		case 1:
			i, j := strings.IndexByte(p, '{'), strings.IndexByte(p, '}')
			if j < i {
				return nil, nil, fmt.Errorf("segment %q: unbalanced braces", p)
			}
			name := p[i+1 : j]
			if !validParamName(name) {
				return nil, nil, fmt.Errorf("segment %q: invalid parameter name %q", p, name)
			}
			if seen[name] {
				return nil, nil, fmt.Errorf("parameter %q appears twice", name)
			}
			seen[name] = true
			params = append(params, name)
			segs = append(segs, segment{param: name, prefix: p[:i], suffix: p[j+1:]})
		default:
			return nil, nil, fmt.Errorf("segment %q: more than one parameter in a segment is not supported", p)
		}
	}
	return segs, params, nil
}

func validParamName(s string) bool {
	if s == "" || len(s) > 128 {
		return false
	}
	for _, r := range s {
		if !(r == '_' || r == '-' || r == '.' || (r >= 'a' && r <= 'z') || (r >= 'A' && r <= 'Z') || (r >= '0' && r <= '9')) {
			return false
		}
	}
	return true
}

func newNode() *node { return &node{literals: map[string]*node{}, ops: map[string]*Operation{}} }

func (n *node) insert(o *Operation) {
	for _, sg := range o.segs {
		if !sg.isParam() {
			next, ok := n.literals[sg.literal]
			if !ok {
				next = newNode()
				n.literals[sg.literal] = next
			}
			n = next
			continue
		}
		var next *node
		for _, e := range n.params {
			if e.seg.prefix == sg.prefix && e.seg.suffix == sg.suffix {
				next = e.next
				break
			}
		}
		if next == nil {
			next = newNode()
			n.params = append(n.params, &paramEdge{seg: sg, next: next})
			// Longer fixed parts are more specific: try them first.
			sort.SliceStable(n.params, func(a, b int) bool {
				return len(n.params[a].seg.prefix)+len(n.params[a].seg.suffix) > len(n.params[b].seg.prefix)+len(n.params[b].seg.suffix)
			})
		}
		n = next
	}
	n.ops[o.Method] = o
}

// Match is a request matched to an operation.
type Match struct {
	Op *Operation
	// Params maps each path parameter to its decoded value.
	Params map[string]string
}

// Match finds the operation a request names. escapedPath is the request's
// path as sent (URL.EscapedPath). Literal segments are preferred over
// templates at every level, and a match backtracks, so /pets/mine matches
// `/pets/mine` before `/pets/{id}`. ok is false when no operation matches;
// err (wrapping ErrMalformedPath) is for a path the sidecar refuses to
// interpret: dot segments, empty segments, encoded slashes or backslashes,
// bad escapes or invalid UTF-8, which an upstream might read as another
// path than the one decided on.
func (s *Spec) Match(method, escapedPath string) (m Match, ok bool, err error) {
	segs, err := splitRequestPath(escapedPath)
	if err != nil {
		return Match{}, false, err
	}
	var vals []string
	op := s.root.match(method, segs, &vals)
	if op == nil {
		return Match{}, false, nil
	}
	m = Match{Op: op}
	if len(op.Params) > 0 {
		m.Params = make(map[string]string, len(op.Params))
		for i, name := range op.Params {
			m.Params[name] = vals[i]
		}
	}
	return m, true, nil
}

func (n *node) match(method string, segs []string, vals *[]string) *Operation {
	if len(segs) == 0 {
		return n.ops[method]
	}
	seg := segs[0]
	if next, ok := n.literals[seg]; ok {
		if op := next.match(method, segs[1:], vals); op != nil {
			return op
		}
	}
	for _, e := range n.params {
		p, sfx := e.seg.prefix, e.seg.suffix
		if len(seg) <= len(p)+len(sfx) || !strings.HasPrefix(seg, p) || !strings.HasSuffix(seg, sfx) {
			continue // an empty parameter value matches nothing
		}
		mark := len(*vals)
		*vals = append(*vals, seg[len(p):len(seg)-len(sfx)])
		if op := e.next.match(method, segs[1:], vals); op != nil {
			return op
		}
		*vals = (*vals)[:mark]
	}
	return nil
}

// splitRequestPath splits and decodes a request path, refusing what could
// be read two ways.
func splitRequestPath(p string) ([]string, error) {
	if !strings.HasPrefix(p, "/") {
		return nil, fmt.Errorf("%w: %q does not start with /", ErrMalformedPath, p)
	}
	parts := strings.Split(p[1:], "/")
	if len(parts) > maxSegments {
		return nil, fmt.Errorf("%w: more than %d segments", ErrMalformedPath, maxSegments)
	}
	for i, raw := range parts {
		if raw == "" && i != len(parts)-1 {
			return nil, fmt.Errorf("%w: empty segment (//)", ErrMalformedPath)
		}
		if strings.Contains(raw, "\\") || containsFold(raw, "%2f") || containsFold(raw, "%5c") {
			return nil, fmt.Errorf("%w: segment %d holds an encoded slash or a backslash", ErrMalformedPath, i+1)
		}
		v, err := url.PathUnescape(raw)
		if err != nil {
			return nil, fmt.Errorf("%w: segment %d: bad escape", ErrMalformedPath, i+1)
		}
		if v == "." || v == ".." {
			return nil, fmt.Errorf("%w: dot segment", ErrMalformedPath)
		}
		if !utf8.ValidString(v) || strings.ContainsFunc(v, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
			return nil, fmt.Errorf("%w: segment %d is not valid UTF-8 text", ErrMalformedPath, i+1)
		}
		parts[i] = v
	}
	return parts, nil
}

func containsFold(s, sub string) bool {
	return len(s) >= len(sub) && strings.Contains(strings.ToLower(s), sub)
}
