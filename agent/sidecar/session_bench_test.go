package sidecar

import (
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/backbay-labs/chio-agent/kernel/config"
	"github.com/backbay-labs/chio-agent/kernel/session"
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

// BenchmarkSessionForwardedHop reports what a request pays when it lands
// on a replica that does not own its session: two sidecar processes
// sharing a peer list, sessions all owned by the second, requests sent to
// the owner and to the other replica (which forwards them) in turn.
func BenchmarkSessionForwardedHop(b *testing.B) {
	up := benchUpstream(b)
	bases, addrs := startReplicaProcesses(b, 2, up.URL)
	ring, err := session.NewRing(addrs)
	if err != nil {
		b.Fatal(err)
	}
	var ids []string
	for i := 0; len(ids) < 10; i++ {
		if id := fmt.Sprintf("hop-%d", i); ring.Owner(id) == addrs[1] {
			ids = append(ids, id)
		}
	}
	client := &http.Client{Transport: &http.Transport{Proxy: nil}}
	defer client.CloseIdleConnections()
	get := func(base, sid string) time.Duration { return sessionGet(b, client, base, sid) }
	get(bases[0], ids[0])
	get(bases[1], ids[0])
	owner := make([]time.Duration, 0, b.N)
	forwarded := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		owner = append(owner, get(bases[1], ids[i%len(ids)]))
		forwarded = append(forwarded, get(bases[0], ids[i%len(ids)]))
	}
	b.StopTimer()
	reportLatency(b, "owner-", owner)
	reportLatency(b, "forwarded-", forwarded)
	b.ReportMetric(quantile(forwarded, 0.50)-quantile(owner, 0.50), "hop-p50-µs")
	b.ReportMetric(quantile(forwarded, 0.99)-quantile(owner, 0.99), "hop-p99-µs")
	b.ReportMetric(quantile(forwarded, 0.50)/quantile(owner, 0.50), "forwarded/owner-p50")
}

// BenchmarkSessionHandover reports what one hand-over costs: two sidecar
// processes sharing a peer list, and requests marked as forwarded by a
// replica (so the replica they land on decides them, taking the session
// first). Each iteration sends one request of a session to the replica
// holding it (nothing moves) and one to the other replica, which takes the
// session from its live holder (the holder seals its run and sends its
// journal; the taker verifies it and continues it) before deciding; the
// session's next request goes back the other way. The hand-over's cost is
// the difference of the two quantiles.
func BenchmarkSessionHandover(b *testing.B) {
	up := benchUpstream(b)
	bases, _ := startReplicaProcesses(b, 2, up.URL)
	client := &http.Client{Transport: &http.Transport{Proxy: nil}}
	defer client.CloseIdleConnections()
	get := func(base, sid string) time.Duration {
		return sessionGet(b, client, base, sid, HeaderForwardedBy, "bench", HeaderPeerToken, benchPeerToken)
	}
	// Sessions in turn, each first taken by replica 0 and moved 20 times
	// at most: a hand-over sends the session's whole history, so a
	// session moved without end would measure its growing journal.
	sessions := max(10, b.N/10)
	holder := make([]int, sessions)
	for i := range sessions {
		get(bases[0], fmt.Sprintf("ho-%d", i))
	}
	stay := make([]time.Duration, 0, b.N)
	moved := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		k := i % sessions
		sid := fmt.Sprintf("ho-%d", k)
		stay = append(stay, get(bases[holder[k]], sid))
		holder[k] = 1 - holder[k]
		moved = append(moved, get(bases[holder[k]], sid))
	}
	b.StopTimer()
	reportLatency(b, "held-", stay)
	reportLatency(b, "handover-", moved)
	b.ReportMetric(quantile(moved, 0.50)-quantile(stay, 0.50), "handover-added-p50-µs")
	b.ReportMetric(quantile(moved, 0.99)-quantile(stay, 0.99), "handover-added-p99-µs")
}

// sessionGet times a GET of /pets/1 at base naming session sid, with the
// header pairs given.
func sessionGet(b *testing.B, c *http.Client, base, sid string, header ...string) time.Duration {
	req, err := http.NewRequest("GET", base+"/pets/1", nil)
	if err != nil {
		b.Fatal(err)
	}
	req.Header.Set(hdrSession, sid)
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	return benchDo(b, c, req)
}

// benchPeerToken is the replicas' peer token in the benchmarks.
var benchPeerToken = strings.Repeat("b", 24)

// startReplicaProcesses runs n sidecar processes as replicas of one peer
// list in front of upstream, and returns their base URLs.
func startReplicaProcesses(b *testing.B, n int, upstream string) ([]string, []string) {
	var addrs []string
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			b.Fatal(err)
		}
		addrs = append(addrs, ln.Addr().String())
		ln.Close() // the child listens on it: a free loopback port
	}
	var env []string
	if n > 1 {
		env = []string{config.EnvSessionPeers + "=" + strings.Join(addrs, ","), config.EnvSessionPeerToken + "=" + benchPeerToken}
	}
	var bases []string
	for _, a := range addrs {
		bases = append(bases, startSidecarProcess(b, upstream, "async", append(env, envListen+"="+a, config.EnvSessionSelf+"="+a)...))
	}
	return bases, addrs
}

// BenchmarkSessionReplicasThroughput reports the requests per second 16
// concurrent clients get from one sidecar process, and from three replicas
// that pin sessions (requests spread over all three, 1,000 sessions): on
// this 2-core machine three processes share the same cores, and two thirds
// of the requests take the forwarded hop.
func BenchmarkSessionReplicasThroughput(b *testing.B) {
	for _, n := range []int{1, 3} {
		b.Run(fmt.Sprintf("replicas=%d", n), func(b *testing.B) {
			up := benchUpstream(b)
			bases, _ := startReplicaProcesses(b, n, up.URL)
			client := &http.Client{Transport: &http.Transport{Proxy: nil, MaxIdleConnsPerHost: 64}}
			defer client.CloseIdleConnections()
			var next atomic.Uint64
			b.SetParallelism(8) // 16 clients on 2 cores
			start := time.Now()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					i := next.Add(1)
					req, err := http.NewRequest("GET", bases[i%uint64(len(bases))]+"/pets/1", nil)
					if err != nil {
						b.Error(err)
						return
					}
					req.Header.Set(hdrSession, fmt.Sprintf("tp-%d", i%1000))
					benchDo(b, client, req)
				}
			})
			b.StopTimer()
			b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "req/s")
		})
	}
}
