package dnsproxy

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/backbay-labs/chio-agent/internal/defaults"
	"github.com/backbay-labs/chio-agent/kernel"
)

// Options configures New. Zero values take the documented defaults
// (docs/dns.md).
type Options struct {
	// Upstreams are the resolvers allowed queries are forwarded to, tried
	// in order. Required. IPv4 and IPv6 addresses alike.
	Upstreams []netip.AddrPort
	// Workload returns what the proxy needs of a workload: its identity as
	// receipts name it and the kernel whose policy decides it (the agent's
	// workload.decider). ok false: the workload is unknown, its queries are
	// refused and not receipted (counted in Stats.Unreceipted). Required.
	Workload func(id uint32) (w kernel.WorkloadIdentity, k *kernel.Kernel, ok bool)
	// Record writes the receipt of one decision of workload's (eg.Receipt()
	// into the agent's log, with its labels and report) and returns an
	// error if it was not written: the query is then refused. count is how
	// many queries the receipt stands for (1, or an aggregated flood's
	// count, also eg.Event.Attempts). Required.
	Record func(ctx context.Context, workload uint32, eg *kernel.Egress, count uint64) error
	// BlockRcode answers a name the policy refuses: dns.RcodeNameError
	// (NXDOMAIN, the default) or dns.RcodeRefused. Queries refused for
	// what they are (bounds, types, chains) get REFUSED whatever this says.
	BlockRcode int
	// RefuseOtherTypes refuses every query type beyond A, AAAA, CNAME,
	// HTTPS and SVCB. Default false: such types (TXT, MX, SRV, PTR...) are
	// answered for names the policy allows and refused for the others.
	// AXFR, IXFR and ANY are refused always.
	RefuseOtherTypes bool
	// Hosts are static answers (agent.hosts), as /etc/hosts would give
	// them: a name here the policy allows is answered from it (A and AAAA,
	// StaticTTL; other types with no records) and never forwarded. Keys are
	// normalised as egress hosts are.
	Hosts map[string][]netip.Addr
	// Timeout bounds one attempt at one upstream. Default 2s.
	Timeout time.Duration
	// Rate and Burst are each workload's token bucket: queries per second
	// and queries at once. Defaults DefaultRate, DefaultBurst.
	Rate  float64
	Burst int
	// DistinctNames bounds the distinct names a workload may ask within
	// NameWindow. Defaults DefaultDistinctNames, DefaultNameWindow. Danger:
	// every distinct name is a message to whoever serves its zone.
	DistinctNames int
	NameWindow    time.Duration
	// TTLFloor and TTLCap clamp how long an answer is remembered as what
	// the workload was told (the anti-spoofing truth). Defaults
	// DefaultTTLFloor, DefaultTTLCap.
	TTLFloor, TTLCap time.Duration
	// ToldNames and ToldAddrs bound what is remembered per workload (names)
	// and per name (addresses). Defaults DefaultToldNames, DefaultToldAddrs.
	ToldNames, ToldAddrs int
	// Clock is the time of bounds and of what was told. Default time.Now.
	Clock func() time.Time
	// Registerer, when set, gets the proxy's metrics
	// (chio_agent_dns_refused_total).
	Registerer prometheus.Registerer
}

// Proxy is the DNS proxy. It implements Handler; Run writes its aggregated
// receipts.
type Proxy struct {
	opts    Options
	hosts   map[string][]netip.Addr // Options.Hosts, keys normalised
	limits  *limits
	flood   *flood
	told    *told
	refused *prometheus.CounterVec
	stats   struct{ answered, refused, unreceipted atomic.Uint64 }
}

var _ Handler = (*Proxy)(nil)

// New returns a Proxy for opts.
func New(opts Options) (*Proxy, error) {
	if len(opts.Upstreams) == 0 {
		return nil, fmt.Errorf("new dns proxy: %w: no upstreams", ErrInvalidOptions)
	}
	for _, u := range opts.Upstreams {
		if !u.IsValid() || u.Port() == 0 {
			return nil, fmt.Errorf("new dns proxy: %w: upstream %s", ErrInvalidOptions, u)
		}
	}
	if opts.Workload == nil || opts.Record == nil {
		return nil, fmt.Errorf("new dns proxy: %w: Workload and Record are required", ErrInvalidOptions)
	}
	switch opts.BlockRcode {
	case 0:
		opts.BlockRcode = dns.RcodeNameError
	case dns.RcodeNameError, dns.RcodeRefused:
	default:
		return nil, fmt.Errorf("new dns proxy: %w: block rcode %s is neither NXDOMAIN nor REFUSED", ErrInvalidOptions, rcodeName(opts.BlockRcode))
	}
	defaults.Set(&opts.Timeout, defaultTimeout)
	defaults.Set(&opts.NameWindow, DefaultNameWindow)
	defaults.Set(&opts.TTLFloor, DefaultTTLFloor)
	defaults.Set(&opts.TTLCap, DefaultTTLCap)
	defaults.Set(&opts.Rate, DefaultRate)
	defaults.Set(&opts.Burst, DefaultBurst)
	defaults.Set(&opts.DistinctNames, DefaultDistinctNames)
	defaults.Set(&opts.ToldNames, DefaultToldNames)
	defaults.Set(&opts.ToldAddrs, DefaultToldAddrs)
	if opts.TTLCap < opts.TTLFloor {
		return nil, fmt.Errorf("new dns proxy: %w: TTL cap %s below floor %s", ErrInvalidOptions, opts.TTLCap, opts.TTLFloor)
	}
	if opts.Clock == nil {
		opts.Clock = time.Now
	}
	hosts := make(map[string][]netip.Addr, len(opts.Hosts))
	for name, as := range opts.Hosts {
		n, err := kernel.DNSName(name)
		if err != nil {
			return nil, fmt.Errorf("new dns proxy: %w: host %q: %w", ErrInvalidOptions, name, err)
		}
		hosts[n] = as
	}
	p := &Proxy{opts: opts, hosts: hosts, limits: newLimits(&opts), flood: newFlood(), told: newTold(opts.ToldNames, opts.ToldAddrs),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "chio_agent_dns_refused_total",
			Help: "DNS queries of protected workloads refused (not forwarded), by workload and guard; an aggregated flood counts each query.",
		}, []string{"workload", "guard"})}
	if opts.Registerer != nil {
		if err := opts.Registerer.Register(p.refused); err != nil {
			return nil, fmt.Errorf("new dns proxy: register metrics: %w", err)
		}
	}
	return p, nil
}

// Stats counts the proxy's queries: answered from an upstream, refused
// (with an answer or with none), and refused with no receipt written.
type Stats struct {
	Answered    uint64 `json:"answered"`
	Refused     uint64 `json:"refused"`
	Unreceipted uint64 `json:"unreceipted"`
}

// Stats reads the counts.
func (p *Proxy) Stats() Stats {
	return Stats{Answered: p.stats.answered.Load(), Refused: p.stats.refused.Load(), Unreceipted: p.stats.unreceipted.Load()}
}

// Answer decides one query of a workload and returns what to send back.
func (p *Proxy) Answer(ctx context.Context, q Query) []byte {
	id, k, ok := p.opts.Workload(q.Workload)
	req, perr := parseQuery(q.Msg)
	if !ok {
		// No identity to receipt under: refused, counted.
		p.stats.unreceipted.Add(1)
		p.refusedOne("unknown", kernel.GuardDNS, 1)
		if perr != nil {
			return nil
		}
		return pack(refusal(req, dns.RcodeRefused))
	}
	transport := kernel.TransportUDP
	if q.Transport == "tcp" {
		transport = kernel.TransportTCP
	}
	ev := kernel.EgressEvent{IP: q.Resolver.Addr().Unmap(), Port: q.Resolver.Port(), Transport: transport,
		Workload: id, Process: kernel.ProcessIdentity{PID: q.PID, Comm: q.Comm}, ConnectionID: newID(),
		DNS: &kernel.DNSQuery{RefuseOtherTypes: p.opts.RefuseOtherTypes}}
	if !ev.IP.IsValid() {
		ev.IP = netip.IPv4Unspecified() // the listener did not say: the receipt still needs a destination
	}
	snap := k.Snapshot()
	now := p.opts.Clock()
	name := ""
	if perr == nil {
		qq := req.Question[0]
		ev.DNS.Name, ev.DNS.Type = qq.Name, typeName(qq.Qtype)
		name = qq.Name
		if n, err := kernel.DNSName(qq.Name); err == nil {
			name = n
		}
	}
	// Bounds first: a flood of garbage or of names is refused alike, and
	// its receipts aggregated.
	if bound := p.limits.admit(q.Workload, name, now); bound != "" {
		p.flood.add(q.Workload, bound, ev, k)
		p.stats.refused.Add(1)
		p.refusedOne(id.Name, kernel.GuardLimit, 1)
		if perr != nil {
			return nil
		}
		return pack(refusal(req, dns.RcodeRefused))
	}
	if perr != nil {
		out := kernel.Outcome{Verdict: kernel.VerdictDeny, Guard: kernel.GuardDNS, Reason: perr.Error()}
		eg := snap.DecideDNS(kernel.Seen{Event: ev, Decided: &out})
		p.refuse(ctx, q.Workload, &eg)
		return nil
	}
	if req.Question[0].Qclass != dns.ClassINET {
		out := kernel.Outcome{Verdict: kernel.VerdictDeny, Guard: kernel.GuardDNS,
			Reason: fmt.Sprintf("class %s queries are refused: only IN is forwarded", dns.ClassToString[req.Question[0].Qclass])}
		eg := snap.DecideDNS(kernel.Seen{Event: ev, Decided: &out})
		return p.refuseWith(ctx, q.Workload, &eg, req, dns.RcodeRefused)
	}
	eg := snap.DecideDNS(kernel.Seen{Event: ev})
	if eg.Outcome.Verdict != kernel.VerdictAllow {
		rc := dns.RcodeRefused
		if eg.Outcome.Guard == kernel.GuardEgressPolicy {
			rc = p.opts.BlockRcode
		}
		return p.refuseWith(ctx, q.Workload, &eg, req, rc)
	}
	var (
		resp     *dns.Msg
		upstream netip.AddrPort
		err      error
	)
	if as, ok := p.hosts[name]; ok {
		resp = staticAnswer(req, as)
	} else {
		resp, upstream, err = p.exchange(ctx, upstreamQuery(req), q.Transport)
	}
	if err != nil {
		// Allowed, and nothing answered: the receipt says so.
		ev.DNS.RCode = rcodeName(dns.RcodeServerFailure)
		eg = snap.DecideDNS(kernel.Seen{Event: ev})
		eg.Outcome.Reason = "allowed; " + err.Error()
		if p.record(ctx, q.Workload, &eg, 1) != nil {
			return pack(refusal(req, dns.RcodeRefused))
		}
		return pack(refusal(req, dns.RcodeServerFailure))
	}
	ev.DNS.Upstream = upstream
	a := readAnswer(req.Question[0].Name, resp)
	ev.DNS.Chain = a.chain
	eg = snap.DecideDNS(kernel.Seen{Event: ev})
	if eg.Outcome.Verdict != kernel.VerdictAllow {
		return p.refuseWith(ctx, q.Workload, &eg, req, dns.RcodeRefused)
	}
	m := reply(req, resp, a, q.Transport)
	if m.Truncated {
		a.addrs = readAnswer(req.Question[0].Name, m).addrs // told only what was sent
	}
	ev.DNS.Answers, ev.DNS.RCode = a.addrs, rcodeName(m.Rcode)
	eg = snap.DecideDNS(kernel.Seen{Event: ev})
	b, err := m.Pack()
	if err != nil {
		eg.Outcome = kernel.Outcome{Verdict: kernel.VerdictDeny, Guard: kernel.GuardDNS, Reason: "pack the answer: " + err.Error()}
		return p.refuseWith(ctx, q.Workload, &eg, req, dns.RcodeServerFailure)
	}
	// No receipt, no answer; and what was not answered was not told.
	if p.record(ctx, q.Workload, &eg, 1) != nil {
		p.stats.refused.Add(1)
		return pack(refusal(req, dns.RcodeRefused))
	}
	p.stats.answered.Add(1)
	p.remember(q.Workload, req.Question[0].Name, a, now)
	return b
}

// remember records what the workload was told under QNAME and every name
// of the chain, normalised as the names of later connections will be.
func (p *Proxy) remember(workload uint32, qname string, a answer, now time.Time) {
	if len(a.addrs) == 0 {
		return
	}
	names := make([]string, 0, 1+len(a.chain))
	for _, n := range append([]string{qname}, a.chain...) {
		if h, err := kernel.DNSName(n); err == nil {
			names = append(names, h)
		}
	}
	ttl := min(max(time.Duration(a.ttl)*time.Second, p.opts.TTLFloor), p.opts.TTLCap)
	p.told.add(workload, names, a.addrs, now, now.Add(ttl))
}

// refuseWith receipts a refusal and answers req with rcode.
func (p *Proxy) refuseWith(ctx context.Context, workload uint32, eg *kernel.Egress, req *dns.Msg, rcode int) []byte {
	eg.Event.DNS.RCode = rcodeName(rcode)
	p.refuse(ctx, workload, eg)
	return pack(refusal(req, rcode))
}

// refuse receipts a refusal and counts it.
func (p *Proxy) refuse(ctx context.Context, workload uint32, eg *kernel.Egress) {
	p.stats.refused.Add(1)
	p.refusedOne(eg.Event.Workload.Name, eg.Outcome.Guard, 1)
	p.record(ctx, workload, eg, 1)
}

// record writes a receipt through the agent; one not written is counted.
func (p *Proxy) record(ctx context.Context, workload uint32, eg *kernel.Egress, count uint64) error {
	err := p.opts.Record(context.WithoutCancel(ctx), workload, eg, count)
	if err != nil {
		p.stats.unreceipted.Add(count)
	}
	return err
}

func (p *Proxy) refusedOne(workload, guard string, n float64) {
	p.refused.WithLabelValues(workload, guard).Add(n)
}

func pack(m *dns.Msg) []byte {
	b, err := m.Pack()
	if err != nil {
		return nil // fail closed: nothing sent
	}
	return b
}

func newID() string {
	var b [16]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
