package central

import (
	"context"
	"path/filepath"
	"testing"
)

// BenchmarkIngest measures a witness's rate: sealed batches of 100
// receipts, each verified (every signature) and committed in its own
// transaction, as a collector ingests them. Reported as receipts/s.
func BenchmarkIngest(b *testing.B) {
	k := testKey("bench")
	bs := batchesOf(b, makeLog(b, k, 5000, 100, 0))
	n := 0
	for _, x := range bs {
		n += len(x.Receipts)
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		s, err := Open(filepath.Join(b.TempDir(), "c.db"), Options{TrustedKeys: []string{pubHex(k)}})
		if err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		for _, x := range bs {
			if _, err := s.Ingest(context.Background(), x); err != nil {
				b.Fatal(err)
			}
		}
		b.StopTimer()
		s.Close()
	}
	b.ReportMetric(float64(n*b.N)/b.Elapsed().Seconds(), "receipts/s")
}
