package agent

import (
	"context"
	"fmt"
	"net/netip"

	"github.com/backbay-labs/chio-agent/internal/sniff"
	"github.com/backbay-labs/chio-agent/kernel"
	"github.com/backbay-labs/chio-agent/kernel/hushspec"
)

// decide evaluates the connection: protocol sanity, the policy, then the
// anti-spoofing check for an allowed name.
func (p *proxy) decide(ctx context.Context, cn *conn) kernel.Outcome {
	sn := cn.sniff
	switch {
	case sn.Protocol == sniff.ProtocolNone && sn.Stop == sniff.StopTimeout:
		return kernel.Outcome{Verdict: kernel.VerdictDeny, Guard: GuardProtocol,
			Reason: fmt.Sprintf("client sent nothing within %s", p.timeouts.FirstBytes)}
	case sn.Protocol == sniff.ProtocolNone:
		return kernel.Outcome{Verdict: kernel.VerdictDeny, Guard: GuardProtocol,
			Reason: "client closed before sending anything"}
	case sn.Stop == sniff.StopMalformed:
		return kernel.Outcome{Verdict: kernel.VerdictDeny, Guard: GuardProtocol,
			Reason: fmt.Sprintf("malformed %s: %s", sn.Protocol, sn.Malformed)}
	case sn.Stop == sniff.StopLimit:
		return kernel.Outcome{Verdict: kernel.VerdictDeny, Guard: GuardLimit,
			Reason: fmt.Sprintf("%s first message refused: %s", sn.Protocol, p.boundReason(boundHeadBytes))}
	case sn.Stop != sniff.StopComplete && (sn.Protocol == sniff.ProtocolTLS || sn.Protocol == sniff.ProtocolHTTP):
		// A name may be in the part that never came: do not decide on the IP.
		return kernel.Outcome{Verdict: kernel.VerdictDeny, Guard: GuardProtocol,
			Reason: fmt.Sprintf("incomplete %s first message (%s)", sn.Protocol, sn.Stop)}
	}

	target := cn.event.Target()
	res := cn.pol.Evaluate(hushspec.Action{Type: "egress", Target: target})
	out := kernel.Outcome{
		Verdict:        kernel.VerdictAllow,
		PolicyDecision: res.Decision,
		Guard:          kernel.GuardEgressPolicy,
		Reason:         res.Reason,
		MatchedRule:    res.MatchedRule,
		Pattern:        res.Pattern,
	}
	if res.Decision == hushspec.DecisionDeny {
		out.Verdict = kernel.VerdictDeny
		return out
	}
	if refused, ok := cn.w.refuseEgressPort(cn.orig.Dst.Port(), out); ok {
		return refused
	}
	// The name came from the client. Allowing it is only right if the
	// address it dialled belongs to that name; otherwise a client could send
	// an allowed SNI to a forbidden address.
	name := res.Host
	if name == "" {
		name = target
	}
	if a, err := netip.ParseAddr(name); err == nil {
		// An address was named: it must be the one dialled.
		if a.Unmap() != cn.orig.Dst.Addr().Unmap() {
			return kernel.Outcome{Verdict: kernel.VerdictDeny, PolicyDecision: res.Decision, Guard: GuardAntiSpoof,
				MatchedRule: res.MatchedRule,
				Reason:      fmt.Sprintf("the client named %s but dialled %s", a, cn.orig.Dst.Addr())}
		}
		return out
	}
	ok, err := p.resolver.owns(ctx, name, cn.orig.Dst.Addr())
	switch {
	case err != nil:
		return kernel.Outcome{Verdict: kernel.VerdictDeny, PolicyDecision: res.Decision, Guard: GuardAntiSpoof,
			MatchedRule: res.MatchedRule,
			Reason:      fmt.Sprintf("cannot check that %s belongs to %s: %v", cn.orig.Dst.Addr(), name, err)}
	case !ok:
		return kernel.Outcome{Verdict: kernel.VerdictDeny, PolicyDecision: res.Decision, Guard: GuardAntiSpoof,
			MatchedRule: res.MatchedRule,
			Reason:      fmt.Sprintf("destination %s is not an address of %s", cn.orig.Dst.Addr(), name)}
	}
	return out
}
