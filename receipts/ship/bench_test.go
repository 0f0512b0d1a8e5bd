package ship

import (
	"context"
	"crypto/ed25519"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/backbay-labs/chio-agent/internal/testutil/natscluster"
	"github.com/backbay-labs/chio-agent/receipts"
)

// BenchmarkShipThroughput measures, in one run and against one
// three-server cluster: the local log's own append rate (signed receipts,
// async mode, 16 writers: receipts.Bench), the shipper draining that same
// log's backlog into an R3 stream, and the shipper keeping up while the log
// is appended to at full speed. Reported as receipts/s and the ratio
// shipping/append. every is the log's checkpoint_every: the receipts per
// published batch; window the batches in flight (1: one at a time, as the
// shipper was before it pipelined).
func BenchmarkShipThroughput(b *testing.B) {
	for _, tc := range []struct{ every, window int }{{100, DefaultWindow}, {100, 1}, {1000, DefaultWindow}} {
		b.Run(fmt.Sprintf("checkpoint_every=%d/window=%d", tc.every, tc.window), func(b *testing.B) {
			benchShipThroughput(b, tc.every, tc.window)
		})
	}
}

func benchShipThroughput(b *testing.B, every, window int) {
	c := natscluster.Start(b)
	count := 20000 * b.N
	key := testKey(b.Name())
	l := openLog(b, tempLog(b), key, every)
	defer l.Close()
	ctx := context.Background()

	// 1. The log alone.
	selfCPU0 := selfCPU(b)
	res, err := receipts.Bench(ctx, l, receipts.BenchOptions{Count: count, Writers: 16})
	if err != nil {
		b.Fatal(err)
	}
	sealAll(b, l)
	appendCPU := selfCPU(b) - selfCPU0
	// 2. Draining that backlog; the CPU time of this process (the shipper)
	// and of the three servers.
	o := clusterOptions(c)
	o.Window = window
	selfCPU0, serversCPU0 := selfCPU(b), serversCPU(b, c)
	start := time.Now()
	s := startShipper(b, l, o)
	waitShipped(b, l, s, 10*time.Minute)
	drain := float64(l.LastSeq()) / time.Since(start).Seconds()
	shipCPU, srvCPU := selfCPU(b)-selfCPU0, serversCPU(b, c)-serversCPU0
	perK := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 / (float64(count) / 1000) }
	b.ReportMetric(perK(appendCPU), "append_cpu_ms/1k")
	b.ReportMetric(perK(shipCPU), "ship_cpu_ms/1k")
	b.ReportMetric(perK(srvCPU), "servers_cpu_ms/1k")
	// 3. Appending and shipping at once: from the first append to the
	// last receipt acknowledged by the stream.
	first := l.LastSeq()
	start = time.Now()
	live, err := receipts.Bench(ctx, l, receipts.BenchOptions{Count: count, Writers: 16})
	if err != nil {
		b.Fatal(err)
	}
	sealAll(b, l)
	waitShipped(b, l, s, 10*time.Minute)
	both := float64(l.LastSeq()-first) / time.Since(start).Seconds()

	b.ReportMetric(res.PerSecond, "append_receipts/s")
	b.ReportMetric(drain, "ship_backlog_receipts/s")
	b.ReportMetric(live.PerSecond, "append_while_shipping_receipts/s")
	b.ReportMetric(both, "append+ship_receipts/s")
	b.ReportMetric(drain/res.PerSecond, "ship/append")
	b.ReportMetric(0, "ns/op")
}

// selfCPU is this process's CPU time (user and system) so far.
func selfCPU(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func serversCPU(b *testing.B, c *natscluster.Cluster) time.Duration {
	d, err := c.CPUTime()
	if err != nil {
		b.Fatal(err)
	}
	return d
}

// BenchmarkShipLag paces appends at 10,000 signed receipts/s for a few
// seconds (one writer, open loop) with a shipper running, and reports the
// end-to-end lag of each receipt: from its Append returning to the stream
// acknowledging the batch that holds it (checkpointing every 100 receipts,
// the poll, one publish to the R3 stream), with the default window and
// with one batch at a time.
func BenchmarkShipLag(b *testing.B) {
	for _, window := range []int{DefaultWindow, 1} {
		b.Run(fmt.Sprintf("window=%d", window), func(b *testing.B) { benchShipLag(b, window) })
	}
}

func benchShipLag(b *testing.B, window int) {
	c := natscluster.Start(b)
	key := testKey(b.Name())
	l := openLog(b, tempLog(b), key, 100)
	defer l.Close()
	const rate = 10000
	total := 3 * rate * b.N
	appended := make([]int64, total+1) // seq → unix ns
	var lags []time.Duration
	var mu sync.Mutex
	prevEnd := uint64(0)
	o := clusterOptions(c)
	o.Window = window
	o.OnAck = func(_, endSeq uint64) {
		now := time.Now().UnixNano()
		mu.Lock()
		defer mu.Unlock()
		for seq := prevEnd + 1; seq <= endSeq && seq <= uint64(total); seq++ {
			if at := atomic.LoadInt64(&appended[seq]); at > 0 {
				lags = append(lags, time.Duration(now-at))
			}
		}
		prevEnd = endSeq
	}
	s := startShipper(b, l, o)
	pace(b, l, key, total, rate, appended)
	sealAll(b, l)
	waitShipped(b, l, s, 5*time.Minute)
	mu.Lock()
	defer mu.Unlock()
	if len(lags) != total {
		b.Fatalf("measured %d lags of %d receipts", len(lags), total)
	}
	slices.Sort(lags)
	b.ReportMetric(float64(lags[len(lags)/2].Microseconds())/1000, "p50_lag_ms")
	b.ReportMetric(float64(lags[len(lags)*99/100].Microseconds())/1000, "p99_lag_ms")
	b.ReportMetric(float64(lags[len(lags)-1].Microseconds())/1000, "max_lag_ms")
	b.ReportMetric(0, "ns/op")
}

// pace appends total signed receipts at rate per second from one writer
// (so that receipt i is seq i+1 of the fresh async log), each due at start
// + i/rate, recording when each Append returned.
func pace(b *testing.B, l *receipts.Log, key ed25519.PrivateKey, total, rate int, appended []int64) {
	var next atomic.Int64
	start := time.Now()
	var wg sync.WaitGroup
	for w := 0; w < 1; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= total {
					return
				}
				if d := time.Until(start.Add(time.Duration(i) * time.Second / time.Duration(rate))); d > 0 {
					time.Sleep(d)
				}
				data, err := receipts.SyntheticReceipt(key, i, time.Now())
				if err != nil {
					b.Error(err)
					return
				}
				if _, err := l.Append(context.Background(), data); err != nil {
					b.Error(err)
					return
				}
				atomic.StoreInt64(&appended[i+1], time.Now().UnixNano())
			}
		}()
	}
	wg.Wait()
}
