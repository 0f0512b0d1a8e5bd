package hushspec

import (
	"fmt"
	"math"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// Limits beyond the YAML profile's that keep loading bounded on hostile
// documents. A policy past any of them is rejected, never truncated.
const (
	maxListLen      = 100_000 // entries in one list
	maxGlobLen      = 4096    // bytes in one glob or host pattern
	maxRegexCount   = 1024    // regular expressions in one document
	maxExtendsDepth = 32      // extends hops below a leaf (core 2.6.2)
	maxCondDepth    = 8       // nested all_of / any_of / not (core 3.13)
)

// versionRE is the version grammar (core appendix A); supportedMinors are
// the minors this engine accepts, every patch of each (core 2.2, 10).
var (
	versionRE       = regexp.MustCompile(`^([0-9]+)\.([0-9]+)\.([0-9]+)$`)
	supportedMinors = map[string]bool{"0.1": true, "0.2": true, "1.0": true}
)

// Document is a validated HushSpec document before compilation: its content
// as a tree of map[string]any, []any, string, bool, int64 and float64 (and
// nil for a null inside a `when` context).
type Document struct {
	file string
	tree map[string]any
}

// Version returns the document's hushspec field.
func (d *Document) Version() string { s, _ := d.tree["hushspec"].(string); return s }

// ParseDocument validates one HushSpec document without resolving extends.
// file names the source in error messages and may be empty. Every problem is
// reported, each with its field path, line and error code, in one
// *ValidationError.
func ParseDocument(data []byte, file string) (*Document, error) {
	root, err := decodeYAML(data)
	if err != nil {
		return nil, yamlFieldError(err, file)
	}
	return documentFromNode(root, file)
}

// documentFromNode validates an already parsed YAML document node (the
// evaluator-test files embed a policy, whose lines stay those of the file).
func documentFromNode(root *yaml.Node, file string) (*Document, error) {
	d := &decoder{file: file}
	if root.Kind != yaml.MappingNode {
		d.fail(root, "", ErrType, "invalid type: %s, expected a mapping", describe(root))
		return nil, &ValidationError{Errors: d.errs}
	}
	v, _ := d.value(root, "", documentSchema, 0)
	if len(d.errs) == 0 {
		tree := v.(map[string]any)
		// Core 2 and 10: a 1.x document's name, when present, is not empty;
		// a 0.x document keeps the frozen format, which allows it.
		if name, ok := tree["name"].(string); ok && name == "" && !strings.HasPrefix(tree["hushspec"].(string), "0.") {
			d.fail(valueNode(root, "name"), "name", ErrConstraint, "must not be empty")
		}
		// Core 2.5: supersedes names the version this document replaces.
		if md, ok := tree["metadata"].(map[string]any); ok {
			if pv, ok := md["policy_version"].(int64); ok && md["supersedes"] == strconv.FormatInt(pv, 10) {
				d.fail(valueNode(valueNode(root, "metadata"), "supersedes"), "metadata.supersedes", ErrConstraint,
					"must not equal this document's own policy_version (GOV_SELF_SUPERSEDES)")
			}
		}
	}
	if len(d.errs) > 0 {
		sort.SliceStable(d.errs, func(i, j int) bool { return d.errs[i].Line < d.errs[j].Line })
		return nil, &ValidationError{Errors: d.errs}
	}
	return &Document{file: file, tree: v.(map[string]any)}, nil
}

// valueNode returns the value node of key in mapping n, or n itself.
func valueNode(n *yaml.Node, key string) *yaml.Node {
	if n == nil || n.Kind != yaml.MappingNode {
		return n
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		if n.Content[i].Value == key {
			return n.Content[i+1]
		}
	}
	return n
}

type decoder struct {
	file    string
	errs    []*FieldError
	regexN  int
	condLvl int // all_of / any_of / not levels above the condition being read
}

func (d *decoder) fail(n *yaml.Node, path string, sentinel error, format string, args ...any) {
	d.failCode(n, path, sentinel, "", format, args...)
}

func (d *decoder) failCode(n *yaml.Node, path string, sentinel error, code, format string, args ...any) {
	fe := &FieldError{File: d.file, Path: path, Err: sentinel, Code: code, Detail: fmt.Sprintf(format, args...)}
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
	}
	s, err := resolveScalar(n)
	if err != nil {
		return fmt.Sprintf("%q", clip(n.Value))
	}
	switch s.kind {
	case sStr:
		return fmt.Sprintf("string %q", clip(s.s))
	case sNull:
		return "null"
	}
	return kindNames[s.kind] + " `" + clip(n.Value) + "`"
}

func clip(s string) string {
	if len(s) > 60 {
		return s[:60] + "..."
	}
	return s
}

func quoteList(l []string) string {
	q := make([]string, len(l))
	for i, s := range l {
		q[i] = "`" + s + "`"
	}
	return strings.Join(q, ", ")
}

// str reads a string scalar of n, failing with the serde-like "invalid type"
// message the conformance sidecars quote.
func (d *decoder) str(n *yaml.Node, path, what string) (string, bool) {
	if n.Kind == yaml.ScalarNode {
		if s, err := resolveScalar(n); err == nil && s.kind == sStr {
			return s.s, true
		}
	}
	d.fail(n, path, ErrType, "invalid type: %s, expected %s", describe(n), what)
	return "", false
}

// integer reads an integer: any finite number with no fractional part
// within 2^53-1, whatever its YAML tag (core 2.4).
func (d *decoder) integer(n *yaml.Node, path string) (int64, bool) {
	if n.Kind == yaml.ScalarNode {
		if s, err := resolveScalar(n); err == nil {
			switch {
			case s.kind == sInt:
				return s.i, true
			case s.kind == sFloat && s.f == math.Trunc(s.f) && math.Abs(s.f) <= maxSafeInt:
				return int64(s.f), true
			}
		}
	}
	d.fail(n, path, ErrType, "invalid type: %s, expected an integer", describe(n))
	return 0, false
}

// value validates node n against f and returns its tree form; false when it
// failed (the failure is recorded).
func (d *decoder) value(n *yaml.Node, path string, f *field, depth int) (any, bool) {
	switch f.kind {
	case kObject:
		return d.object(n, path, f, depth)
	case kWhen, kNot:
		if f.kind == kNot {
			d.condLvl++
			defer func() { d.condLvl-- }()
		}
		if d.condLvl > maxCondDepth {
			d.fail(n, path, ErrConstraint, "conditions nest deeper than the maximum of %d levels", maxCondDepth)
			return nil, false
		}
		return d.object(n, path, conditionSchema, depth)
	case kExtension:
		return d.extension(n, path, depth)
	case kAnyValue:
		return d.freeForm(n, path, depth)
	case kFreeForm:
		if n.Kind != yaml.MappingNode {
			d.fail(n, path, ErrType, "invalid type: %s, expected a mapping", describe(n))
			return nil, false
		}
		return d.freeForm(n, path, depth)
	case kStringList, kRegexList, kGlobList, kHostList, kObjectList, kRulePaths, kConditions, kDays:
		return d.list(n, path, f, depth)
	}
	if n.Kind != yaml.ScalarNode {
		d.fail(n, path, ErrType, "invalid type: %s, expected %s", describe(n), want(f))
		return nil, false
	}
	switch f.kind {
	case kVersion:
		s, err := resolveScalar(n)
		if err != nil || s.kind != sStr {
			d.fail(n, path, ErrVersion, "unsupported hushspec version: %s is not a string; quote it (hushspec: \"1.0.0\")", describe(n))
			return nil, false
		}
		m := versionRE.FindStringSubmatch(s.s)
		if m == nil || !supportedMinors[m[1]+"."+m[2]] {
			d.fail(n, path, ErrVersion, "unsupported hushspec version: %s (this engine accepts 0.1.Z, 0.2.Z and 1.0.Z)", clip(s.s))
			return nil, false
		}
		return s.s, true
	case kBool:
		s, err := resolveScalar(n)
		if err != nil || s.kind != sBool {
			d.fail(n, path, ErrType, "invalid type: %s, expected a boolean (true or false)", describe(n))
			return nil, false
		}
		return s.b, true
	case kUint, kPosInt:
		i, ok := d.integer(n, path)
		if !ok {
			return nil, false
		}
		if i < 0 {
			d.fail(n, path, ErrType, "invalid type: negative integer `%d`, expected a non-negative integer", i)
			return nil, false
		}
		if f.kind == kPosInt && i < 1 {
			d.fail(n, path, ErrNumber, "%d must be at least 1", i)
			return nil, false
		}
		return i, true
	case kPositiveNumber:
		s, err := resolveScalar(n)
		if err != nil || (s.kind != sInt && s.kind != sFloat) {
			d.fail(n, path, ErrType, "invalid type: %s, expected a number", describe(n))
			return nil, false
		}
		if s.f <= 0 {
			d.fail(n, path, ErrNumber, "%v must be greater than zero", s.f)
			return nil, false
		}
		if s.kind == sInt {
			// Keep integers integral so the policy hash writes "5", as the
			// document did, rather than a float form.
			return s.i, true
		}
		return s.f, true
	}
	s, ok := d.str(n, path, want(f))
	if !ok {
		return nil, false
	}
	switch f.kind {
	case kNonEmpty:
		if s == "" {
			d.fail(n, path, ErrConstraint, "must not be empty")
			return nil, false
		}
	case kEnum:
		for _, e := range f.enum {
			if s == e {
				return s, true
			}
		}
		d.fail(n, path, ErrEnum, "unknown variant `%s`, expected one of %s", clip(s), quoteList(f.enum))
		return nil, false
	case kRegex:
		if !d.regex(n, path, s) {
			return nil, false
		}
	case kDate:
		if !validDate(s) {
			d.fail(n, path, ErrDate, "%q is not an ISO 8601 calendar date (YYYY-MM-DD naming a day that exists)", clip(s))
			return nil, false
		}
	case kFramework:
		if !frameworkRE.MatchString(s) {
			d.fail(n, path, ErrConstraint, "framework %q must match ^[a-z0-9][a-z0-9.-]*$", clip(s))
			return nil, false
		}
	case kCapability, kCounter:
		if !identifierRE.MatchString(s) {
			what := "capability"
			if f.kind == kCounter {
				what = "counter"
			}
			d.fail(n, path, ErrConstraint, "%q is not a %s identifier (lowercase dot-separated segments, each a letter then letters, digits or _)", clip(s), what)
			return nil, false
		}
	case kClock:
		if _, ok := parseClock(s); !ok {
			d.fail(n, path, ErrConstraint, "%q is not a valid HH:MM time (two digits each, 00-23:00-59)", clip(s))
			return nil, false
		}
	case kTimezone:
		if _, err := loadZone(s); err != nil {
			d.fail(n, path, ErrConstraint, "%q is neither an IANA time zone nor a fixed offset (+HH or +HH:MM)", clip(s))
			return nil, false
		}
	}
	return s, true
}

func want(f *field) string {
	switch f.kind {
	case kBool:
		return "a boolean (true or false)"
	case kUint, kPosInt:
		return "an integer"
	case kPositiveNumber:
		return "a number"
	case kVersion:
		return "a version string"
	}
	return "a string"
}

var (
	frameworkRE  = regexp.MustCompile(`^[a-z0-9][a-z0-9.-]*$`)
	identifierRE = regexp.MustCompile(`^[a-z][a-z0-9_]*(?:\.[a-z][a-z0-9_]*)*$`)
	dateRE       = regexp.MustCompile(`^[0-9]{4}-[0-9]{2}-[0-9]{2}$`)
)

// validDate: YYYY-MM-DD naming a day that exists (core 2.5).
func validDate(s string) bool {
	if !dateRE.MatchString(s) {
		return false
	}
	_, err := time.Parse("2006-01-02", s)
	return err == nil
}

// parseClock reads HH:MM (core 3.13) as minutes after midnight.
func parseClock(s string) (int, bool) {
	if len(s) != 5 || s[2] != ':' {
		return 0, false
	}
	for _, i := range []int{0, 1, 3, 4} {
		if s[i] < '0' || s[i] > '9' {
			return 0, false
		}
	}
	h, m := int(s[0]-'0')*10+int(s[1]-'0'), int(s[3]-'0')*10+int(s[4]-'0')
	if h > 23 || m > 59 {
		return 0, false
	}
	return h*60 + m, true
}

// fieldNames lists f's members, sorted, for "expected one of".
func fieldNames(f *field) []string {
	out := make([]string, 0, len(f.obj))
	for k := range f.obj {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func (d *decoder) object(n *yaml.Node, path string, f *field, depth int) (any, bool) {
	if n.Kind != yaml.MappingNode {
		d.fail(n, path, ErrType, "invalid type: %s, expected a mapping", describe(n))
		return nil, false
	}
	out := make(map[string]any, len(n.Content)/2)
	ok := true
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		key, kok := d.str(k, path, "a string key")
		if !kok {
			ok = false
			continue
		}
		sub, known := f.obj[key]
		p := join(path, key)
		if !known {
			d.fail(k, p, ErrUnknownField, "unknown field `%s`, expected one of %s", clip(key), quoteList(fieldNames(f)))
			ok = false
			continue
		}
		x, vok := d.value(v, p, sub, depth+1)
		if !vok {
			ok = false
			continue
		}
		out[key] = x
	}
	for _, r := range f.required {
		if !hasKey(n, r) {
			d.fail(n, path, ErrMissingField, "missing field `%s`", r)
			ok = false
		}
	}
	return out, ok
}

func hasKey(n *yaml.Node, key string) bool {
	for i := 0; i+1 < len(n.Content); i += 2 {
		if n.Content[i].Value == key {
			return true
		}
	}
	return false
}

var dayNames = map[string]bool{"mon": true, "tue": true, "wed": true, "thu": true, "fri": true, "sat": true, "sun": true}

func (d *decoder) list(n *yaml.Node, path string, f *field, depth int) (any, bool) {
	if n.Kind != yaml.SequenceNode {
		d.fail(n, path, ErrType, "invalid type: %s, expected a sequence", describe(n))
		return nil, false
	}
	if len(n.Content) > maxListLen {
		d.fail(n, path, ErrLimit, "%d entries, more than %d", len(n.Content), maxListLen)
		return nil, false
	}
	if f.kind == kRulePaths && len(n.Content) == 0 {
		d.fail(n, path, ErrConstraint, "must list at least one rule path")
		return nil, false
	}
	out := make([]any, 0, len(n.Content))
	ok := true
	names := map[string]bool{}
	for i, item := range n.Content {
		p := index(path, i)
		switch f.kind {
		case kObjectList:
			v, vok := d.value(item, p, f.elem, depth+1)
			if !vok {
				ok = false
				continue
			}
			if f.unique != "" {
				name, _ := v.(map[string]any)[f.unique].(string)
				if names[name] {
					d.failCode(item, join(p, f.unique), ErrDuplicate, CodeDuplicate, "duplicate %s %q: names must be unique in the list", f.unique, clip(name))
					ok = false
				}
				names[name] = true
			}
			out = append(out, v)
			continue
		case kConditions:
			v, vok := d.value(item, p, fNot, depth+1)
			if !vok {
				ok = false
				continue
			}
			out = append(out, v)
			continue
		}
		s, sok := d.str(item, p, "a string")
		if !sok {
			ok = false
			continue
		}
		switch f.kind {
		case kRulePaths:
			if s == "" {
				d.fail(item, p, ErrConstraint, "a rule path must not be empty")
				ok = false
				continue
			}
		case kDays:
			if !dayNames[strings.ToLower(s)] {
				d.fail(item, p, ErrConstraint, "%q is not one of mon, tue, wed, thu, fri, sat, sun", clip(s))
				ok = false
				continue
			}
		case kRegexList:
			if !d.regex(item, p, s) {
				ok = false
				continue
			}
		case kGlobList:
			if len(s) > maxGlobLen {
				d.fail(item, p, ErrLimit, "glob longer than %d bytes", maxGlobLen)
				ok = false
				continue
			}
		case kHostList:
			if len(s) > maxGlobLen {
				d.fail(item, p, ErrLimit, "host pattern longer than %d bytes", maxGlobLen)
				ok = false
				continue
			}
			if _, err := compileHostPattern(s); err != nil {
				d.fail(item, p, ErrPattern, "%v", err)
				ok = false
				continue
			}
		}
		out = append(out, s)
	}
	return out, ok
}

// regex checks one regular expression against the profile (core 3.14.3) and
// a bound on how many one document may hold.
func (d *decoder) regex(n *yaml.Node, path, s string) bool {
	d.regexN++
	if d.regexN == maxRegexCount+1 {
		d.fail(n, path, ErrLimit, "more than %d regular expressions in one document", maxRegexCount)
		return false
	}
	if d.regexN > maxRegexCount {
		return false
	}
	if _, err := compileProfileRegex(s); err != nil {
		d.fail(n, path, ErrRegex, "%v", err)
		return false
	}
	return true
}

// extension reads an extension body: any mapping, kept as a tree for the
// hash and merges, with the reserved `version` member refused (core 9.4).
func (d *decoder) extension(n *yaml.Node, path string, depth int) (any, bool) {
	if n.Kind != yaml.MappingNode {
		d.fail(n, path, ErrType, "invalid type: %s, expected a mapping", describe(n))
		return nil, false
	}
	if hasKey(n, "version") {
		k := n.Content[0]
		for i := 0; i+1 < len(n.Content); i += 2 {
			if n.Content[i].Value == "version" {
				k = n.Content[i]
			}
		}
		d.fail(k, join(path, "version"), ErrUnknownField, "unknown field `version`: the member is reserved under an extension block (core 9.4)")
		return nil, false
	}
	return d.freeForm(n, path, depth)
}

// freeForm converts any YAML value to tree form (a null becomes nil).
func (d *decoder) freeForm(n *yaml.Node, path string, depth int) (any, bool) {
	switch n.Kind {
	case yaml.MappingNode:
		out := make(map[string]any, len(n.Content)/2)
		for i := 0; i+1 < len(n.Content); i += 2 {
			key, ok := d.str(n.Content[i], path, "a string key")
			if !ok {
				return nil, false
			}
			v, ok := d.freeForm(n.Content[i+1], join(path, key), depth+1)
			if !ok {
				return nil, false
			}
			out[key] = v
		}
		return out, true
	case yaml.SequenceNode:
		if len(n.Content) > maxListLen {
			d.fail(n, path, ErrLimit, "%d entries, more than %d", len(n.Content), maxListLen)
			return nil, false
		}
		out := make([]any, 0, len(n.Content))
		for i, c := range n.Content {
			v, ok := d.freeForm(c, index(path, i), depth+1)
			if !ok {
				return nil, false
			}
			out = append(out, v)
		}
		return out, true
	case yaml.ScalarNode:
		s, err := resolveScalar(n)
		if err != nil {
			d.fail(n, path, ErrType, "%v", err)
			return nil, false
		}
		switch s.kind {
		case sStr:
			return s.s, true
		case sBool:
			return s.b, true
		case sInt:
			return s.i, true
		case sFloat:
			return s.f, true
		}
		return nil, true
	}
	d.fail(n, path, ErrSyntax, "unexpected YAML node")
	return nil, false
}
