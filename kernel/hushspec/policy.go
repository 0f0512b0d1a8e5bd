package hushspec

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"regexp"
	"syscall"
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
}

// Policy is a resolved, compiled HushSpec policy. It is immutable and safe
// for concurrent use.
type Policy struct {
	name     string
	tree     map[string]any
	sentinel string

	hash string

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
}

// Name returns the policy's name field, or "".
func (p *Policy) Name() string { return p.name }

// Document returns the resolved document the policy was compiled from.
func (p *Policy) Document() *Document { return &Document{tree: p.tree} }

type forbiddenPaths struct{ patterns, exceptions *globSet }

type pathAllowlist struct{ read, write, patch *globSet }

type egressRule struct {
	allow, block *hostSet
	defaultAllow bool
}

type secretPattern struct {
	name, rule string
	re         *regexp.Regexp
	deny       bool // critical and error deny; warn warns
}

type secretPatterns struct {
	patterns []secretPattern
	skip     *globSet
}

type indexedRegexp struct {
	re   *regexp.Regexp
	rule string
}

type patchIntegrity struct {
	maxAdditions, maxDeletions int64
	forbidden                  []indexedRegexp
	requireBalance             bool
	maxImbalance               float64
}

type shellCommands struct{ forbidden []indexedRegexp }

type toolAccess struct {
	allow, block, confirm map[string]struct{}
	defaultAllow          bool
	maxArgsSize           int64 // 0: no limit
}

type computerUse struct {
	mode    string
	allowed map[string]struct{}
}

// remoteDesktop maps computer_use targets that name a side channel
// ("remote.clipboard") to the channel's setting and rule path.
type remoteDesktop struct{ channels map[string]channel }

type channel struct {
	allowed bool
	rule    string
}

type inputInjection struct{ allowed map[string]struct{} }

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

// active returns the block named name when present and enabled.
func active(rules map[string]any, name string, enabledByDefault bool) map[string]any {
	b := sub(rules, name)
	if b == nil || !boolean(b, "enabled", enabledByDefault) {
		return nil
	}
	return b
}

func compileGlobs(l []string) (*globSet, error) {
	g := &globSet{}
	for _, s := range l {
		re, err := regexp.Compile(globRegexp(cleanPath(s)))
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

// compile builds the matchers of a resolved tree, once, so that Evaluate
// compiles nothing.
func compile(tree map[string]any, o options) (*Policy, error) {
	p := &Policy{name: str(tree, "name", ""), tree: tree, sentinel: o.panicSentinel}
	var err error
	if p.hash, err = hashTree(tree); err != nil {
		return nil, err
	}
	rules := sub(tree, "rules")
	if b := active(rules, "forbidden_paths", true); b != nil {
		fp := &forbiddenPaths{}
		if fp.patterns, err = compileGlobs(strs(b, "patterns")); err != nil {
			return nil, err
		}
		if fp.exceptions, err = compileGlobs(strs(b, "exceptions")); err != nil {
			return nil, err
		}
		p.forbidden = fp
	}
	if b := active(rules, "path_allowlist", false); b != nil {
		pa := &pathAllowlist{}
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
	if b := active(rules, "egress", true); b != nil {
		// Core 3.3: an omitted default is "block" (some SDKs allow).
		e := &egressRule{defaultAllow: str(b, "default", "block") == "allow"}
		if e.allow, err = compileHosts(strs(b, "allow")); err != nil {
			return nil, err
		}
		if e.block, err = compileHosts(strs(b, "block")); err != nil {
			return nil, err
		}
		p.egress = e
	}
	if b := active(rules, "secret_patterns", true); b != nil {
		sp := &secretPatterns{}
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
				deny: str(m, "severity", "") != "warn",
			})
		}
		if sp.skip, err = compileGlobs(strs(b, "skip_paths")); err != nil {
			return nil, err
		}
		p.secrets = sp
	}
	if b := active(rules, "patch_integrity", true); b != nil {
		pi := &patchIntegrity{
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
	if b := active(rules, "shell_commands", true); b != nil {
		sc := &shellCommands{}
		if sc.forbidden, err = compileRegexps(strs(b, "forbidden_patterns"), "rules.shell_commands.forbidden_patterns"); err != nil {
			return nil, err
		}
		p.shell = sc
	}
	if b := active(rules, "tool_access", true); b != nil {
		p.tools = &toolAccess{
			allow:        set(strs(b, "allow")),
			block:        set(strs(b, "block")),
			confirm:      set(strs(b, "require_confirmation")),
			defaultAllow: str(b, "default", "allow") == "allow",
			maxArgsSize:  integer(b, "max_args_size", 0),
		}
	}
	if b := active(rules, "computer_use", false); b != nil {
		p.computer = &computerUse{mode: str(b, "mode", "guardrail"), allowed: set(strs(b, "allowed_actions"))}
	}
	if b := active(rules, "remote_desktop_channels", false); b != nil {
		p.desktop = &remoteDesktop{channels: map[string]channel{}}
		for _, c := range []struct {
			name string
			def  bool
		}{{"clipboard", false}, {"file_transfer", false}, {"audio", true}, {"drive_mapping", false}} {
			p.desktop.channels["remote."+c.name] = channel{
				allowed: boolean(b, c.name, c.def),
				rule:    "rules.remote_desktop_channels." + c.name,
			}
		}
	}
	if b := active(rules, "input_injection", false); b != nil {
		p.input = &inputInjection{allowed: set(strs(b, "allowed_types"))}
	}
	// browser_automation and code_execution are validated but no 0.1.0
	// action type routes to them; their action types are unknown here and
	// therefore denied.
	return p, nil
}

// sentinelPresent stats the panic sentinel. Only a definite "does not
// exist" counts as absent.
func sentinelPresent(path string) bool {
	_, err := os.Stat(path)
	// ENOTDIR (a path component is a file) is as definite an absence as
	// ENOENT.
	return err == nil || !(errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR))
}
