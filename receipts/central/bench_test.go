package central

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/backbay-labs/chio-agent/receipts"
)

// BenchmarkIngest measures a witness's rate: sealed batches of 100
// receipts, each verified (every signature) and committed in its own
// transaction, as Ingest stores them, two ways taking turns in one run:
// "first" is Ingest (the batch's own checks before the write lock,
// CheckAll); "in-tx" checks it inside the transaction, as Ingest did
// before. Reported as receipts/s each and their ratio.
func BenchmarkIngest(b *testing.B) {
	benchIngest(b, 1)
}

// BenchmarkIngestAll is BenchmarkIngest with 32 batches per transaction,
// as a consumer pulling messages in groups would commit them: with "first"
// (IngestAll) the 32 batches are checked several at a time on every core
// before the transaction, with "in-tx" one after the other inside it.
func BenchmarkIngestAll(b *testing.B) {
	benchIngest(b, 32)
}

func benchIngest(b *testing.B, group int) {
	k := testKey("bench")
	bs := batchesOf(b, makeLog(b, k, 5000, 100, 0))
	n := 0
	for _, x := range bs {
		n += len(x.Receipts)
	}
	inTx := func(s *Store, g []receipts.SealedBatch) {
		err := s.Update(context.Background(), func(tx *Tx) error {
			for _, x := range g {
				if _, err := tx.Ingest(Prepare(x)); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			b.Fatal(err)
		}
	}
	first := func(s *Store, g []receipts.SealedBatch) {
		_, errs, err := s.IngestAll(context.Background(), g)
		if err != nil {
			b.Fatal(err)
		}
		for _, err := range errs {
			if err != nil {
				b.Fatal(err)
			}
		}
	}
	var took [2]time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		for v, ingest := range []func(*Store, []receipts.SealedBatch){inTx, first} {
			b.StopTimer()
			s, err := Open(filepath.Join(b.TempDir(), "c.db"), Options{TrustedKeys: []string{pubHex(k)}})
			if err != nil {
				b.Fatal(err)
			}
			b.StartTimer()
			start := time.Now()
			for lo := 0; lo < len(bs); lo += group {
				ingest(s, bs[lo:min(lo+group, len(bs))])
			}
			took[v] += time.Since(start)
			b.StopTimer()
			s.Close()
		}
	}
	b.ReportMetric(float64(n*b.N)/took[0].Seconds(), "in-tx-receipts/s")
	b.ReportMetric(float64(n*b.N)/took[1].Seconds(), "first-receipts/s")
	b.ReportMetric(took[0].Seconds()/took[1].Seconds(), "first/in-tx")
}
