package hushspec

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
)

// Limits that keep loading bounded on hostile input. A policy past any of
// them is rejected with ErrLimit, never truncated.
const (
	MaxDocumentBytes = 1 << 20 // one policy file
	maxDepth         = 64      // nesting of mappings and sequences
	maxListLen       = 100_000 // entries in one list
	maxPatternLen    = 4096    // bytes in one regex or glob
	maxRegexCount    = 1024    // regular expressions in one document
	maxExtendsDepth  = 16      // documents in one extends chain
)

var versionRE = regexp.MustCompile(`^0\.\d+\.\d+$`)

// Document is a validated HushSpec document before compilation: its content
// as a tree of map[string]any, []any, string, bool, int64 and float64.
type Document struct {
	file string
	tree map[string]any
}

// ParseDocument validates one HushSpec document without resolving extends.
// file names the source in error messages and may be empty. Every problem is
// reported, each with its field path and line, in one *ValidationError.
func ParseDocument(data []byte, file string) (*Document, error) {
	if len(data) > MaxDocumentBytes {
		return nil, &ValidationError{Errors: []*FieldError{{File: file, Err: ErrLimit,
			Detail: fmt.Sprintf("document is %d bytes, more than %d", len(data), MaxDocumentBytes)}}}
	}
	root, err := decodeYAML(data)
	if err != nil {
		return nil, &ValidationError{Errors: []*FieldError{{File: file, Err: ErrSyntax, Detail: err.Error(), Line: yamlErrLine(err)}}}
	}
	return documentFromNode(root, file)
}

// documentFromNode validates an already parsed YAML document node (the
// evaluator-test files embed a policy, whose lines stay those of the file).
func documentFromNode(root *yaml.Node, file string) (*Document, error) {
	d := &decoder{file: file}
	v := d.value(root, "", documentSchema, 0)
	if len(d.errs) > 0 {
		sort.SliceStable(d.errs, func(i, j int) bool { return d.errs[i].Line < d.errs[j].Line })
		return nil, &ValidationError{Errors: d.errs}
	}
	tree, _ := v.(map[string]any)
	if tree == nil {
		return nil, &ValidationError{Errors: []*FieldError{{File: file, Err: ErrType, Detail: "document is not a mapping"}}}
	}
	return &Document{file: file, tree: tree}, nil
}

// decodeYAML parses exactly one YAML document.
func decodeYAML(data []byte) (*yaml.Node, error) {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("empty document")
		}
		return nil, err
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		if err != nil {
			return nil, err
		}
		return nil, fmt.Errorf("more than one YAML document in the file")
	}
	if doc.Kind != yaml.DocumentNode || len(doc.Content) != 1 {
		return nil, fmt.Errorf("empty document")
	}
	return doc.Content[0], nil
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

type decoder struct {
	file   string
	errs   []*FieldError
	regexN int
}

func (d *decoder) fail(n *yaml.Node, path string, sentinel error, format string, args ...any) {
	fe := &FieldError{File: d.file, Path: path, Err: sentinel, Detail: fmt.Sprintf(format, args...)}
	if n != nil {
		fe.Line, fe.Column = n.Line, n.Column
	}
	d.errs = append(d.errs, fe)
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

func index(path string, i int) string { return fmt.Sprintf("%s[%d]", path, i) }

func describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a sequence"
	case yaml.AliasNode:
		return "an alias"
	}
	switch n.ShortTag() {
	case "!!str":
		return fmt.Sprintf("string %q", clip(n.Value))
	case "!!null":
		return "null"
	case "!!bool":
		return "boolean " + n.Value
	case "!!int":
		return "integer " + n.Value
	case "!!float":
		return "number " + n.Value
	}
	return fmt.Sprintf("%s %q", n.ShortTag(), clip(n.Value))
}

func clip(s string) string {
	if len(s) > 60 {
		return s[:60] + "..."
	}
	return s
}

// value validates node n against f and returns its tree form (nil on error).
func (d *decoder) value(n *yaml.Node, path string, f *field, depth int) any {
	if depth > maxDepth {
		d.fail(n, path, ErrLimit, "nesting deeper than %d levels", maxDepth)
		return nil
	}
	if n.Kind == yaml.AliasNode {
		// Aliases are refused outright: they are the vehicle of alias-bomb
		// documents and have no use in a policy.
		d.fail(n, path, ErrSyntax, "YAML aliases are not supported")
		return nil
	}
	switch f.kind {
	case kObject:
		return d.object(n, path, f, depth)
	case kOpaque:
		if n.Kind != yaml.MappingNode {
			d.fail(n, path, ErrType, "expected a mapping, got %s", describe(n))
			return nil
		}
		return d.opaque(n, path, depth)
	case kStringList, kRegexList, kGlobList, kHostList, kSecretPatterns:
		return d.list(n, path, f, depth)
	}
	if n.Kind != yaml.ScalarNode {
		d.fail(n, path, ErrType, "expected %s, got %s", want(f), describe(n))
		return nil
	}
	tag := n.ShortTag()
	switch f.kind {
	case kString, kVersion, kEnum, kRegex:
		if tag != "!!str" {
			d.fail(n, path, ErrType, "expected a string, got %s", describe(n))
			return nil
		}
		s := n.Value
		switch f.kind {
		case kVersion:
			if !versionRE.MatchString(s) {
				d.fail(n, path, ErrVersion, "%q does not match ^0\\.\\d+\\.\\d+$", clip(s))
				return nil
			}
		case kEnum:
			for _, e := range f.enum {
				if s == e {
					return s
				}
			}
			d.fail(n, path, ErrEnum, "%q is not one of %s", clip(s), strings.Join(f.enum, ", "))
			return nil
		case kRegex:
			if !d.regex(n, path, s) {
				return nil
			}
		}
		return s
	case kBool:
		if tag != "!!bool" || (n.Value != "true" && n.Value != "false") {
			d.fail(n, path, ErrType, "expected true or false, got %s", describe(n))
			return nil
		}
		return n.Value == "true"
	case kInt:
		if tag != "!!int" {
			d.fail(n, path, ErrType, "expected an integer, got %s", describe(n))
			return nil
		}
		i, err := strconv.ParseInt(n.Value, 10, 64)
		if err != nil {
			d.fail(n, path, ErrNumber, "%q is not a decimal 64-bit integer", clip(n.Value))
			return nil
		}
		if i < f.min {
			d.fail(n, path, ErrNumber, "%d is less than %d", i, f.min)
			return nil
		}
		return i
	case kPositiveNumber:
		if tag != "!!int" && tag != "!!float" {
			d.fail(n, path, ErrType, "expected a number, got %s", describe(n))
			return nil
		}
		x, err := strconv.ParseFloat(n.Value, 64)
		if err != nil || math.IsNaN(x) || math.IsInf(x, 0) {
			d.fail(n, path, ErrNumber, "%q is not a finite number", clip(n.Value))
			return nil
		}
		if x <= 0 {
			d.fail(n, path, ErrNumber, "%v must be greater than zero", x)
			return nil
		}
		if tag == "!!int" && x == math.Trunc(x) && math.Abs(x) < 1<<53 {
			// Keep integers integral so the policy hash writes "5", as the
			// document did, rather than a float form.
			return int64(x)
		}
		return x
	}
	d.fail(n, path, ErrType, "unsupported schema kind")
	return nil
}

func want(f *field) string {
	switch f.kind {
	case kBool:
		return "true or false"
	case kInt:
		return "an integer"
	case kPositiveNumber:
		return "a number"
	}
	return "a string"
}

// keys validates the keys of mapping n: strings, no duplicates.
func (d *decoder) keys(n *yaml.Node, path string) bool {
	ok := true
	seen := make(map[string]bool, len(n.Content)/2)
	for i := 0; i+1 < len(n.Content); i += 2 {
		k := n.Content[i]
		if k.Kind != yaml.ScalarNode || k.ShortTag() != "!!str" {
			d.fail(k, path, ErrType, "mapping key must be a string, got %s", describe(k))
			ok = false
			continue
		}
		if seen[k.Value] {
			d.fail(k, join(path, k.Value), ErrDuplicate, "key appears more than once")
			ok = false
		}
		seen[k.Value] = true
	}
	return ok
}

func (d *decoder) object(n *yaml.Node, path string, f *field, depth int) any {
	if n.Kind != yaml.MappingNode {
		d.fail(n, path, ErrType, "expected a mapping, got %s", describe(n))
		return nil
	}
	if !d.keys(n, path) {
		return nil
	}
	out := make(map[string]any, len(n.Content)/2)
	bad := false
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		sub, known := f.obj[k.Value]
		p := join(path, k.Value)
		if !known {
			d.fail(k, p, ErrUnknownField, "not defined by HushSpec 0.1.0")
			bad = true
			continue
		}
		x := d.value(v, p, sub, depth+1)
		if x == nil {
			bad = true
			continue
		}
		out[k.Value] = x
	}
	for _, r := range f.required {
		if _, ok := out[r]; !ok {
			if !hasKey(n, r) {
				d.fail(n, join(path, r), ErrMissingField, "required")
			}
			bad = true
		}
	}
	if bad {
		return nil
	}
	return out
}

func hasKey(n *yaml.Node, key string) bool {
	for i := 0; i+1 < len(n.Content); i += 2 {
		if n.Content[i].Value == key {
			return true
		}
	}
	return false
}

func (d *decoder) list(n *yaml.Node, path string, f *field, depth int) any {
	if n.Kind != yaml.SequenceNode {
		d.fail(n, path, ErrType, "expected a sequence, got %s", describe(n))
		return nil
	}
	if len(n.Content) > maxListLen {
		d.fail(n, path, ErrLimit, "%d entries, more than %d", len(n.Content), maxListLen)
		return nil
	}
	out := make([]any, 0, len(n.Content))
	bad := false
	names := map[string]bool{}
	for i, item := range n.Content {
		p := index(path, i)
		if f.kind == kSecretPatterns {
			v := d.value(item, p, &field{kind: kObject, obj: f.obj, required: f.required}, depth+1)
			if v == nil {
				bad = true
				continue
			}
			name := v.(map[string]any)["name"].(string)
			if names[name] {
				d.fail(item, join(p, "name"), ErrDuplicate, "secret pattern name %q is already used", clip(name))
				bad = true
			}
			names[name] = true
			out = append(out, v)
			continue
		}
		if item.Kind == yaml.AliasNode {
			d.fail(item, p, ErrSyntax, "YAML aliases are not supported")
			bad = true
			continue
		}
		if item.Kind != yaml.ScalarNode || item.ShortTag() != "!!str" {
			d.fail(item, p, ErrType, "expected a string, got %s", describe(item))
			bad = true
			continue
		}
		s := item.Value
		switch f.kind {
		case kRegexList:
			if !d.regex(item, p, s) {
				bad = true
				continue
			}
		case kGlobList:
			if len(s) > maxPatternLen {
				d.fail(item, p, ErrLimit, "glob longer than %d bytes", maxPatternLen)
				bad = true
				continue
			}
			if _, err := regexp.Compile(globRegexp(cleanPath(s))); err != nil {
				d.fail(item, p, ErrPattern, "glob %q: %v", clip(s), err)
				bad = true
				continue
			}
		case kHostList:
			if _, err := compileHostPattern(s); err != nil {
				d.fail(item, p, ErrPattern, "%v", err)
				bad = true
				continue
			}
		}
		out = append(out, s)
	}
	if bad {
		return nil
	}
	return out
}

// regex checks one regular expression: bounded length and count, and valid
// RE2 syntax. RE2 matches in linear time, so these bounds are about memory
// and load time, not catastrophic backtracking (which RE2 cannot do).
func (d *decoder) regex(n *yaml.Node, path, s string) bool {
	d.regexN++
	if d.regexN == maxRegexCount+1 {
		d.fail(n, path, ErrLimit, "more than %d regular expressions in one document", maxRegexCount)
		return false
	}
	if d.regexN > maxRegexCount {
		return false
	}
	if len(s) > maxPatternLen {
		d.fail(n, path, ErrLimit, "regular expression longer than %d bytes", maxPatternLen)
		return false
	}
	if _, err := regexp.Compile(s); err != nil {
		d.fail(n, path, ErrRegex, "%v", err)
		return false
	}
	return true
}

// opaque converts an extension body to tree form, with the same refusals of
// aliases, non-string keys and duplicate keys as the rest of the document.
func (d *decoder) opaque(n *yaml.Node, path string, depth int) any {
	if depth > maxDepth {
		d.fail(n, path, ErrLimit, "nesting deeper than %d levels", maxDepth)
		return nil
	}
	switch n.Kind {
	case yaml.AliasNode:
		d.fail(n, path, ErrSyntax, "YAML aliases are not supported")
		return nil
	case yaml.MappingNode:
		if !d.keys(n, path) {
			return nil
		}
		out := make(map[string]any, len(n.Content)/2)
		for i := 0; i+1 < len(n.Content); i += 2 {
			p := join(path, n.Content[i].Value)
			v := d.opaque(n.Content[i+1], p, depth+1)
			if v == nil {
				return nil
			}
			out[n.Content[i].Value] = v
		}
		return out
	case yaml.SequenceNode:
		if len(n.Content) > maxListLen {
			d.fail(n, path, ErrLimit, "%d entries, more than %d", len(n.Content), maxListLen)
			return nil
		}
		out := make([]any, 0, len(n.Content))
		for i, c := range n.Content {
			v := d.opaque(c, index(path, i), depth+1)
			if v == nil {
				return nil
			}
			out = append(out, v)
		}
		return out
	case yaml.ScalarNode:
		switch n.ShortTag() {
		case "!!str":
			return n.Value
		case "!!bool":
			return n.Value == "true"
		case "!!int":
			if i, err := strconv.ParseInt(n.Value, 10, 64); err == nil {
				return i
			}
			d.fail(n, path, ErrNumber, "%q is not a decimal 64-bit integer", clip(n.Value))
			return nil
		case "!!float":
			x, err := strconv.ParseFloat(n.Value, 64)
			if err != nil || math.IsNaN(x) || math.IsInf(x, 0) {
				d.fail(n, path, ErrNumber, "%q is not a finite number", clip(n.Value))
				return nil
			}
			return x
		case "!!null":
			// Null cannot be told from "absent" by the nil-means-error
			// convention here; extension bodies are opaque, so refuse it.
			d.fail(n, path, ErrType, "null values are not supported")
			return nil
		}
		d.fail(n, path, ErrType, "unsupported YAML tag %s", n.ShortTag())
		return nil
	}
	d.fail(n, path, ErrSyntax, "unexpected YAML node")
	return nil
}
