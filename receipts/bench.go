package receipts

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/backbay-labs/chio-agent/kernel"
)

// SyntheticReceipt signs a plausible egress decision numbered n: a
// mediated_decision on a TLS connection to one of a few hosts from one of a
// few workloads, allowed or denied. Benchmarks and tests use it so that the
// logs they write are ordinary, verifiable logs.
func SyntheticReceipt(key ed25519.PrivateKey, n int, now time.Time) ([]byte, error) {
	r, err := syntheticReceipt(key, n, now)
	if err != nil {
		return nil, err
	}
	return r.CanonicalJSON()
}

func syntheticReceipt(key ed25519.PrivateKey, n int, now time.Time) (*kernel.Receipt, error) {
	r, err := kernel.Sign(syntheticBody(n, now), key)
	if err != nil {
		return nil, fmt.Errorf("sign synthetic receipt: %w", err)
	}
	return &r, nil
}

// syntheticBody is the unsigned body of SyntheticReceipt.
func syntheticBody(n int, now time.Time) kernel.Receipt {
	hosts := []string{"api.openai.com", "api.anthropic.com", "github.com", "pypi.org", "evil.example"}
	host := hosts[n%len(hosts)]
	verdict, reason := kernel.VerdictAllow, ""
	if host == "evil.example" {
		verdict, reason = kernel.VerdictDeny, "host not in egress allow list"
	}
	params, _ := json.Marshal(map[string]any{"host": host, "port": 443, "protocol": "tls", "conn": n})
	meta, _ := json.Marshal(map[string]any{"workload": fmt.Sprintf("agent-%d", n%7)})
	return kernel.Receipt{
		Timestamp:     uint64(now.Unix()),
		ToolServer:    "chio-agent",
		ToolName:      "egress",
		Action:        kernel.Action{Parameters: params},
		Decision:      &kernel.Decision{Verdict: verdict, Reason: reason, Guard: "egress"},
		ReceiptKind:   kernel.KindMediatedDecision,
		BoundaryClass: kernel.BoundaryPrevent,
		TrustLevel:    kernel.TrustMediated,
		Metadata:      meta,
	}
}

// BenchOptions configure Bench.
type BenchOptions struct {
	// Count is the number of receipts to append. Default 10000.
	Count int
	// Writers is the number of concurrent appending goroutines. Default 16.
	Writers int
	// Rate, when > 0, paces all writers together to this many receipts per
	// second (open loop: each receipt has a due time), to measure latency at
	// a given load instead of at saturation. Default 0: as fast as possible.
	Rate float64
	// PreSign signs every receipt before the clock starts, to measure the
	// log alone. Default false: each writer signs as it goes, which is the
	// real cost of a signed, durable receipt.
	PreSign bool
}

// BenchResult is what Bench measured.
type BenchResult struct {
	Count     int           `json:"count"`
	Writers   int           `json:"writers"`
	Mode      string        `json:"mode"`
	Elapsed   time.Duration `json:"elapsed_ns"`
	PerSecond float64       `json:"receipts_per_second"`
	P50       time.Duration `json:"p50_ns"`
	P99       time.Duration `json:"p99_ns"`
	Max       time.Duration `json:"max_ns"`
}

// Bench appends o.Count synthetic receipts, signed by l's key, from
// o.Writers goroutines and measures throughput and Append latency. In async
// mode the elapsed time includes the final Flush, so the rate is still of
// durable receipts.
func Bench(ctx context.Context, l *Log, o BenchOptions) (BenchResult, error) {
	if o.Count <= 0 {
		o.Count = 10000
	}
	if o.Writers <= 0 {
		o.Writers = 16
	}
	var pre []*kernel.Receipt
	if o.PreSign {
		pre = make([]*kernel.Receipt, o.Count)
		for i := range pre {
			b, err := syntheticReceipt(l.opts.Key, i, l.opts.Now())
			if err != nil {
				return BenchResult{}, err
			}
			pre[i] = b
		}
	}
	pub := l.opts.Key.Public().(ed25519.PublicKey)
	lat := make([]time.Duration, o.Count)
	var next atomic.Int64
	var firstErr atomic.Pointer[error]
	var wg sync.WaitGroup
	start := time.Now()
	for w := 0; w < o.Writers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= o.Count || firstErr.Load() != nil || ctx.Err() != nil {
					return
				}
				t0 := time.Now()
				if o.Rate > 0 {
					due := start.Add(time.Duration(float64(i) / o.Rate * float64(time.Second)))
					if d := time.Until(due); d > 0 {
						time.Sleep(d)
					}
					t0 = due // latency from when the receipt was due: no coordinated omission
				}
				var err error
				if pre != nil {
					_, err = l.AppendReceipt(ctx, pre[i])
				} else {
					// The path of the agent's receipts: prepared, then
					// signed by the log (in the caller in sync mode).
					var p *kernel.Prepared
					if p, err = kernel.Prepare(syntheticBody(i, l.opts.Now()), pub); err == nil {
						_, err = l.AppendPrepared(ctx, p)
					}
				}
				if err != nil {
					firstErr.CompareAndSwap(nil, &err)
					return
				}
				lat[i] = time.Since(t0)
			}
		}()
	}
	wg.Wait()
	if p := firstErr.Load(); p != nil {
		return BenchResult{}, fmt.Errorf("bench receipt log: %w", *p)
	}
	if err := ctx.Err(); err != nil {
		return BenchResult{}, err
	}
	if err := l.Flush(ctx, false); err != nil {
		return BenchResult{}, fmt.Errorf("bench receipt log: %w", err)
	}
	elapsed := time.Since(start)
	slices.Sort(lat)
	return BenchResult{
		Count: o.Count, Writers: o.Writers, Mode: l.opts.Mode.String(), Elapsed: elapsed,
		PerSecond: float64(o.Count) / elapsed.Seconds(),
		P50:       lat[len(lat)/2], P99: lat[min(len(lat)-1, len(lat)*99/100)], Max: lat[len(lat)-1],
	}, nil
}
