package sidecar

import (
	"fmt"
	"net/http"
	"testing"
	"time"
)

// BenchmarkSessionJournalAdded reports what the session journal costs a
// request: one sidecar process, and interleaved requests straight to the
// upstream, through the sidecar without a session, and through it with a
// Chio-Session-Id (the journal's call entry bound to the receipt, awaited
// in sync mode, and its settle entry). The journal's cost is the
// difference of the two proxied quantiles, measured in the same run.
func BenchmarkSessionJournalAdded(b *testing.B) {
	for _, mode := range []string{"async", "sync"} {
		b.Run(mode, func(b *testing.B) {
			up := benchUpstream(b)
			base := startSidecarProcess(b, up.URL, mode)
			client := &http.Client{Transport: &http.Transport{Proxy: nil}}
			defer client.CloseIdleConnections()
			get := func(url, sid string) time.Duration {
				req, err := http.NewRequest("GET", url, nil)
				if err != nil {
					b.Fatal(err)
				}
				if sid != "" {
					req.Header.Set(hdrSession, sid)
				}
				return benchDo(b, client, req)
			}
			for _, u := range []string{up.URL, base} {
				get(u+"/pets/1", "")
			}
			direct := make([]time.Duration, 0, b.N)
			plain := make([]time.Duration, 0, b.N)
			journaled := make([]time.Duration, 0, b.N)
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				direct = append(direct, get(up.URL+"/pets/1", ""))
				plain = append(plain, get(base+"/pets/1", ""))
				// Ten sessions in turn: each chain grows, none is alone.
				journaled = append(journaled, get(base+"/pets/1", fmt.Sprintf("bench-%d", i%10)))
			}
			b.StopTimer()
			b.ReportMetric(quantile(plain, 0.50)-quantile(direct, 0.50), "nosession-added-p50-µs")
			b.ReportMetric(quantile(plain, 0.99)-quantile(direct, 0.99), "nosession-added-p99-µs")
			b.ReportMetric(quantile(journaled, 0.50)-quantile(direct, 0.50), "session-added-p50-µs")
			b.ReportMetric(quantile(journaled, 0.99)-quantile(direct, 0.99), "session-added-p99-µs")
			b.ReportMetric(quantile(journaled, 0.50)-quantile(plain, 0.50), "journal-p50-µs")
			b.ReportMetric(quantile(journaled, 0.99)-quantile(plain, 0.99), "journal-p99-µs")
			b.ReportMetric(quantile(journaled, 0.50)/quantile(plain, 0.50), "session/nosession-p50")
		})
	}
}
