package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/backbay-labs/chio-agent/bpf"
	"github.com/backbay-labs/chio-agent/kernel"
	"github.com/backbay-labs/chio-agent/kernel/hushspec"
	"golang.org/x/sys/unix"
)

// refusalTakeInterval is how often the agent takes the refusals the kernel
// holds pending (the datapath's event interval): a flood's count is
// receipted within about two of them even when no later refusal comes.
const refusalTakeInterval = time.Second

// refusalWriters write the receipts of kernel refusals side by side, so
// that the receipt log's group commit makes one of many (a flood of
// distinct destinations is one receipt each).
const refusalWriters = 64

// refusalReceiptTimeout bounds writing one kernel refusal's receipt, which
// is not cancelled by the agent stopping (it is what stopping waits for).
const refusalReceiptTimeout = 30 * time.Second

// readEvents turns kernel refusals into receipts until the reader is closed
// or flushed (Close). It starts once the workloads are known (see
// UnprotectStale): the pinned ring may hold refusals made while no agent ran,
// and their workload ids mean nothing until the workloads are protected
// again.
func (a *Agent) readEvents() {
	select {
	case <-a.known:
	case <-a.ctx.Done():
		return
	}
	for {
		e, err := a.events.Read()
		if err != nil {
			if errors.Is(err, os.ErrClosed) || errors.Is(err, bpf.ErrFlushed) {
				return
			}
			a.proxy.errs.add(err)
			continue
		}
		a.refusalQ <- e
	}
}

// writeRefusals writes the receipts of the refusals queued by readEvents
// and takePending until the queue is closed (Close).
func (a *Agent) writeRefusals() {
	for e := range a.refusalQ {
		a.kernelRefusal(e)
	}
}

// takeRefusals takes the kernel's pending refusals every interval until ctx
// ends (Close then takes the rest).
func (a *Agent) takeRefusals(ctx context.Context) {
	t := time.NewTicker(refusalTakeInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			a.takePending(false)
		}
	}
}

// takePending writes the receipts of the refusals the kernel holds pending
// (all of them with final).
func (a *Agent) takePending(final bool) {
	evs, err := a.objs.TakeRefusals(final)
	if err != nil {
		a.proxy.errs.add(err)
	}
	for _, e := range evs {
		a.refusalQ <- e
	}
}

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
	ev, out, polHash := a.refusal(e, w)
	d := Decision{Time: time.Now(), Workload: w.name, PID: e.PID, Comm: e.Comm, Dst: e.Dst,
		Transport: ev.Transport, Verdict: kernel.VerdictDeny, Guard: out.Guard, MatchedRule: out.MatchedRule, Reason: out.Reason, Count: e.Count}
	if ev.Direction == kernel.DirectionInbound {
		d.Protocol = "inbound " + ev.Syscall
	}
	// Not a.ctx: the receipts of refusals are what stopping waits for.
	ctx, cancel := context.WithTimeout(context.Background(), refusalReceiptTimeout)
	err := a.proxy.record(ctx, ev, out, polHash, &d, nil)
	cancel()
	a.proxy.counts.denied.Add(uint64(max(e.Count, 1)))
	a.proxy.report(d)
	return err
}

// refusal is the receipt input of a kernel refusal: the event, the outcome
// and the hash of the policy that made it. A static block names its pattern
// and policy through the rule id the kernel echoed; an id no policy held by
// the agent has any more is said to be unknown, never guessed.
func (a *Agent) refusal(e bpf.Event, w *workload) (kernel.EgressEvent, kernel.Outcome, string) {
	if e.Kind == bpf.EventInboundRefused {
		ev, out := a.inboundRefusal(e, w)
		return ev, out, a.policy.Load().Hash()
	}
	transport := kernel.TransportOf(e.Socket.Protocol)
	ev := kernel.EgressEvent{
		Transport:    transport,
		Workload:     w.identity(),
		Process:      kernel.ProcessIdentity{PID: e.PID, UID: e.UID, Comm: e.Comm},
		ConnectionID: newConnectionID(),
	}
	if e.Count > 1 {
		ev.Attempts = e.Count
	}
	if e.Kind == bpf.EventSocketRefused {
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
	default:
		reason = "refused in the kernel: " + e.Kind.String()
	}
	out := kernel.Outcome{Verdict: kernel.VerdictDeny, Guard: GuardDatapath}
	polHash := a.policy.Load().Hash()
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
	return ev, out, polHash
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
