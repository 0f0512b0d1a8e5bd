package hushspec

import (
	"fmt"
	"path/filepath"
	"regexp"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/backbay-labs/chio-agent/internal/regfile"
)

// TestCase is one case of a HushSpec evaluator-test file (the v1 format:
// hushspec_test 0.1.Z or 0.2.Z, description, policy, cases; each case a
// description, optional tags and runtime context, an action and an expect).
type TestCase struct {
	Description string
	Line        int // line of the case in the file
	Action      Action
	Expect      Expectation
}

// Expectation is a case's expect block; empty optional fields are not
// compared, as the fixture format says.
type Expectation struct {
	Decision      string
	MatchedRule   *string
	Reason        *string
	OriginProfile *string
	Posture       *PostureExpectation
}

// PostureExpectation is the posture state a case expects after evaluation.
type PostureExpectation struct{ Current, Next string }

// TestFile is a parsed evaluator-test file with its compiled policy.
type TestFile struct {
	Description string
	Policy      *Policy
	Cases       []TestCase
}

// CaseResult is the outcome of running one TestCase.
type CaseResult struct {
	Case     *TestCase
	Got      Result
	Failures []string // what differed; empty when the case passed
}

// Passed reports whether every expected field matched.
func (r CaseResult) Passed() bool { return len(r.Failures) == 0 }

var (
	testActionSchema = object(map[string]*field{
		"type":       fString,
		"target":     fString,
		"content":    fString,
		"args_size":  fUint,
		"url":        fString,
		"network":    fBool,
		"timeout_ms": fUint,
		"origin": object(map[string]*field{
			"provider": fString, "tenant_id": fString, "space_id": fString,
			"space_type": fString, "visibility": fString, "external_participants": fBool,
			"tags": fStrings, "sensitivity": fString, "actor_role": fString,
		}),
		"posture": object(map[string]*field{"current": fString, "signal": fString}),
	}, "type")
	testExpectSchema = object(map[string]*field{
		"decision":       enum(DecisionAllow, DecisionWarn, DecisionDeny),
		"matched_rule":   fString,
		"reason":         fString,
		"origin_profile": fString,
		"posture":        object(map[string]*field{"current": fString, "next": fString}, "current", "next"),
		// Level 4 expectations (receipt spec): read, not compared.
		"rule_trace": {kind: kAnyValue},
		"receipt":    {kind: kAnyValue},
	}, "decision")
	testCaseSchema = object(map[string]*field{
		"description": fString,
		"tags":        fStrings,
		"context":     {kind: kFreeForm},
		"action":      testActionSchema,
		"expect":      testExpectSchema,
	}, "description", "action", "expect")
	testVersionRE = regexp.MustCompile(`^0\.[12]\.[0-9]+$`)
)

// LoadTestFile reads an evaluator-test file. Its policy is validated like any
// policy (errors carry the file's own lines); `extends` in it resolves
// against the test file's directory.
func LoadTestFile(path string, opts ...Option) (*TestFile, error) {
	o := collect(opts)
	data, err := regfile.ReadFile(o.ctx, path, MaxDocumentBytes)
	if err != nil {
		return nil, fmt.Errorf("read test file: %w", err)
	}
	if len(data) > MaxDocumentBytes {
		return nil, &ValidationError{Errors: []*FieldError{{File: path, Err: ErrLimit, Detail: fmt.Sprintf("file is more than %d bytes", MaxDocumentBytes)}}}
	}
	root, err := decodeYAML(data)
	if err != nil {
		return nil, yamlFieldError(err, path)
	}
	d := &decoder{file: path}
	if root.Kind != yaml.MappingNode {
		d.fail(root, "", ErrType, "invalid type: %s, expected a mapping", describe(root))
		return nil, &ValidationError{Errors: d.errs}
	}
	tf := &TestFile{}
	var policyNode, casesNode *yaml.Node
	for i := 0; i+1 < len(root.Content); i += 2 {
		k, v := root.Content[i], root.Content[i+1]
		switch k.Value {
		case "hushspec_test":
			if s, ok := d.str(v, k.Value, "a version string"); ok && !testVersionRE.MatchString(s) {
				d.fail(v, k.Value, ErrVersion, "evaluator-test version %q is not 0.1.Z or 0.2.Z", clip(s))
			}
		case "description":
			if s, ok := d.str(v, k.Value, "a string"); ok {
				tf.Description = s
			}
		case "policy":
			policyNode = v
		case "cases":
			casesNode = v
		default:
			d.fail(k, k.Value, ErrUnknownField, "unknown field `%s` in an evaluator-test file", clip(k.Value))
		}
	}
	for _, req := range []string{"hushspec_test", "description", "policy", "cases"} {
		if !hasKey(root, req) {
			d.fail(root, req, ErrMissingField, "required")
		}
	}
	if casesNode != nil {
		tf.Cases = d.cases(casesNode)
	}
	if policyNode != nil {
		doc, err := documentFromNode(policyNode, path)
		if err != nil {
			for _, fe := range FieldErrors(err) {
				fe.Path = join("policy", fe.Path)
				d.errs = append(d.errs, fe)
			}
		} else if len(d.errs) == 0 {
			tree, err := resolveChain(o.ctx, doc, filepath.Dir(path), []string{""})
			if err != nil {
				return nil, err
			}
			if tf.Policy, err = compile(tree, o); err != nil {
				return nil, err
			}
		}
	}
	if len(d.errs) > 0 {
		return nil, &ValidationError{Errors: d.errs}
	}
	return tf, nil
}

func (d *decoder) cases(n *yaml.Node) []TestCase {
	if n.Kind != yaml.SequenceNode || len(n.Content) == 0 {
		d.fail(n, "cases", ErrType, "expected a non-empty sequence, got %s", describe(n))
		return nil
	}
	var out []TestCase
	for i, c := range n.Content {
		x, ok := d.value(c, index("cases", i), testCaseSchema, 1)
		if !ok {
			continue
		}
		v := x.(map[string]any)
		act, exp := sub(v, "action"), sub(v, "expect")
		tc := TestCase{Description: str(v, "description", ""), Line: c.Line}
		_, hasContent := act["content"]
		tc.Action = Action{
			Type:       str(act, "type", ""),
			Target:     str(act, "target", ""),
			Content:    str(act, "content", ""),
			HasContent: hasContent,
			ArgsSize:   integer(act, "args_size", 0),
			URL:        str(act, "url", ""),
			Network:    boolean(act, "network", false),
			TimeoutMS:  integer(act, "timeout_ms", 0),
			Context:    sub(v, "context"),
		}
		if o := sub(act, "origin"); o != nil {
			tc.Action.Origin = &Origin{
				Provider: str(o, "provider", ""), TenantID: str(o, "tenant_id", ""),
				SpaceID: str(o, "space_id", ""), SpaceType: str(o, "space_type", ""),
				Visibility: str(o, "visibility", ""), Tags: strs(o, "tags"),
				Sensitivity: str(o, "sensitivity", ""), ActorRole: str(o, "actor_role", ""),
			}
			if b, ok := o["external_participants"].(bool); ok {
				tc.Action.Origin.ExternalParticipants = &b
			}
		}
		if p := sub(act, "posture"); p != nil {
			tc.Action.Posture = &PostureInput{Current: str(p, "current", ""), Signal: str(p, "signal", "")}
		}
		tc.Expect.Decision = str(exp, "decision", "")
		opt := func(k string) *string {
			if s, ok := exp[k].(string); ok {
				return &s
			}
			return nil
		}
		tc.Expect.MatchedRule, tc.Expect.Reason, tc.Expect.OriginProfile = opt("matched_rule"), opt("reason"), opt("origin_profile")
		if p := sub(exp, "posture"); p != nil {
			tc.Expect.Posture = &PostureExpectation{Current: str(p, "current", ""), Next: str(p, "next", "")}
		}
		out = append(out, tc)
	}
	return out
}

// Run evaluates every case and compares decision, and matched_rule and
// reason where the case gives them.
func (tf *TestFile) Run() []CaseResult {
	out := make([]CaseResult, 0, len(tf.Cases))
	for i := range tf.Cases {
		tc := &tf.Cases[i]
		got := tf.Policy.Evaluate(tc.Action)
		r := CaseResult{Case: tc, Got: got}
		if got.Decision != tc.Expect.Decision {
			r.Failures = append(r.Failures, fmt.Sprintf("decision: got %s, want %s", got.Decision, tc.Expect.Decision))
		}
		if w := tc.Expect.MatchedRule; w != nil && got.MatchedRule != *w {
			r.Failures = append(r.Failures, fmt.Sprintf("matched_rule: got %q, want %q", got.MatchedRule, *w))
		}
		if w := tc.Expect.Reason; w != nil && got.Reason != *w {
			r.Failures = append(r.Failures, fmt.Sprintf("reason: got %q, want %q", got.Reason, *w))
		}
		if tc.Expect.OriginProfile != nil {
			r.Failures = append(r.Failures, "origin_profile: the origins extension is not evaluated by this engine")
		}
		if w := tc.Expect.Posture; w != nil && (got.PostureState != w.Current || got.PostureNext != w.Next) {
			r.Failures = append(r.Failures, fmt.Sprintf("posture: got %q -> %q, want %q -> %q", got.PostureState, got.PostureNext, w.Current, w.Next))
		}
		out = append(out, r)
	}
	return out
}

// String describes a failed case on one line.
func (r CaseResult) String() string {
	return fmt.Sprintf("line %d: %q: %s", r.Case.Line, r.Case.Description, strings.Join(r.Failures, "; "))
}
