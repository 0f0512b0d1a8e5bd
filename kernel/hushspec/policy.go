package hushspec

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"regexp"
	"syscall"

	"golang.org/x/text/unicode/norm"
)

// Decisions (core 6).
const (
	DecisionAllow = "allow"
	DecisionWarn  = "warn"
	DecisionDeny  = "deny"
)

// Engine-level matched_rule values, for decisions no rule block made.
const (
	// PanicRule: the panic sentinel file exists.
	PanicRule = "__hushspec_panic__"
	// UnknownActionTypeRule: the action type is not one this engine routes
	// (including "custom": this engine defines no custom types).
	UnknownActionTypeRule = "__unknown_action_type__"
	// InvalidActionRule: the action cannot be evaluated as given: an egress
	// target that does not normalize to a host, a file action without a path,
	// a negative argument size.
	InvalidActionRule = "__invalid_action__"
)

// Action is one thing an agent wants to do (core 5). Target is what the
// action is about: a path for file actions, a host or URL for egress, the
// command line for shell_command, the tool name for tool_call, the action
// identifier for computer_use, the input type for input_inject.
type Action struct {
	Type    string
	Target  string
	Content string // file_write data scanned for secrets; patch_apply diff
	// HasContent says Content was supplied, even empty: egress and tool_call
	// actions are scanned for secrets only then (core 3.4); file_write and
	// patch_apply always are.
	HasContent bool
	// ArgsSize is the size in bytes of a tool call's serialized arguments,
	// checked against tool_access.max_args_size.
	ArgsSize int64
	// URL is a browser_action's destination (core 3.11), "" for none.
	URL string
	// Network and TimeoutMS are what a code_exec action requests (core
	// 3.12); TimeoutMS 0 is no request.
	Network   bool
	TimeoutMS int64
	// Context is the runtime context `when` conditions read (core 3.13):
	// user, environment, deployment, agent, session, request, custom,
	// counters and current_time. Nil is an empty context.
	Context map[string]any
	// Origin and Posture are accepted for the evaluator-test action model;
	// the origins and posture extensions are not evaluated by this engine.
	Origin  *Origin
	Posture *PostureInput
}

// Origin is the source context of an action (origins extension).
type Origin struct {
	Provider             string   `json:"provider,omitempty"`
	TenantID             string   `json:"tenant_id,omitempty"`
	SpaceID              string   `json:"space_id,omitempty"`
	SpaceType            string   `json:"space_type,omitempty"`
	Visibility           string   `json:"visibility,omitempty"`
	ExternalParticipants *bool    `json:"external_participants,omitempty"`
	Tags                 []string `json:"tags,omitempty"`
	Sensitivity          string   `json:"sensitivity,omitempty"`
	ActorRole            string   `json:"actor_role,omitempty"`
}

// PostureInput is the posture state an action is evaluated under.
type PostureInput struct {
	Current string `json:"current,omitempty"`
	Signal  string `json:"signal,omitempty"`
}

// Result is the decision for one action.
type Result struct {
	Decision string `json:"decision"` // DecisionAllow, DecisionWarn or DecisionDeny
	// MatchedRule is the dotted path of the rule that decided, e.g.
	// rules.egress.block, or one of the engine-level rules above; empty
	// when the decision is allow and no rule named it.
	MatchedRule string `json:"matched_rule"`
	Reason      string `json:"reason"`
	// Pattern is the pattern, as written in the policy, that matched, when
	// a list entry decided (egress and path globs, regexes by index are in
	// MatchedRule).
	Pattern string `json:"pattern,omitempty"`
	// Host is the normalized egress target.
	Host string `json:"host,omitempty"`
	// PostureState and PostureNext are the effective posture state the
	// action was evaluated in and the state after its signal, when the
	// policy has a posture extension.
	PostureState string `json:"posture_state,omitempty"`
	PostureNext  string `json:"posture_next,omitempty"`
}

// Policy is a resolved, compiled HushSpec policy. It is immutable and safe
// for concurrent use.
type Policy struct {
	name     string
	tree     map[string]any
	sentinel string

	hash string

	posture *posture // nil: no posture extension
	hasWhen bool     // some block carries a `when` condition

	forbidden *forbiddenPaths
	allowlist *pathAllowlist
	egress    *egressRule
	secrets   *secretPatterns
	patch     *patchIntegrity
	shell     *shellCommands
	tools     *toolAccess
	computer  *computerUse
	desktop   *remoteDesktop
	input     *inputInjection
	browser   *browserAutomation
	code      *codeExecution
}

// Name returns the policy's name field, or "".
func (p *Policy) Name() string { return p.name }

// Document returns the resolved document the policy was compiled from.
func (p *Policy) Document() *Document { return &Document{tree: p.tree} }

// Every block keeps its `when` condition (nil: always active).

type forbiddenPaths struct {
	when                 *condition
	patterns, exceptions *globSet
}

type pathAllowlist struct {
	when               *condition
	read, write, patch *globSet
}

type egressRule struct {
	when         *condition
	allow, block *hostSet
	defaultAllow bool
}

type secretPattern struct {
	name, rule, reason string
	re                 *regexp.Regexp
	severity           int // 3 critical, 2 error, 1 warn
}

type secretPatterns struct {
	when     *condition
	patterns []secretPattern
	skip     *globSet
}

type indexedRegexp struct {
	re   *regexp.Regexp
	rule string
}

type patchIntegrity struct {
	when                       *condition
	maxAdditions, maxDeletions int64
	forbidden                  []indexedRegexp
	requireBalance             bool
	maxImbalance               float64
}

type shellCommands struct {
	when      *condition
	forbidden []indexedRegexp
}

type toolAccess struct {
	when                  *condition
	allow, block, confirm map[string]struct{}
	defaultAllow          bool
	maxArgsSize           int64 // 0: no limit
}

type computerUse struct {
	when    *condition
	mode    string
	allowed map[string]struct{}
}

// remoteDesktop maps computer_use targets that name a side channel
// ("remote.clipboard") to the channel's setting and rule path.
type remoteDesktop struct {
	when     *condition
	channels map[string]channel
}

type channel struct {
	allowed bool
	rule    string
}

type inputInjection struct {
	when    *condition
	allowed map[string]struct{}
}

type browserAutomation struct {
	when                    *condition
	allowedDomains, blocked *hostSet
	allowedVerbs            map[string]struct{}
	credentialDetection     bool
	credentialPatterns      []*regexp.Regexp
}

type codeExecution struct {
	when           *condition
	languages      map[string]struct{}
	modules        []string
	networkAccess  bool
	maxExecutionMS int64 // -1: no limit
	maxScanBytes   int64 // 0: scan everything
}

// Accessors over a validated tree: validation already fixed every type, so
// a failed assertion only means "absent".
func sub(m map[string]any, k string) map[string]any { v, _ := m[k].(map[string]any); return v }
func str(m map[string]any, k, def string) string {
	if v, ok := m[k].(string); ok {
		return v
	}
	return def
}
func boolean(m map[string]any, k string, def bool) bool {
	if v, ok := m[k].(bool); ok {
		return v
	}
	return def
}
func integer(m map[string]any, k string, def int64) int64 {
	if v, ok := m[k].(int64); ok {
		return v
	}
	return def
}
func number(m map[string]any, k string, def float64) float64 {
	switch v := m[k].(type) {
	case int64:
		return float64(v)
	case float64:
		return v
	}
	return def
}
func strs(m map[string]any, k string) []string {
	l, _ := m[k].([]any)
	out := make([]string, 0, len(l))
	for _, v := range l {
		if s, ok := v.(string); ok {
			out = append(out, s)
		}
	}
	return out
}
func set(l []string) map[string]struct{} {
	m := make(map[string]struct{}, len(l))
	for _, s := range l {
		m[s] = struct{}{}
	}
	return m
}

// active returns the block named name when present and enabled, with its
// `when` condition compiled (nil when it has none).
func (p *Policy) active(rules map[string]any, name string, enabledByDefault bool) (map[string]any, *condition) {
	b := sub(rules, name)
	if b == nil || !boolean(b, "enabled", enabledByDefault) {
		return nil, nil
	}
	c := compileCondition(sub(b, "when"))
	if c != nil {
		p.hasWhen = true
	}
	return b, c
}

func compileGlobs(l []string) (*globSet, error) {
	g := &globSet{}
	for _, s := range l {
		re, err := regexp.Compile(globRegexp(norm.NFC.String(s)))
		if err != nil {
			return nil, fmt.Errorf("compile glob %q: %w: %v", s, ErrPattern, err)
		}
		g.res = append(g.res, re)
		g.src = append(g.src, s)
	}
	return g, nil
}

func compileRegexps(l []string, rule string) ([]indexedRegexp, error) {
	out := make([]indexedRegexp, 0, len(l))
	for i, s := range l {
		re, err := compileProfileRegex(s)
		if err != nil {
			return nil, fmt.Errorf("compile %s[%d]: %w: %v", rule, i, ErrRegex, err)
		}
		out = append(out, indexedRegexp{re: re, rule: fmt.Sprintf("%s[%d]", rule, i)})
	}
	return out, nil
}

func compileHosts(l []string) (*hostSet, error) {
	s := newHostSet()
	for _, p := range l {
		if err := s.add(p); err != nil {
			return nil, fmt.Errorf("compile host pattern %q: %w: %v", p, ErrPattern, err)
		}
	}
	return s, nil
}

var severityRank = map[string]int{"critical": 3, "error": 2, "warn": 1}

// compile builds the matchers of a resolved tree, once, so that Evaluate
// compiles nothing.
func compile(tree map[string]any, o options) (*Policy, error) {
	p := &Policy{name: str(tree, "name", ""), tree: tree, sentinel: o.panicSentinel}
	var err error
	if p.hash, err = hashTree(tree); err != nil {
		return nil, err
	}
	if p.posture, err = compilePosture(sub(sub(tree, "extensions"), "posture")); err != nil {
		return nil, err
	}
	rules := sub(tree, "rules")
	if b, c := p.active(rules, "forbidden_paths", true); b != nil {
		fp := &forbiddenPaths{when: c}
		if fp.patterns, err = compileGlobs(strs(b, "patterns")); err != nil {
			return nil, err
		}
		if fp.exceptions, err = compileGlobs(strs(b, "exceptions")); err != nil {
			return nil, err
		}
		p.forbidden = fp
	}
	if b, c := p.active(rules, "path_allowlist", false); b != nil {
		pa := &pathAllowlist{when: c}
		if pa.read, err = compileGlobs(strs(b, "read")); err != nil {
			return nil, err
		}
		if pa.write, err = compileGlobs(strs(b, "write")); err != nil {
			return nil, err
		}
		if pa.patch, err = compileGlobs(strs(b, "patch")); err != nil {
			return nil, err
		}
		p.allowlist = pa
	}
	if b, c := p.active(rules, "egress", true); b != nil {
		// Core 3.3: an omitted default is "block".
		e := &egressRule{when: c, defaultAllow: str(b, "default", "block") == "allow"}
		if e.allow, err = compileHosts(strs(b, "allow")); err != nil {
			return nil, err
		}
		if e.block, err = compileHosts(strs(b, "block")); err != nil {
			return nil, err
		}
		p.egress = e
	}
	if b, c := p.active(rules, "secret_patterns", true); b != nil {
		sp := &secretPatterns{when: c}
		l, _ := b["patterns"].([]any)
		for _, x := range l {
			m, _ := x.(map[string]any)
			name := str(m, "name", "")
			re, err := compileProfileRegex(str(m, "pattern", ""))
			if err != nil {
				return nil, fmt.Errorf("compile secret pattern %q: %w: %v", name, ErrRegex, err)
			}
			sp.patterns = append(sp.patterns, secretPattern{
				name: name, rule: "rules.secret_patterns.patterns." + name, re: re,
				reason:   "content matched secret pattern '" + name + "'",
				severity: severityRank[str(m, "severity", "")],
			})
		}
		if sp.skip, err = compileGlobs(strs(b, "skip_paths")); err != nil {
			return nil, err
		}
		p.secrets = sp
	}
	if b, c := p.active(rules, "patch_integrity", true); b != nil {
		pi := &patchIntegrity{
			when:           c,
			maxAdditions:   integer(b, "max_additions", 1000),
			maxDeletions:   integer(b, "max_deletions", 500),
			requireBalance: boolean(b, "require_balance", false),
			maxImbalance:   number(b, "max_imbalance_ratio", 10),
		}
		if pi.forbidden, err = compileRegexps(strs(b, "forbidden_patterns"), "rules.patch_integrity.forbidden_patterns"); err != nil {
			return nil, err
		}
		p.patch = pi
	}
	if b, c := p.active(rules, "shell_commands", true); b != nil {
		sc := &shellCommands{when: c}
		if sc.forbidden, err = compileRegexps(strs(b, "forbidden_patterns"), "rules.shell_commands.forbidden_patterns"); err != nil {
			return nil, err
		}
		p.shell = sc
	}
	if b, c := p.active(rules, "tool_access", true); b != nil {
		p.tools = &toolAccess{
			when:         c,
			allow:        set(nfcAll(strs(b, "allow"))),
			block:        set(nfcAll(strs(b, "block"))),
			confirm:      set(nfcAll(strs(b, "require_confirmation"))),
			defaultAllow: str(b, "default", "allow") == "allow",
			maxArgsSize:  integer(b, "max_args_size", 0),
		}
	}
	if b, c := p.active(rules, "computer_use", false); b != nil {
		p.computer = &computerUse{when: c, mode: str(b, "mode", "guardrail"), allowed: set(strs(b, "allowed_actions"))}
	}
	if b, c := p.active(rules, "remote_desktop_channels", false); b != nil {
		p.desktop = &remoteDesktop{when: c, channels: map[string]channel{}}
		for _, ch := range []struct {
			name string
			def  bool
		}{{"clipboard", false}, {"file_transfer", false}, {"audio", true}, {"drive_mapping", false}} {
			p.desktop.channels["remote."+ch.name] = channel{
				allowed: boolean(b, ch.name, ch.def),
				rule:    "rules.remote_desktop_channels." + ch.name,
			}
		}
	}
	if b, c := p.active(rules, "input_injection", false); b != nil {
		p.input = &inputInjection{when: c, allowed: set(strs(b, "allowed_types"))}
	}
	if b, c := p.active(rules, "browser_automation", false); b != nil {
		ba := &browserAutomation{when: c, allowedVerbs: set(strs(b, "allowed_verbs")),
			credentialDetection: boolean(b, "credential_detection", true)}
		if ba.allowedDomains, err = compileHosts(strs(b, "allowed_domains")); err != nil {
			return nil, err
		}
		if ba.blocked, err = compileHosts(strs(b, "blocked_domains")); err != nil {
			return nil, err
		}
		ba.credentialPatterns = append(ba.credentialPatterns, builtinCredentials...)
		for i, s := range strs(b, "extra_credential_patterns") {
			re, err := compileProfileRegex(s)
			if err != nil {
				return nil, fmt.Errorf("compile rules.browser_automation.extra_credential_patterns[%d]: %w: %v", i, ErrRegex, err)
			}
			ba.credentialPatterns = append(ba.credentialPatterns, re)
		}
		p.browser = ba
	}
	if b, c := p.active(rules, "code_execution", false); b != nil {
		p.code = &codeExecution{when: c, languages: set(strs(b, "language_allowlist")), modules: strs(b, "module_denylist"),
			networkAccess: boolean(b, "network_access", false), maxExecutionMS: integer(b, "max_execution_time_ms", -1),
			maxScanBytes: integer(b, "max_scan_bytes", 0)}
	}
	return p, nil
}

// builtinCredentials are the credential detectors browser_automation applies
// to typed input besides a policy's extra_credential_patterns (core 3.11
// asks engines to document theirs): an AWS access key id, a GitHub token, a
// Slack token and a PEM private key header. A document that needs portable
// detection lists its patterns itself.
var builtinCredentials = func() []*regexp.Regexp {
	var out []*regexp.Regexp
	for _, s := range []string{
		`AKIA[0-9A-Z]{16}`,
		`gh[pousr]_[A-Za-z0-9]{36}`,
		`xox[abposr]-[A-Za-z0-9-]{10,}`,
		`-----BEGIN [A-Z ]*PRIVATE KEY-----`,
	} {
		re, err := compileProfileRegex(s)
		if err != nil {
			panic(err)
		}
		out = append(out, re)
	}
	return out
}()

func nfcAll(l []string) []string {
	for i, s := range l {
		l[i] = norm.NFC.String(s)
	}
	return l
}

// sentinelPresent stats the panic sentinel. Only a definite "does not
// exist" counts as absent.
func sentinelPresent(path string) bool {
	_, err := os.Stat(path)
	// ENOTDIR (a path component is a file) is as definite an absence as
	// ENOENT.
	return err == nil || !(errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR))
}
