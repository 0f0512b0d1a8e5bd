package agent

import (
	"fmt"

	"github.com/backbay-labs/chio-agent/bpf"
	"github.com/backbay-labs/chio-agent/kernel"
)

// GuardInbound refuses a protected workload's attempt to receive: a bind()
// to a fixed local port, or a listen() on a port the kernel picked, when the
// workload's configuration does not allow the port (inbound.allow_ports).
const GuardInbound = "ChioAgentInboundGuard"

// RuleInboundAllowPorts is the matched rule of an inbound refusal, named as
// the kernel.yaml key that holds the allowed ports.
const RuleInboundAllowPorts = "inbound.allow_ports"

// inboundRules are the ports a workload may receive on, as the kernel keeps
// them: each allowed port for TCP and UDP, or port 0 (every port) for both.
func inboundRules(spec WorkloadSpec) []bpf.InboundRule {
	if spec.InboundAll {
		return []bpf.InboundRule{{Proto: bpf.ProtoTCP}, {Proto: bpf.ProtoUDP}}
	}
	var rules []bpf.InboundRule
	for _, p := range spec.InboundPorts {
		if p == 0 {
			continue // "every port" is InboundAll's to say
		}
		rules = append(rules, bpf.InboundRule{Proto: bpf.ProtoTCP, Port: p}, bpf.InboundRule{Proto: bpf.ProtoUDP, Port: p})
	}
	return rules
}

// inboundPorts are the ports of w's inbound rules, or all when every port is
// allowed.
func (w *workload) inboundPorts() (ports []uint16, all bool) {
	for _, r := range w.inbound {
		switch {
		case r.Port == 0:
			all = true
		case r.Proto == bpf.ProtoTCP:
			ports = append(ports, r.Port)
		}
	}
	return ports, all
}

// inboundRefusal is the receipt input of an inbound refusal: the kernel's,
// or the agent's own for a listener opened before protection.
func (a *Agent) inboundRefusal(e bpf.Event, w *workload) (kernel.EgressEvent, kernel.Outcome) {
	transport := kernel.TransportTCP
	if e.Proto == bpf.ProtoUDP {
		transport = kernel.TransportUDP
	}
	op := bpf.InboundOp(e.RuleID)
	var reason string
	switch op {
	case bpf.InboundBind:
		reason = fmt.Sprintf("bind() to %s port %d refused (EPERM): protected workloads receive only on their %s", transport, e.Dst.Port(), RuleInboundAllowPorts)
	case bpf.InboundListen:
		reason = fmt.Sprintf("listen() on kernel-picked %s port %d refused: protected workloads receive only on their %s; packets to it are dropped, but for the agent's relay of connections the policy allows", transport, e.Dst.Port(), RuleInboundAllowPorts)
	case inboundExisting:
		op = bpf.InboundListen
		reason = fmt.Sprintf("%s listener on port %d, opened before the workload was protected, refused: protected workloads receive only on their %s; packets to it are dropped, but for the agent's relay of connections the policy allows", transport, e.Dst.Port(), RuleInboundAllowPorts)
	default:
		reason = "inbound refused in the kernel: " + op.String()
	}
	if e.Count > 1 {
		reason += fmt.Sprintf(" (%d refusals of this port aggregated into this receipt)", e.Count)
	}
	ev := kernel.EgressEvent{
		IP: e.Dst.Addr(), Port: e.Dst.Port(), Transport: transport,
		Direction: kernel.DirectionInbound, Syscall: op.String(),
		Workload:     w.identity(e.CgroupID),
		Process:      kernel.ProcessIdentity{PID: e.PID, UID: e.UID, Comm: e.Comm},
		ConnectionID: newConnectionID(),
	}
	if e.Count > 1 {
		ev.Attempts = e.Count
	}
	return ev, kernel.Outcome{Verdict: kernel.VerdictDeny, Guard: GuardInbound, MatchedRule: RuleInboundAllowPorts, Reason: reason}
}
