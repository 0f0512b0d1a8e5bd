package hushspec

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math"
	"regexp"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
)

// The YAML profile of core 2.4. go.yaml.in/yaml/v3 gives the node tree; what
// it does not do the profile checks by hand: it resolves plain scalars with
// YAML 1.1 leftovers (2026-01-01 is a !!timestamp, 1_0 and 0b1010 are
// integers), keeps anchors and merge keys, and allows duplicate keys in a
// node tree. Every plain scalar is therefore resolved again here under the
// YAML 1.2 Core schema, and explicit tags are checked against it.

// Resource limits of core 2.4 item 6 (the recommended defaults). A document
// past any of them is refused as a parse error (E001), never truncated.
const (
	MaxDocumentBytes = 1 << 20 // one policy file
	maxDepth         = 32      // nesting of mappings and sequences
	maxNodes         = 100_000 // YAML nodes in one document
)

// maxSafeInt is 2^53-1, the portable integer bound of core 2.4.
const maxSafeInt = 1<<53 - 1

// scalarKind is the YAML 1.2 Core type a scalar resolved to.
type scalarKind int

const (
	sNull scalarKind = iota
	sBool
	sInt
	sFloat
	sStr
)

var kindNames = [...]string{"null", "boolean", "integer", "floating point", "string"}

// scalar is a resolved YAML scalar.
type scalar struct {
	kind scalarKind
	b    bool
	i    int64   // sInt
	f    float64 // sFloat (and sInt, as a float)
	s    string  // sStr; the source text otherwise
}

var (
	coreNull  = regexp.MustCompile(`^(?:~|null|Null|NULL|)$`)
	coreBool  = regexp.MustCompile(`^(?:true|True|TRUE|false|False|FALSE)$`)
	coreInt10 = regexp.MustCompile(`^[-+]?[0-9]+$`)
	coreInt8  = regexp.MustCompile(`^0o[0-7]+$`)
	coreInt16 = regexp.MustCompile(`^0x[0-9a-fA-F]+$`)
	coreFloat = regexp.MustCompile(`^[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?$`)
	coreInf   = regexp.MustCompile(`^[-+]?\.(?:inf|Inf|INF)$`)
	coreNaN   = regexp.MustCompile(`^\.(?:nan|NaN|NAN)$`)
)

// errYAML is a refusal of the YAML profile, reported as E001.
type errYAML struct {
	line, col int
	sentinel  error
	msg       string
}

func (e *errYAML) Error() string { return e.msg }

// resolveScalar resolves n under the YAML 1.2 Core schema (core 2.4): a
// quoted or block scalar is a string, a plain one takes the first Core type
// its text matches, an explicit tag must name a Core type whose
// representation the text has. NaN and infinities are refused, and so are
// integers beyond 2^53-1.
func resolveScalar(n *yaml.Node) (scalar, error) {
	text := n.Value
	tag := ""
	if n.Style&yaml.TaggedStyle != 0 {
		tag = n.Tag
		switch tag {
		case "!!str", "tag:yaml.org,2002:str", "!":
			return scalar{kind: sStr, s: text}, nil
		case "!!null", "tag:yaml.org,2002:null":
			if !coreNull.MatchString(text) {
				return scalar{}, fmt.Errorf("invalid !!null payload %q", clip(text))
			}
			return scalar{kind: sNull, s: text}, nil
		case "!!bool", "tag:yaml.org,2002:bool":
			if !coreBool.MatchString(text) {
				return scalar{}, fmt.Errorf("invalid !!bool payload %q", clip(text))
			}
		case "!!int", "tag:yaml.org,2002:int":
			if !coreInt10.MatchString(text) && !coreInt8.MatchString(text) && !coreInt16.MatchString(text) {
				return scalar{}, fmt.Errorf("invalid !!int payload %q", clip(text))
			}
		case "!!float", "tag:yaml.org,2002:float":
			if !coreFloat.MatchString(text) && !coreInf.MatchString(text) && !coreNaN.MatchString(text) {
				return scalar{}, fmt.Errorf("invalid !!float payload %q", clip(text))
			}
			return floatScalar(text)
		default:
			return scalar{}, fmt.Errorf("tag %s is not a YAML 1.2 Core tag", n.Tag)
		}
	} else if n.Style&(yaml.DoubleQuotedStyle|yaml.SingleQuotedStyle|yaml.LiteralStyle|yaml.FoldedStyle) != 0 {
		return scalar{kind: sStr, s: text}, nil
	}
	switch {
	case coreNull.MatchString(text) && tag == "":
		return scalar{kind: sNull, s: text}, nil
	case coreBool.MatchString(text):
		return scalar{kind: sBool, b: text[0] == 't' || text[0] == 'T', s: text}, nil
	case coreInt10.MatchString(text):
		return intScalar(text, text, 10)
	case coreInt8.MatchString(text):
		return intScalar(text, text[2:], 8)
	case coreInt16.MatchString(text):
		return intScalar(text, text[2:], 16)
	case coreFloat.MatchString(text), coreInf.MatchString(text), coreNaN.MatchString(text):
		return floatScalar(text)
	}
	return scalar{kind: sStr, s: text}, nil
}

func intScalar(text, digits string, base int) (scalar, error) {
	u, err := strconv.ParseUint(strings.TrimLeft(digits, "+-"), base, 64)
	if err != nil || u > maxSafeInt {
		return scalar{}, fmt.Errorf("integer %s is beyond the portable bound 2^53-1", clip(text))
	}
	i := int64(u)
	if strings.HasPrefix(digits, "-") {
		i = -i
	}
	return scalar{kind: sInt, i: i, f: float64(i), s: text}, nil
}

func floatScalar(text string) (scalar, error) {
	if coreInf.MatchString(text) || coreNaN.MatchString(text) {
		return scalar{}, fmt.Errorf("%s is not a finite number", text)
	}
	f, err := strconv.ParseFloat(text, 64)
	if err != nil || math.IsInf(f, 0) || math.IsNaN(f) {
		return scalar{}, fmt.Errorf("%s is not a finite number", clip(text))
	}
	return scalar{kind: sFloat, f: f, s: text}, nil
}

// decodeYAML parses exactly one YAML document and checks it against the
// profile: size, one document, no anchors, aliases or merge keys, Core tags
// only, no duplicate keys, bounded depth and node count. Tabs used as
// indentation are a syntax error of the YAML parser itself.
func decodeYAML(data []byte) (*yaml.Node, error) {
	if len(data) > MaxDocumentBytes {
		return nil, &errYAML{sentinel: ErrLimit, msg: fmt.Sprintf("document is %d bytes, more than the limit of %d", len(data), MaxDocumentBytes)}
	}
	data = bytes.TrimPrefix(data, []byte("\xef\xbb\xbf"))
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, &errYAML{sentinel: ErrSyntax, msg: "empty document"}
		}
		return nil, &errYAML{line: yamlErrLine(err), sentinel: ErrSyntax, msg: err.Error()}
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		line := 0
		if err == nil {
			line = extra.Line
		}
		return nil, &errYAML{line: line, sentinel: ErrSyntax, msg: "multi-document streams are not allowed: the file holds more than one YAML document"}
	}
	if doc.Kind != yaml.DocumentNode || len(doc.Content) != 1 {
		return nil, &errYAML{sentinel: ErrSyntax, msg: "empty document"}
	}
	w := profileWalker{}
	if err := w.walk(doc.Content[0], 1); err != nil {
		return nil, err
	}
	return doc.Content[0], nil
}

type profileWalker struct{ nodes int }

func (w *profileWalker) walk(n *yaml.Node, depth int) error {
	w.nodes++
	if w.nodes > maxNodes {
		return &errYAML{n.Line, n.Column, ErrLimit, fmt.Sprintf("document has more than %d nodes", maxNodes)}
	}
	if depth > maxDepth {
		return &errYAML{n.Line, n.Column, ErrLimit, fmt.Sprintf("document nests deeper than %d levels", maxDepth)}
	}
	if n.Kind == yaml.AliasNode || n.Anchor != "" {
		return &errYAML{n.Line, n.Column, ErrSyntax, "anchors are not allowed: YAML anchors (&), aliases (*) and merge keys (<<) are refused"}
	}
	switch n.Kind {
	case yaml.ScalarNode:
		if _, err := resolveScalar(n); err != nil {
			return &errYAML{n.Line, n.Column, ErrType, err.Error()}
		}
	case yaml.MappingNode, yaml.SequenceNode:
		if n.Style&yaml.TaggedStyle != 0 && n.Tag != "!!map" && n.Tag != "!!seq" &&
			n.Tag != "tag:yaml.org,2002:map" && n.Tag != "tag:yaml.org,2002:seq" {
			return &errYAML{n.Line, n.Column, ErrType, fmt.Sprintf("tag %s is not a YAML 1.2 Core tag", n.Tag)}
		}
		if n.Kind == yaml.MappingNode && n.Tag == "!!seq" || n.Kind == yaml.SequenceNode && n.Tag == "!!map" {
			return &errYAML{n.Line, n.Column, ErrType, fmt.Sprintf("tag %s does not fit the node", n.Tag)}
		}
		var seen map[string]bool
		if n.Kind == yaml.MappingNode {
			seen = make(map[string]bool, len(n.Content)/2)
		}
		for i, c := range n.Content {
			if n.Kind == yaml.MappingNode && i%2 == 0 {
				if c.Tag == "!!merge" || (c.Kind == yaml.ScalarNode && c.Value == "<<" && c.Style == 0) {
					return &errYAML{c.Line, c.Column, ErrSyntax, "anchors are not allowed: YAML merge keys (<<) are refused"}
				}
				if c.Kind == yaml.ScalarNode {
					if s, err := resolveScalar(c); err == nil {
						key := fmt.Sprintf("%d:%s", s.kind, c.Value)
						if s.kind == sStr {
							key = "s:" + s.s
						}
						if seen[key] {
							return &errYAML{c.Line, c.Column, ErrDuplicate, fmt.Sprintf("duplicate entry with key `%s`", clip(c.Value))}
						}
						seen[key] = true
					}
				}
			}
			if err := w.walk(c, depth+1); err != nil {
				return err
			}
		}
	}
	return nil
}

var yamlLineRE = regexp.MustCompile(`line (\d+)`)

// yamlErrLine digs the line out of a yaml syntax error, which carries it only
// in its text.
func yamlErrLine(err error) int {
	m := yamlLineRE.FindStringSubmatch(err.Error())
	if m == nil {
		return 0
	}
	n, _ := strconv.Atoi(m[1])
	return n
}

// yamlFieldError turns a decodeYAML refusal into a FieldError.
func yamlFieldError(err error, file string) *ValidationError {
	var e *errYAML
	if errors.As(err, &e) {
		return &ValidationError{Errors: []*FieldError{{File: file, Line: e.line, Column: e.col, Err: e.sentinel, Detail: e.msg}}}
	}
	return &ValidationError{Errors: []*FieldError{{File: file, Err: ErrSyntax, Detail: err.Error(), Line: yamlErrLine(err)}}}
}
