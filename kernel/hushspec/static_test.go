package hushspec

import (
	"net/netip"
	"testing"
)

func TestEgressBlockedAddrs(t *testing.T) {
	p, err := Parse([]byte(`hushspec: "0.1.0"
rules:
  egress:
    allow: ["10.0.0.1", "api.example.com"]
    block: ["192.0.2.7", "[2001:db8::1]", "*.evil.example", "evil.example"]
`))
	if err != nil {
		t.Fatal(err)
	}
	got := p.EgressBlockedAddrs()
	want := []netip.Addr{netip.MustParseAddr("192.0.2.7"), netip.MustParseAddr("2001:db8::1")}
	if len(got) != len(want) {
		t.Fatalf("blocked addrs = %v, want %v", got, want)
	}
	for i := range want {
		if got[i].Addr != want[i] {
			t.Errorf("blocked[%d] = %v, want %v", i, got[i].Addr, want[i])
		}
		// The kernel's refusal must agree with the evaluator's.
		if r := p.Evaluate(Action{Type: "egress", Target: want[i].String()}); r.Decision != DecisionDeny {
			t.Errorf("evaluate %s = %+v, want deny", want[i], r)
		}
	}
	empty, _ := Parse([]byte("hushspec: \"0.1.0\"\n"))
	if b := empty.EgressBlockedAddrs(); len(b) != 0 {
		t.Errorf("policy without egress: %v", b)
	}
}
