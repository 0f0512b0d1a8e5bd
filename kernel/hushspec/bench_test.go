package hushspec

import (
	"fmt"
	"regexp"
	"strings"
	"testing"
)

// egressRules builds n egress patterns, half exact names and half wildcards
// ("*." and "**." alternating); one in ten is a block pattern.
func egressRules(n int) (allow, block []string) {
	for i := 0; i < n; i++ {
		var p string
		switch i % 4 {
		case 0, 2:
			p = fmt.Sprintf("svc%d.example%d.com", i, i%97)
		case 1:
			p = fmt.Sprintf("*.zone%d.example.net", i)
		case 3:
			p = fmt.Sprintf("**.deep%d.example.org", i)
		}
		if i%10 == 9 {
			block = append(block, p)
		} else {
			allow = append(allow, p)
		}
	}
	return allow, block
}

// egressTargets hit the last exact rule, a wildcard rule, a deep wildcard
// rule, and miss twice (a miss is the naive matcher's worst case: every
// pattern is tried).
func egressTargets(n int) []string {
	last := n - 4
	return []string{
		fmt.Sprintf("svc%d.example%d.com", last, last%97),
		fmt.Sprintf("api.zone%d.example.net", n-3),
		fmt.Sprintf("a.b.deep%d.example.org", n-1),
		"unknown.example.com",
		"api.openai.com",
	}
}

func egressPolicy(b *testing.B, n int) *Policy { return egressPolicyWhen(b, n, "") }

// egressPolicyWhen is egressPolicy with a `when` condition (YAML flow
// mapping) on the egress block.
func egressPolicyWhen(b *testing.B, n int, when string) *Policy {
	allow, block := egressRules(n)
	var doc strings.Builder
	doc.WriteString("hushspec: \"1.0.0\"\nrules:\n  egress:\n    default: block\n")
	if when != "" {
		doc.WriteString("    when: " + when + "\n")
	}
	doc.WriteString("    allow:\n")
	for _, p := range allow {
		fmt.Fprintf(&doc, "      - %q\n", p)
	}
	doc.WriteString("    block:\n")
	for _, p := range block {
		fmt.Fprintf(&doc, "      - %q\n", p)
	}
	p, err := Parse([]byte(doc.String()))
	if err != nil {
		b.Fatal(err)
	}
	return p
}

// naiveEgress is the baseline: every pattern compiled to its own glob
// regexp, tried in order, block list first.
type naiveEgress struct{ allow, block []*regexp.Regexp }

func naiveGlob(p string) *regexp.Regexp {
	var b strings.Builder
	b.WriteString("^")
	for i, l := range strings.Split(p, ".") {
		if i > 0 {
			b.WriteString(`\.`)
		}
		switch l {
		case "**":
			b.WriteString(`[^.]+(?:\.[^.]+)*`)
		case "*":
			b.WriteString(`[^.]+`)
		default:
			b.WriteString(regexp.QuoteMeta(l))
		}
	}
	b.WriteString("$")
	return regexp.MustCompile(b.String())
}

func newNaive(n int) *naiveEgress {
	allow, block := egressRules(n)
	e := &naiveEgress{}
	for _, p := range allow {
		e.allow = append(e.allow, naiveGlob(p))
	}
	for _, p := range block {
		e.block = append(e.block, naiveGlob(p))
	}
	return e
}

func (e *naiveEgress) evaluate(target string) string {
	h := strings.ToLower(strings.TrimSuffix(target, "."))
	for _, re := range e.block {
		if re.MatchString(h) {
			return DecisionDeny
		}
	}
	for _, re := range e.allow {
		if re.MatchString(h) {
			return DecisionAllow
		}
	}
	return DecisionDeny
}

// TestNaiveBaselineAgrees keeps the baseline honest: it must decide as the
// compiled policy does, or the speed ratio compares different work.
func TestNaiveBaselineAgrees(t *testing.T) {
	for _, n := range []int{10, 1000} {
		p := egressPolicy(&testing.B{}, n)
		naive := newNaive(n)
		for _, target := range append(egressTargets(n), "svc0.example0.com", "x.zone1.example.net", "zone1.example.net") {
			got := p.Evaluate(Action{Type: "egress", Target: target}).Decision
			if want := naive.evaluate(target); got != want {
				t.Errorf("n=%d %s: compiled %s, naive %s", n, target, got, want)
			}
		}
	}
}

func BenchmarkEgress(b *testing.B) {
	for _, n := range []int{10, 10_000} {
		targets := egressTargets(n)
		b.Run(fmt.Sprintf("rules=%d/compiled", n), func(b *testing.B) {
			p := egressPolicy(b, n)
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				p.Evaluate(Action{Type: "egress", Target: targets[i%len(targets)]})
			}
		})
		b.Run(fmt.Sprintf("rules=%d/naive", n), func(b *testing.B) {
			e := newNaive(n)
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				e.evaluate(targets[i%len(targets)])
			}
		})
	}
}

// BenchmarkEgressUnicode measures the slow normalization path (a target
// that needs case folding and IDNA), which the fast path skips.
func BenchmarkEgressUnicode(b *testing.B) {
	p := egressPolicy(b, 10_000)
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		p.Evaluate(Action{Type: "egress", Target: "https://BÜCHER.Example.com:443/x"})
	}
}

// BenchmarkEgressWhen measures what a `when` condition on the egress block
// costs per decision, against the same 10,000 rules with no condition (the
// baseline sub-benchmark, measured in the same run): a context match, and a
// time window read from the runtime context's current_time (the parse is
// the cost) and from the clock.
func BenchmarkEgressWhen(b *testing.B) {
	targets := egressTargets(10_000)
	ctx := map[string]any{"environment": "production", "user": map[string]any{"role": "agent"},
		"current_time": "2026-09-14T12:00:00Z"}
	for _, c := range []struct{ name, when string }{
		{"none", ""},
		{"context", `{context: {environment: production, user.role: agent}}`},
		{"time_window_current_time", `{time_window: {start: "09:00", end: "17:00", timezone: Europe/Paris}}`},
		{"time_window_clock", `{time_window: {start: "09:00", end: "17:00", timezone: Europe/Paris}}`},
	} {
		b.Run(c.name, func(b *testing.B) {
			p := egressPolicyWhen(b, 10_000, c.when)
			a := Action{Type: "egress", Context: ctx}
			if c.name == "time_window_clock" {
				a.Context = map[string]any{"environment": "production"}
			}
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				a.Target = targets[i%len(targets)]
				p.Evaluate(a)
			}
		})
	}
}
