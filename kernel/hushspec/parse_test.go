package hushspec

import (
	"errors"
	"strings"
	"testing"
)

func TestParseErrorsNameFieldAndLine(t *testing.T) {
	doc := `hushspec: "0.1.0"
rules:
  egress:
    enabled: "yes"
    allow: ["ok.example.com", "bad host"]
    default: maybe
  shell_commands:
    forbidden_patterns: ["(unclosed"]
  patch_integrity:
    max_additions: -1
    max_imbalance_ratio: 0
  tool_access:
    max_args_size: 1.5
    surprise: 1
`
	_, err := Parse([]byte(doc), WithFilename("p.yaml"))
	if err == nil {
		t.Fatal("accepted")
	}
	want := []struct {
		path string
		line int
		err  error
	}{
		{"rules.egress.enabled", 4, ErrType},
		{"rules.egress.allow[1]", 5, ErrPattern},
		{"rules.egress.default", 6, ErrEnum},
		{"rules.shell_commands.forbidden_patterns[0]", 8, ErrRegex},
		{"rules.patch_integrity.max_additions", 10, ErrNumber},
		{"rules.patch_integrity.max_imbalance_ratio", 11, ErrNumber},
		{"rules.tool_access.max_args_size", 13, ErrType},
		{"rules.tool_access.surprise", 14, ErrUnknownField},
	}
	got := FieldErrors(err)
	if len(got) != len(want) {
		t.Fatalf("got %d errors, want %d:\n%v", len(got), len(want), err)
	}
	for i, w := range want {
		g := got[i]
		if g.Path != w.path || g.Line != w.line || !errors.Is(g, w.err) {
			t.Errorf("error %d = %v (path %s line %d), want %s line %d %v", i, g, g.Path, g.Line, w.path, w.line, w.err)
		}
		if !strings.HasPrefix(g.Error(), "p.yaml:") {
			t.Errorf("error %q does not name the file", g)
		}
	}
}

func TestParseRejects(t *testing.T) {
	for name, tc := range map[string]struct {
		doc string
		err error
	}{
		"not yaml":          {"hushspec: [", ErrSyntax},
		"empty":             {"", ErrSyntax},
		"two documents":     {"hushspec: \"0.1.0\"\n---\nhushspec: \"0.1.0\"\n", ErrSyntax},
		"not a mapping":     {"- a\n", ErrType},
		"version number":    {"hushspec: 0.1\n", ErrType},
		"version 1":         {"hushspec: \"1.0.0\"\n", ErrVersion},
		"null string":       {"hushspec: \"0.1.0\"\nname:\n", ErrType},
		"int name":          {"hushspec: \"0.1.0\"\nname: 12\n", ErrType},
		"bool as int":       {"hushspec: \"0.1.0\"\nrules:\n  egress:\n    enabled: 1\n", ErrType},
		"bool yes":          {"hushspec: \"0.1.0\"\nrules:\n  egress:\n    enabled: yes\n", ErrType},
		"duplicate key":     {"hushspec: \"0.1.0\"\nname: a\nname: b\n", ErrDuplicate},
		"list not string":   {"hushspec: \"0.1.0\"\nrules:\n  tool_access:\n    allow: [1]\n", ErrType},
		"list is string":    {"hushspec: \"0.1.0\"\nrules:\n  tool_access:\n    allow: x\n", ErrType},
		"bad mode":          {"hushspec: \"0.1.0\"\nrules:\n  computer_use:\n    mode: loud\n", ErrEnum},
		"bad strategy":      {"hushspec: \"0.1.0\"\nmerge_strategy: append\n", ErrEnum},
		"unknown extension": {"hushspec: \"0.1.0\"\nextensions:\n  telemetry: {}\n", ErrUnknownField},
		"extension scalar":  {"hushspec: \"0.1.0\"\nextensions:\n  posture: 3\n", ErrType},
		"nan ratio":         {"hushspec: \"0.1.0\"\nrules:\n  patch_integrity:\n    max_imbalance_ratio: .nan\n", ErrNumber},
		"huge int":          {"hushspec: \"0.1.0\"\nrules:\n  patch_integrity:\n    max_additions: 99999999999999999999\n", ErrType},
		"hex int":           {"hushspec: \"0.1.0\"\nrules:\n  patch_integrity:\n    max_additions: 0x10\n", ErrNumber},
		"args size zero":    {"hushspec: \"0.1.0\"\nrules:\n  tool_access:\n    max_args_size: 0\n", ErrNumber},
		"secret no name":    {"hushspec: \"0.1.0\"\nrules:\n  secret_patterns:\n    patterns:\n      - pattern: x\n        severity: warn\n", ErrMissingField},
		"pcre lookahead":    {"hushspec: \"0.1.0\"\nrules:\n  shell_commands:\n    forbidden_patterns: ['(?=x)']\n", ErrRegex},
		"merge key":         {"hushspec: \"0.1.0\"\n<<: {name: x}\n", ErrType},
		"custom tag":        {"hushspec: \"0.1.0\"\nname: !secret x\n", ErrType},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := Parse([]byte(tc.doc))
			if !errors.Is(err, tc.err) || !errors.Is(err, ErrInvalidPolicy) {
				t.Fatalf("got %v, want %v", err, tc.err)
			}
		})
	}
}

func TestParseHostileInput(t *testing.T) {
	big := "hushspec: \"0.1.0\"\nname: " + strings.Repeat("a", MaxDocumentBytes) + "\n"
	aliasBomb := `hushspec: "0.1.0"
extensions:
  detection:
    a: &a ["x","x","x","x","x","x","x","x","x"]
    b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
    c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
    d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
    e: [*d,*d,*d,*d,*d,*d,*d,*d,*d]
`
	deep := "hushspec: \"0.1.0\"\nextensions:\n  posture: " + strings.Repeat("{a: ", 200) + "1" + strings.Repeat("}", 200) + "\n"
	deeper := strings.Repeat("[", 100000)
	longRegex := "hushspec: \"0.1.0\"\nrules:\n  shell_commands:\n    forbidden_patterns: ['" + strings.Repeat("a", maxPatternLen+1) + "']\n"
	var many strings.Builder
	many.WriteString("hushspec: \"0.1.0\"\nrules:\n  shell_commands:\n    forbidden_patterns:\n")
	for i := 0; i <= maxRegexCount; i++ {
		many.WriteString("      - a\n")
	}
	blowup := "hushspec: \"0.1.0\"\nrules:\n  shell_commands:\n    forbidden_patterns: ['((a{1000}){1000}){1000}']\n"
	for name, tc := range map[string]struct {
		doc string
		err error
	}{
		"oversized":      {big, ErrLimit},
		"alias bomb":     {aliasBomb, ErrSyntax},
		"deep nesting":   {deep, ErrLimit},
		"parser depth":   {deeper, ErrSyntax},
		"long regex":     {longRegex, ErrLimit},
		"too many regex": {many.String(), ErrLimit},
		"regex blowup":   {blowup, ErrRegex},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := Parse([]byte(tc.doc))
			if !errors.Is(err, tc.err) {
				t.Fatalf("got %v, want %v", err, tc.err)
			}
		})
	}
}

func TestExtensionsKeptOpaque(t *testing.T) {
	p, err := Parse([]byte("hushspec: \"0.1.0\"\nextensions:\n  origins:\n    default_behavior: deny\n    profiles: [{id: a, budgets: {tool_calls: 5}}]\n"))
	if err != nil {
		t.Fatal(err)
	}
	b, err := p.Document().CanonicalJSON()
	if err != nil {
		t.Fatal(err)
	}
	want := `{"extensions":{"origins":{"default_behavior":"deny","profiles":[{"budgets":{"tool_calls":5},"id":"a"}]}},"hushspec":"0.1.0"}`
	if string(b) != want {
		t.Errorf("canonical JSON\n got  %s\n want %s", b, want)
	}
}
