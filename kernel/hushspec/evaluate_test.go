package hushspec

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
)

func mustParse(t *testing.T, doc string) *Policy {
	t.Helper()
	p, err := Parse([]byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func check(t *testing.T, p *Policy, a Action, decision, rule string) Result {
	t.Helper()
	r := p.Evaluate(a)
	if r.Decision != decision || r.MatchedRule != rule {
		t.Errorf("%+v: got %s %q (%s), want %s %q", a, r.Decision, r.MatchedRule, r.Reason, decision, rule)
	}
	return r
}

func TestSpecOverSDKs(t *testing.T) {
	// An omitted egress default is block (core 3.3).
	p := mustParse(t, "hushspec: \"0.1.0\"\nrules:\n  egress:\n    allow: [a.example.com]\n")
	check(t, p, Action{Type: "egress", Target: "b.example.com"}, DecisionDeny, "rules.egress.default")
	// A non-empty allowlist that does not match denies even with default allow (core 3.7.4).
	p = mustParse(t, "hushspec: \"0.1.0\"\nrules:\n  tool_access:\n    allow: [read_file]\n    default: allow\n")
	check(t, p, Action{Type: "tool_call", Target: "write_file"}, DecisionDeny, "rules.tool_access.allow")
	// Tool names are exact: no glob, no case folding.
	p = mustParse(t, "hushspec: \"0.1.0\"\nrules:\n  tool_access:\n    block: [\"shell_*\"]\n")
	check(t, p, Action{Type: "tool_call", Target: "shell_exec"}, DecisionAllow, "rules.tool_access.default")
	check(t, p, Action{Type: "tool_call", Target: "shell_*"}, DecisionDeny, "rules.tool_access.block")
	check(t, p, Action{Type: "tool_call", Target: "SHELL_*"}, DecisionAllow, "rules.tool_access.default")
}

func TestEvaluateBlocks(t *testing.T) {
	p := mustParse(t, `hushspec: "0.1.0"
rules:
  forbidden_paths:
    patterns: ["**/.ssh/**", "/etc/shadow"]
  path_allowlist:
    enabled: true
    read: ["/home/**"]
    write: ["/home/user/src/**"]
  secret_patterns:
    patterns:
      - {name: todo, pattern: "TODO", severity: warn}
      - {name: key, pattern: "KEY-[0-9]+", severity: error}
  patch_integrity:
    max_additions: 3
    max_deletions: 1
  tool_access:
    max_args_size: 10
  computer_use:
    enabled: true
    mode: fail_closed
    allowed_actions: [remote.clipboard]
  remote_desktop_channels:
    enabled: true
    clipboard: false
  input_injection:
    enabled: true
    allowed_types: [keyboard]
`)
	check(t, p, Action{Type: "file_read", Target: "/home/u/.ssh/id_rsa"}, DecisionDeny, "rules.forbidden_paths.patterns")
	check(t, p, Action{Type: "file_read", Target: "/home/u/src/../.ssh/id_rsa"}, DecisionDeny, "rules.forbidden_paths.patterns")
	check(t, p, Action{Type: "file_read", Target: "/home/u/notes"}, DecisionAllow, "rules.path_allowlist")
	check(t, p, Action{Type: "file_read", Target: "/tmp/x"}, DecisionDeny, "rules.path_allowlist")
	check(t, p, Action{Type: "file_read", Target: ""}, DecisionDeny, InvalidActionRule)
	check(t, p, Action{Type: "file_write", Target: "/home/user/src/a", Content: "TODO"}, DecisionWarn, "rules.secret_patterns.patterns.todo")
	check(t, p, Action{Type: "file_write", Target: "/home/user/src/a", Content: "TODO KEY-1"}, DecisionDeny, "rules.secret_patterns.patterns.key")
	check(t, p, Action{Type: "file_write", Target: "/home/other/a"}, DecisionDeny, "rules.path_allowlist")
	// patch falls back to the write list when patch is empty.
	check(t, p, Action{Type: "patch_apply", Target: "/home/user/src/a", Content: "+a\n+b"}, DecisionAllow, "rules.path_allowlist")
	check(t, p, Action{Type: "patch_apply", Target: "/home/other/a", Content: "+a\n+b"}, DecisionDeny, "rules.path_allowlist")
	check(t, p, Action{Type: "patch_apply", Target: "/home/user/src/a", Content: "--- a/x\n+++ b/x\n@@\n+a\n+b\n+c\n+d"}, DecisionDeny, "rules.patch_integrity.max_additions")
	check(t, p, Action{Type: "patch_apply", Target: "/home/user/src/a", Content: "-a\n-b"}, DecisionDeny, "rules.patch_integrity.max_deletions")
	check(t, p, Action{Type: "tool_call", Target: "x", ArgsSize: 11}, DecisionDeny, "rules.tool_access.max_args_size")
	check(t, p, Action{Type: "tool_call", Target: "x", ArgsSize: -1}, DecisionDeny, InvalidActionRule)
	// computer_use allows the clipboard action; the channel rule denies it: deny wins.
	check(t, p, Action{Type: "computer_use", Target: "remote.clipboard"}, DecisionDeny, "rules.remote_desktop_channels.clipboard")
	check(t, p, Action{Type: "computer_use", Target: "remote.session.connect"}, DecisionDeny, "rules.computer_use.mode")
	check(t, p, Action{Type: "input_inject", Target: "keyboard"}, DecisionAllow, "rules.input_injection.allowed_types")
	check(t, p, Action{Type: "input_inject", Target: "mouse"}, DecisionDeny, "rules.input_injection.allowed_types")
	check(t, p, Action{Type: "custom", Target: "x"}, DecisionDeny, UnknownActionTypeRule)
	check(t, p, Action{Type: "launch_missiles"}, DecisionDeny, UnknownActionTypeRule)
	// code_exec is a 1.0 action type; with no code_execution block no rule
	// applies to it.
	check(t, p, Action{Type: "code_exec"}, DecisionAllow, "")
	// No egress block: no rule applies, to a usable host or not.
	check(t, p, Action{Type: "egress", Target: "example.com"}, DecisionAllow, "")
	check(t, p, Action{Type: "egress", Target: "exa mple.com"}, DecisionAllow, "")
	// Core 3.14.2: a target that is no valid host matches no pattern, so the
	// default decides; a block pattern cannot be dodged by breaking the
	// target, and an allow pattern cannot be reached that way.
	e := mustParse(t, "hushspec: \"1.0.0\"\nrules:\n  egress:\n    allow: [\"**\"]\n    default: block\n")
	check(t, e, Action{Type: "egress", Target: "exa mple.com"}, DecisionDeny, "rules.egress.default")
}

func TestDisabledBlockIsInert(t *testing.T) {
	p := mustParse(t, "hushspec: \"0.1.0\"\nrules:\n  egress:\n    enabled: false\n    block: [\"**.com\"]\n")
	check(t, p, Action{Type: "egress", Target: "x.com"}, DecisionAllow, "")
}

func TestEgressResultCarriesPatternAndHost(t *testing.T) {
	p := mustParse(t, "hushspec: \"0.1.0\"\nrules:\n  egress:\n    allow: [\"**.Example.com\"]\n")
	r := check(t, p, Action{Type: "egress", Target: "https://API.example.com:443/v1"}, DecisionAllow, "rules.egress.allow")
	if r.Pattern != "**.Example.com" || r.Host != "api.example.com" {
		t.Errorf("pattern %q host %q", r.Pattern, r.Host)
	}
}

func TestPanicSentinel(t *testing.T) {
	dir := t.TempDir()
	sentinel := filepath.Join(dir, "panic")
	p, err := Parse([]byte("hushspec: \"0.1.0\"\nrules:\n  egress:\n    default: allow\n"), WithPanicSentinel(sentinel))
	if err != nil {
		t.Fatal(err)
	}
	a := Action{Type: "egress", Target: "example.com"}
	check(t, p, a, DecisionAllow, "rules.egress.default")
	if err := os.WriteFile(sentinel, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	check(t, p, a, DecisionDeny, PanicRule)
	check(t, p, Action{Type: "tool_call", Target: "x"}, DecisionDeny, PanicRule)
	if err := os.Remove(sentinel); err != nil {
		t.Fatal(err)
	}
	check(t, p, a, DecisionAllow, "rules.egress.default")

	// A sentinel whose existence cannot be settled counts as present.
	if os.Geteuid() != 0 {
		locked := filepath.Join(dir, "locked")
		if err := os.Mkdir(locked, 0o000); err != nil {
			t.Fatal(err)
		}
		q, _ := Parse([]byte("hushspec: \"0.1.0\"\n"), WithPanicSentinel(filepath.Join(locked, "panic")))
		check(t, q, a, DecisionDeny, PanicRule)
	}
	// A path through a regular file is definitely absent.
	file := filepath.Join(dir, "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	q, _ := Parse([]byte("hushspec: \"0.1.0\"\n"), WithPanicSentinel(filepath.Join(file, "panic")))
	check(t, q, a, DecisionAllow, "")
}

func TestEvaluateConcurrent(t *testing.T) {
	p := mustParse(t, "hushspec: \"0.1.0\"\nrules:\n  egress:\n    allow: [\"*.a.com\"]\n    block: [b.com]\n")
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 500; i++ {
				if r := p.Evaluate(Action{Type: "egress", Target: "x.a.com"}); r.Decision != DecisionAllow {
					t.Errorf("got %v", r)
					return
				}
				if r := p.Evaluate(Action{Type: "egress", Target: "B.com"}); r.Decision != DecisionDeny {
					t.Errorf("got %v", r)
					return
				}
			}
		}()
	}
	wg.Wait()
}

func writeFiles(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, body := range files {
		path := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func TestExtendsCycles(t *testing.T) {
	dir := writeFiles(t, map[string]string{
		"self.yaml":  "hushspec: \"0.1.0\"\nextends: self.yaml\n",
		"a.yaml":     "hushspec: \"0.1.0\"\nextends: sub/b.yaml\n",
		"sub/b.yaml": "hushspec: \"0.1.0\"\nextends: ../a\n",
	})
	for _, f := range []string{"self.yaml", "a.yaml"} {
		if _, err := LoadFile(filepath.Join(dir, f)); !errors.Is(err, ErrExtendsCycle) {
			t.Errorf("%s: got %v, want a cycle error", f, err)
		}
	}
	link := filepath.Join(dir, "link.yaml")
	if err := os.Symlink(filepath.Join(dir, "loop.yaml"), link); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "loop.yaml"), []byte("hushspec: \"0.1.0\"\nextends: link.yaml\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadFile(link); !errors.Is(err, ErrExtendsCycle) {
		t.Errorf("symlink loop: got %v", err)
	}
}

func TestExtendsChainAndStrategies(t *testing.T) {
	dir := writeFiles(t, map[string]string{
		"root.yaml": `hushspec: "0.1.0"
name: root
merge_strategy: replace
rules:
  egress: {allow: [root.com], default: block}
  tool_access: {block: [rm]}
extensions:
  detection: {jailbreak: {block_threshold: 50, mode: strict}}
`,
		"mid.yaml": `hushspec: "0.1.0"
extends: root.yaml
rules:
  egress: {allow: [mid.com]}
extensions:
  detection: {jailbreak: {block_threshold: 70}}
`,
		"leaf.yaml": `hushspec: "0.1.0"
extends: mid
merge_strategy: merge
name: leaf
extensions:
  detection: {prompt_injection: {block_at_or_above: high}}
`,
	})
	p, err := LoadFile(filepath.Join(dir, "leaf.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	b, err := p.Document().CanonicalJSON()
	if err != nil {
		t.Fatal(err)
	}
	// mid deep-merges onto root (rule blocks replaced whole, extension
	// mappings merged recursively, root's merge_strategy dropped); leaf
	// merges with "merge" (extension blocks replaced whole).
	want := `{"extensions":{"detection":{"prompt_injection":{"block_at_or_above":"high"}}},"hushspec":"0.1.0","name":"leaf","rules":{"egress":{"allow":["mid.com"]},"tool_access":{"block":["rm"]}}}`
	if string(b) != want {
		t.Errorf("resolved\n got  %s\n want %s", b, want)
	}
	check(t, p, Action{Type: "egress", Target: "root.com"}, DecisionDeny, "rules.egress.default")
	check(t, p, Action{Type: "tool_call", Target: "rm"}, DecisionDeny, "rules.tool_access.block")
	if p.Name() != "leaf" || len(p.Hash()) != 64 {
		t.Errorf("name %q hash %q", p.Name(), p.Hash())
	}

	mid, err := LoadFile(filepath.Join(dir, "mid.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	b, _ = mid.Document().CanonicalJSON()
	wantMid := `{"extensions":{"detection":{"jailbreak":{"block_threshold":70,"mode":"strict"}}},"hushspec":"0.1.0","name":"root","rules":{"egress":{"allow":["mid.com"]},"tool_access":{"block":["rm"]}}}`
	if string(b) != wantMid {
		t.Errorf("mid resolved\n got  %s\n want %s", b, wantMid)
	}
}

func TestExtendsErrors(t *testing.T) {
	dir := writeFiles(t, map[string]string{
		"missing.yaml": "hushspec: \"0.1.0\"\nextends: nowhere.yaml\n",
		"builtin.yaml": "hushspec: \"0.1.0\"\nextends: \"hushspec:default\"\n",
		"url.yaml":     "hushspec: \"0.1.0\"\nextends: \"https://example.com/p.yaml\"\n",
		"badbase.yaml": "hushspec: \"0.1.0\"\nextends: bad.yaml\n",
		"bad.yaml":     "hushspec: \"0.1.0\"\nrules:\n  egress:\n    default: maybe\n",
	})
	for _, f := range []string{"missing.yaml", "builtin.yaml", "url.yaml"} {
		if _, err := LoadFile(filepath.Join(dir, f)); !errors.Is(err, ErrExtendsUnresolved) {
			t.Errorf("%s: got %v", f, err)
		}
	}
	_, err := LoadFile(filepath.Join(dir, "badbase.yaml"))
	if fe := FieldErrors(err); len(fe) != 1 || fe[0].Line != 4 || !errors.Is(err, ErrEnum) {
		t.Errorf("error in base: got %v", err)
	}
	if _, err := Parse([]byte("hushspec: \"0.1.0\"\nextends: a.yaml\n")); !errors.Is(err, ErrExtendsUnresolved) {
		t.Errorf("Parse with extends and no base dir: %v", err)
	}
	// Core 2.6.2: a leaf with 32 base documents is the longest chain that
	// resolves; one more hop is refused.
	var chain = map[string]string{}
	for i := 0; i < 33; i++ {
		chain[fmt.Sprintf("c/%d.yaml", i)] = fmt.Sprintf("hushspec: \"0.1.0\"\nextends: %d.yaml\n", i+1)
	}
	chain["c/33.yaml"] = "hushspec: \"0.1.0\"\n"
	cdir := writeFiles(t, chain)
	if _, err := LoadFile(filepath.Join(cdir, "c", "0.yaml")); !errors.Is(err, ErrLimit) {
		t.Errorf("chain of 33 hops: %v", err)
	}
	if _, err := LoadFile(filepath.Join(cdir, "c", "1.yaml")); err != nil {
		t.Errorf("chain of 32 hops: %v", err)
	}
}

func TestHashStable(t *testing.T) {
	a := mustParse(t, "hushspec: \"0.1.0\"\nname: x\nrules:\n  egress:\n    allow: [a.com]\n")
	b := mustParse(t, "# reordered and restyled\nrules: {egress: {allow: [\"a.com\"]}}\nname: 'x'\nhushspec: \"0.1.0\"\n")
	c := mustParse(t, "hushspec: \"0.1.0\"\nname: x\nrules:\n  egress:\n    allow: [b.com]\n")
	if a.Hash() != b.Hash() {
		t.Error("same document, different hash")
	}
	if a.Hash() == c.Hash() {
		t.Error("different documents, same hash")
	}
	sum := sha256.Sum256([]byte(`{"hushspec":"0.1.0","name":"x","rules":{"egress":{"allow":["a.com"]}}}`))
	if want := hex.EncodeToString(sum[:]); a.Hash() != want {
		t.Errorf("hash %q, want %q", a.Hash(), want)
	}
}

// TestEvasionAttempts: targets an agent shapes to slip past a block
// pattern, a forbidden path or a secret pattern under the 1.0 matching
// rules (core 3.4, 3.14.1, 3.14.2). Each must still be caught.
func TestEvasionAttempts(t *testing.T) {
	p := mustParse(t, `hushspec: "1.0.0"
rules:
  egress:
    allow: ["**"]
    block: ["blocked.example", "*.evil.example"]
    default: allow
  forbidden_paths:
    patterns: ["**/.env", "/etc/shadow", "/data/café/**"]
    exceptions: ["/proj/**"]
  secret_patterns:
    patterns:
      - {name: aws, pattern: "AKIA[0-9A-Z]{16}", severity: critical}
      - {name: note, pattern: "(?i)internal", severity: warn}
`)
	for _, target := range []string{
		`http://blocked.example\@allowed.example/`, // backslash ends the authority
		`blocked.example\@allowed.example`,
		`https://user:pw@blocked.example:443/x`,
		`BLOCKED.EXAMPLE.`,
		`https://x.evil.example\.allowed.example`,
	} {
		check(t, p, Action{Type: "egress", Target: target}, DecisionDeny, "rules.egress.block")
	}
	for _, target := range []string{
		"/proj/../.env",            // an exception escaped with ..
		`C:\proj\..\.env`,          // backslashes are separators
		"/proj/x/../../etc/shadow", // .. above the exception
		"//etc//shadow/",           // repeated and trailing separators
		"/../../etc/shadow",        // .. above the root is discarded
		"/data/cafe\u0301/x",       // NFD spelling of a composed pattern
	} {
		check(t, p, Action{Type: "file_read", Target: target}, DecisionDeny, "rules.forbidden_paths.patterns")
	}
	// An allow from an exception does not end the evaluation: the secret
	// scan still runs (core 6.1), and a later critical outranks an earlier
	// warn in one payload (core 3.4).
	check(t, p, Action{Type: "file_write", Target: "/proj/a", Content: "INTERNAL AKIAABCDEFGHIJKLMNOP"}, DecisionDeny, "rules.secret_patterns.patterns.aws")
	// Content carried by an egress or a tool call is scanned too.
	check(t, p, Action{Type: "egress", Target: "ok.example", Content: "AKIAABCDEFGHIJKLMNOP", HasContent: true}, DecisionDeny, "rules.secret_patterns.patterns.aws")
	check(t, p, Action{Type: "tool_call", Target: "send", Content: "AKIAABCDEFGHIJKLMNOP", HasContent: true}, DecisionDeny, "rules.secret_patterns.patterns.aws")
	// A wildcard never matches an IP literal; a pattern that looks like an
	// address range is valid but matches nothing, and is reported.
	ip := mustParse(t, "hushspec: \"1.0.0\"\nrules:\n  egress:\n    allow: [\"*.example\", \"**\", \"10.0.0.*\"]\n    default: block\n")
	check(t, ip, Action{Type: "egress", Target: "10.0.0.1"}, DecisionDeny, "rules.egress.default")
	check(t, ip, Action{Type: "egress", Target: "[::1]:443"}, DecisionDeny, "rules.egress.default")
	if w := ip.IPWildcards(); len(w) != 1 || w[0] != "10.0.0.*" {
		t.Errorf("IPWildcards() = %q", w)
	}
	// Unknown and custom action types deny (core 5), warn is not allow.
	check(t, p, Action{Type: "custom", Target: "x"}, DecisionDeny, UnknownActionTypeRule)
	check(t, p, Action{Type: "EGRESS", Target: "ok.example"}, DecisionDeny, UnknownActionTypeRule)
}

// TestConditionsFailClosed: a `when` condition that cannot be evaluated
// leaves its block active; only a false one switches it off (core 3.13).
func TestConditionsFailClosed(t *testing.T) {
	p := mustParse(t, `hushspec: "1.0.0"
rules:
  shell_commands:
    when:
      not:
        rate: {counter: shell.calls, threshold: 3, comparison: gte}
    forbidden_patterns: ["rm"]
  tool_access:
    when:
      any_of:
        - time_window: {start: "09:00", end: "17:00", timezone: "+05:30", days: [MON]}
        - context: {user.role: [admin, ops]}
    block: [deploy]
`)
	rm := Action{Type: "shell_command", Target: "rm -rf /"}
	for name, ctx := range map[string]map[string]any{
		"no counters":      nil,
		"negative counter": {"counters": map[string]any{"shell.calls": int64(-1)}},
		"fraction counter": {"counters": map[string]any{"shell.calls": 2.5}},
		"string counter":   {"counters": map[string]any{"shell.calls": "1"}},
		"below threshold":  {"counters": map[string]any{"shell.calls": int64(2)}},
	} {
		rm.Context = ctx
		if r := p.Evaluate(rm); r.Decision != DecisionDeny {
			t.Errorf("%s: %s, want the block active (deny)", name, r.Decision)
		}
	}
	rm.Context = map[string]any{"counters": map[string]any{"shell.calls": int64(3)}}
	check(t, p, rm, DecisionAllow, "")

	deploy := Action{Type: "tool_call", Target: "deploy"}
	for name, c := range map[string]struct {
		ctx  map[string]any
		want string
	}{
		// 2026-09-14 is a Monday; 05:00Z is 10:30 at +05:30.
		"inside the window":      {map[string]any{"current_time": "2026-09-14T05:00:00Z"}, DecisionDeny},
		"outside, role absent":   {map[string]any{"current_time": "2026-09-14T13:00:00Z"}, DecisionAllow},
		"outside, role matches":  {map[string]any{"current_time": "2026-09-14T13:00:00Z", "user": map[string]any{"role": "ops"}}, DecisionDeny},
		"outside, role differs":  {map[string]any{"current_time": "2026-09-14T13:00:00Z", "user": map[string]any{"role": "dev"}}, DecisionAllow},
		"a Tuesday":              {map[string]any{"current_time": "2026-09-15T05:00:00Z"}, DecisionAllow},
		"unparseable time":       {map[string]any{"current_time": "2026-09-14 05:00:00"}, DecisionDeny},
		"lowercase marker":       {map[string]any{"current_time": "2026-09-14t05:00:00z"}, DecisionDeny},
		"offset in the time":     {map[string]any{"current_time": "2026-09-14T10:30:00+05:30"}, DecisionDeny},
		"no offset is UTC":       {map[string]any{"current_time": "2026-09-14T05:00:00"}, DecisionDeny},
		"time of the wrong type": {map[string]any{"current_time": int64(5)}, DecisionDeny},
		"year zero":              {map[string]any{"current_time": "0000-09-14T05:00:00"}, DecisionDeny},
		"leap second":            {map[string]any{"current_time": "2026-09-14T13:59:60Z"}, DecisionDeny},
		"no seconds":             {map[string]any{"current_time": "2026-09-14T13:00Z"}, DecisionDeny},
		"role of another type":   {map[string]any{"current_time": "2026-09-14T13:00:00Z", "user": map[string]any{"role": true}}, DecisionAllow},
	} {
		deploy.Context = c.ctx
		if r := p.Evaluate(deploy); r.Decision != c.want {
			t.Errorf("%s: %s (%s), want %s", name, r.Decision, r.MatchedRule, c.want)
		}
	}
}

// TestDeadPathGlobs: patterns no normalized target can match are reported
// (a 0.1 policy's "./secrets/**" no longer forbids anything under 1.0), and
// they really do match nothing.
func TestDeadPathGlobs(t *testing.T) {
	p := mustParse(t, `hushspec: "0.1.0"
rules:
  forbidden_paths:
    patterns: ["./secrets/**", "/a/../b", "/data//x", "C:\\x", "/logs/", "**/.env", "../up/**", "/"]
  path_allowlist:
    enabled: true
    read: ["./src/**", "src/**"]
`)
	got := p.DeadPathGlobs()
	want := []string{"./secrets/**", "/a/../b", "/data//x", `C:\x`, "/logs/", "./src/**"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("DeadPathGlobs() = %q, want %q", got, want)
	}
	for _, target := range []string{"./secrets/k", "secrets/k", "/a/../b", "/b", "/data//x", "/data/x", `C:\x`, "C:/x", "/logs/", "/logs"} {
		if r := p.Evaluate(Action{Type: "file_read", Target: target}); r.MatchedRule == "rules.forbidden_paths.patterns" {
			t.Errorf("%q matched %s", target, r.Pattern)
		}
	}
	check(t, p, Action{Type: "file_read", Target: "../up/x"}, DecisionDeny, "rules.forbidden_paths.patterns")
}
