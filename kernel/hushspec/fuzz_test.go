package hushspec

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// FuzzParse: the loader never panics, and either rejects with an error that
// wraps ErrInvalidPolicy or returns a policy that evaluates without panicking
// and whose resolved document parses back to the same hash.
func FuzzParse(f *testing.F) {
	// Seeds: every document of the vendored 0.1 and 1.0 packs.
	for _, pattern := range []string{"hushspec/*/*.yaml", "hushspec-1.0/fixtures/core/*/*.yaml", "hushspec-1.0/fixtures/core/merge/*/*.yaml"} {
		files, _ := filepath.Glob(filepath.Join("..", "..", "testdata", "conformance", pattern))
		for _, file := range files {
			if b, err := os.ReadFile(file); err == nil {
				f.Add(b)
			}
		}
	}
	f.Add([]byte("hushspec: \"0.1.0\"\nrules:\n  egress:\n    allow: [\"*.a.com\", \"**.b.com\", \"x-*.c\"]\n"))
	f.Add([]byte("a: &a [1]\nb: *a\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := Parse(data)
		if err != nil {
			if !errors.Is(err, ErrInvalidPolicy) && !errors.Is(err, ErrExtendsUnresolved) {
				t.Fatalf("error does not wrap ErrInvalidPolicy: %v", err)
			}
			return
		}
		for _, typ := range []string{"egress", "file_read", "file_write", "patch_apply", "shell_command", "tool_call",
			"computer_use", "input_inject", "browser_action", "code_exec", "custom"} {
			r := p.Evaluate(Action{Type: typ, Target: "a.b.com", Content: "+x\n-y", HasContent: true, URL: "https://a.b.com/",
				Context: map[string]any{"environment": "x", "counters": map[string]any{"c": int64(1)}, "current_time": "2026-01-01T00:00:00Z"}})
			if r.Decision != DecisionAllow && r.Decision != DecisionWarn && r.Decision != DecisionDeny {
				t.Fatalf("decision %q", r.Decision)
			}
		}
		if len(p.Hash()) != 64 {
			t.Fatalf("hash %q", p.Hash())
		}
	})
}

// FuzzNormalizeHost: never panics; a result is idempotent, is ASCII, and is
// what the fast path returns whenever the fast path accepts the input.
func FuzzNormalizeHost(f *testing.F) {
	for _, s := range []string{
		"api.example.com", "API.Example.COM.", "https://u:p@h.example:8080/x", "[::1]:443",
		"fe80::1%eth0", "::ffff:1.2.3.4", "ΣΑΣ.gr", "İSTANBUL.tr", "Straße.de", "xn--bcher-kva.example",
		"例え。テスト", "127.1", "0x7f.0.0.1", "_s.x", "a..b", "ab--c", "*.x.com",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		h, err := normalizeTarget(s)
		// The fast paths must never change an answer: the full slow path
		// gives the same result, or the same refusal.
		if len(s) <= maxTargetLen && s != "" {
			slow, serr := slowNormalize(s)
			if (err == nil) != (serr == nil) || slow.name != h.name {
				t.Fatalf("%q: fast paths %q %v, slow path %q %v", s, h.name, err, slow.name, serr)
			}
		}
		if err != nil {
			if !errors.Is(err, ErrInvalidHost) {
				t.Fatalf("error does not wrap ErrInvalidHost: %v", err)
			}
			return
		}
		for i := 0; i < len(h.name); i++ {
			if h.name[i] >= 0x80 {
				t.Fatalf("non-ASCII result %q", h.name)
			}
		}
		again, err := normalizeTarget(h.name)
		if err != nil || again.name != h.name || again.isIP != h.isIP {
			t.Fatalf("not idempotent: %q -> %q -> %q, %v", s, h.name, again.name, err)
		}
	})
}

// FuzzRegexProfile: the profile parser never panics; a pattern it accepts
// has a compiled program that matches without panicking.
func FuzzRegexProfile(f *testing.F) {
	for _, s := range []string{`(?i)ignore (all )?previous`, `[0-9]{3}-[0-9]{2}`, `\bsecret\b`, `(a+)+`, `[\D]`,
		`a{,3}`, `(?P<n>x)|[^\s\S]`, `[a-\x7f]`, `(?ims)^.$`, `(?=x)`, `\p{L}`, `[[:alpha:]]`} {
		f.Add(s, "subject")
	}
	f.Fuzz(func(t *testing.T, pattern, subject string) {
		re, err := compileProfileRegex(pattern)
		if err != nil {
			return
		}
		if re == nil {
			t.Fatal("accepted without a program")
		}
		re.MatchString(subject)
	})
}
