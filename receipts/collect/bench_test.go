package collect

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/backbay-labs/chio-agent/internal/testutil/natscluster"
)

// BenchmarkCollect measures the collector's verification rate through the
// three-server cluster against the central store's own Ingest rate, in one
// run: 20,000 signed receipts sealed every 100 (200 batches) published into
// a stream; Ingest of every batch from memory into a fresh store (one
// transaction each), then a collector with a fresh durable consumer and a
// fresh store, timed from its start (on a durable created just before) to
// the last batch stored, then Ingest
// again: the collector is compared with the mean of the two Ingest runs
// around it, so that load from elsewhere drifting during the run weighs on
// both. Reported as receipts/s and their ratio.
func BenchmarkCollect(b *testing.B) {
	c := natscluster.Shared(b)
	e := newEnv(b, c)
	key := testKey(b.Name())
	l := openLog(b, key, 100, 20_000)
	bs := batchesOf(b, l)
	for _, x := range bs {
		e.publish(b, x, "")
	}
	id := logID(b, l)
	var ingest, coll time.Duration
	b.ResetTimer()
	ingestOnce := func(name string) time.Duration {
		s := openStore(b, filepath.Join(b.TempDir(), name), l.KernelKey())
		start := time.Now()
		for _, x := range bs {
			if _, err := s.Ingest(context.Background(), x); err != nil {
				b.Fatal(err)
			}
		}
		return time.Since(start)
	}
	for i := 0; i < b.N; i++ {
		ingest += ingestOnce("ingest-before.db") / 2
		s2 := openStore(b, filepath.Join(b.TempDir(), "collect.db"), l.KernelKey())
		o := e.options()
		o.Durable = fmt.Sprintf("bench-%d", i)
		// The durable exists before the clock starts, as for a collector
		// restarted on it: creating an R3 consumer (a few hundred ms on a
		// loaded cluster) is start-up, not witnessing.
		pre, err := New(s2, o)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := pre.consumer(context.Background()); err != nil {
			b.Fatal(err)
		}
		pre.Close()
		start := time.Now()
		col, stop := run(b, s2, o)
		for col.Stats().Batches < uint64(len(bs)) {
			time.Sleep(2 * time.Millisecond)
			if time.Since(start) > 5*time.Minute {
				b.Fatalf("collector stored %d of %d batches", col.Stats().Batches, len(bs))
			}
		}
		coll += time.Since(start)
		stop()
		ingest += ingestOnce("ingest-after.db") / 2
		if n, _ := stored(b, s2, id); n != uint64(len(bs)) || col.Stats().Rejected != 0 {
			b.Fatalf("collector stored %d batches, kept aside %d", n, col.Stats().Rejected)
		}
	}
	n := float64(20_000 * b.N)
	b.ReportMetric(n/ingest.Seconds(), "ingest-receipts/s")
	b.ReportMetric(n/coll.Seconds(), "collect-receipts/s")
	b.ReportMetric(ingest.Seconds()/coll.Seconds(), "collect/ingest")
}
