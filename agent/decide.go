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
	return kernel.Seen{
		Event:      cn.eg.Event,
		Listener:   listener,
		FirstBytes: p.timeouts.FirstBytes,
		HeadLimit:  p.boundReason(boundHeadBytes),
		AllowPorts: cn.w.egressPorts,
	}
}
