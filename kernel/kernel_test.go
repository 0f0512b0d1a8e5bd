package kernel

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/backbay-labs/chio-agent/kernel/hushspec"
)

const testPolicyA = `hushspec: "0.1.0"
name: a
rules:
  egress:
    allow: ["api.openai.com", "*.example.com"]
    default: block
  tool_access:
    allow: [read_file]
    block: [shell_exec]
    require_confirmation: [git_push]
    max_args_size: 64
    default: block
`

// testPolicyB flips the egress answer for api.openai.com.
const testPolicyB = `hushspec: "0.1.0"
name: b
rules:
  egress:
    block: ["api.openai.com"]
    default: allow
`

func mustPolicy(t testing.TB, src string) *hushspec.Policy {
	t.Helper()
	p, err := hushspec.Parse([]byte(src))
	if err != nil {
		t.Fatalf("parse policy: %v", err)
	}
	return p
}

func newTestKernel(t testing.TB, p *hushspec.Policy, opts ...func(*Options)) *Kernel {
	t.Helper()
	o := Options{Policy: p, SigningKey: testKey(t), Clock: func() time.Time { return time.Unix(1767225600, 0) }}
	for _, f := range opts {
		f(&o)
	}
	k, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func egressTo(sni string) EgressEvent {
	return EgressEvent{IP: netip.MustParseAddr("127.0.0.1"), Port: 443, Transport: TransportTCP, SNI: sni, Workload: WorkloadIdentity{Name: "w"}}
}

func TestNewRejects(t *testing.T) {
	if _, err := New(Options{SigningKey: testKey(t)}); !errors.Is(err, ErrNoPolicy) {
		t.Errorf("no policy: %v", err)
	}
	if _, err := New(Options{Policy: mustPolicy(t, testPolicyA), SigningKey: testKey(t)[:31]}); !errors.Is(err, ErrInvalidKey) {
		t.Errorf("bad key: %v", err)
	}
}

func TestEvaluateEgress(t *testing.T) {
	p := mustPolicy(t, testPolicyA)
	var logs bytes.Buffer
	logger := logrus.New()
	logger.SetOutput(&logs)
	logger.SetLevel(logrus.DebugLevel)
	logger.SetFormatter(&logrus.JSONFormatter{})
	k := newTestKernel(t, p, func(o *Options) { o.Logger = logger })
	trusted := Verifier{TrustedKeys: []ed25519.PublicKey{testKey(t).Public().(ed25519.PublicKey)}}

	for _, c := range []struct {
		sni, verdict, rule string
	}{
		{"api.openai.com", VerdictAllow, "rules.egress.allow"},
		{"docs.example.com", VerdictAllow, "rules.egress.allow"},
		{"exfil.example.net", VerdictDeny, "rules.egress.default"},
	} {
		out, r, err := k.EvaluateEgress(context.Background(), egressTo(c.sni))
		if err != nil {
			t.Fatal(err)
		}
		if out.Verdict != c.verdict || out.MatchedRule != c.rule || r.Decision.Verdict != c.verdict {
			t.Errorf("%s: outcome %+v", c.sni, out)
		}
		res := trusted.Verify(r)
		if !res.OK || res.Authorized != (c.verdict == VerdictAllow) {
			t.Errorf("%s: verify %+v", c.sni, res)
		}
		if r.PolicyHash != p.Hash() || r.Timestamp != 1767225600 || r.KernelKey != k.KernelKey() {
			t.Errorf("%s: receipt %+v", c.sni, r)
		}
		if !strings.Contains(string(r.Metadata), `"matched_rule":"`+c.rule+`"`) {
			t.Errorf("%s: metadata %s", c.sni, r.Metadata)
		}
	}
	// One debug entry per decision, with its fields.
	lines := strings.Split(strings.TrimSpace(logs.String()), "\n")
	if len(lines) != 3 || !strings.Contains(lines[2], `"verdict":"deny"`) || !strings.Contains(lines[2], `"target":"exfil.example.net"`) || !strings.Contains(lines[2], `"receipt_id":"`) {
		t.Errorf("log entries: %q", lines)
	}

	// An event the receipt cannot describe denies with an error.
	bad := egressTo("api.openai.com")
	bad.IP = netip.Addr{}
	out, r, err := k.EvaluateEgress(context.Background(), bad)
	if !errors.Is(err, ErrInvalidEvent) || out.Verdict != VerdictDeny || r.ID != "" {
		t.Errorf("bad event: %+v %v", out, err)
	}
	// A cancelled context denies with an error.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	out, _, err = k.EvaluateEgress(ctx, egressTo("api.openai.com"))
	if !errors.Is(err, context.Canceled) || out.Verdict != VerdictDeny {
		t.Errorf("cancelled: %+v %v", out, err)
	}
}

func TestEvaluateToolCall(t *testing.T) {
	k := newTestKernel(t, mustPolicy(t, testPolicyA))
	trusted := Verifier{TrustedKeys: []ed25519.PublicKey{testKey(t).Public().(ed25519.PublicKey)}}
	cases := []struct {
		name, tool, args, verdict, policy string
	}{
		{"allowed", "read_file", `{"path": "/workspace/a"}`, VerdictAllow, "allow"},
		{"blocked", "shell_exec", `{}`, VerdictDeny, "deny"},
		{"default", "deploy", ``, VerdictDeny, "deny"},
		// HushSpec core 6: without a confirmation channel a warn is denied.
		{"warn is denied", "git_push", `{"remote":"origin"}`, VerdictDeny, "warn"},
		{"args too large", "read_file", `{"path": "` + strings.Repeat("a", 80) + `"}`, VerdictDeny, "deny"},
	}
	for _, c := range cases {
		out, r, err := k.EvaluateToolCall(context.Background(), ToolCall{ToolServer: "srv-files", ToolName: c.tool, Arguments: json.RawMessage(c.args), CapabilityID: "cap-1"})
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if out.Verdict != c.verdict || out.PolicyDecision != c.policy {
			t.Errorf("%s: outcome %+v", c.name, out)
		}
		res := trusted.Verify(r)
		if !res.OK || res.Authorized != (c.verdict == VerdictAllow) || r.CapabilityID != "cap-1" || r.ToolServer != "srv-files" || r.ToolName != c.tool {
			t.Errorf("%s: receipt %+v verify %+v", c.name, r, res)
		}
		if c.policy == "warn" && (!strings.Contains(string(r.Metadata), `"policy_decision":"warn"`) || !strings.Contains(r.Evidence[0].Details, "policy: warn")) {
			t.Errorf("%s: warn not recorded: %s %+v", c.name, r.Metadata, r.Evidence)
		}
	}
	for name, call := range map[string]ToolCall{
		"no server":    {ToolName: "read_file"},
		"no tool":      {ToolServer: "srv"},
		"bad args":     {ToolServer: "srv", ToolName: "read_file", Arguments: json.RawMessage(`{"a":1,"a":2}`)},
		"invalid json": {ToolServer: "srv", ToolName: "read_file", Arguments: json.RawMessage(`{`)},
	} {
		out, _, err := k.EvaluateToolCall(context.Background(), call)
		if !errors.Is(err, ErrInvalidReceipt) || out.Verdict != VerdictDeny {
			t.Errorf("%s: %+v %v", name, out, err)
		}
	}
}

func TestSetPolicy(t *testing.T) {
	a, b := mustPolicy(t, testPolicyA), mustPolicy(t, testPolicyB)
	k := newTestKernel(t, a)
	if out, _, _ := k.EvaluateEgress(context.Background(), egressTo("api.openai.com")); out.Verdict != VerdictAllow {
		t.Fatalf("policy a: %+v", out)
	}
	k.SetPolicy(b)
	out, r, err := k.EvaluateEgress(context.Background(), egressTo("api.openai.com"))
	if err != nil || out.Verdict != VerdictDeny || r.PolicyHash != b.Hash() || k.PolicyHash() != b.Hash() || a.Hash() == b.Hash() {
		t.Fatalf("policy b: %+v %v", out, err)
	}
	k.SetPolicy(nil) // ignored
	if k.PolicyHash() != b.Hash() {
		t.Fatal("nil policy replaced the policy")
	}
}

// TestSetPolicyConcurrent reloads while deciding: every receipt's decision
// must be the one its policy_hash's policy gives.
func TestSetPolicyConcurrent(t *testing.T) {
	a, b := mustPolicy(t, testPolicyA), mustPolicy(t, testPolicyB)
	want := map[string]string{a.Hash(): VerdictAllow, b.Hash(): VerdictDeny}
	k := newTestKernel(t, a)
	stop := make(chan struct{})
	reloaderDone := make(chan struct{})
	go func() {
		defer close(reloaderDone)
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			if i%2 == 0 {
				k.SetPolicy(b)
			} else {
				k.SetPolicy(a)
			}
		}
	}()
	var deciders sync.WaitGroup
	errs := make(chan string, 2)
	for range 2 {
		deciders.Go(func() {
			for range 200 {
				_, r, err := k.EvaluateEgress(context.Background(), egressTo("api.openai.com"))
				if err != nil {
					errs <- err.Error()
					return
				}
				if r.Decision.Verdict != want[r.PolicyHash] {
					errs <- "verdict " + r.Decision.Verdict + " under policy " + r.PolicyHash
					return
				}
			}
		})
	}
	deciders.Wait()
	close(stop)
	<-reloaderDone
	close(errs)
	for e := range errs {
		t.Error(e)
	}
}

func BenchmarkEvaluateEgress(b *testing.B) {
	k := newTestKernel(b, mustPolicy(b, testPolicyA))
	ev := egressTo("docs.example.com")
	b.ReportAllocs()
	for b.Loop() {
		if _, _, err := k.EvaluateEgress(context.Background(), ev); err != nil {
			b.Fatal(err)
		}
	}
}
