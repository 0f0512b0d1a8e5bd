package agent

import (
	"context"
	"fmt"
	"time"

	"github.com/backbay-labs/chio-agent/bpf"
	"github.com/backbay-labs/chio-agent/kernel"
	"github.com/backbay-labs/chio-agent/kernel/hushspec"
	"golang.org/x/sys/unix"
)

// refusalReceiptTimeout bounds writing one kernel refusal's receipt, which
// is not cancelled by the agent stopping (it is what stopping waits for).
const refusalReceiptTimeout = 30 * time.Second

// socketCall names a refused socket as receipts do.
func socketCall(s bpf.Socket) *kernel.SocketCall {
	c := &kernel.SocketCall{Family: "inet", Protocol: s.Protocol}
	if s.Family == unix.AF_INET6 {
		c.Family = "inet6"
	}
	switch s.Type {
	case unix.SOCK_STREAM:
		c.Type = "stream"
	case unix.SOCK_DGRAM:
		c.Type = "dgram"
	case unix.SOCK_RAW:
		c.Type = "raw"
	case unix.SOCK_RDM:
		c.Type = "rdm"
	case unix.SOCK_SEQPACKET:
		c.Type = "seqpacket"
	default:
		c.Type = fmt.Sprintf("type-%d", s.Type)
	}
	return c
}

// kernelRefusal writes the receipt of a refusal (or of Count refusals of one
// kind to one destination) made in the kernel, and accounts for it.
func (a *Agent) kernelRefusal(e bpf.Event) {
	count := uint64(max(e.Count, 1))
	w := a.reg.byID(e.WorkloadID)
	if w == nil && e.WorkloadID == 0 {
		// No workload: a cgroup below a birth root, not classified (birth.go).
		w = unclassifiedWorkload(e.CgroupID)
	}
	if w == nil {
		a.refusals.unreceipted.Add(count)
		a.proxy.errs.add(fmt.Errorf("kernel refusal from unknown workload id %d", e.WorkloadID))
		return
	}
	if err := a.receiptRefusal(e, w); err != nil {
		a.refusals.unreceipted.Add(count)
	} else {
		a.refusals.receipted.Add(count)
	}
}

// receiptRefusal writes the receipt of a refusal of w's and reports it.
func (a *Agent) receiptRefusal(e bpf.Event, w *workload) error {
	eg := a.refusal(e, w)
	ev, out := eg.Event, eg.Outcome
	d := Decision{Time: time.Now(), Workload: w.name, PID: e.PID, Comm: e.Comm, Dst: e.Dst,
		Transport: ev.Transport, Verdict: kernel.VerdictDeny, Guard: out.Guard, MatchedRule: out.MatchedRule, Reason: out.Reason, Count: e.Count}
	if ev.Direction == kernel.DirectionInbound {
		d.Protocol = "inbound " + ev.Syscall
	}
	// Not a.ctx: the receipts of refusals are what stopping waits for.
	ctx, cancel := context.WithTimeout(context.Background(), refusalReceiptTimeout)
	err := a.proxy.record(ctx, &eg, &d)
	cancel()
	a.proxy.counts.denied.Add(uint64(max(e.Count, 1)))
	a.proxy.report(d)
	return err
}

// refusal is a kernel refusal as decided: the event, the outcome and the
// policy that made it, recorded through the kernel's one decision path. A
// static block names its pattern and policy through the rule id the kernel
// echoed; an id no policy held by the agent has any more is said to be
// unknown, never guessed.
func (a *Agent) refusal(e bpf.Event, w *workload) kernel.Egress {
	snap := w.decider(a.kern).Snapshot()
	if e.Kind == bpf.EventInboundRefused {
		ev, out := a.inboundRefusal(e, w)
		return snap.DecideEgress(context.Background(), kernel.Seen{Event: ev, Decided: &out})
	}
	transport := kernel.TransportOf(e.Socket.Protocol)
	ev := kernel.EgressEvent{
		Transport:    transport,
		Workload:     w.identity(e.CgroupID),
		Process:      kernel.ProcessIdentity{PID: e.PID, UID: e.UID, Comm: e.Comm},
		ConnectionID: newConnectionID(),
	}
	if e.Count > 1 {
		ev.Attempts = e.Count
	}
	if !e.Dst.IsValid() { // refused at socket()
		ev.Socket = socketCall(e.Socket)
	} else {
		ev.IP, ev.Port = e.Dst.Addr(), e.Dst.Port()
	}
	var reason string
	switch e.Kind {
	case bpf.EventUDPRefused:
		reason = "UDP is refused for protected workloads except DNS to the configured resolvers (QUIC would bypass the TCP path)"
	case bpf.EventTCPDenied:
		reason = "host matched a block pattern; refused at connect() in the kernel"
	case bpf.EventNoRecord:
		reason = "the datapath could not record the original destination; connect refused"
	case bpf.EventSocketRefused:
		reason = ev.Socket.String() + " refused in the kernel: protected workloads may open only TCP and UDP sockets, which the datapath mediates (ICMP, raw and other sockets send with no hook to decide them)"
	case bpf.EventProtoRefused:
		reason = transport + " over a socket the datapath does not mediate; refused in the kernel"
	case bpf.EventPortZero:
		reason = "TCP connect to port 0 refused in the kernel: port 0 is no service"
	case bpf.EventGuarded:
		reason = "the workload's cgroup was made again at its path and is not protected yet; refused in the kernel until the agent protects it"
		a.requestResync()
	case bpf.EventUnclassified:
		reason = unclassifiedReason(e)
	default:
		reason = "refused in the kernel: " + e.Kind.String()
	}
	out := kernel.Outcome{Verdict: kernel.VerdictDeny, Guard: GuardDatapath}
	polHash := "" // the snapshot's
	if e.Kind == bpf.EventTCPDenied {
		// The policy's own block rule, enforced early.
		out.Guard, out.PolicyDecision, out.MatchedRule = kernel.GuardEgressPolicy, hushspec.DecisionDeny, "rules.egress.block"
		if r, ok := a.rules.lookup(e.RuleID, e.Dst.Addr()); ok {
			out.Pattern, polHash = r.pattern, r.policyHash
		} else {
			reason += fmt.Sprintf(" (rule id %d belongs to no policy this agent still holds: its pattern is unknown)", e.RuleID)
		}
	}
	if e.Count > 1 {
		reason += fmt.Sprintf(" (%d refusals aggregated into this receipt)", e.Count)
	}
	out.Reason = reason
	return snap.DecideEgress(context.Background(), kernel.Seen{Event: ev, Decided: &out, DecidedPolicyHash: polHash})
}

// RefusalStatus accounts for the refusals made in the kernel: how many, how
// many the agent receipted, and how many it could not (every one of them
// is in exactly one of receipted, unreceipted, lost, or still pending).
type RefusalStatus struct {
	// Kernel counts, summed over CPUs since the datapath's maps were made
	// (pinned maps outlive agents).
	bpf.RefusalStats
	// Receipted counts the refusals this agent wrote receipts for (an
	// aggregated receipt counts each refusal it stands for).
	Receipted uint64 `json:"receipted"`
	// Unreceipted counts the refusals reported to this agent whose receipt
	// could not be written (see errors).
	Unreceipted uint64 `json:"unreceipted"`
}

// Refusals reads the refusal accounting.
func (a *Agent) Refusals() (RefusalStatus, error) {
	st, err := a.objs.RefusalStats()
	return RefusalStatus{RefusalStats: st, Receipted: a.refusals.receipted.Load(), Unreceipted: a.refusals.unreceipted.Load()}, err
}
