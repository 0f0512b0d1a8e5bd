package kernel

import (
	"context"
	"crypto/ed25519"
	"fmt"
	"net/netip"
	"slices"
	"time"

	"github.com/backbay-labs/chio-agent/internal/sniff"
	"github.com/backbay-labs/chio-agent/kernel/hushspec"
)

// Guards of an egress decision beside the policy's egress rules
// (GuardEgressPolicy), as receipts name them.
const (
	// GuardAntiSpoof refuses a connection whose TLS SNI or HTTP Host names a
	// host the destination address does not belong to.
	GuardAntiSpoof = "ChioAgentAntiSpoofGuard"
	// GuardProtocol refuses a connection whose first bytes could not be
	// read or parsed (nothing sent, malformed, too large).
	GuardProtocol = "ChioAgentProtocolGuard"
	// GuardDatapath covers refusals made in the kernel: the static verdict
	// map, UDP lockdown, a connection the proxy itself would loop on.
	GuardDatapath = "ChioAgentDatapathGuard"
	// GuardPort refuses a connection to a destination port the workload's
	// configuration does not allow (egress.allow_ports), whatever the policy
	// said of the name: HushSpec egress patterns carry no ports.
	GuardPort = "ChioAgentPortGuard"
	// GuardLimit refuses a connection because one of the node agent's
	// resource bounds is full.
	GuardLimit = "ChioAgentLimitGuard"
	// GuardPodPolicy refuses every connection of a Kubernetes pod whose
	// chio.dev/policy label names no policy the node agent knows.
	GuardPodPolicy = "ChioAgentPodPolicyGuard"
)

// RuleEgressAllowPorts is the matched rule of a port refusal, named as the
// kernel.yaml key that holds the ports.
const RuleEgressAllowPorts = "egress.allow_ports"

// AddressOwner answers the anti-spoofing question: is addr an address of
// name, for this workload? The node agent's answers come from its static
// hosts, then from what its DNS proxy told the workload (workload is the
// agent's workload id, Seen.WorkloadID; 0 when unknown), then its own DNS;
// tests answer from a table.
type AddressOwner interface {
	Owns(ctx context.Context, workload uint32, name string, addr netip.Addr) (bool, error)
}

// Seen is what the node agent saw of one connection before deciding it.
type Seen struct {
	// Event is the connection as the datapath told it: the original
	// destination (IP, Port), the workload and the process. The names the
	// first bytes carried are taken from Sniffed, not from here.
	Event EgressEvent
	// WorkloadID is the agent's id of the workload, for the AddressOwner:
	// the addresses a workload was told by the DNS proxy are its own.
	// 0: unknown (the owner then answers as for no workload).
	WorkloadID uint32
	// Listener is the address of the agent's listener that accepted the
	// connection: a destination equal to it is refused (the connection
	// would loop through the agent). Zero: no listener (in-process callers).
	Listener netip.AddrPort
	// Sniffed is what the first bytes said. Nil: none were read, and the
	// protocol guard does not apply (in-process callers, which name their
	// destination themselves).
	Sniffed *sniff.Sniffed
	// SniffErr is a failure to read the first bytes (not a grammar
	// problem, which Sniffed tells): the connection is refused.
	SniffErr error
	// ClientGone says that SniffErr is the client resetting the connection
	// (nothing it sent was malformed), for the receipt's reason.
	ClientGone bool
	// FirstBytes is how long the client had to send its first message, for
	// the reason of a client that sent nothing.
	FirstBytes time.Duration
	// HeadLimit says which bound a first message over the size bound broke,
	// for the reason of its refusal.
	HeadLimit string
	// AllowPorts are the destination ports the workload may reach
	// (egress.allow_ports); empty allows every port.
	AllowPorts []uint16
	// Decided, when set, is a decision already made elsewhere: a refusal by
	// the datapath in the kernel, a full resource bound, the HTTP gate on a
	// later request of a decided connection. DecideEgress only records it.
	Decided *Outcome
	// DecidedPolicyHash, with Decided, is the hash of the policy that made
	// that decision when it is not the snapshot's (a kernel refusal by a
	// rule of an older policy). Default: the snapshot's hash.
	DecidedPolicyHash string
}

// ToOwnListener says whether the connection's destination is the listener
// that accepted it. Such a connection is refused before its first bytes are
// read.
func (s *Seen) ToOwnListener() bool {
	return s.Listener.IsValid() && s.Event.IP.Unmap() == s.Listener.Addr().Unmap() && s.Event.Port == s.Listener.Port()
}

// event is the event to decide and record: the datapath's, with the names
// the first bytes carried.
func (s *Seen) event() EgressEvent {
	ev := s.Event
	if sn := s.Sniffed; sn != nil {
		ev.SNI, ev.ALPN, ev.ECH = sn.SNI, sn.ALPN, sn.ECH
		ev.HTTPHost, ev.HTTPMethod, ev.HTTPPath = sn.Host, sn.Method, sn.Path
	}
	return ev
}

// Snapshot is the policy in force at one moment, with its hash. Every
// decision of one connection, and every receipt of them, is made under one
// snapshot: a reload in between cannot sign one policy's decision with
// another's hash.
type Snapshot struct {
	k  *Kernel
	st *policyState
}

// Snapshot returns the policy in force now.
func (k *Kernel) Snapshot() Snapshot { return Snapshot{k: k, st: k.policy.Load()} }

// Policy returns the snapshot's policy.
func (s Snapshot) Policy() *hushspec.Policy { return s.st.p }

// Hash returns the snapshot's policy hash.
func (s Snapshot) Hash() string { return s.st.hash }

// Egress is one decided connection: the outcome to enforce, the event as
// its receipt records it, and the snapshot that decided, under which
// Receipt prepares the receipt.
type Egress struct {
	Outcome Outcome
	Event   EgressEvent
	hash    string
	k       *Kernel
}

// DecideEgress decides one connection from what was seen, under the
// snapshot's policy, with the kernel's AddressOwner for anti-spoofing. It
// never fails: what cannot be decided is denied, and the outcome says why.
func (s Snapshot) DecideEgress(ctx context.Context, seen Seen) Egress {
	hash := s.st.hash
	if seen.Decided != nil && seen.DecidedPolicyHash != "" {
		hash = seen.DecidedPolicyHash
	}
	e := Egress{Outcome: DecideEgress(ctx, s.st.p, &seen, s.k.owner), Event: seen.event(), hash: hash, k: s.k}
	return e
}

// PolicyHash is the hash of the policy that decided, as the receipt will
// carry it.
func (e *Egress) PolicyHash() string { return e.hash }

// Receipt prepares the decision's receipt (id final, signature to come):
// under the snapshot that decided, at the kernel clock's time. Callers
// that relay beside the receipt call it off their critical path.
func (e *Egress) Receipt() (*Prepared, error) {
	p, err := PrepareEgressReceipt(e.Event, e.Outcome, e.hash, ed25519.PublicKey(e.k.key[32:]), e.k.clock())
	if err != nil {
		return nil, err
	}
	e.k.logDecision("egress", e.Event.Target(), e.Outcome, p.ID())
	return p, nil
}

// DecideEgress is the decision on one connection as a pure function of what
// was seen, the policy and the address owner (which may do I/O: DNS). In
// order: a decision already made is kept; a connection to the agent's own
// listener is refused; the protocol guard refuses first bytes that were not
// read whole or not understood; then the policy decides on the name the
// client put on the wire (else the address); an allowed connection is
// refused still when its port is not among the workload's allowed ports, or
// when the name it sent does not own the address it dialled. With a nil
// owner, a name the first bytes carried is refused (unless it is the address
// dialled); the check is skipped only when nothing was sniffed, for callers
// that named the destination and dial it themselves.
func DecideEgress(ctx context.Context, pol *hushspec.Policy, seen *Seen, owner AddressOwner) Outcome {
	if seen.Decided != nil {
		return *seen.Decided
	}
	if seen.ToOwnListener() {
		return Outcome{Verdict: VerdictDeny, Guard: GuardDatapath, Reason: "destination is the agent's own listener"}
	}
	if out, refused := protocolGuard(seen); refused {
		return out
	}
	ev := seen.event()
	target := ev.Target()
	res := pol.Evaluate(hushspec.Action{Type: "egress", Target: target})
	out := outcomeOf(res, GuardEgressPolicy)
	if out.Verdict == VerdictDeny {
		return out
	}
	if len(seen.AllowPorts) > 0 && !slices.Contains(seen.AllowPorts, ev.Port) {
		// The policy's own outcome (allowed) stays in the receipt as the
		// policy decision and pattern: the name was allowed, the port not.
		return Outcome{Verdict: VerdictDeny, PolicyDecision: out.PolicyDecision, Guard: GuardPort,
			MatchedRule: RuleEgressAllowPorts, Pattern: out.Pattern,
			Reason: fmt.Sprintf("destination port %d is not in the workload's %s %v", ev.Port, RuleEgressAllowPorts, seen.AllowPorts)}
	}
	if owner == nil && seen.Sniffed == nil {
		return out // the caller named the destination itself and dials it
	}
	// The name came from the client. Allowing it is only right if the
	// address it dialled belongs to that name; otherwise a client could send
	// an allowed SNI to a forbidden address.
	name := res.Host
	if name == "" {
		name = target
	}
	dst := ev.IP
	spoofed := func(reason string) Outcome {
		return Outcome{Verdict: VerdictDeny, PolicyDecision: res.Decision, Guard: GuardAntiSpoof,
			MatchedRule: res.MatchedRule, Reason: reason}
	}
	if a, err := netip.ParseAddr(name); err == nil {
		// An address was named: it must be the one dialled.
		if a.Unmap() != dst.Unmap() {
			return spoofed(fmt.Sprintf("the client named %s but dialled %s", a, dst))
		}
		return out
	}
	if owner == nil {
		// Fail closed: a name read from the wire is never taken on trust.
		return spoofed(fmt.Sprintf("no resolver to check that %s belongs to %s", dst, name))
	}
	ok, err := owner.Owns(ctx, seen.WorkloadID, name, dst)
	switch {
	case err != nil:
		return spoofed(fmt.Sprintf("cannot check that %s belongs to %s: %v", dst, name, err))
	case !ok:
		return spoofed(fmt.Sprintf("destination %s is not an address of %s", dst, name))
	}
	return out
}

// protocolGuard refuses first bytes that were not read whole, or that no
// parser understood: a name may be in the part that never came, so the
// decision is not left to the address.
func protocolGuard(seen *Seen) (Outcome, bool) {
	deny := func(guard, reason string) (Outcome, bool) {
		return Outcome{Verdict: VerdictDeny, Guard: guard, Reason: reason}, true
	}
	if err := seen.SniffErr; err != nil {
		if seen.ClientGone {
			return deny(GuardProtocol, "the client reset the connection before its first message was complete: "+err.Error())
		}
		return deny(GuardProtocol, "reading the first bytes failed: "+err.Error())
	}
	sn := seen.Sniffed
	switch {
	case sn == nil:
		return Outcome{}, false
	case sn.Protocol == sniff.ProtocolNone && sn.Stop == sniff.StopTimeout:
		return deny(GuardProtocol, fmt.Sprintf("client sent nothing within %s", seen.FirstBytes))
	case sn.Protocol == sniff.ProtocolNone:
		return deny(GuardProtocol, "client closed before sending anything")
	case sn.Stop == sniff.StopMalformed:
		return deny(GuardProtocol, fmt.Sprintf("malformed %s: %s", sn.Protocol, sn.Malformed))
	case sn.Stop == sniff.StopLimit:
		return deny(GuardLimit, fmt.Sprintf("%s first message refused: %s", sn.Protocol, seen.HeadLimit))
	case sn.Stop != sniff.StopComplete && (sn.Protocol == sniff.ProtocolTLS || sn.Protocol == sniff.ProtocolHTTP):
		return deny(GuardProtocol, fmt.Sprintf("incomplete %s first message (%s)", sn.Protocol, sn.Stop))
	}
	return Outcome{}, false
}
