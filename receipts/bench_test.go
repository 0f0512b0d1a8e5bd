package receipts

import (
	"context"
	"crypto/ed25519"
	"fmt"
	"net/netip"
	"path/filepath"
	"testing"

	"github.com/backbay-labs/chio-agent/kernel"
)

// BenchmarkAppend measures signed, durable receipts per second: each of the
// writers prepares its receipts (kernel.Prepare) and appends them with
// AppendPrepared in sync mode, which signs them in the writer.
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

// BenchmarkEgressReceiptRequest measures what one egress receipt costs
// on its way to the log, without the disk: kernel.PrepareEgressReceipt,
// the Ed25519 signature, the canonical bytes, the indexed fields and the
// Merkle leaf (what AppendPrepared does in the caller's goroutine).
func BenchmarkEgressReceiptRequest(b *testing.B) {
	key := testKey("bench-request")
	l, _ := openTest(b, Options{Key: key})
	pub := key.Public().(ed25519.PublicKey)
	ev := kernel.EgressEvent{
		IP: netip.MustParseAddr("203.0.113.7"), Port: 443, Transport: kernel.TransportTCP,
		SNI: "api.example.com", ALPN: []string{"h2", "http/1.1"}, ConnectionID: "c0ffee0123456789",
		Workload: kernel.WorkloadIdentity{Name: "agents/research-agent-7f9c", CgroupPath: "/kubepods.slice/pod1234/cri-containerd-abcd.scope",
			Labels: map[string]string{"app": "research-agent", "team": "ml"}},
		Process: kernel.ProcessIdentity{PID: 4242, UID: 1000, Comm: "python3"},
	}
	out := kernel.Outcome{Verdict: kernel.VerdictAllow, PolicyDecision: "allow", MatchedRule: "rules.egress.allow", Pattern: "*.example.com"}
	b.ReportAllocs()
	for b.Loop() {
		p, err := kernel.PrepareEgressReceipt(ev, out, "5e0a3f6a4f0dc2b1d1f0b6a0c7e8b0f5c2a3e4d5f60718293a4b5c6d7e8f9012", pub, fixedNow)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := l.signedRequest(p); err != nil {
			b.Fatal(err)
		}
	}
}
