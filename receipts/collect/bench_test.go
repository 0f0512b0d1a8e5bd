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
// a stream; first Ingest of every batch from memory into a fresh store (one
// transaction each), then a collector with a fresh durable consumer and a
// fresh store, timed from its start to the last batch stored. Reported as
// receipts/s and their ratio.
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
	for i := 0; i < b.N; i++ {
		s := openStore(b, filepath.Join(b.TempDir(), "ingest.db"), l.KernelKey())
		start := time.Now()
		for _, x := range bs {
			if _, err := s.Ingest(context.Background(), x); err != nil {
				b.Fatal(err)
			}
		}
		ingest += time.Since(start)

		s2 := openStore(b, filepath.Join(b.TempDir(), "collect.db"), l.KernelKey())
		o := e.options()
		o.Durable = fmt.Sprintf("bench-%d", i)
		start = time.Now()
		col, stop := run(b, s2, o)
		for col.Stats().Batches < uint64(len(bs)) {
			time.Sleep(2 * time.Millisecond)
			if time.Since(start) > 5*time.Minute {
				b.Fatalf("collector stored %d of %d batches", col.Stats().Batches, len(bs))
			}
		}
		coll += time.Since(start)
		stop()
		if n, _ := stored(b, s2, id); n != uint64(len(bs)) || col.Stats().Rejected != 0 {
			b.Fatalf("collector stored %d batches, kept aside %d", n, col.Stats().Rejected)
		}
	}
	n := float64(20_000 * b.N)
	b.ReportMetric(n/ingest.Seconds(), "ingest-receipts/s")
	b.ReportMetric(n/coll.Seconds(), "collect-receipts/s")
	b.ReportMetric(ingest.Seconds()/coll.Seconds(), "collect/ingest")
}
