package receipts

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"
)

// BenchmarkAppend measures signed, durable receipts per second: each of the
// writers signs its receipts (kernel.Sign) and Appends them in sync mode.
func BenchmarkAppend(b *testing.B) {
	for _, writers := range []int{1, 16, 256} {
		b.Run(fmt.Sprintf("writers=%d", writers), func(b *testing.B) {
			path := filepath.Join(b.TempDir(), "bench.db")
			l, err := Open(path, Options{Key: testKey("bench")})
			if err != nil {
				b.Fatal(err)
			}
			b.ResetTimer()
			res, err := Bench(context.Background(), l, BenchOptions{Count: max(b.N, writers), Writers: writers})
			b.StopTimer()
			if err != nil {
				b.Fatal(err)
			}
			if err := l.Close(); err != nil {
				b.Fatal(err)
			}
			b.ReportMetric(res.PerSecond, "receipts/s")
			b.ReportMetric(float64(res.P99.Microseconds()), "p99-µs")
		})
	}
}
