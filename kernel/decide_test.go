package kernel

import (
	"context"
	"crypto/ed25519"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/backbay-labs/chio-agent/internal/sniff"
	"github.com/backbay-labs/chio-agent/kernel/hushspec"
)

// owners answers the anti-spoofing question from a table: name → its
// addresses; a name mapped to nil has a failing lookup.
type owners map[string][]netip.Addr

func (o owners) Owns(_ context.Context, _ uint32, name string, addr netip.Addr) (bool, error) {
	as, ok := o[name]
	if !ok {
		return false, nil
	}
	if as == nil {
		return false, errors.New("lookup failed")
	}
	for _, a := range as {
		if a == addr.Unmap() {
			return true, nil
		}
	}
	return false, nil
}

const decidePolicy = `hushspec: "0.1.0"
name: decide
rules:
  egress:
    allow: ["api.allowed.test", "127.0.0.7"]
    block: ["blocked.test", "127.0.0.9"]
    default: block
`

func decideSniffed(p sniff.Protocol, stop sniff.StopReason) *sniff.Sniffed {
	return &sniff.Sniffed{Protocol: p, Stop: stop}
}

// TestDecideEgress is the node agent's decision as a table, no root and no
// datapath: every guard, as a hostile workload would try to pass it.
func TestDecideEgress(t *testing.T) {
	panicFile := filepath.Join(t.TempDir(), "panic")
	pol, err := hushspec.Parse([]byte(decidePolicy), hushspec.WithPanicSentinel(panicFile))
	if err != nil {
		t.Fatal(err)
	}
	allowedIP := netip.MustParseAddr("127.0.0.5")
	owner := owners{"api.allowed.test": {allowedIP}, "blocked.test": {allowedIP}, "broken.test": nil}
	dst := func(ip string, port uint16) EgressEvent {
		return EgressEvent{IP: netip.MustParseAddr(ip), Port: port, Transport: TransportTCP, Workload: WorkloadIdentity{Name: "unit/wl"}}
	}
	tlsTo := func(name string) *sniff.Sniffed {
		return &sniff.Sniffed{Protocol: sniff.ProtocolTLS, Stop: sniff.StopComplete, SNI: name}
	}
	httpTo := func(name string) *sniff.Sniffed {
		return &sniff.Sniffed{Protocol: sniff.ProtocolHTTP, Stop: sniff.StopComplete, Host: name, Method: "GET", Path: "/"}
	}
	decided := Outcome{Verdict: VerdictDeny, Guard: GuardDatapath, Reason: "refused in the kernel"}

	cases := []struct {
		name  string
		seen  Seen
		owner AddressOwner
		panic bool // the panic file exists

		verdict, guard, rule string
		reason               string // a part of the reason
	}{
		{name: "allowed SNI at an address of its name", seen: Seen{Event: dst("127.0.0.5", 443), Sniffed: tlsTo("api.allowed.test")},
			verdict: VerdictAllow, guard: GuardEgressPolicy, rule: "rules.egress.allow"},
		{name: "allowed Host at an address of its name", seen: Seen{Event: dst("127.0.0.5", 80), Sniffed: httpTo("api.allowed.test")},
			verdict: VerdictAllow, guard: GuardEgressPolicy, rule: "rules.egress.allow"},
		{name: "blocked SNI", seen: Seen{Event: dst("127.0.0.5", 443), Sniffed: tlsTo("blocked.test")},
			verdict: VerdictDeny, guard: GuardEgressPolicy, rule: "rules.egress.block"},
		{name: "unlisted name, default block", seen: Seen{Event: dst("127.0.0.5", 443), Sniffed: tlsTo("other.test")},
			verdict: VerdictDeny, guard: GuardEgressPolicy, rule: "rules.egress.default"},
		{name: "allowed SNI sent to another address (spoofing)", seen: Seen{Event: dst("127.0.0.6", 443), Sniffed: tlsTo("api.allowed.test")},
			verdict: VerdictDeny, guard: GuardAntiSpoof, rule: "rules.egress.allow", reason: "is not an address of api.allowed.test"},
		{name: "allowed Host sent to another address (spoofing)", seen: Seen{Event: dst("127.0.0.6", 80), Sniffed: httpTo("api.allowed.test")},
			verdict: VerdictDeny, guard: GuardAntiSpoof, reason: "is not an address of"},
		{name: "allowed IP literal named, another dialled", seen: Seen{Event: dst("127.0.0.6", 80), Sniffed: httpTo("127.0.0.7")},
			verdict: VerdictDeny, guard: GuardAntiSpoof, reason: "the client named 127.0.0.7 but dialled 127.0.0.6"},
		{name: "allowed IP literal named and dialled", seen: Seen{Event: dst("127.0.0.7", 80), Sniffed: httpTo("127.0.0.7")},
			verdict: VerdictAllow, guard: GuardEgressPolicy},
		{name: "opaque bytes to an allowed address", seen: Seen{Event: dst("127.0.0.7", 22), Sniffed: decideSniffed(sniff.ProtocolOpaque, sniff.StopComplete)},
			verdict: VerdictAllow, guard: GuardEgressPolicy},
		{name: "opaque bytes to a blocked address", seen: Seen{Event: dst("127.0.0.9", 22), Sniffed: decideSniffed(sniff.ProtocolOpaque, sniff.StopComplete)},
			verdict: VerdictDeny, guard: GuardEgressPolicy, rule: "rules.egress.block"},
		{name: "resolver fails: deny", seen: Seen{Event: dst("127.0.0.5", 443), Sniffed: tlsTo("broken.test")},
			owner: owners{"broken.test": nil}, verdict: VerdictDeny, guard: GuardEgressPolicy, rule: "rules.egress.default"},
		{name: "resolver fails for an allowed name: deny", seen: Seen{Event: dst("127.0.0.5", 443), Sniffed: tlsTo("api.allowed.test")},
			owner: owners{"api.allowed.test": nil}, verdict: VerdictDeny, guard: GuardAntiSpoof, reason: "cannot check"},
		{name: "no owner, a sniffed name: deny", seen: Seen{Event: dst("127.0.0.5", 443), Sniffed: tlsTo("api.allowed.test")},
			verdict: VerdictDeny, guard: GuardAntiSpoof, reason: "no resolver"},
		{name: "no owner, nothing sniffed: the caller dials the name itself", seen: Seen{Event: func() EgressEvent {
			ev := dst("127.0.0.6", 443)
			ev.SNI = "api.allowed.test"
			return ev
		}()}, verdict: VerdictAllow, guard: GuardEgressPolicy, rule: "rules.egress.allow"},
		{name: "silent client", seen: Seen{Event: dst("127.0.0.5", 443), Sniffed: decideSniffed(sniff.ProtocolNone, sniff.StopTimeout), FirstBytes: 5 * time.Second},
			verdict: VerdictDeny, guard: GuardProtocol, reason: "sent nothing within 5s"},
		{name: "client closed at once", seen: Seen{Event: dst("127.0.0.5", 443), Sniffed: decideSniffed(sniff.ProtocolNone, sniff.StopEOF)},
			verdict: VerdictDeny, guard: GuardProtocol, reason: "closed before sending anything"},
		{name: "malformed ClientHello", seen: Seen{Event: dst("127.0.0.5", 443), Sniffed: &sniff.Sniffed{Protocol: sniff.ProtocolTLS, Stop: sniff.StopMalformed, Malformed: "two server names"}},
			verdict: VerdictDeny, guard: GuardProtocol, reason: "malformed tls: two server names"},
		{name: "ClientHello cut short (the name may be in the rest)", seen: Seen{Event: dst("127.0.0.7", 443), Sniffed: decideSniffed(sniff.ProtocolTLS, sniff.StopEOF)},
			verdict: VerdictDeny, guard: GuardProtocol, reason: "incomplete tls"},
		{name: "request head cut by the deadline", seen: Seen{Event: dst("127.0.0.7", 80), Sniffed: decideSniffed(sniff.ProtocolHTTP, sniff.StopTimeout)},
			verdict: VerdictDeny, guard: GuardProtocol, reason: "incomplete http"},
		{name: "head over the size bound", seen: Seen{Event: dst("127.0.0.7", 80), Sniffed: decideSniffed(sniff.ProtocolHTTP, sniff.StopLimit), HeadLimit: "head larger than 10 bytes"},
			verdict: VerdictDeny, guard: GuardLimit, reason: "http first message refused: head larger than 10 bytes"},
		{name: "read failed", seen: Seen{Event: dst("127.0.0.7", 80), SniffErr: errors.New("read: boom")},
			verdict: VerdictDeny, guard: GuardProtocol, reason: "reading the first bytes failed: read: boom"},
		{name: "client reset mid-message", seen: Seen{Event: dst("127.0.0.7", 80), SniffErr: errors.New("reset"), ClientGone: true},
			verdict: VerdictDeny, guard: GuardProtocol, reason: "the client reset the connection"},
		{name: "destination is the agent's own listener", seen: Seen{Event: dst("127.0.0.7", 15001), Listener: netip.MustParseAddrPort("127.0.0.7:15001")},
			verdict: VerdictDeny, guard: GuardDatapath, reason: "own listener"},
		{name: "own listener through a v4-mapped address", seen: Seen{Event: dst("::ffff:127.0.0.7", 15001), Listener: netip.MustParseAddrPort("127.0.0.7:15001")},
			verdict: VerdictDeny, guard: GuardDatapath, reason: "own listener"},
		{name: "listener's address, another port", seen: Seen{Event: dst("127.0.0.7", 80), Listener: netip.MustParseAddrPort("127.0.0.7:15001"), Sniffed: httpTo("127.0.0.7")},
			verdict: VerdictAllow, guard: GuardEgressPolicy},
		{name: "allowed name to a port the workload may not reach", seen: Seen{Event: dst("127.0.0.5", 25), Sniffed: httpTo("api.allowed.test"), AllowPorts: []uint16{80, 443}},
			verdict: VerdictDeny, guard: GuardPort, rule: RuleEgressAllowPorts, reason: "destination port 25 is not in"},
		{name: "allowed name to an allowed port", seen: Seen{Event: dst("127.0.0.5", 443), Sniffed: tlsTo("api.allowed.test"), AllowPorts: []uint16{80, 443}},
			verdict: VerdictAllow, guard: GuardEgressPolicy},
		{name: "blocked name to an allowed port", seen: Seen{Event: dst("127.0.0.5", 443), Sniffed: tlsTo("blocked.test"), AllowPorts: []uint16{443}},
			verdict: VerdictDeny, guard: GuardEgressPolicy, rule: "rules.egress.block"},
		{name: "panic file: an allowed name is denied", seen: Seen{Event: dst("127.0.0.5", 443), Sniffed: tlsTo("api.allowed.test")},
			panic: true, verdict: VerdictDeny, guard: GuardEgressPolicy, rule: hushspec.PanicRule},
		{name: "a decision made in the kernel is kept", seen: Seen{Event: dst("127.0.0.7", 80), Sniffed: httpTo("127.0.0.7"), Decided: &decided},
			verdict: VerdictDeny, guard: GuardDatapath, reason: "refused in the kernel"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if c.panic {
				if err := os.WriteFile(panicFile, nil, 0o600); err != nil {
					t.Fatal(err)
				}
				defer os.Remove(panicFile)
			}
			var o AddressOwner = owner
			if c.owner != nil || strings.HasPrefix(c.name, "no owner") {
				o = c.owner
			}
			out := DecideEgress(context.Background(), pol, &c.seen, o)
			if out.Verdict != c.verdict || out.Guard != c.guard {
				t.Fatalf("outcome = %+v; want %s by %s", out, c.verdict, c.guard)
			}
			if c.rule != "" && out.MatchedRule != c.rule {
				t.Fatalf("matched rule %q; want %q (%+v)", out.MatchedRule, c.rule, out)
			}
			if !strings.Contains(out.Reason, c.reason) {
				t.Fatalf("reason %q lacks %q", out.Reason, c.reason)
			}
		})
	}
}

// TestSnapshotDecidesAndRecordsUnderOnePolicy reloads the policy between a
// decision and its receipt: the receipt carries the hash of the policy that
// decided, and a decision recorded for an older policy's rule carries that
// policy's hash.
func TestSnapshotDecidesAndRecordsUnderOnePolicy(t *testing.T) {
	polA, err := hushspec.Parse([]byte(decidePolicy))
	if err != nil {
		t.Fatal(err)
	}
	polB, err := hushspec.Parse([]byte(strings.Replace(decidePolicy, `allow: ["api.allowed.test", "127.0.0.7"]`, `allow: []`, 1)))
	if err != nil {
		t.Fatal(err)
	}
	seed := make([]byte, ed25519.SeedSize)
	k, err := New(Options{Policy: polA, SigningKey: ed25519.NewKeyFromSeed(seed),
		AddressOwner: owners{"api.allowed.test": {netip.MustParseAddr("127.0.0.5")}}})
	if err != nil {
		t.Fatal(err)
	}
	snap := k.Snapshot()
	ev := EgressEvent{IP: netip.MustParseAddr("127.0.0.5"), Port: 443, Transport: TransportTCP, Workload: WorkloadIdentity{Name: "unit/wl"}}
	e := snap.DecideEgress(context.Background(), Seen{Event: ev, Sniffed: &sniff.Sniffed{Protocol: sniff.ProtocolTLS, Stop: sniff.StopComplete, SNI: "api.allowed.test"}})
	k.SetPolicy(polB)
	if e.Outcome.Verdict != VerdictAllow || e.Event.SNI != "api.allowed.test" {
		t.Fatalf("decision = %+v with event %+v; want policy a's allow of the SNI", e.Outcome, e.Event)
	}
	p, err := e.Receipt()
	if err != nil {
		t.Fatal(err)
	}
	r, err := p.Sign(ed25519.NewKeyFromSeed(seed))
	if err != nil {
		t.Fatal(err)
	}
	if r.PolicyHash != polA.Hash() {
		t.Fatalf("receipt policy_hash %s; want the deciding policy a's %s (b is %s)", r.PolicyHash, polA.Hash(), polB.Hash())
	}
	if k.Snapshot().DecideEgress(context.Background(), Seen{Event: ev, Sniffed: e.Event.sniffedForTest()}).Outcome.Verdict != VerdictDeny {
		t.Fatal("policy b still allows")
	}

	out := Outcome{Verdict: VerdictDeny, Guard: GuardEgressPolicy, MatchedRule: "rules.egress.block", Pattern: "127.0.0.9"}
	old := k.Snapshot().DecideEgress(context.Background(), Seen{Event: ev, Decided: &out, DecidedPolicyHash: polA.Hash()})
	if old.PolicyHash() != polA.Hash() || old.Outcome != out {
		t.Fatalf("kernel refusal recorded as %+v under %s; want it kept under policy a", old.Outcome, old.PolicyHash())
	}
}

// sniffedForTest gives back what a TLS ClientHello with e's SNI would have
// told.
func (e *EgressEvent) sniffedForTest() *sniff.Sniffed {
	return &sniff.Sniffed{Protocol: sniff.ProtocolTLS, Stop: sniff.StopComplete, SNI: e.SNI}
}
