package sidecar

import (
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/backbay-labs/chio-agent/internal/tuning"
	"github.com/backbay-labs/chio-agent/kernel/config"
)

// The benchmarks measure what a request gains by going through the sidecar:
// the same keep-alive client asks the same loopback upstream for GET
// /pets/{id}, straight or through the sidecar (route match, policy
// decision, Ed25519 receipt, append to the receipt log, reverse proxy).
// Each reports the p50 and p99 of its own requests; BenchmarkSidecarAdded
// interleaves direct and proxied requests so both see the same machine at
// the same moment, and reports the difference. BENCHMARKS.md has figures.

func benchGet(b *testing.B, c *http.Client, url string) time.Duration {
	req, err := http.NewRequest("GET", url, nil)
	if err != nil {
		b.Fatal(err)
	}
	return benchDo(b, c, req)
}

// benchDo sends req, reads the answer and returns how long it took; an
// answer other than 200 fails the benchmark.
func benchDo(b *testing.B, c *http.Client, req *http.Request) time.Duration {
	start := time.Now()
	resp, err := c.Do(req)
	if err != nil {
		b.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	d := time.Since(start)
	if resp.StatusCode != 200 {
		b.Fatalf("%s %s: %d", req.Method, req.URL, resp.StatusCode)
	}
	return d
}

// benchUpstream is the lean loopback API the process benchmarks ask.
func benchUpstream(b *testing.B) *httptest.Server {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "upstream: "+r.Method+" "+r.URL.Path)
	}))
	b.Cleanup(up.Close)
	return up
}

func quantile(d []time.Duration, q float64) float64 {
	s := slices.Clone(d)
	slices.Sort(s)
	i := int(q * float64(len(s)-1))
	return float64(s[i].Nanoseconds()) / 1e3
}

func reportLatency(b *testing.B, prefix string, d []time.Duration) {
	b.ReportMetric(quantile(d, 0.50), prefix+"p50-µs")
	b.ReportMetric(quantile(d, 0.99), prefix+"p99-µs")
}

func benchFixture(b *testing.B, mode string) *fixture {
	// Measure with the runtime set as the binary sets it (GOGC=400, one
	// more P; see internal/tuning).
	b.Cleanup(tuning.Apply(os.Getenv))
	f := startFixture(b, func(s *config.SidecarSettings) { s.ReceiptMode = mode })
	// Warm both connections so no benchmark pays a TCP handshake.
	benchGet(b, f.client, f.upstream.URL+"/pets/1")
	benchGet(b, f.client, f.base+"/pets/1")
	return f
}

func BenchmarkDirect(b *testing.B) {
	f := benchFixture(b, "async")
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		lat = append(lat, benchGet(b, f.client, f.upstream.URL+"/pets/1"))
	}
	b.StopTimer()
	reportLatency(b, "", lat)
}

func benchSidecar(b *testing.B, mode string) {
	f := benchFixture(b, mode)
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		lat = append(lat, benchGet(b, f.client, f.base+"/pets/1"))
	}
	b.StopTimer()
	reportLatency(b, "", lat)
}

func BenchmarkSidecarAsync(b *testing.B) { benchSidecar(b, "async") }
func BenchmarkSidecarSync(b *testing.B)  { benchSidecar(b, "sync") }
