package kernel

import (
	"fmt"
	"net/netip"
	"strings"
	"unicode/utf8"

	"github.com/backbay-labs/chio-agent/kernel/hushspec"
)

// How a DNS query of a protected workload is named in a receipt
// (docs/receipts.md, docs/dns.md). Its tool_server is EgressToolServer: a
// query is an egress of the workload, decided by the same egress rules.
const (
	// DNSToolName is the receipt's tool_name for one DNS query (or, with
	// Attempts, several refused together).
	DNSToolName = "dns.query"
	// GuardDNS refuses a DNS message for what it is rather than for the
	// name it asks: not a well-formed single-question query, a query type
	// the proxy never forwards (zone transfers, ANY), a query type beyond
	// the address types when the proxy refuses those, or an answer whose
	// chain leads to a name the policy refuses.
	GuardDNS = "ChioAgentDNSGuard"
)

// Query types decided by the name alone: the address types and the types
// that lead to an address (CNAME, HTTPS, SVCB).
var dnsAddressTypes = map[string]bool{"A": true, "AAAA": true, "CNAME": true, "HTTPS": true, "SVCB": true}

// Query types never forwarded whatever the name: a zone transfer hands out
// every name of a zone, and ANY is deprecated (RFC 8482) and answers with
// whatever records a name has.
var dnsNeverTypes = map[string]bool{"AXFR": true, "IXFR": true, "ANY": true, "MAILB": true, "MAILA": true}

// DNSQuery is the DNS part of an egress event: the question a workload
// asked and, once answered, what it was told. The event's IP and Port are
// the resolver the workload addressed (its original destination), its
// Transport how it asked ("udp" or "tcp").
type DNSQuery struct {
	// Name is the QNAME in presentation form as the message carried it
	// (miekg/dns escaping, e.g. "\000" for a zero byte). The policy
	// decides on it normalised as every egress host is; the receipt
	// records it as sent. Empty: the message was not a query one could
	// read a name from.
	Name string
	// Type is the QTYPE's mnemonic ("A", "AAAA", "TXT", or "TYPE65280").
	Type string
	// Chain lists the names the upstream's answer led through after Name:
	// CNAME and DNAME targets, HTTPS and SVCB target names. Each is decided
	// as Name is; one the policy refuses refuses the answer.
	Chain []string
	// Answers are the addresses the workload was told (A and AAAA records
	// of the chain's names, HTTPS and SVCB address hints). Allowed answers
	// only.
	Answers []netip.Addr
	// RCode is the response code sent to the workload ("NOERROR",
	// "NXDOMAIN", "REFUSED", ...). Empty when nothing was sent back.
	RCode string
	// Upstream is the resolver the agent asked, when it asked one.
	Upstream netip.AddrPort
	// RefuseOtherTypes refuses every query type beyond A, AAAA, CNAME,
	// HTTPS and SVCB, whatever the name. Default: such types are decided by
	// the name like the others. Not recorded: it is how the proxy is
	// configured.
	RefuseOtherTypes bool
}

func (q *DNSQuery) validate() error {
	strs := append([]string{q.Name, q.Type, q.RCode}, q.Chain...)
	for _, s := range strs {
		if !utf8.ValidString(s) {
			return fmt.Errorf("%w: dns field %q is not valid utf-8", ErrInvalidEvent, s)
		}
	}
	return nil
}

// parameters adds what a DNS query asked to an egress event's parameters.
func (q *DNSQuery) parameters(p map[string]any) {
	putString(p, "qname", q.Name)
	putString(p, "qtype", q.Type)
}

// metadata is what the workload was told, and by whom.
func (q *DNSQuery) metadata() map[string]any {
	m := map[string]any{}
	putString(m, "rcode", q.RCode)
	if len(q.Chain) > 0 {
		m["chain"] = q.Chain
	}
	if len(q.Answers) > 0 {
		as := make([]string, len(q.Answers))
		for i, a := range q.Answers {
			as[i] = a.Unmap().WithZone("").String()
		}
		m["answers"] = as
	}
	if q.Upstream.IsValid() {
		m["upstream"] = netip.AddrPortFrom(q.Upstream.Addr().Unmap().WithZone(""), q.Upstream.Port()).String()
	}
	return m
}

// DecideDNS decides one DNS query of a workload by the name it asks, under
// the snapshot's policy: the one egress decision path, with its
// normalisation, applied to QNAME, then (once answered) to every name the
// answer led through. Event.DNS must be set.
func (s Snapshot) DecideDNS(seen Seen) Egress {
	hash := s.st.hash
	if seen.Decided != nil && seen.DecidedPolicyHash != "" {
		hash = seen.DecidedPolicyHash
	}
	return Egress{Outcome: DecideDNS(s.st.p, &seen), Event: seen.Event, hash: hash, k: s.k}
}

// DecideDNS is the decision on one DNS query as a pure function of what was
// seen and the policy. In order: a decision already made (a malformed
// message, a rate limit) is kept; zone transfers and ANY are refused;
// other types beyond the address types are refused when the query says
// so (RefuseOtherTypes); then the policy decides QNAME as it decides an
// egress host, and every name of the answer's chain the same way: the
// first one refused refuses the whole answer.
func DecideDNS(pol *hushspec.Policy, seen *Seen) Outcome {
	if seen.Decided != nil {
		return *seen.Decided
	}
	q := seen.Event.DNS
	if q == nil || q.Name == "" {
		return Outcome{Verdict: VerdictDeny, Guard: GuardDNS, Reason: "not a DNS query with a name"}
	}
	if dnsNeverTypes[q.Type] {
		return Outcome{Verdict: VerdictDeny, Guard: GuardDNS, Reason: fmt.Sprintf("%s queries are never forwarded", q.Type)}
	}
	if q.RefuseOtherTypes && !dnsAddressTypes[q.Type] {
		return Outcome{Verdict: VerdictDeny, Guard: GuardDNS,
			Reason: fmt.Sprintf("%s queries are refused: only A, AAAA, CNAME, HTTPS and SVCB are forwarded", q.Type)}
	}
	for _, name := range append([]string{q.Name}, q.Chain...) {
		// A name in presentation form with an escape ("a\\000.b") is no
		// host name: the policy, which cuts an egress target at a
		// backslash as it does a URL, would judge the name before it.
		if strings.ContainsRune(name, '\\') {
			return Outcome{Verdict: VerdictDeny, PolicyDecision: hushspec.DecisionDeny, Guard: GuardEgressPolicy,
				MatchedRule: hushspec.InvalidActionRule, Reason: fmt.Sprintf("DNS name %q holds an escape and is no host name", name)}
		}
	}
	out := outcomeOf(pol.Evaluate(hushspec.Action{Type: "egress", Target: q.Name}), GuardEgressPolicy)
	if out.Verdict == VerdictDeny {
		return out
	}
	for _, name := range q.Chain {
		o := outcomeOf(pol.Evaluate(hushspec.Action{Type: "egress", Target: name}), GuardEgressPolicy)
		if o.Verdict == VerdictDeny {
			return Outcome{Verdict: VerdictDeny, PolicyDecision: o.PolicyDecision, Guard: GuardDNS,
				MatchedRule: o.MatchedRule, Pattern: o.Pattern,
				Reason: fmt.Sprintf("the answer for %s leads to %s, which the policy refuses: %s", q.Name, name, o.Reason)}
		}
	}
	return out
}

// DNSName normalises a DNS name as egress hosts are, for callers that key
// what a workload was told by the name a later connection will carry.
func DNSName(name string) (string, error) { return hushspec.NormalizeHost(name) }
