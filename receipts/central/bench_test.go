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

// BenchmarkIngestAll is BenchmarkIngest with 32 batches per transaction,
// as a consumer pulling messages in groups would commit them.
func BenchmarkIngestAll(b *testing.B) {
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
		for lo := 0; lo < len(bs); lo += 32 {
			_, errs, err := s.IngestAll(context.Background(), bs[lo:min(lo+32, len(bs))])
			if err != nil {
				b.Fatal(err)
			}
			for _, err := range errs {
				if err != nil {
					b.Fatal(err)
				}
			}
		}
		b.StopTimer()
		s.Close()
	}
	b.ReportMetric(float64(n*b.N)/b.Elapsed().Seconds(), "receipts/s")
}
