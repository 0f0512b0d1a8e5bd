package hushspec

import (
	"strings"
	"time"
)

// blockDecision is what one rule block concluded.
type blockDecision struct {
	decision string
	rule     string
	reason   string
	pattern  string
}

func rank(d string) int {
	switch d {
	case DecisionDeny:
		return 2
	case DecisionWarn:
		return 1
	}
	return 0
}

// Evaluate decides one action (core 5, 6.1). The posture extension's
// capability guard goes first and a deny from it is final; then every
// applicable block for the action type that is present, enabled and whose
// `when` condition is not false is evaluated, in the order of the core 5
// table, with no early return. The decisions combine deny > warn > allow,
// and MatchedRule and Reason come from the first block whose decision
// equals the combined one and that named a rule. It compiles nothing and,
// for a host already in normal form and a policy without conditions,
// allocates nothing.
//
// A warn is the policy's decision; an enforcement point with no way to
// obtain confirmation must treat it as deny (core 6).
func (p *Policy) Evaluate(a Action) Result {
	if p.sentinel != "" && sentinelPresent(p.sentinel) {
		return Result{Decision: DecisionDeny, MatchedRule: PanicRule, Reason: "panic sentinel file is present: every action is denied"}
	}
	var (
		buf [4]blockDecision
		ds  = buf[:0]
		res Result
		env *condEnv
	)
	if p.posture != nil {
		state := p.posture.effective(a.Posture)
		res.PostureState, res.PostureNext = state, p.posture.next(state, a.Posture)
		if capability, ok := requiredCapability[a.Type]; ok {
			if !p.posture.grants(state, capability) {
				res.Decision, res.MatchedRule = DecisionDeny, "extensions.posture.states."+state+".capabilities"
				res.Reason = "posture state '" + state + "' does not grant the capability '" + capability + "'"
				return res
			}
			if a.Type == "custom" {
				// Core 5: a custom action is permitted when the posture
				// state grants the custom capability; no block applies.
				res.Decision, res.Reason = DecisionAllow, "posture state '"+state+"' grants the custom capability"
				return res
			}
		}
	}
	if p.hasWhen {
		env = &condEnv{ctx: a.Context, posture: p.posture, state: res.PostureState, now: time.Now}
	}
	switch a.Type {
	case "egress":
		h, err := normalizeTarget(a.Target)
		if err == nil {
			res.Host = h.name
		}
		if p.egress != nil && on(p.egress.when, env) {
			// Core 3.14.2: a target that is not a valid host matches no
			// pattern, so the default decides.
			ds = append(ds, p.egress.evaluate(h, err == nil))
		}
		if a.HasContent && p.secrets != nil && on(p.secrets.when, env) {
			ds = append(ds, p.secrets.evaluate("", a.Content, false))
		}
	case "file_read", "file_write", "patch_apply":
		if a.Target == "" {
			return Result{Decision: DecisionDeny, MatchedRule: InvalidActionRule, Reason: "file action has an empty path"}
		}
		path := normalizePath(a.Target)
		if p.forbidden != nil && on(p.forbidden.when, env) {
			ds = append(ds, p.forbidden.evaluate(path))
		}
		if p.allowlist != nil && on(p.allowlist.when, env) {
			ds = append(ds, p.allowlist.evaluate(path, a.Type))
		}
		if a.Type == "patch_apply" && p.patch != nil && on(p.patch.when, env) {
			ds = append(ds, p.patch.evaluate(a.Content))
		}
		if a.Type != "file_read" && p.secrets != nil && on(p.secrets.when, env) {
			ds = append(ds, p.secrets.evaluate(path, a.Content, true))
		}
	case "shell_command":
		if p.shell != nil && on(p.shell.when, env) {
			ds = append(ds, p.shell.evaluate(a.Target))
		}
	case "tool_call":
		if a.ArgsSize < 0 {
			return Result{Decision: DecisionDeny, MatchedRule: InvalidActionRule, Reason: "negative argument size"}
		}
		if p.tools != nil && on(p.tools.when, env) {
			ds = append(ds, p.tools.evaluate(a.Target, a.ArgsSize))
		}
		if a.HasContent && p.secrets != nil && on(p.secrets.when, env) {
			ds = append(ds, p.secrets.evaluate("", a.Content, false))
		}
	case "computer_use":
		if p.computer != nil && on(p.computer.when, env) {
			ds = append(ds, p.computer.evaluate(a.Target))
		}
		if p.desktop != nil && on(p.desktop.when, env) {
			if d, ok := p.desktop.evaluate(a.Target); ok {
				ds = append(ds, d)
			}
		}
	case "input_inject":
		if p.input != nil && on(p.input.when, env) {
			ds = append(ds, p.input.evaluate(a.Target))
		}
	case "browser_action":
		if p.browser != nil && on(p.browser.when, env) {
			ds = append(ds, p.browser.evaluate(&a))
		}
	case "code_exec":
		if p.code != nil && on(p.code.when, env) {
			ds = append(ds, p.code.evaluate(&a))
		}
	default:
		// Core 5: an unknown or custom action type has no applicable block,
		// and no declared control can vouch for it.
		res.Decision, res.MatchedRule = DecisionDeny, UnknownActionTypeRule
		res.Reason = "action type '" + a.Type + "' is not one this engine evaluates"
		return res
	}

	res.Decision = DecisionAllow
	for _, d := range ds {
		if rank(d.decision) > rank(res.Decision) {
			res.Decision = d.decision
		}
	}
	for _, d := range ds {
		if d.decision == res.Decision && d.rule != "" {
			res.MatchedRule, res.Reason, res.Pattern = d.rule, d.reason, d.pattern
			return res
		}
	}
	for _, d := range ds {
		if d.decision == res.Decision {
			res.Reason = d.reason
			return res
		}
	}
	res.Reason = "no rule applies to this action"
	return res
}

// on reports whether a block with condition c takes part in this
// evaluation: only a condition that is false makes it inert.
func on(c *condition, env *condEnv) bool { return c == nil || c.eval(env) != triFalse }

func (e *egressRule) evaluate(h host, valid bool) blockDecision {
	if valid {
		if p, ok := e.block.match(h); ok {
			return blockDecision{DecisionDeny, "rules.egress.block", "domain is explicitly blocked", p}
		}
		if p, ok := e.allow.match(h); ok {
			return blockDecision{DecisionAllow, "rules.egress.allow", "domain is explicitly allowed", p}
		}
	}
	if e.defaultAllow {
		return blockDecision{DecisionAllow, "rules.egress.default", "domain matched default allow", ""}
	}
	return blockDecision{DecisionDeny, "rules.egress.default", "domain matched default block", ""}
}

func (f *forbiddenPaths) evaluate(path string) blockDecision {
	i, ok := f.patterns.match(path)
	if !ok {
		return blockDecision{DecisionAllow, "", "path matched no forbidden pattern", ""}
	}
	if j, ok := f.exceptions.match(path); ok {
		return blockDecision{DecisionAllow, "rules.forbidden_paths.exceptions", "path matched a forbidden-path exception", f.exceptions.src[j]}
	}
	return blockDecision{DecisionDeny, "rules.forbidden_paths.patterns", "path matched a forbidden pattern", f.patterns.src[i]}
}

func (a *pathAllowlist) evaluate(path, typ string) blockDecision {
	list := a.write
	switch typ {
	case "file_read":
		list = a.read
	case "patch_apply":
		// Core 3.2: an empty patch list falls back to the write list.
		if !a.patch.empty() {
			list = a.patch
		}
	}
	if i, ok := list.match(path); ok {
		return blockDecision{DecisionAllow, "rules.path_allowlist", "path matched the allowlist", list.src[i]}
	}
	return blockDecision{DecisionDeny, "rules.path_allowlist", "path is not in the allowlist", ""}
}

// evaluate scans content with every pattern (core 3.4): the highest
// severity among those that matched decides, and the first pattern in
// document order at that severity names the rule. skip_paths applies only
// to path-bearing actions.
func (s *secretPatterns) evaluate(path, content string, hasPath bool) blockDecision {
	if hasPath {
		if i, ok := s.skip.match(path); ok {
			return blockDecision{DecisionAllow, "rules.secret_patterns.skip_paths", "path is excluded from secret scanning", s.skip.src[i]}
		}
	}
	var top *secretPattern
	for i := range s.patterns {
		sp := &s.patterns[i]
		if (top == nil || sp.severity > top.severity) && sp.re.MatchString(content) {
			top = sp
		}
	}
	switch {
	case top == nil:
		return blockDecision{DecisionAllow, "", "content matched no secret pattern", ""}
	case top.severity == 1:
		return blockDecision{DecisionWarn, top.rule, top.reason, top.name}
	}
	return blockDecision{DecisionDeny, top.rule, top.reason, top.name}
}

func (p *patchIntegrity) evaluate(diff string) blockDecision {
	for _, f := range p.forbidden {
		// Core 3.5: a forbidden pattern is tested line by line, so "\s"
		// cannot join two lines into a match neither line holds.
		for rest := diff; ; {
			line, more, found := strings.Cut(rest, "\n")
			if f.re.MatchString(line) {
				return blockDecision{DecisionDeny, f.rule, "patch line matched a forbidden pattern", f.re.String()}
			}
			if !found {
				break
			}
			rest = more
		}
	}
	add, del := patchStats(diff)
	if add > p.maxAdditions {
		return blockDecision{DecisionDeny, "rules.patch_integrity.max_additions", "patch adds more lines than max_additions", ""}
	}
	if del > p.maxDeletions {
		return blockDecision{DecisionDeny, "rules.patch_integrity.max_deletions", "patch deletes more lines than max_deletions", ""}
	}
	if p.requireBalance && (add > 0 || del > 0) {
		// Core 3.5 item 4: with one side zero the ratio is infinite.
		hi, lo := float64(add), float64(del)
		if lo > hi {
			hi, lo = lo, hi
		}
		if lo == 0 || hi/lo > p.maxImbalance {
			return blockDecision{DecisionDeny, "rules.patch_integrity.max_imbalance_ratio", "patch additions and deletions exceed max_imbalance_ratio", ""}
		}
	}
	return blockDecision{DecisionAllow, "", "patch passed integrity checks", ""}
}

// patchStats counts added and deleted lines (core 3.5): lines beginning
// with "+" but not "+++", and with "-" but not "---".
func patchStats(diff string) (add, del int64) {
	for rest := diff; ; {
		line, more, found := strings.Cut(rest, "\n")
		switch {
		case strings.HasPrefix(line, "+") && !strings.HasPrefix(line, "+++"):
			add++
		case strings.HasPrefix(line, "-") && !strings.HasPrefix(line, "---"):
			del++
		}
		if !found {
			return add, del
		}
		rest = more
	}
}

func (s *shellCommands) evaluate(cmd string) blockDecision {
	for _, f := range s.forbidden {
		if f.re.MatchString(cmd) {
			return blockDecision{DecisionDeny, f.rule, "command matched a forbidden pattern", f.re.String()}
		}
	}
	return blockDecision{DecisionAllow, "", "command matched no forbidden pattern", ""}
}

// evaluate follows core 3.7. Tool names are exact strings after NFC.
func (t *toolAccess) evaluate(tool string, argsSize int64) blockDecision {
	if t.maxArgsSize > 0 && argsSize > t.maxArgsSize {
		return blockDecision{DecisionDeny, "rules.tool_access.max_args_size", "tool arguments exceeded max_args_size", ""}
	}
	tool = nfc(tool)
	if _, ok := t.block[tool]; ok {
		return blockDecision{DecisionDeny, "rules.tool_access.block", "tool is explicitly blocked", tool}
	}
	if _, ok := t.confirm[tool]; ok {
		return blockDecision{DecisionWarn, "rules.tool_access.require_confirmation", "tool requires confirmation", tool}
	}
	if len(t.allow) > 0 {
		if _, ok := t.allow[tool]; ok {
			return blockDecision{DecisionAllow, "rules.tool_access.allow", "tool is explicitly allowed", tool}
		}
		// Allowlist mode: default is not consulted.
		return blockDecision{DecisionDeny, "rules.tool_access.allow", "tool is not in the allowlist", ""}
	}
	if t.defaultAllow {
		return blockDecision{DecisionAllow, "rules.tool_access.default", "tool matched default allow", ""}
	}
	return blockDecision{DecisionDeny, "rules.tool_access.default", "tool matched default block", ""}
}

// evaluate follows core 3.8: guardrail and fail_closed both deny an
// unlisted action; observe allows it.
func (c *computerUse) evaluate(action string) blockDecision {
	if _, ok := c.allowed[action]; ok {
		return blockDecision{DecisionAllow, "rules.computer_use.allowed_actions", "action is allowed", action}
	}
	if c.mode == "observe" {
		return blockDecision{DecisionAllow, "rules.computer_use.mode", "action is not listed; observe mode does not block", ""}
	}
	return blockDecision{DecisionDeny, "rules.computer_use.mode", "action is not listed; " + c.mode + " mode denies it", ""}
}

// evaluate applies the channel rule when action names a channel.
func (r *remoteDesktop) evaluate(action string) (blockDecision, bool) {
	c, ok := r.channels[action]
	if !ok {
		return blockDecision{}, false
	}
	if c.allowed {
		return blockDecision{DecisionAllow, c.rule, "side channel is permitted", ""}, true
	}
	return blockDecision{DecisionDeny, c.rule, "side channel is blocked", ""}, true
}

func (i *inputInjection) evaluate(typ string) blockDecision {
	if _, ok := i.allowed[typ]; ok {
		return blockDecision{DecisionAllow, "rules.input_injection.allowed_types", "input type is allowed", typ}
	}
	return blockDecision{DecisionDeny, "rules.input_injection.allowed_types", "input type is not allowed", ""}
}

// evaluate follows core 3.11.
func (b *browserAutomation) evaluate(a *Action) blockDecision {
	if len(b.allowedVerbs) > 0 {
		if _, ok := b.allowedVerbs[a.Target]; !ok {
			return blockDecision{DecisionDeny, "rules.browser_automation.allowed_verbs", "verb is not in allowed_verbs", ""}
		}
	}
	if a.URL != "" {
		h, err := normalizeTarget(a.URL)
		valid := err == nil
		if p, ok := b.blocked.match(h); valid && ok {
			return blockDecision{DecisionDeny, "rules.browser_automation.blocked_domains", "domain is blocked", p}
		}
		if !b.allowedDomains.empty() {
			if _, ok := b.allowedDomains.match(h); !valid || !ok {
				return blockDecision{DecisionDeny, "rules.browser_automation.allowed_domains", "domain is not in allowed_domains", ""}
			}
		}
	}
	if b.credentialDetection && a.HasContent {
		for _, re := range b.credentialPatterns {
			if re.MatchString(a.Content) {
				return blockDecision{DecisionDeny, "rules.browser_automation.credential_detection", "typed input looks like a credential", ""}
			}
		}
	}
	return blockDecision{DecisionAllow, "rules.browser_automation", "browser action is allowed", ""}
}

// evaluate follows core 3.12.
func (c *codeExecution) evaluate(a *Action) blockDecision {
	if len(c.languages) > 0 {
		if _, ok := c.languages[a.Target]; !ok {
			return blockDecision{DecisionDeny, "rules.code_execution.language_allowlist", "language is not in language_allowlist", ""}
		}
	}
	if a.Network && !c.networkAccess {
		return blockDecision{DecisionDeny, "rules.code_execution.network_access", "network access is not permitted", ""}
	}
	if c.maxExecutionMS >= 0 && a.TimeoutMS > c.maxExecutionMS {
		return blockDecision{DecisionDeny, "rules.code_execution.max_execution_time_ms", "requested timeout exceeds max_execution_time_ms", ""}
	}
	code := a.Content
	if c.maxScanBytes > 0 && int64(len(code)) > c.maxScanBytes {
		code = code[:c.maxScanBytes]
	}
	for _, m := range c.modules {
		if containsWord(code, m) {
			return blockDecision{DecisionDeny, "rules.code_execution.module_denylist", "code uses a denied module", m}
		}
	}
	return blockDecision{DecisionAllow, "rules.code_execution", "code execution is allowed", ""}
}

// containsWord finds word in s where neither neighbour is in [A-Za-z0-9_].
func containsWord(s, word string) bool {
	if word == "" {
		return false
	}
	for i := 0; ; {
		j := strings.Index(s[i:], word)
		if j < 0 {
			return false
		}
		start, end := i+j, i+j+len(word)
		if (start == 0 || !isWordByte(s[start-1])) && (end == len(s) || !isWordByte(s[end])) {
			return true
		}
		i = start + 1
	}
}

func isWordByte(c byte) bool { return c == '_' || isDigit(c) || isAlpha(c) }
