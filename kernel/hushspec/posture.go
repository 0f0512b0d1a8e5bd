package hushspec

import "fmt"

// posture is the part of extensions.posture this engine evaluates: the
// states, the capabilities each grants, the initial state, and the
// transitions a signal triggers. Budgets and timeouts are not evaluated (see
// docs/policy.md).
type posture struct {
	initial     string
	states      map[string]map[string]bool // state -> capabilities it grants
	transitions []transition
}

type transition struct{ from, to, on string }

// requiredCapability is the capability each action type needs when the
// posture extension is active (spec/registries/action-types.yaml).
var requiredCapability = map[string]string{
	"file_read": "file_access", "file_write": "file_write", "patch_apply": "patch",
	"shell_command": "shell", "egress": "egress", "tool_call": "tool_call", "custom": "custom",
}

// compilePosture reads a posture extension; nil when there is none. An
// initial state that names no state is refused (E004).
func compilePosture(ext map[string]any) (*posture, error) {
	if ext == nil {
		return nil, nil
	}
	p := &posture{initial: str(ext, "initial", ""), states: map[string]map[string]bool{}}
	for name, s := range sub(ext, "states") {
		caps := map[string]bool{}
		m, _ := s.(map[string]any)
		for _, c := range strs(m, "capabilities") {
			caps[c] = true
		}
		p.states[name] = caps
	}
	if _, ok := p.states[p.initial]; !ok {
		return nil, &FieldError{Path: "extensions.posture.initial", Err: ErrConstraint,
			Detail: fmt.Sprintf("initial state %q names no defined state", p.initial)}
	}
	l, _ := ext["transitions"].([]any)
	for _, x := range l {
		m, _ := x.(map[string]any)
		p.transitions = append(p.transitions, transition{from: str(m, "from", ""), to: str(m, "to", ""), on: str(m, "on", "")})
	}
	return p, nil
}

// grants reports whether state lists capability; an unknown state grants
// nothing.
func (p *posture) grants(state, capability string) bool { return p.states[state][capability] }

// effective is the state an action is evaluated in: the one it carries, or
// the initial state.
func (p *posture) effective(in *PostureInput) string {
	if in != nil && in.Current != "" {
		return in.Current
	}
	return p.initial
}

// next is the state after a signal: a transition from the named state
// outranks one from "*"; no matching transition keeps the state.
func (p *posture) next(state string, in *PostureInput) string {
	if in == nil || in.Signal == "" {
		return state
	}
	wild := ""
	for _, t := range p.transitions {
		if t.on != in.Signal {
			continue
		}
		if t.from == state {
			return t.to
		}
		if t.from == "*" && wild == "" {
			wild = t.to
		}
	}
	if wild != "" {
		return wild
	}
	return state
}
