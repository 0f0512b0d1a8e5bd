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
		{"rules.patch_integrity.max_additions", 10, ErrType},
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
		"version number":    {"hushspec: 0.1\n", ErrVersion},
		"version 1.7":       {"hushspec: \"1.7.0\"\n", ErrVersion},
		"version 2":         {"hushspec: \"2.0.0\"\n", ErrVersion},
		"version 0.3":       {"hushspec: \"0.3.0\"\n", ErrVersion},
		"version suffix":    {"hushspec: \"1.0.0-rc.1\"\n", ErrVersion},
		"version two parts": {"hushspec: \"1.0\"\n", ErrVersion},
		"empty name 1.0":    {"hushspec: \"1.0.0\"\nname: \"\"\n", ErrConstraint},
		"tab indent":        {"hushspec: \"0.1.0\"\nrules:\n\tegress: {}\n", ErrSyntax},
		"timestamp name":    {"hushspec: \"0.1.0\"\nname: !!timestamp 2026-01-01\n", ErrType},
		"bad float tag":     {"hushspec: \"0.1.0\"\nrules:\n  patch_integrity:\n    max_imbalance_ratio: !!float 0x10\n", ErrType},
		"fraction int":      {"hushspec: \"0.1.0\"\nrules:\n  patch_integrity:\n    max_additions: 1.5\n", ErrType},
		"unsafe int":        {"hushspec: \"0.1.0\"\nrules:\n  patch_integrity:\n    max_additions: 9007199254740992\n", ErrType},
		"anchor":            {"hushspec: \"0.1.0\"\nname: &n x\n", ErrSyntax},
		"version reserved":  {"hushspec: \"0.1.0\"\nextensions:\n  posture:\n    version: 1\n", ErrUnknownField},
		"self supersedes":   {"hushspec: \"0.2.0\"\nmetadata:\n  policy_version: 3\n  supersedes: \"3\"\n", ErrConstraint},
		"bad date":          {"hushspec: \"0.2.0\"\nmetadata:\n  expiry_date: \"2026-02-30\"\n", ErrDate},
		"date as timestamp": {"hushspec: \"0.2.0\"\nmetadata:\n  expiry_date: 2026-02-01T00:00:00Z\n", ErrDate},
		"posix class":       {"hushspec: \"0.1.0\"\nrules:\n  shell_commands:\n    forbidden_patterns: ['[[:alpha:]]']\n", ErrRegex},
		"nested quantifier": {"hushspec: \"0.1.0\"\nrules:\n  shell_commands:\n    forbidden_patterns: ['(a+)+']\n", ErrRegex},
		"open lower bound":  {"hushspec: \"0.1.0\"\nrules:\n  shell_commands:\n    forbidden_patterns: ['a{,3}']\n", ErrRegex},
		"negated in class":  {"hushspec: \"0.1.0\"\nrules:\n  shell_commands:\n    forbidden_patterns: ['[\\D]']\n", ErrRegex},
		"property class":    {"hushspec: \"0.1.0\"\nrules:\n  shell_commands:\n    forbidden_patterns: ['\\p{L}']\n", ErrRegex},
		"backreference":     {"hushspec: \"0.1.0\"\nrules:\n  shell_commands:\n    forbidden_patterns: ['(a)\\1']\n", ErrRegex},
		"possessive":        {"hushspec: \"0.1.0\"\nrules:\n  shell_commands:\n    forbidden_patterns: ['a*+']\n", ErrRegex},
		"wrap offset":       {"hushspec: \"0.1.0\"\nrules:\n  egress:\n    when:\n      time_window: {start: \"09:00\", end: \"10:00\", timezone: \"+0530\"}\n", ErrConstraint},
		"local zone":        {"hushspec: \"0.1.0\"\nrules:\n  egress:\n    when:\n      time_window: {start: \"09:00\", end: \"10:00\", timezone: Local}\n", ErrConstraint},
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
		"nan ratio":         {"hushspec: \"0.1.0\"\nrules:\n  patch_integrity:\n    max_imbalance_ratio: .nan\n", ErrType},
		"huge int":          {"hushspec: \"0.1.0\"\nrules:\n  patch_integrity:\n    max_additions: 99999999999999999999\n", ErrType},
		"negative hex":      {"hushspec: \"0.1.0\"\nrules:\n  patch_integrity:\n    max_additions: -0x10\n", ErrType},
		"args size zero":    {"hushspec: \"0.1.0\"\nrules:\n  tool_access:\n    max_args_size: 0\n", ErrNumber},
		"secret no name":    {"hushspec: \"0.1.0\"\nrules:\n  secret_patterns:\n    patterns:\n      - pattern: x\n        severity: warn\n", ErrMissingField},
		"pcre lookahead":    {"hushspec: \"0.1.0\"\nrules:\n  shell_commands:\n    forbidden_patterns: ['(?=x)']\n", ErrRegex},
		"merge key":         {"hushspec: \"0.1.0\"\n<<: {name: x}\n", ErrSyntax},
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
	longRegex := "hushspec: \"0.1.0\"\nrules:\n  shell_commands:\n    forbidden_patterns: ['" + strings.Repeat("a", maxRegexLen+1) + "']\n"
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
		"long regex":     {longRegex, ErrRegex},
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

// TestYAMLProfileAccepts: what the YAML 1.2 Core profile reads as numbers
// and strings (core 2.4), and the forms 1.0 accepts that 0.1 refused.
func TestYAMLProfileAccepts(t *testing.T) {
	for name, tc := range map[string]struct {
		doc  string
		path []string
		want any
	}{
		"octal":            {"rules:\n  patch_integrity:\n    max_additions: 0o12\n", []string{"rules", "patch_integrity", "max_additions"}, int64(10)},
		"hex":              {"rules:\n  patch_integrity:\n    max_additions: 0xA\n", []string{"rules", "patch_integrity", "max_additions"}, int64(10)},
		"leading zero":     {"rules:\n  patch_integrity:\n    max_additions: 010\n", []string{"rules", "patch_integrity", "max_additions"}, int64(10)},
		"float integer":    {"rules:\n  patch_integrity:\n    max_additions: 1e1\n", []string{"rules", "patch_integrity", "max_additions"}, int64(10)},
		"float tag":        {"rules:\n  patch_integrity:\n    max_additions: !!float 010\n", []string{"rules", "patch_integrity", "max_additions"}, int64(10)},
		"yes is a string":  {"name: yes\n", []string{"name"}, "yes"},
		"date is a string": {"name: 2026-01-01\n", []string{"name"}, "2026-01-01"},
		"underscore":       {"name: 1_0\n", []string{"name"}, "1_0"},
		"sexagesimal":      {"name: 1:20\n", []string{"name"}, "1:20"},
		"quoted number":    {"name: \"010\"\n", []string{"name"}, "010"},
		"str tag":          {"name: !!str 5\n", []string{"name"}, "5"},
		"empty name 0.x":   {"name: \"\"\n", []string{"name"}, ""},
		"byte order mark":  {"name: bom\n", []string{"name"}, "bom"},
	} {
		t.Run(name, func(t *testing.T) {
			doc := "hushspec: \"0.2.0\"\n" + tc.doc
			if name == "byte order mark" {
				doc = "\ufeff" + doc
			}
			d, err := ParseDocument([]byte(doc), "")
			if err != nil {
				t.Fatal(err)
			}
			var v any = d.tree
			for _, k := range tc.path {
				v = v.(map[string]any)[k]
			}
			if v != tc.want {
				t.Errorf("got %#v, want %#v", v, tc.want)
			}
		})
	}
}

// TestRegexProfileSemantics: the profile's meaning where Go's RE2 differs
// (core 3.14.3): \s holds \v, and the i flag folds ASCII letters only.
func TestRegexProfileSemantics(t *testing.T) {
	for _, tc := range []struct {
		pattern, subject string
		match            bool
	}{
		{`c\sd`, "c\vd", true},
		{`c\Sd`, "c\vd", false},
		{`[\s]`, "\v", true},
		{`(?i)k`, "\u212a", false}, // Kelvin sign: Unicode folding would match
		{`(?i)k`, "K", true},
		{`(?i)[a-c]`, "B", true},
		{`(?i)[a-c]`, "\u212a", false},
		{`(?i)ſ`, "s", false}, // long s folds to s only under Unicode
		{`\d`, "\u0661", false},
		{`\w`, "é", false},
		{`token$`, "token\n", false},
		{`(?m)token$`, "token\n", true},
		{`a.b`, "a\rb", true},
		{`a.b`, "a\nb", false},
		{`(?s)a.b`, "a\nb", true},
		{`(?im)^X`, "y\nx", true},
		{`(?P<n>a)(?<m>b)`, "ab", true},
		{`\x41\.`, "A.", true},
	} {
		re, err := compileProfileRegex(tc.pattern)
		if err != nil {
			t.Errorf("%q: %v", tc.pattern, err)
			continue
		}
		if got := re.MatchString(tc.subject); got != tc.match {
			t.Errorf("%q on %q: %v, want %v", tc.pattern, tc.subject, got, tc.match)
		}
	}
	for _, bad := range []string{
		`(?=x)`, `(?!x)`, `(?<=x)`, `(?<!x)`, `(a)\1`, `(?P<n>a)(?P=n)`, `\k<n>`, `a*+`, `(?>a)`, `(?#c)`,
		`\A`, `\z`, `\Z`, `\G`, `\p{L}`, `[[:alpha:]]`, `[\D]`, `[\b]`, `a{,3}`, `foo(?i)bar`, `(?x)a`,
		`(?i:a)`, `(a+)+`, `(a*)*`, `((ab)+)*`, `(a{2,})*`, `[\x{10000}-\x{10001}]`, `[𐀀-𐀁]`, `a{`, `}`, `]`,
		"\t", `\u0041`, `\0`, `a**`, `(`, `)`, `[`, `[]`,
	} {
		if _, err := compileProfileRegex(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
	for _, good := range []string{`(a|aa)*`, `(a?){1000}`, `(ab)+`, `(a+)`, `(a+){3}`, `[a-]`, `[-a]`, `[\]\[]`, `(?i)(?m)x`, `\bsecret\b`} {
		if _, err := compileProfileRegex(good); err != nil {
			t.Errorf("%q refused: %v", good, err)
		}
	}
}
