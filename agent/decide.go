package agent

import (
	"net/netip"

	"github.com/backbay-labs/chio-agent/kernel"
)

// seen is what the agent knows of a connection before its first bytes:
// the datapath's event, the listener that accepted it, and the workload's
// port allow-list and the agent's bounds, for the reasons of refusals. The
// first bytes are added once read; the decision itself is
// kernel.DecideEgress, under the connection's policy snapshot.
func (p *proxy) seen(cn *conn, listener netip.AddrPort) kernel.Seen {
	s := kernel.Seen{
		Event:      cn.eg.Event,
		WorkloadID: cn.w.id,
		Listener:   listener,
		FirstBytes: p.timeouts.FirstBytes,
		HeadLimit:  p.boundReason(boundHeadBytes),
		AllowPorts: cn.w.egressPorts,
	}
	if cn.w.refuseAll != "" {
		// A pod whose policy label names no known policy: refused whatever
		// it sends, and the receipt says why.
		s.Decided = &kernel.Outcome{Verdict: kernel.VerdictDeny, Guard: kernel.GuardPodPolicy, Reason: cn.w.refuseAll}
	}
	return s
}
