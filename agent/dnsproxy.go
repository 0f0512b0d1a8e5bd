package agent

import (
	"context"
	"fmt"
	"net/netip"
	"time"

	"github.com/backbay-labs/chio-agent/internal/dnsproxy"
	"github.com/backbay-labs/chio-agent/kernel"
)

// newDNSProxy builds the agent's DNS proxy (Options.DNSProxy): decided by
// each workload's own policy, receipted into the agent's log like its
// connections, forwarding to the workloads' resolvers, and telling the
// anti-spoofing check what each workload was told.
func (a *Agent) newDNSProxy(o dnsproxy.Options, res *resolver) (*dnsproxy.Proxy, error) {
	if len(o.Upstreams) == 0 {
		o.Upstreams = a.opts.Resolvers
	}
	if o.Hosts == nil {
		o.Hosts = a.opts.Hosts
	}
	o.Workload = func(id uint32) (kernel.WorkloadIdentity, *kernel.Kernel, bool) {
		w := a.reg.byID(id)
		if w == nil {
			return kernel.WorkloadIdentity{}, nil, false
		}
		return w.identity(0), w.decider(a.kern), true
	}
	o.Record = func(ctx context.Context, _ uint32, eg *kernel.Egress, n uint64) error {
		ev := &eg.Event
		d := Decision{Time: time.Now(), Workload: ev.Workload.Name, PID: ev.Process.PID, Comm: ev.Process.Comm,
			Dst: netip.AddrPortFrom(ev.IP, ev.Port), Transport: ev.Transport, Name: ev.Target(), Protocol: "dns",
			Verdict: eg.Outcome.Verdict, Guard: eg.Outcome.Guard, MatchedRule: eg.Outcome.MatchedRule,
			Reason: eg.Outcome.Reason}
		if n > 1 { // one query is not an aggregate: Count stays 0
			d.Count = uint32(min(n, 1<<32-1))
		}
		err := a.proxy.record(ctx, eg, &d)
		a.proxy.report(d)
		return err
	}
	o.Registerer = a.proxy.metrics.reg
	p, err := dnsproxy.New(o)
	if err != nil {
		return nil, fmt.Errorf("dns proxy: %w", err)
	}
	res.told = p // before the first decision
	return p, nil
}
