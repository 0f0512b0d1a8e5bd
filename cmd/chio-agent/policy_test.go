package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/backbay-labs/chio-agent/internal/testutil"
)

func writePolicy(t *testing.T, name, body string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestPolicyCheckValid(t *testing.T) {
	path := writePolicy(t, "p.yaml", "hushspec: \"0.1.0\"\nname: demo\nrules:\n  egress:\n    allow: [api.example.com]\n")
	out, err := run(t, "policy", "check", path)
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if !strings.Contains(out, "ok: policy demo, hash ") {
		t.Errorf("output %q", out)
	}
}

func TestPolicyCheckPrintsEveryErrorWithLine(t *testing.T) {
	path := writePolicy(t, "bad.yaml", `hushspec: "0.1.0"
rules:
  egress:
    enabled: "true"
    default: maybe
  nonexistent_guard: {}
`)
	out, err := run(t, "policy", "check", path)
	if err == nil || exitCode(err) != 1 {
		t.Fatalf("err %v (exit %d), want exit 1", err, exitCode(err))
	}
	for _, want := range []string{
		path + ":4:14: rules.egress.enabled: invalid type: string \"true\", expected a boolean (true or false) [E001]",
		path + ":5:14: rules.egress.default: unknown variant `maybe`",
		path + ":6:3: rules.nonexistent_guard: unknown field `nonexistent_guard`",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
}

func TestPolicyCheckBadInput(t *testing.T) {
	big := writePolicy(t, "big.yaml", "hushspec: \"0.1.0\"\nname: "+strings.Repeat("x", 2<<20)+"\n")
	bomb := writePolicy(t, "bomb.yaml", "hushspec: \"0.1.0\"\nextensions:\n  posture:\n    a: &a [x, x]\n    b: [*a, *a]\n")
	garbage := writePolicy(t, "garbage.yaml", "\x00\x01{{{[")
	for _, path := range []string{big, bomb, garbage, filepath.Join(t.TempDir(), "missing.yaml")} {
		out, err := run(t, "policy", "check", path)
		if err == nil || exitCode(err) != 1 || strings.TrimSpace(out) == "" {
			t.Errorf("%s: err %v, output %q", filepath.Base(path), err, out)
		}
	}
}

func TestPolicyEval(t *testing.T) {
	path := writePolicy(t, "p.yaml", `hushspec: "0.1.0"
rules:
  egress:
    allow: ["*.example.com"]
    block: [evil.example.com]
  tool_access:
    require_confirmation: [deploy]
    max_args_size: 100
  secret_patterns:
    patterns:
      - {name: aws, pattern: "AKIA[0-9A-Z]{16}", severity: critical}
`)
	for _, tc := range []struct {
		args           []string
		decision, rule string
	}{
		{[]string{"--type", "egress", "--target", "https://API.example.com:443/x"}, "allow", "rules.egress.allow"},
		{[]string{"--type", "egress", "--target", "evil.example.com."}, "deny", "rules.egress.block"},
		{[]string{"--type", "egress", "--target", "example.com"}, "deny", "rules.egress.default"},
		{[]string{"--type", "tool_call", "--target", "deploy"}, "warn", "rules.tool_access.require_confirmation"},
		{[]string{"--type", "tool_call", "--target", "x", "--args-size", "101"}, "deny", "rules.tool_access.max_args_size"},
		{[]string{"--type", "file_write", "--target", "/a", "--content", "k=AKIAABCDEFGHIJKLMNOP"}, "deny", "rules.secret_patterns.patterns.aws"},
	} {
		evalCase(t, path, tc.args, tc.decision, tc.rule)
	}
	if _, err := run(t, "policy", "eval", path); err == nil {
		t.Error("eval without --type succeeded")
	}
}

// evalCase runs `policy eval path args...` and checks the decision and
// matched rule of the one JSON object it prints, and that it gave a reason.
func evalCase(t *testing.T, path string, args []string, decision, rule string) {
	t.Helper()
	out, err := run(t, append([]string{"policy", "eval", path}, args...)...)
	if err != nil {
		t.Fatalf("%v: %v\n%s", args, err, out)
	}
	var got map[string]any
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatalf("%v: output is not one JSON object: %q", args, out)
	}
	if got["decision"] != decision || got["matched_rule"] != rule || got["reason"] == "" {
		t.Errorf("%v: got %v, want %s %q", args, got, decision, rule)
	}
}

// TestPolicyEval10 drives the 1.0 action inputs from the command line:
// content presence, browser and code actions, the runtime context of when
// conditions, and the posture state.
func TestPolicyEval10(t *testing.T) {
	path := writePolicy(t, "p.yaml", `hushspec: "1.0.0"
rules:
  egress:
    allow: [api.example.com]
  secret_patterns:
    patterns:
      - {name: aws, pattern: "AKIA[0-9A-Z]{16}", severity: critical}
  shell_commands:
    when:
      any_of:
        - context: {environment: production}
        - rate: {counter: shell, threshold: 3, comparison: gte}
    forbidden_patterns: ["rm"]
  browser_automation:
    enabled: true
    blocked_domains: [evil.example]
  code_execution:
    enabled: true
    network_access: false
    max_execution_time_ms: 100
extensions:
  posture:
    initial: open
    states:
      open: {capabilities: [egress, shell, custom]}
      closed: {capabilities: []}
    transitions: [{from: open, to: closed, on: alarm}]
`)
	for _, tc := range []struct {
		args           []string
		decision, rule string
	}{
		{[]string{"--type", "egress", "--target", "api.example.com", "--content", "AKIAABCDEFGHIJKLMNOP"}, "deny", "rules.secret_patterns.patterns.aws"},
		{[]string{"--type", "egress", "--target", "api.example.com", "--content", ""}, "allow", "rules.egress.allow"},
		{[]string{"--type", "browser_action", "--target", "navigate", "--url", "https://evil.example/x"}, "deny", "rules.browser_automation.blocked_domains"},
		{[]string{"--type", "code_exec", "--target", "python", "--network"}, "deny", "rules.code_execution.network_access"},
		{[]string{"--type", "code_exec", "--target", "python", "--timeout-ms", "101"}, "deny", "rules.code_execution.max_execution_time_ms"},
		{[]string{"--type", "shell_command", "--target", "rm x", "--context", `{"environment":"production","counters":{"shell":1}}`}, "deny", "rules.shell_commands.forbidden_patterns[0]"},
		{[]string{"--type", "shell_command", "--target", "rm x", "--context", `{"environment":"staging","counters":{"shell":1}}`}, "allow", ""},
		{[]string{"--type", "shell_command", "--target", "rm x", "--context", `{"environment":"staging","counters":{"shell":1.5}}`}, "deny", "rules.shell_commands.forbidden_patterns[0]"},
		{[]string{"--type", "custom", "--target", "x"}, "allow", ""},
		{[]string{"--type", "custom", "--target", "x", "--posture-current", "closed"}, "deny", "extensions.posture.states.closed.capabilities"},
	} {
		evalCase(t, path, tc.args, tc.decision, tc.rule)
	}
	out, err := run(t, "policy", "eval", path, "--type", "egress", "--target", "api.example.com", "--posture-signal", "alarm")
	if err != nil || !strings.Contains(out, `"posture_state":"open","posture_next":"closed"`) {
		t.Errorf("posture signal: %v %s", err, out)
	}
	if _, err := run(t, "policy", "eval", path, "--type", "egress", "--context", "[1]"); exitCode(err) != exitUsage {
		t.Errorf("--context that is not an object: exit %d, %v", exitCode(err), err)
	}
}

func TestPolicyEvalPanicSentinel(t *testing.T) {
	path := writePolicy(t, "p.yaml", "hushspec: \"0.1.0\"\n")
	sentinel := writePolicy(t, "panic", "")
	out, err := run(t, "policy", "eval", path, "--type", "egress", "--target", "a.com", "--panic-sentinel", sentinel)
	if err != nil || !strings.Contains(out, `"decision":"deny"`) || !strings.Contains(out, "__hushspec_panic__") {
		t.Errorf("%v %s", err, out)
	}
}

func TestPolicyTestConformanceFixtures(t *testing.T) {
	files, err := filepath.Glob(filepath.Join(testutil.ConformanceDir(t), "hushspec-1.0", "fixtures", "core", "evaluation", "*.test.yaml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no fixtures: %v", err)
	}
	out, err := run(t, append([]string{"policy", "test"}, files...)...)
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if !strings.HasSuffix(out, "209 passed, 0 failed\n") {
		t.Errorf("output %q", out)
	}
}

func TestPolicyTestReportsFailures(t *testing.T) {
	path := writePolicy(t, "t.test.yaml", `hushspec_test: "0.1.0"
description: "one passes, one fails"
policy:
  hushspec: "0.1.0"
  rules:
    egress:
      allow: [a.com]
cases:
  - description: "allowed"
    action: {type: egress, target: a.com}
    expect: {decision: allow, matched_rule: rules.egress.allow}
  - description: "wrong expectation"
    action: {type: egress, target: b.com}
    expect: {decision: allow}
`)
	out, err := run(t, "policy", "test", path)
	if err == nil || exitCode(err) != 1 {
		t.Fatalf("err %v, want exit 1", err)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 2 || !strings.Contains(lines[0], `:12: "wrong expectation": decision: got deny, want allow`) || lines[1] != "1 passed, 1 failed" {
		t.Errorf("output:\n%s", out)
	}
	bad := writePolicy(t, "bad.test.yaml", "hushspec_test: \"0.1.0\"\ndescription: x\npolicy: {hushspec: \"0.1.0\", rules: {egress: {default: maybe}}}\ncases: []\n")
	out, err = run(t, "policy", "test", bad)
	if err == nil || !strings.Contains(out, "policy.rules.egress.default") || !strings.HasSuffix(out, "0 passed, 1 failed\n") {
		t.Errorf("err %v output:\n%s", err, out)
	}
}

// TestPolicyConformance runs the vendored HushSpec 1.0 corpus: core reaches
// level 3, and the manifest's hash names the corpus. A copy
// with one invalid vector altered fails, naming the file.
func TestPolicyConformance(t *testing.T) {
	pack := filepath.Join(testutil.ConformanceDir(t), "hushspec-1.0")
	out, err := run(t, "policy", "conformance", pack)
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	for _, want := range []string{
		"manifest sha256 206bfa4198e433d20592fd41e3996677ecf03b732ad42b1e39fdf60b8750627f\n",
		"core: level 3 reached\n",
		"  level 1: pass: 47 of 47 vectors passed\n",
		"  level 2: pass: 9 of 9 vectors passed\n",
		"  level 3: pass: 45 of 45 vectors passed\n",
		"posture: not attempted (levels 1-3)\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	js, err := run(t, "policy", "conformance", "--json", pack)
	if err != nil || !strings.Contains(js, `"module":"core","level_reached":3`) {
		t.Errorf("--json: %v\n%s", err, js)
	}

	// A copy whose invalid vector now validates: the hash check and the
	// vector both fail it.
	tampered := t.TempDir()
	if err := os.CopyFS(tampered, os.DirFS(pack)); err != nil {
		t.Fatal(err)
	}
	bad := filepath.Join(tampered, "fixtures", "core", "invalid", "unknown-top-level.yaml")
	if err := os.WriteFile(bad, []byte("hushspec: \"0.1.0\"\nname: bad\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err = run(t, "policy", "conformance", tampered)
	if exitCode(err) != 1 || !strings.Contains(out, "  level 1: fail: 46 of 47 vectors passed\n") ||
		!strings.Contains(out, "FAIL fixtures/core/invalid/unknown-top-level.yaml") || !strings.Contains(out, "core: level 0 reached") {
		t.Errorf("tampered copy: exit %d\n%s", exitCode(err), out)
	}
}

// TestPolicyCheckWarnsDeadPatterns: patterns that are valid under 1.0 but
// can never match (a glob a normalized path never equals, a wildcard over
// an IP address) pass check with a warning naming each.
func TestPolicyCheckWarnsDeadPatterns(t *testing.T) {
	path := writePolicy(t, "p.yaml", `hushspec: "0.1.0"
rules:
  forbidden_paths:
    patterns: ["./secrets/**", "**/.env"]
  egress:
    block: ["10.0.0.*"]
`)
	out, warn, err := runSplit(t, "policy", "check", path)
	if err != nil || !strings.Contains(out, "ok: policy") {
		t.Fatalf("check: %v\n%s", err, out)
	}
	for _, want := range []string{`path glob "./secrets/**" can match no path`, `host pattern "10.0.0.*" puts a wildcard over an IP address`} {
		if !strings.Contains(warn, want) {
			t.Errorf("warnings lack %q:\n%s", want, warn)
		}
	}
	if strings.Contains(warn, `"**/.env"`) {
		t.Errorf("a live glob was warned about:\n%s", warn)
	}
}
