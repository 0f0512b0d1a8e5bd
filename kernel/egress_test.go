package kernel

import (
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/backbay-labs/chio-agent/internal/testutil"
)

// docExampleEvent and docExampleOutcome produce the example receipt shown in
// docs/receipts.md; TestEgressDocExample keeps the two in step.
func docExampleEvent() EgressEvent {
	return EgressEvent{
		IP:        netip.MustParseAddr("::ffff:203.0.113.7"),
		Port:      443,
		Transport: TransportTCP,
		SNI:       "exfil.example.net",
		ALPN:      []string{"h2", "http/1.1"},
		Workload: WorkloadIdentity{
			Name:       "agents/research-agent-7f9c",
			CgroupPath: "/kubepods.slice/kubepods-pod1234.slice/cri-containerd-abcd.scope",
			Labels:     map[string]string{"app": "research-agent", "team": "ml"},
		},
		Process: ProcessIdentity{PID: 4242, UID: 1000, Comm: "python3"},
	}
}

func docExampleOutcome() Outcome {
	return Outcome{
		Verdict:        VerdictDeny,
		PolicyDecision: "deny",
		Guard:          GuardEgressPolicy,
		Reason:         "host not in egress allow list",
		MatchedRule:    "rules.egress.default",
	}
}

const docExamplePolicyHash = "5e0a3f6a4f0dc2b1d1f0b6a0c7e8b0f5c2a3e4d5f60718293a4b5c6d7e8f9012"

// docExampleKey is a published test key: never use it for anything else.
func docExampleKey() ed25519.PrivateKey {
	return ed25519.NewKeyFromSeed([]byte("chio-agent docs example key 0001"))
}

func docExampleReceipt(t *testing.T) Receipt {
	t.Helper()
	r, err := BuildEgressReceipt(docExampleEvent(), docExampleOutcome(), docExamplePolicyHash, docExampleKey(), time.Unix(1767225600, 0))
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func TestBuildEgressReceipt(t *testing.T) {
	key := testKey(t)
	trusted := Verifier{TrustedKeys: []ed25519.PublicKey{key.Public().(ed25519.PublicKey)}}
	ev := EgressEvent{
		Host: "api.example.com", IP: netip.MustParseAddr("127.0.0.1"), Port: 8080, Transport: TransportTCP,
		HTTPHost: "api.example.com:8080", HTTPMethod: "POST", HTTPPath: "/v1/upload?token=SECRET#frag",
		Workload: WorkloadIdentity{Name: "w1"},
	}
	out := Outcome{Verdict: VerdictAllow, PolicyDecision: "warn", Reason: "egress to api.example.com is logged", MatchedRule: "rules.egress.allow", Pattern: "*.example.com"}
	r, err := BuildEgressReceipt(ev, out, "ph", key, time.Unix(1700000000, 999))
	if err != nil {
		t.Fatal(err)
	}
	res := trusted.Verify(r)
	if !res.OK || !res.Authorized || res.Result != ResultAuthorized {
		t.Fatalf("verify: %+v", res)
	}
	if r.ToolServer != EgressToolServer || r.ToolName != EgressToolName || r.Timestamp != 1700000000 || r.PolicyHash != "ph" ||
		r.ReceiptKind != KindMediatedDecision || r.BoundaryClass != BoundaryPrevent || r.TrustLevel != TrustMediated || r.CapabilityID != "" {
		t.Fatalf("receipt header: %+v", r)
	}
	if r.Decision.Guard != GuardEgressPolicy || r.Decision.Reason != out.Reason || r.Decision.Verdict != VerdictAllow {
		t.Fatalf("decision: %+v", r.Decision)
	}
	if len(r.Evidence) != 1 || !r.Evidence[0].Verdict || r.Evidence[0].Details != "allow (policy: warn) api.example.com:8080 by rules.egress.allow pattern *.example.com: egress to api.example.com is logged" {
		t.Fatalf("evidence: %+v", r.Evidence)
	}
	if strings.Contains(string(r.Action.Parameters), "SECRET") || strings.Contains(string(r.Action.Parameters), "frag") {
		t.Fatalf("query string reached the receipt: %s", r.Action.Parameters)
	}
	p, err := ParseEgressParameters(&r)
	if err != nil {
		t.Fatal(err)
	}
	want := EgressParameters{Target: "api.example.com:8080", Host: "api.example.com", IP: "127.0.0.1", Port: 8080, Transport: "tcp",
		HTTPHost: "api.example.com:8080", HTTPMethod: "POST", HTTPPath: "/v1/upload"}
	if p.Target != want.Target || p.Host != want.Host || p.IP != want.IP || p.Port != want.Port || p.Transport != want.Transport ||
		p.HTTPHost != want.HTTPHost || p.HTTPMethod != want.HTTPMethod || p.HTTPPath != want.HTTPPath || p.SNI != "" || p.ALPN != nil {
		t.Fatalf("parameters %+v, want %+v", p, want)
	}
	if string(r.Metadata) != `{"matched_rule":"rules.egress.allow","pattern":"*.example.com","policy_decision":"warn","schema":"chio-agent.egress.v1","workload":{"name":"w1"}}` {
		t.Fatalf("metadata: %s", r.Metadata)
	}
	// A deny is signed too, and its evidence says the guard failed it.
	r, err = BuildEgressReceipt(ev, Outcome{Verdict: VerdictDeny}, "ph", key, time.Unix(1700000000, 0))
	if err != nil {
		t.Fatal(err)
	}
	if res := trusted.Verify(r); !res.OK || res.Authorized || res.Result != ResultDenied || r.Evidence[0].Verdict {
		t.Fatalf("deny: %+v %+v", res, r.Evidence)
	}
}

func TestEgressTarget(t *testing.T) {
	ev := EgressEvent{IP: netip.MustParseAddr("2001:db8::1")}
	steps := []struct {
		set  func()
		want string
	}{
		{func() {}, "2001:db8::1"},
		{func() { ev.Host = "asked.example" }, "asked.example"},
		{func() { ev.HTTPHost = "host.example" }, "host.example"},
		{func() { ev.SNI = "sni.example" }, "sni.example"},
	}
	for _, s := range steps {
		s.set()
		if got := ev.Target(); got != s.want {
			t.Errorf("Target() = %q, want %q", got, s.want)
		}
	}
}

func TestBuildEgressReceiptRejects(t *testing.T) {
	key := testKey(t)
	ok := docExampleEvent()
	cases := map[string]func(e *EgressEvent, o *Outcome){
		"no ip":         func(e *EgressEvent, o *Outcome) { e.IP = netip.Addr{} },
		"transport":     func(e *EgressEvent, o *Outcome) { e.Transport = "quic" },
		"transport ip-": func(e *EgressEvent, o *Outcome) { e.Transport = "ip-06" },
		"socket and ip": func(e *EgressEvent, o *Outcome) { e.Socket = &SocketCall{Family: "inet", Type: "raw", Protocol: 1} },
		"socket family": func(e *EgressEvent, o *Outcome) {
			e.IP, e.Port, e.Socket = netip.Addr{}, 0, &SocketCall{Family: "unix", Type: "raw", Protocol: 1}
		},
		"socket type": func(e *EgressEvent, o *Outcome) {
			e.IP, e.Port, e.Socket = netip.Addr{}, 0, &SocketCall{Family: "inet", Type: "bogus", Protocol: 1}
		},
		"no workload":   func(e *EgressEvent, o *Outcome) { e.Workload.Name = "" },
		"bad sni":       func(e *EgressEvent, o *Outcome) { e.SNI = "a\xffb" },
		"bad label":     func(e *EgressEvent, o *Outcome) { e.Workload.Labels = map[string]string{"k": "\xfe"} },
		"bad alpn":      func(e *EgressEvent, o *Outcome) { e.ALPN = []string{"\xc3"} },
		"warn verdict":  func(e *EgressEvent, o *Outcome) { o.Verdict = "warn" },
		"empty verdict": func(e *EgressEvent, o *Outcome) { o.Verdict = "" },
	}
	for name, edit := range cases {
		ev, out := ok, docExampleOutcome()
		ev.Workload.Labels = map[string]string{"app": "x"}
		edit(&ev, &out)
		if _, err := BuildEgressReceipt(ev, out, "ph", key, time.Unix(1, 0)); !errors.Is(err, ErrInvalidEvent) {
			t.Errorf("%s: want ErrInvalidEvent, got %v", name, err)
		}
	}
	if _, err := BuildEgressReceipt(ok, docExampleOutcome(), "ph", key, time.Unix(-5, 0)); !errors.Is(err, ErrInvalidEvent) {
		t.Errorf("negative time: %v", err)
	}
	if _, err := BuildEgressReceipt(ok, docExampleOutcome(), "ph", key[:10], time.Unix(1, 0)); !errors.Is(err, ErrInvalidKey) {
		t.Errorf("bad key: %v", err)
	}
	if _, err := ParseEgressParameters(&Receipt{ToolServer: "srv-files"}); !errors.Is(err, ErrInvalidReceipt) {
		t.Errorf("non-egress receipt: %v", err)
	}
}

// TestEgressDocExample checks that docs/receipts.md shows exactly the receipt
// this code builds, and that the receipt as printed there verifies.
func TestEgressDocExample(t *testing.T) {
	r := docExampleReceipt(t)
	want, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	root, err := testutil.ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	doc, err := os.ReadFile(filepath.Join(root, "docs", "receipts.md"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(doc), "```json\n"+string(want)+"\n```") {
		t.Fatalf("docs/receipts.md does not show the current example receipt; it should read:\n%s", want)
	}
	res, err := Verifier{TrustedKeys: []ed25519.PublicKey{docExampleKey().Public().(ed25519.PublicKey)}}.VerifyJSON(want)
	if err != nil || !res.OK || res.Result != ResultDenied {
		t.Fatalf("doc example does not verify: %+v, %v", res, err)
	}
}

func BenchmarkBuildEgressReceipt(b *testing.B) {
	key := testKey(b)
	ev, out := docExampleEvent(), docExampleOutcome()
	at := time.Unix(1767225600, 0)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := BuildEgressReceipt(ev, out, docExamplePolicyHash, key, at); err != nil {
			b.Fatal(err)
		}
	}
}

// A refusal in the kernel is receipted whatever the workload tried: a
// connect to port 0, a protocol the datapath does not mediate, a socket()
// that named no destination. Each receipt verifies and says what happened.
func TestEgressReceiptsOfKernelRefusals(t *testing.T) {
	key := testKey(t)
	out := Outcome{Verdict: VerdictDeny, Guard: "ChioAgentDatapathGuard", Reason: "refused in the kernel"}
	base := docExampleEvent()
	base.SNI, base.ALPN = "", nil
	cases := []struct {
		name string
		edit func(e *EgressEvent)
		tool string
		want []string
		not  []string
	}{
		{"tcp port 0", func(e *EgressEvent) { e.Port = 0 }, EgressToolName,
			[]string{`"port":0`, `"transport":"tcp"`, `"ip":"203.0.113.7"`}, nil},
		{"udp port 0 aggregated", func(e *EgressEvent) { e.Port, e.Transport, e.Attempts = 0, TransportUDP, 7 },
			EgressToolName, []string{`"port":0`, `"transport":"udp"`, `"attempts":7`}, nil},
		{"icmp connect", func(e *EgressEvent) { e.Port, e.Transport = 0, TransportICMP }, EgressToolName,
			[]string{`"transport":"icmp"`, `"ip":"203.0.113.7"`}, nil},
		{"raw socket", func(e *EgressEvent) {
			e.IP, e.Port, e.Transport = netip.Addr{}, 0, "ip-255"
			e.Socket = &SocketCall{Family: "inet6", Type: "raw", Protocol: 255}
		}, EgressSocketToolName,
			[]string{`"socket":{"family":"inet6","protocol":255,"type":"raw"}`, `"target":"socket(inet6, raw, ip-255)"`, `"transport":"ip-255"`},
			[]string{`"ip":`, `"port":`, `"attempts"`}},
	}
	for _, c := range cases {
		ev := base
		c.edit(&ev)
		r, err := BuildEgressReceipt(ev, out, "ph", key, time.Unix(1767225600, 0))
		if err != nil {
			t.Fatalf("%s: build: %v", c.name, err)
		}
		if r.ToolName != c.tool {
			t.Errorf("%s: tool_name %q, want %q", c.name, r.ToolName, c.tool)
		}
		raw, err := json.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		if res, err := (Verifier{TrustedKeys: []ed25519.PublicKey{key.Public().(ed25519.PublicKey)}}).VerifyJSON(raw); err != nil || !res.OK {
			t.Errorf("%s: receipt does not verify: %+v %v", c.name, res, err)
		}
		for _, w := range c.want {
			if !strings.Contains(string(raw), w) {
				t.Errorf("%s: receipt lacks %s: %s", c.name, w, raw)
			}
		}
		for _, w := range c.not {
			if strings.Contains(string(raw), w) {
				t.Errorf("%s: receipt has %s: %s", c.name, w, raw)
			}
		}
	}
	for p, want := range map[uint16]string{6: "tcp", 17: "udp", 1: "icmp", 58: "icmpv6", 132: "sctp", 255: "ip-255", 0: "ip-0"} {
		if got := TransportOf(p); got != want || !validTransport(got) {
			t.Errorf("TransportOf(%d) = %q (valid %v), want %q", p, got, validTransport(got), want)
		}
	}
}

// An inbound refusal is an egress receipt with the local address and port,
// the refused call as tool_name and "direction":"inbound"; an outbound one
// carries no direction, so receipts written before inbound stay identical.
func TestBuildInboundReceipt(t *testing.T) {
	key := testKey(t)
	ev := EgressEvent{IP: netip.MustParseAddr("127.0.0.1"), Port: 8080, Transport: TransportTCP,
		Direction: DirectionInbound, Syscall: "bind", Workload: WorkloadIdentity{Name: "w1"}}
	out := Outcome{Verdict: VerdictDeny, Guard: "ChioAgentInboundGuard", MatchedRule: "inbound.allow_ports"}
	r, err := BuildEgressReceipt(ev, out, "ph", key, time.Unix(1700000000, 0))
	if err != nil {
		t.Fatal(err)
	}
	res := Verifier{TrustedKeys: []ed25519.PublicKey{key.Public().(ed25519.PublicKey)}}.Verify(r)
	if !res.OK || res.Result != ResultDenied || r.ToolName != "bind" {
		t.Fatalf("inbound receipt: %+v, tool_name %q", res, r.ToolName)
	}
	if got := string(r.Action.Parameters); got != `{"direction":"inbound","ip":"127.0.0.1","port":8080,"target":"127.0.0.1","transport":"tcp"}` {
		t.Fatalf("parameters: %s", got)
	}
	if p, err := ParseEgressParameters(&r); err != nil || p.Direction != DirectionInbound || p.Port != 8080 {
		t.Fatalf("parse: %+v, %v", p, err)
	}
	ev.Direction = "sideways"
	if _, err := BuildEgressReceipt(ev, out, "ph", key, time.Unix(1, 0)); !errors.Is(err, ErrInvalidEvent) {
		t.Fatalf("unknown direction: %v", err)
	}
	ev.Direction, ev.Syscall = "", ""
	r, err = BuildEgressReceipt(ev, out, "ph", key, time.Unix(1, 0))
	if err != nil || strings.Contains(string(r.Action.Parameters), "direction") || r.ToolName != EgressToolName {
		t.Fatalf("outbound receipt: %s %q, %v", r.Action.Parameters, r.ToolName, err)
	}
}
