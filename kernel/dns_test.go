package kernel

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/backbay-labs/chio-agent/internal/sniff"
	"github.com/backbay-labs/chio-agent/kernel/hushspec"
)

const dnsPolicy = `hushspec: "0.1.0"
name: dns
rules:
  egress:
    allow: ["api.allowed.test", "*.cdn.allowed.test"]
    block: ["blocked.allowed.test"]
    default: block
`

// TestDecideDNS is the DNS decision as a table: the name as a hostile
// workload would write it, the query types and the answer's chain.
func TestDecideDNS(t *testing.T) {
	pol, err := hushspec.Parse([]byte(dnsPolicy))
	if err != nil {
		t.Fatal(err)
	}
	q := func(name, typ string, chain ...string) *Seen {
		return &Seen{Event: EgressEvent{DNS: &DNSQuery{Name: name, Type: typ, Chain: chain}}}
	}
	for _, c := range []struct {
		name  string
		seen  *Seen
		allow bool
		guard string
	}{
		{"allowed A", q("api.allowed.test.", "A"), true, GuardEgressPolicy},
		{"case and trailing dot folded as egress hosts are", q("API.Allowed.TEST.", "AAAA"), true, GuardEgressPolicy},
		{"wildcard allow", q("x.cdn.allowed.test.", "HTTPS"), true, GuardEgressPolicy},
		{"default block", q("secret.attacker.test.", "A"), false, GuardEgressPolicy},
		{"block beats wildcard", q("blocked.allowed.test.", "A"), false, GuardEgressPolicy},
		{"escaped dot in a label is not a name", q(`api\.allowed.test.`, "A"), false, GuardEgressPolicy},
		{"zero byte escaped", q(`api.allowed.test\000.`, "A"), false, GuardEgressPolicy},
		{"root", q(".", "A"), false, GuardEgressPolicy},
		{"no name", q("", "A"), false, GuardDNS},
		{"no dns part", &Seen{}, false, GuardDNS},
		{"TXT of an allowed name: by name", q("api.allowed.test.", "TXT"), true, GuardEgressPolicy},
		{"TXT of a blocked name", q("data.attacker.test.", "TXT"), false, GuardEgressPolicy},
		{"AXFR never", q("api.allowed.test.", "AXFR"), false, GuardDNS},
		{"ANY never", q("api.allowed.test.", "ANY"), false, GuardDNS},
		{"chain of allowed names", q("api.allowed.test.", "A", "edge.cdn.allowed.test."), true, GuardEgressPolicy},
		{"chain to a blocked name", q("api.allowed.test.", "A", "edge.cdn.allowed.test.", "evil.attacker.test."), false, GuardDNS},
		{"already decided", &Seen{Event: EgressEvent{DNS: &DNSQuery{Name: "api.allowed.test.", Type: "A"}},
			Decided: &Outcome{Verdict: VerdictDeny, Guard: GuardLimit}}, false, GuardLimit},
	} {
		t.Run(c.name, func(t *testing.T) {
			out := DecideDNS(pol, c.seen)
			if (out.Verdict == VerdictAllow) != c.allow || out.Guard != c.guard {
				t.Fatalf("outcome %+v, want allow=%v guard %s", out, c.allow, c.guard)
			}
		})
	}
	other := q("api.allowed.test.", "TXT")
	other.Event.DNS.RefuseOtherTypes = true
	if out := DecideDNS(pol, other); out.Verdict != VerdictDeny || out.Guard != GuardDNS {
		t.Fatalf("TXT with other types refused: %+v", out)
	}
	for _, typ := range []string{"A", "AAAA", "CNAME", "HTTPS", "SVCB"} {
		s := q("api.allowed.test.", typ)
		s.Event.DNS.RefuseOtherTypes = true
		if out := DecideDNS(pol, s); out.Verdict != VerdictAllow {
			t.Fatalf("%s with other types refused: %+v", typ, out)
		}
	}
}

// TestDNSReceipt: a DNS query's receipt names it as docs/receipts.md says,
// and what the workload was told is signed with it.
func TestDNSReceipt(t *testing.T) {
	pol, err := hushspec.Parse([]byte(dnsPolicy))
	if err != nil {
		t.Fatal(err)
	}
	key := ed25519.NewKeyFromSeed(make([]byte, 32))
	k, err := New(Options{Policy: pol, SigningKey: key, Clock: func() time.Time { return time.Unix(1_800_000_000, 0) }})
	if err != nil {
		t.Fatal(err)
	}
	ev := EgressEvent{IP: netip.MustParseAddr("10.0.0.53"), Port: 53, Transport: TransportUDP,
		Workload: WorkloadIdentity{Name: "w"},
		DNS: &DNSQuery{Name: "api.allowed.test.", Type: "A", Answers: []netip.Addr{netip.MustParseAddr("192.0.2.1")},
			RCode: "NOERROR", Upstream: netip.MustParseAddrPort("[::1]:5353")}}
	e := k.Snapshot().DecideDNS(Seen{Event: ev})
	if e.Outcome.Verdict != VerdictAllow {
		t.Fatalf("outcome %+v", e.Outcome)
	}
	p, err := e.Receipt()
	if err != nil {
		t.Fatal(err)
	}
	r, err := p.Sign(key)
	if err != nil {
		t.Fatal(err)
	}
	if r.ToolName != DNSToolName || r.ToolServer != EgressToolServer {
		t.Fatalf("tool %s/%s", r.ToolServer, r.ToolName)
	}
	var params map[string]any
	json.Unmarshal(r.Action.Parameters, &params)
	if params["qname"] != "api.allowed.test." || params["qtype"] != "A" || params["target"] != "api.allowed.test." ||
		params["ip"] != "10.0.0.53" || params["transport"] != "udp" {
		t.Fatalf("parameters %v", params)
	}
	if m := string(r.Metadata); !strings.Contains(m, `"answers":["192.0.2.1"]`) || !strings.Contains(m, `"upstream":"[::1]:5353"`) || !strings.Contains(m, `"rcode":"NOERROR"`) {
		t.Fatalf("metadata %s", m)
	}
	ev.Transport = TransportICMP
	bad := k.Snapshot().DecideDNS(Seen{Event: ev})
	if _, err := bad.Receipt(); err == nil {
		t.Fatal("a dns query over icmp was receipted")
	}
}

// workloadOwner owns an address for one workload only.
type workloadOwner struct{ w uint32 }

func (o workloadOwner) Owns(_ context.Context, w uint32, _ string, _ netip.Addr) (bool, error) {
	return w == o.w, nil
}

// TestDecideEgressAsksOwnerPerWorkload: the anti-spoofing check asks about
// the workload that connected, so one workload's DNS answers are not
// another's.
func TestDecideEgressAsksOwnerPerWorkload(t *testing.T) {
	pol, err := hushspec.Parse([]byte(dnsPolicy))
	if err != nil {
		t.Fatal(err)
	}
	seen := func(w uint32) *Seen {
		return &Seen{WorkloadID: w, Event: EgressEvent{IP: netip.MustParseAddr("192.0.2.1"), Port: 443, Transport: TransportTCP,
			SNI: "api.allowed.test"}, Sniffed: &sniff.Sniffed{Protocol: sniff.ProtocolTLS, Stop: sniff.StopComplete, SNI: "api.allowed.test"}}
	}
	if out := DecideEgress(context.Background(), pol, seen(7), workloadOwner{7}); out.Verdict != VerdictAllow {
		t.Fatalf("workload 7: %+v", out)
	}
	if out := DecideEgress(context.Background(), pol, seen(8), workloadOwner{7}); out.Verdict != VerdictDeny || out.Guard != GuardAntiSpoof {
		t.Fatalf("workload 8 allowed by workload 7's answers: %+v", out)
	}
}
