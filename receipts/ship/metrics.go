package ship

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Collectors are the shipper's Prometheus metrics, for the registry of the
// agent or sidecar that runs it.
func (s *Shipper) Collectors() []prometheus.Collector {
	g := func(name, help string, f func(Status) float64) prometheus.Collector {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, func() float64 { return f(s.Status()) })
	}
	b := func(v bool) float64 {
		if v {
			return 1
		}
		return 0
	}
	return []prometheus.Collector{
		g("chio_receipts_ship_lag_receipts", "Receipts in the local log not yet acknowledged by the sink (sealed or not).",
			func(st Status) float64 { return float64(st.LagReceipts) }),
		g("chio_receipts_ship_lag_seconds", "Age of the oldest checkpoint not yet acknowledged by the sink (0 when all are).",
			func(st Status) float64 { return st.LagSeconds }),
		g("chio_receipts_ship_acked_checkpoint", "Last checkpoint seq the sink acknowledged.",
			func(st Status) float64 { return float64(st.AckedCheckpoint) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "chio_receipts_ship_batches_total",
			Help: "Sealed batches the sink acknowledged since start."}, func() float64 { return float64(s.Status().Batches) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "chio_receipts_ship_errors_total",
			Help: "Failed publishes, puts and connection errors since start."}, func() float64 { return float64(s.Status().Errors) }),
		g("chio_receipts_ship_in_flight", "Batches published (put) to the sink and awaiting their acks (at most the window).",
			func(st Status) float64 { return float64(st.InFlight) }),
		g("chio_receipts_ship_connected", "1 while connected to a NATS server (a store sink: while its last request succeeded).",
			func(st Status) float64 { return b(st.Connected) }),
		g("chio_receipts_ship_backlog_exceeded", "1 while the unshipped backlog exceeds max_backlog (decisions go on; everything stays local).",
			func(st Status) float64 { return b(st.BacklogExceeded) }),
	}
}

// Drain ships what is sealed now, once, bounded by ctx: what a short-lived
// command does after sealing its log's tail and stopping Run, so that its
// last batches leave with it rather than with its next run.
// It retries a failed round (a stream still electing its leader, a
// reconnect) until everything sealed is acknowledged or ctx ends.
func (s *Shipper) Drain(ctx context.Context) error {
	wait := s.o.Poll
	for {
		err := s.shipOnce(ctx)
		if err == nil {
			last, _, lerr := s.log.SealedCheckpoints()
			if lerr != nil {
				return lerr
			}
			s.mu.Lock()
			done := s.st.AckedCheckpoint >= last
			s.mu.Unlock()
			if done {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			if err == nil {
				err = ctx.Err()
			}
			return err
		case <-time.After(wait):
		}
		wait = min(wait*2, 500*time.Millisecond)
	}
}

// Start runs the shipper in the background until Stop.
func (s *Shipper) Start() {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	s.stopRun = func() { cancel(); <-done }
	go func() { s.Run(ctx); close(done) }()
}

// Stop ends what Start began, ships what is sealed by then (bounded by
// drain: a sink that is down leaves it for the next run, the log keeps
// it), and closes the connection. The caller seals the log's tail first
// when it is shutting down.
func (s *Shipper) Stop(drain time.Duration) {
	if s.stopRun != nil {
		s.stopRun()
		s.stopRun = nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), drain)
	defer cancel()
	if err := s.Drain(ctx); err != nil {
		s.o.Logger.WithError(err).Warn("receipt shipping stopped with a backlog; the next run ships it")
	}
	s.Close()
}
