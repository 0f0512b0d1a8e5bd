package agent

import (
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// metrics are the agent's Prometheus metrics, served on the status socket
// (GET /metrics) and, when configured, on a TCP address for scraping.
// Labels are bounded: workloads come from the configuration, guards and
// verdicts from the code.
type metrics struct {
	reg           *prometheus.Registry
	decisions     *prometheus.CounterVec
	decisionTime  prometheus.Histogram
	receiptErrors prometheus.Counter
	relays        prometheus.Gauge
}

func newMetrics(a *Agent) *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		decisions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "chio_agent_decisions_total",
			Help: "Decisions by workload, verdict and guard; a kernel refusal that stands for several attempts counts each.",
		}, []string{"workload", "verdict", "guard"}),
		decisionTime: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "chio_agent_decision_seconds",
			Help:    "From accepting a redirected connection to acting on its decision (receipt written, in sync mode durable).",
			Buckets: prometheus.ExponentialBuckets(50e-6, 2, 14), // 50 µs … 0.4 s
		}),
		receiptErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "chio_agent_receipt_errors_total",
			Help: "Receipts that could not be written; their connections were refused.",
		}),
		relays: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "chio_agent_relays",
			Help: "Allowed connections being relayed now.",
		}),
	}
	m.reg.MustRegister(m.decisions, m.decisionTime, m.receiptErrors, m.relays,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "chio_agent_receipts_last_seq",
		Help: "Sequence number of the last durable receipt in the log.",
	}, func() float64 { return float64(a.opts.Log.LastSeq()) }))
	m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "chio_agent_pending_connections",
		Help: "Accepted connections not being relayed: awaiting first bytes, a decision, or their refusal (bounded by agent.limits.pending).",
	}, func() float64 { return float64(a.proxy.pending.Load()) }))
	m.reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{
		Name: "chio_agent_accept_refusals_total",
		Help: "Connections refused at accept because a pending bound was full (their receipts are aggregated).",
	}, func() float64 { return float64(a.proxy.overflow.refused.Load()) }))
	m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "chio_agent_workloads",
		Help: "Configured workloads (chio_agent_workload_state says which are protected now).",
	}, func() float64 { return float64(len(a.reg.all())) }))
	m.reg.MustRegister(workloadStates{a})
	if a.opts.Shipper != nil {
		m.reg.MustRegister(a.opts.Shipper.Collectors()...)
	}
	m.reg.MustRegister(birthRoots{a})
	refusals := func(f func(RefusalStatus) uint64) func() float64 {
		return func() float64 { st, _ := a.Refusals(); return float64(f(st)) }
	}
	for _, c := range []struct {
		name, help string
		f          func(RefusalStatus) uint64
	}{
		{"chio_agent_kernel_refusals_total", "Refusals made in the kernel (since the datapath's maps were made).",
			func(s RefusalStatus) uint64 { return s.Refused }},
		{"chio_agent_kernel_refusals_lost_total", "Kernel refusals that could be neither reported nor kept pending: never receipted.",
			func(s RefusalStatus) uint64 { return s.Lost }},
		{"chio_agent_kernel_ring_full_total", "Refusal events the ring buffer had no room for (their counts were kept pending, unless lost).",
			func(s RefusalStatus) uint64 { return s.RingFull }},
		{"chio_agent_kernel_refusal_map_full_total", "Refusals whose entry could not be made in the refusals map; each was reported alone.",
			func(s RefusalStatus) uint64 { return s.MapFull }},
		{"chio_agent_kernel_refusals_receipted_total", "Kernel refusals this agent wrote receipts for (an aggregated receipt counts each).",
			func(s RefusalStatus) uint64 { return s.Receipted }},
		{"chio_agent_kernel_refusals_unreceipted_total", "Kernel refusals reported to this agent whose receipt could not be written.",
			func(s RefusalStatus) uint64 { return s.Unreceipted }},
	} {
		m.reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: c.name, Help: c.help}, refusals(c.f)))
	}
	m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "chio_agent_originals_waiting",
		Help: "Original destinations recorded by the datapath and not yet taken by the proxy.",
	}, func() float64 { _, n, _ := a.objs.MapCounts(); return float64(n) }))
	return m
}

// Registry returns the agent's metrics registry.
func (a *Agent) Registry() *prometheus.Registry { return a.proxy.metrics.reg }

func (a *Agent) metricsHandler() http.Handler {
	return promhttp.HandlerFor(a.proxy.metrics.reg, promhttp.HandlerOpts{})
}

// workloadStates exports chio_agent_workload_state: 1 for each workload's
// present state (protected, waiting, missing), 0 for the others, so that an
// alert on state!="protected" finds a workload whose cgroup is absent.
type workloadStates struct{ a *Agent }

var workloadStateDesc = prometheus.NewDesc("chio_agent_workload_state",
	"Whether each configured workload is protected (its cgroup exists and is in the datapath), waiting (its cgroup does not exist; its path is guarded) or missing (its parent cgroup does not exist either).",
	[]string{"workload", "state"}, nil)

func (workloadStates) Describe(ch chan<- *prometheus.Desc) { ch <- workloadStateDesc }

func (c workloadStates) Collect(ch chan<- prometheus.Metric) {
	c.a.mu.Lock()
	type ws struct {
		name  string
		state WorkloadState
	}
	var all []ws
	for _, w := range c.a.reg.all() {
		all = append(all, ws{w.name, w.state})
	}
	c.a.mu.Unlock()
	for _, w := range all {
		for _, st := range []WorkloadState{StateProtected, StateWaiting, StateMissing} {
			v := 0.0
			if w.state == st {
				v = 1
			}
			ch <- prometheus.MustNewConstMetric(workloadStateDesc, prometheus.GaugeValue, v, w.name, string(st))
		}
	}
}

// birthRoots exports chio_agent_birth_root: 1 for each birth root the
// datapath holds, by cgroup path, so that an alert finds a node whose pods
// are not protected from birth.
type birthRoots struct{ a *Agent }

var birthRootDesc = prometheus.NewDesc("chio_agent_birth_root",
	"Each birth root the datapath holds (1): a cgroup below it that the agent has neither protected nor exempted is refused the network in the kernel.",
	[]string{"cgroup"}, nil)

func (birthRoots) Describe(ch chan<- *prometheus.Desc) { ch <- birthRootDesc }

func (c birthRoots) Collect(ch chan<- prometheus.Metric) {
	b, err := c.a.Birth()
	if err != nil {
		return
	}
	for _, r := range b.Roots {
		ch <- prometheus.MustNewConstMetric(birthRootDesc, prometheus.GaugeValue, 1, r)
	}
}
