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
			benchAppend(b, BenchOptions{Count: max(b.N, writers), Writers: writers})
		})
	}
}

// BenchmarkAppendPresigned is BenchmarkAppend with every receipt signed
// before the clock starts: what the log alone sustains, the ceiling that
// signing's CPU cost pulls BenchmarkAppend below.
func BenchmarkAppendPresigned(b *testing.B) {
	for _, writers := range []int{256} {
		b.Run(fmt.Sprintf("writers=%d", writers), func(b *testing.B) {
			benchAppend(b, BenchOptions{Count: max(b.N, writers), Writers: writers, PreSign: true})
		})
	}
}

// BenchmarkAppendPaced measures sync-mode Append latency at a steady
// 10,000 receipts/s from 256 writers (open loop: latency counts from each
// receipt's due time), the issue's latency target; `chio-agent receipts
// bench --rate 10000` runs the same. The log it wrote is verified after.
func BenchmarkAppendPaced(b *testing.B) {
	res, path := benchAppend(b, BenchOptions{Count: max(b.N, 256), Writers: 256, Rate: 10000})
	b.ReportMetric(float64(res.P50.Microseconds()), "p50-µs")
	b.ReportMetric(float64(res.Max.Microseconds()), "max-µs")
	verifyFile(b, path)
}

func benchAppend(b *testing.B, o BenchOptions) (BenchResult, string) {
	path := filepath.Join(b.TempDir(), "bench.db")
	l, err := Open(path, Options{Key: testKey("bench")})
	if err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	res, err := Bench(context.Background(), l, o)
	b.StopTimer()
	if err != nil {
		b.Fatal(err)
	}
	if err := l.Close(); err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(res.PerSecond, "receipts/s")
	b.ReportMetric(float64(res.P99.Microseconds()), "p99-µs")
	return res, path
}
