package collect

import "github.com/prometheus/client_golang/prometheus"

// Collectors are the collector's metrics, read from Stats at scrape time.
func (c *Collector) Collectors() []prometheus.Collector {
	counter := func(name, help string, f func(Stats) uint64) prometheus.Collector {
		return prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help}, func() float64 { return float64(f(c.Stats())) })
	}
	return []prometheus.Collector{
		counter("chio_collector_batches_total", "Sealed batches stored in the central store.", func(s Stats) uint64 { return s.Batches }),
		counter("chio_collector_receipts_total", "Receipts stored in the central store.", func(s Stats) uint64 { return s.Receipts }),
		counter("chio_collector_duplicates_total", "Batches delivered again, already stored.", func(s Stats) uint64 { return s.Duplicates }),
		counter("chio_collector_rejected_total", "Batches (and messages that are none) kept aside as refused.", func(s Stats) uint64 { return s.Rejected }),
		counter("chio_collector_deferred_total", "Deliveries put back to wait for their predecessor.", func(s Stats) uint64 { return s.Deferred }),
		counter("chio_collector_resumed_total", "Batches kept aside as gaps, stored once their predecessor was.", func(s Stats) uint64 { return s.Resumed }),
		counter("chio_collector_errors_total", "Failed fetches and store commits.", func(s Stats) uint64 { return s.Errors }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "chio_collector_lag_messages", Help: "Messages the stream holds past the last delivered."},
			func() float64 { return float64(c.Stats().Lag) }),
	}
}
