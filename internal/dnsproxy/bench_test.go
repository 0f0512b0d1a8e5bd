package dnsproxy

import (
	"context"
	"maps"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
)

// BenchmarkAnswer measures, in one run against one local server, a query
// asked directly and the same query through Proxy.Answer (decision,
// forwarding, answer check, a signed receipt, remembering what was told),
// interleaved so that both see the same machine. It reports both medians
// and 99th percentiles and the proxy's queries per second.
func BenchmarkAnswer(b *testing.B) {
	h := newHarness(b, "127.0.0.1", func(o *Options) { o.Rate, o.Burst = 1e9, 1e9 })
	q := new(dns.Msg)
	q.SetQuestion("api.allowed.test.", dns.TypeA)
	msg, _ := q.Pack()
	c := &dns.Client{Net: "udp", Timeout: 2 * time.Second}
	addr := h.upstream.String()
	query := Query{Workload: 1, Msg: msg, Transport: "udp", Resolver: netip.MustParseAddrPort("10.0.0.53:53")}
	ctx := context.Background()
	direct := make([]time.Duration, 0, b.N)
	proxied := make([]time.Duration, 0, b.N)
	var inProxy time.Duration
	b.ResetTimer()
	for range b.N {
		t0 := time.Now()
		if _, _, err := c.Exchange(q, addr); err != nil {
			b.Fatal(err)
		}
		t1 := time.Now()
		if h.p.Answer(ctx, query) == nil {
			b.Fatal("no answer")
		}
		t2 := time.Now()
		direct = append(direct, t1.Sub(t0))
		proxied = append(proxied, t2.Sub(t1))
		inProxy += t2.Sub(t1)
	}
	b.StopTimer()
	pct := func(d []time.Duration, p float64) float64 {
		slices.Sort(d)
		return float64(d[min(len(d)-1, int(float64(len(d))*p))].Microseconds())
	}
	b.ReportMetric(pct(direct, 0.5), "direct-p50-µs")
	b.ReportMetric(pct(direct, 0.99), "direct-p99-µs")
	b.ReportMetric(pct(proxied, 0.5), "proxy-p50-µs")
	b.ReportMetric(pct(proxied, 0.99), "proxy-p99-µs")
	b.ReportMetric(float64(b.N)/inProxy.Seconds(), "proxy-queries/s")
}

// BenchmarkRefuse is a refused name through Proxy.Answer: the decision and
// a signed receipt, no upstream. A tunnel's queries cost this much.
func BenchmarkRefuse(b *testing.B) {
	h := newHarness(b, "127.0.0.1", func(o *Options) { o.Rate, o.Burst = 1e9, 1e9 })
	q := new(dns.Msg)
	q.SetQuestion("x.attacker.test.", dns.TypeA)
	msg, _ := q.Pack()
	query := Query{Workload: 1, Msg: msg, Transport: "udp", Resolver: netip.MustParseAddrPort("10.0.0.53:53")}
	b.ResetTimer()
	for range b.N {
		if h.p.Answer(context.Background(), query) == nil {
			b.Fatal("no answer")
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "queries/s")
}

// TestRefusedMetric: refused queries are counted by workload and guard,
// each query of an aggregated flood once.
func TestRefusedMetric(t *testing.T) {
	reg := prometheus.NewRegistry()
	h := newHarness(t, "127.0.0.1", func(o *Options) { o.Registerer = reg; o.Rate, o.Burst = 1, 2 })
	for range 5 {
		h.ask(t, 1, "x.attacker.test.", dns.TypeA, "udp")
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, mf := range mfs {
		if mf.GetName() != "chio_agent_dns_refused_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			labels := ""
			for _, l := range m.GetLabel() {
				labels += l.GetName() + "=" + l.GetValue() + " "
			}
			got[labels] = m.GetCounter().GetValue()
		}
	}
	want := map[string]float64{"guard=HushSpecEgressGuard workload=w1 ": 2, "guard=ChioAgentLimitGuard workload=w1 ": 3}
	if !maps.Equal(got, want) {
		t.Fatalf("chio_agent_dns_refused_total %v, want %v", got, want)
	}
}
