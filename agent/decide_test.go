package agent

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/backbay-labs/chio-agent/bpf"
	"github.com/backbay-labs/chio-agent/internal/sniff"
	"github.com/backbay-labs/chio-agent/kernel"
	"github.com/backbay-labs/chio-agent/kernel/hushspec"
	"github.com/backbay-labs/chio-agent/receipts"
)

// These tests drive the decision path without a datapath: no root needed.

func mustPolicy(t *testing.T, yaml string) *hushspec.Policy {
	t.Helper()
	p, err := hushspec.Parse([]byte(yaml))
	if err != nil {
		t.Fatalf("policy: %v", err)
	}
	return p
}

const (
	policyAllowAPI = `hushspec: "0.1.0"
name: a
rules:
  egress:
    allow: ["api.allowed.test"]
    block: ["127.0.0.9", "127.0.0.10"]
    default: block
`
	policyBlockAPI = `hushspec: "0.1.0"
name: b
rules:
  egress:
    block: ["api.allowed.test", "127.0.0.10"]
    default: block
`
)

// newTestProxy is a proxy with a real sync receipt log and no datapath.
func newTestProxy(t *testing.T, pol *hushspec.Policy) (*proxy, *receipts.Log) {
	t.Helper()
	_, key, _ := ed25519.GenerateKey(rand.Reader)
	log, err := receipts.Open(filepath.Join(t.TempDir(), "receipts.db"), receipts.Options{Key: key})
	if err != nil {
		t.Fatalf("open log: %v", err)
	}
	t.Cleanup(func() { log.Close() })
	res := newResolver(nil)
	kern, err := kernel.New(kernel.Options{Policy: pol, SigningKey: key, AddressOwner: res})
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{
		log: log, kern: kern,
		resolver: res, timeouts: Timeouts{}.withDefaults(),
		logger: discardLogger, counts: &counters{}, errs: &errorRing{}, now: time.Now,
	}
	return p, log
}

var discardLogger = func() *logrus.Logger { l := logrus.New(); l.Out = io.Discard; return l }()

func testWorkload() *workload {
	return &workload{id: 1, name: "unit/wl", ident: kernel.WorkloadIdentity{Name: "unit/wl"}}
}

func receiptPolicyHash(t *testing.T, log *receipts.Log, seq uint64) string {
	t.Helper()
	e, err := log.Get(seq)
	if err != nil {
		t.Fatalf("receipt %d: %v", seq, err)
	}
	var r struct {
		PolicyHash string `json:"policy_hash"`
	}
	if err := json.Unmarshal(e.Receipt, &r); err != nil {
		t.Fatal(err)
	}
	return r.PolicyHash
}

// TestReloadBetweenDecideAndReceipt reloads the policy while a connection
// is being decided (during the anti-spoofing lookup, where a real decision
// waits on DNS): the receipt must carry the hash of the policy that decided,
// not the one loaded afterwards.
func TestReloadBetweenDecideAndReceipt(t *testing.T) {
	polA, polB := mustPolicy(t, policyAllowAPI), mustPolicy(t, policyBlockAPI)
	p, log := newTestProxy(t, polA)
	dst := netip.MustParseAddrPort("127.0.0.1:8080")
	// The name is not static: the check asks the resolver, whose clock
	// reloads the policy on the way.
	p.resolver.cache["api.allowed.test"] = cached{addrs: []netip.Addr{dst.Addr()}, expires: time.Now().Add(time.Hour)}
	p.resolver.now = func() time.Time { p.kern.SetPolicy(polB); return time.Now() }

	cn := p.newConn(nil, bpf.Original{Dst: dst}, testWorkload())
	cn.sniff = sniff.Sniffed{Protocol: sniff.ProtocolHTTP, Stop: sniff.StopComplete, Host: "api.allowed.test", Method: "GET", Path: "/"}
	seen := p.seen(cn, netip.AddrPort{})
	seen.Sniffed = &cn.sniff
	cn.eg = cn.snap.DecideEgress(context.Background(), seen)
	out := cn.eg.Outcome
	if p.kern.Snapshot().Policy() != polB {
		t.Fatal("the policy was not reloaded during the decision")
	}
	if out.Verdict != kernel.VerdictAllow || out.MatchedRule != "rules.egress.allow" {
		t.Fatalf("outcome = %+v; want policy a's allow", out)
	}
	d := cn.decision(time.Now(), "api.allowed.test", out)
	if err := p.record(context.Background(), &cn.eg, &d); err != nil {
		t.Fatal(err)
	}
	if got := receiptPolicyHash(t, log, d.Seq); got != polA.Hash() {
		t.Fatalf("receipt policy_hash = %s; want policy a's %s (policy b is %s)", got, polA.Hash(), polB.Hash())
	}
}

// TestKernelRefusalNamesItsRuleAfterReload raises a kernel refusal under
// one policy and reads it after a reload that moved every blocked address
// to another position: the receipt must name the pattern and the policy that
// refused, or say it cannot.
func TestKernelRefusalNamesItsRuleAfterReload(t *testing.T) {
	polA, polB := mustPolicy(t, policyAllowAPI), mustPolicy(t, policyBlockAPI)
	_, key, _ := ed25519.GenerateKey(rand.Reader)
	kern, err := kernel.New(kernel.Options{Policy: polA, SigningKey: key})
	if err != nil {
		t.Fatal(err)
	}
	a := &Agent{kern: kern}
	rulesA := a.rules.rulesFor(polA)
	var id9 uint32
	for _, r := range rulesA {
		if r.Prefix.Addr() == netip.MustParseAddr("127.0.0.9") {
			id9 = r.RuleID
		}
	}
	if id9 == 0 {
		t.Fatalf("policy a's rules lack 127.0.0.9: %+v", rulesA)
	}
	// The reload: 127.0.0.10 is now the first blocked address.
	a.kern.SetPolicy(polB)
	a.rules.rulesFor(polB)

	w := testWorkload()
	ev := bpf.Event{Kind: bpf.EventTCPDenied, Proto: bpf.ProtoTCP, WorkloadID: 1, RuleID: id9,
		Dst: netip.MustParseAddrPort("127.0.0.9:443"), Count: 1}
	eg := a.refusal(ev, w)
	out, hash := eg.Outcome, eg.PolicyHash()
	if out.Pattern != "127.0.0.9" || hash != polA.Hash() {
		t.Fatalf("refusal names pattern %q under policy %s; want 127.0.0.9 under policy a %s", out.Pattern, hash, polA.Hash())
	}

	// An id no held policy has: no pattern, and the reason says why.
	ev.RuleID = id9 ^ 0x5a5a5a5a
	out = a.refusal(ev, w).Outcome
	if out.Pattern != "" || !strings.Contains(out.Reason, "unknown") {
		t.Fatalf("unknown rule id: pattern %q, reason %q", out.Pattern, out.Reason)
	}

	// Once policy a has aged out of the table, its ids resolve to nothing.
	for i := 0; i < ruleGenerations; i++ {
		a.rules.rulesFor(mustPolicy(t, strings.Replace(policyBlockAPI, "name: b", "name: b"+string(rune('0'+i)), 1)))
	}
	ev.RuleID = id9
	out = a.refusal(ev, w).Outcome
	if out.Pattern != "" || !strings.Contains(out.Reason, "unknown") {
		t.Fatalf("aged-out rule id: pattern %q, reason %q", out.Pattern, out.Reason)
	}
}

// TestStaticRuleIDsAreStable: the same policy gives the same ids (a
// restarted agent resolves what its predecessor pinned); another policy
// gives others.
func TestStaticRuleIDsAreStable(t *testing.T) {
	var t1, t2 ruleTable
	a1 := t1.rulesFor(mustPolicy(t, policyAllowAPI))
	a2 := t2.rulesFor(mustPolicy(t, policyAllowAPI))
	b := t2.rulesFor(mustPolicy(t, policyBlockAPI))
	if len(a1) != 2 || len(a2) != 2 || a1[0].RuleID != a2[0].RuleID || a1[1].RuleID != a2[1].RuleID {
		t.Fatalf("same policy, different ids: %+v %+v", a1, a2)
	}
	for _, r := range append(a1, b...) {
		if r.RuleID == 0 {
			t.Fatalf("rule %+v has id 0, which exemptions use", r)
		}
	}
	if b[0].RuleID == a1[1].RuleID {
		t.Fatalf("127.0.0.10 has one id under two policies: %d", b[0].RuleID)
	}
}

// TestWrittenReceiptNeverReportedUnwritten records decisions while the
// agent is shutting down (its context cancelled): a receipt reported as not
// written must not be in the log, and one in the log must be reported.
func TestWrittenReceiptNeverReportedUnwritten(t *testing.T) {
	pol := mustPolicy(t, policyAllowAPI)
	p, log := newTestProxy(t, pol)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	ev := kernel.EgressEvent{IP: netip.MustParseAddr("127.0.0.9"), Port: 443, Transport: kernel.TransportTCP,
		Workload: kernel.WorkloadIdentity{Name: "unit/wl"}}
	out := kernel.Outcome{Verdict: kernel.VerdictDeny, Guard: GuardDatapath, Reason: "test"}
	for i := 0; i < 20; i++ {
		ev.ConnectionID = newConnectionID()
		var d Decision
		eg := p.kern.Snapshot().DecideEgress(ctx, kernel.Seen{Event: ev, Decided: &out})
		err := p.record(ctx, &eg, &d)
		if err != nil {
			t.Fatalf("receipt %d reported as %q", i, d.Err)
		}
		if d.Seq == 0 || d.Err != "" {
			t.Fatalf("decision %d = %+v", i, d)
		}
		if _, err := log.Get(d.Seq); err != nil {
			t.Fatalf("receipt %d reported written, not in the log: %v", i, err)
		}
	}
	if n := log.LastSeq(); n != 20 {
		t.Fatalf("log holds %d receipts, want 20", n)
	}
}

// TestProxyRefusesSpoofedSNIWithoutRoot drives one connection through the
// proxy's whole path after the datapath (sniff, kernel decision, receipt,
// refusal) on a loopback socket, as a hostile workload would: a ClientHello
// naming an allowed host, sent to an address that host does not have. It
// must end in a TLS alert and a deny receipt by the anti-spoofing guard,
// under the policy the connection was accepted with.
func TestProxyRefusesSpoofedSNIWithoutRoot(t *testing.T) {
	pol := mustPolicy(t, policyAllowAPI)
	p, log := newTestProxy(t, pol)
	p.resolver.static["api.allowed.test"] = []netip.Addr{netip.MustParseAddr("127.0.0.5")}
	var got []Decision
	p.onDecide = func(d Decision) { got = append(got, d) }

	ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	clientErr := make(chan error, 1)
	go func() {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			clientErr <- err
			return
		}
		defer c.Close()
		clientErr <- tls.Client(c, &tls.Config{ServerName: "api.allowed.test", InsecureSkipVerify: true}).Handshake()
	}()
	c, err := ln.AcceptTCP()
	if err != nil {
		t.Fatal(err)
	}
	w := testWorkload()
	w.pending.Add(1)
	p.pending.Add(1)
	p.handle(context.Background(), c, bpf.Original{Dst: netip.MustParseAddrPort("127.0.0.6:443"), PID: 42, Comm: "attacker"}, w)

	if err := <-clientErr; err == nil || !strings.Contains(err.Error(), "access denied") {
		t.Fatalf("client handshake: %v; want a TLS access_denied alert", err)
	}
	if len(got) != 1 {
		t.Fatalf("decisions: %+v; want one", got)
	}
	d := got[0]
	if d.Verdict != kernel.VerdictDeny || d.Guard != GuardAntiSpoof || d.Name != "api.allowed.test" || d.Seq == 0 {
		t.Fatalf("decision = %+v; want a receipted deny of api.allowed.test by %s", d, GuardAntiSpoof)
	}
	if h := receiptPolicyHash(t, log, d.Seq); h != pol.Hash() {
		t.Fatalf("receipt policy_hash %s; want %s", h, pol.Hash())
	}
	if w.pending.Load() != 0 || p.pending.Load() != 0 {
		t.Fatalf("pending slots not given back: workload %d, all %d", w.pending.Load(), p.pending.Load())
	}
}

// TestRuleIDsOfPoliciesInUseNeverAgeOut: with more pod policies than the
// table's history, each one a workload uses still names its rules; once its
// workloads are gone it ages out like any other.
func TestRuleIDsOfPoliciesInUseNeverAgeOut(t *testing.T) {
	var tab ruleTable
	type use struct {
		id    uint32
		rule  bpf.VerdictRule
		owner string
	}
	var uses []use
	for i := 0; i < 3*ruleGenerations; i++ {
		name := fmt.Sprintf("name: p%d", i)
		pol := mustPolicy(t, strings.Replace(policyBlockAPI, "name: b", name, 1))
		rules := tab.rulesOf(uint32(100+i), pol)
		if len(rules) == 0 {
			t.Fatal("policyBlockAPI has no static rule")
		}
		uses = append(uses, use{uint32(100 + i), rules[0], pol.Hash()})
	}
	for _, u := range uses {
		r, ok := tab.lookup(u.rule.RuleID, u.rule.Prefix.Addr())
		if !ok || r.policyHash != u.owner {
			t.Fatalf("workload %d's rule %d: %+v, %v; want its policy's pattern", u.id, u.rule.RuleID, r, ok)
		}
	}
	for _, u := range uses {
		tab.release(u.id)
	}
	tab.rulesFor(mustPolicy(t, policyAllowAPI)) // any new policy evicts the spare ones
	if _, ok := tab.lookup(uses[0].rule.RuleID, uses[0].rule.Prefix.Addr()); ok {
		t.Fatal("a released policy's ids were kept beyond the table's history")
	}
	if n := len(tab.gens); n != ruleGenerations {
		t.Fatalf("%d generations kept with no workload using any, want %d", n, ruleGenerations)
	}
}
