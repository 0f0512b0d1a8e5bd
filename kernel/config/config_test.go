package config

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func env(m map[string]string) func(string) (string, bool) {
	return func(k string) (string, bool) { v, ok := m[k]; return v, ok }
}

func TestParseFullConfig(t *testing.T) {
	c, err := Parse([]byte(`
version: 1
policy: ${POLICY_DIR:-/etc/chio}/policy.yaml
receipts:
  sink: ${SINK}
  mode: async
  checkpoint_idle: 250ms
signing_key: /etc/chio/key
agent:
  resolvers: ["127.0.0.53:53", "[::1]:53"]
  hosts: {api.example.test: [127.0.0.1, "::1"]}
  timeouts: {first_bytes: 2s}
  limits: {head_bytes: 32768, pending_per_workload: 16}
  workloads:
    - name: agents
      cgroup: /chio/agents
      labels: {team: research}
      exempt: [{cidr: 10.0.0.0/8, ports: [53], proto: udp}, {cidr: "192.0.2.1"}]
      egress: {allow_ports: [443, 80]}
      inbound: {allow_ports: [8080]}
`), env(map[string]string{"SINK": "/var/lib/chio/r.db"}))
	if err != nil {
		t.Fatal(err)
	}
	if c.Policy != "/etc/chio/policy.yaml" || c.Receipts.Sink != "/var/lib/chio/r.db" || c.Receipts.Mode != "async" {
		t.Fatalf("interpolation or fields wrong: %+v", c)
	}
	if c.Receipts.CheckpointIdle.D(time.Second) != 250*time.Millisecond || c.Agent.Timeouts.Idle.D(time.Minute) != time.Minute {
		t.Fatalf("durations wrong: %+v", c)
	}
	if l := c.Agent.Limits; l.HeadBytes != 32768 || l.PendingPerWorkload != 16 || l.Relays != 0 {
		t.Fatalf("limits wrong: %+v", l)
	}
	if w := c.Agent.Workloads[0]; w.Name != "agents" || w.Labels["team"] != "research" || w.Exempt[0].Ports[0] != 53 {
		t.Fatalf("workload wrong: %+v", w)
	}
	if w := c.Agent.Workloads[0]; len(w.Egress.AllowPorts) != 2 || w.Egress.AllowPorts[1] != 80 ||
		len(w.Inbound.AllowPorts) != 1 || w.Inbound.AllowPorts[0] != 8080 || w.Inbound.AllowAll {
		t.Fatalf("workload ports wrong: %+v", w)
	}
}

// parseReject is a kernel.yaml Parse must refuse, and what the error says.
type parseReject struct{ name, yaml, want string }

// parseRejects wants Parse to refuse each case's yaml with an error that
// mentions want.
func parseRejects(t *testing.T, cases []parseReject) {
	t.Helper()
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(tc.yaml), env(nil))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v; want it to mention %q", err, tc.want)
			}
		})
	}
}

func TestParseRejects(t *testing.T) {
	parseRejects(t, []parseReject{
		{"unknown top-level key", "polcy: x\n", `line 1: unknown key "polcy" (did you mean "policy"?)`},
		{"unknown nested key", "agent:\n  workloads:\n    - name: a\n      cgroup: b\n      colour: red\n", `line 5: agent.workloads[0]: unknown key "colour"`},
		{"wrong type", "receipts:\n  checkpoint_every: lots\n", "line 2"},
		{"bad mode", "receipts: {mode: eventually}\n", "receipts.mode"},
		{"bad duration", "agent: {timeouts: {idle: soon}}\n", `invalid duration "soon"`},
		{"bad resolver", "agent: {resolvers: [dns.example]}\n", "agent.resolvers[0]"},
		{"bad exempt", "agent: {workloads: [{name: a, cgroup: b, exempt: [{cidr: 300.0.0.0/8}]}]}\n", "exempt[0].cidr"},
		{"duplicate workload", "agent: {workloads: [{name: a, cgroup: b}, {name: a, cgroup: c}]}\n", "used twice"},
		{"egress port 0", "agent: {workloads: [{name: a, cgroup: b, egress: {allow_ports: [0]}}]}\n", "egress.allow_ports"},
		{"inbound port 0", "agent: {workloads: [{name: a, cgroup: b, inbound: {allow_ports: [443, 0]}}]}\n", "inbound.allow_ports"},
		{"port too large", "agent: {workloads: [{name: a, cgroup: b, egress: {allow_ports: [70000]}}]}\n", "line 1"},
		{"missing cgroup", "agent: {workloads: [{name: a}]}\n", "cgroup: required"},
		{"negative limit", "agent: {limits: {pending: -1}}\n", "agent.limits.pending: must not be negative"},
		{"tiny head bound", "agent: {limits: {head_bytes: 100}}\n", "agent.limits.head_bytes"},
		{"unset variable", "policy: ${NOPE}\n", "NOPE"},
		{"unterminated", "policy: ${NOPE\n", "unterminated"},
		{"version", "version: 2\n", "version"},
	})
}

func TestInterpolate(t *testing.T) {
	lookup := env(map[string]string{"A": "x", "EMPTY": ""})
	for in, want := range map[string]string{
		"${A}":                                   "x",
		"${B:-def}":                              "def",
		"${EMPTY:-def}":                          "def",
		"${EMPTY}":                               "",
		"$$A and $A":                             "$A and $A",
		"cost: 5$":                               "cost: 5$",
		"# ${MISSING} is commented out\na: ${A}": "# ${MISSING} is commented out\na: x",
		"a: ${A} # or ${MISSING}":                "a: x # or ${MISSING}",
		`a: "#${A}"`:                             `a: "#x"`,
		"a: b#${A}":                              "a: b#x",
	} {
		got, err := Interpolate(in, lookup)
		if err != nil || got != want {
			t.Errorf("Interpolate(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	if _, err := Interpolate("a\nb: ${MISSING}", lookup); !errors.Is(err, ErrUnsetVariable) || !strings.Contains(err.Error(), "line 2") {
		t.Errorf("unset variable error = %v; want ErrUnsetVariable on line 2", err)
	}
	if _, err := Interpolate("${1BAD}", lookup); err == nil {
		t.Error("invalid name accepted")
	}
}
