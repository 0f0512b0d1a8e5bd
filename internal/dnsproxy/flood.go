package dnsproxy

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/backbay-labs/chio-agent/kernel"
)

// floodLinger is how long Run waits after a refusal past a bound before it
// writes the aggregated receipts, so that a flood costs a receipt per
// workload and bound per linger rather than one per query.
const floodLinger = time.Second

// flood holds the queries refused past a bound, per workload and bound,
// until their aggregated receipt is written: one receipt stands for count
// queries (metadata.attempts) and records the first of them. Every refused
// query is in exactly one receipt, or counted as unreceipted.
type flood struct {
	mu   sync.Mutex
	m    map[floodKey]*floodEntry
	wake chan struct{}
}

type floodKey struct {
	workload uint32
	bound    string
}

type floodEntry struct {
	first kernel.EgressEvent // the first refused query
	k     *kernel.Kernel
	count uint32
}

func newFlood() *flood {
	return &flood{m: map[floodKey]*floodEntry{}, wake: make(chan struct{}, 1)}
}

// add counts one refused query. The table holds one entry per workload and
// bound, so it is as bounded as the workloads are.
func (f *flood) add(workload uint32, bound string, ev kernel.EgressEvent, k *kernel.Kernel) {
	key := floodKey{workload, bound}
	f.mu.Lock()
	e := f.m[key]
	if e == nil {
		e = &floodEntry{first: ev, k: k}
		f.m[key] = e
	}
	if e.count < ^uint32(0) {
		e.count++
	}
	full := e.count == ^uint32(0)
	f.mu.Unlock()
	if full {
		return // the count saturates; Run writes it before it could wrap
	}
	select {
	case f.wake <- struct{}{}:
	default:
	}
}

// Run writes the aggregated receipts of refused floods until ctx is done,
// then once more. The agent runs it beside its DNS listeners.
func (p *Proxy) Run(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			p.Flush(context.WithoutCancel(ctx))
			return
		case <-p.flood.wake:
			select {
			case <-time.After(floodLinger):
			case <-ctx.Done():
			}
			p.Flush(context.WithoutCancel(ctx))
		}
	}
}

// Flush writes the aggregated receipts of the queries refused past a bound
// since the last flush.
func (p *Proxy) Flush(ctx context.Context) {
	f := p.flood
	f.mu.Lock()
	m := f.m
	f.m = map[floodKey]*floodEntry{}
	f.mu.Unlock()
	for key, e := range m {
		ev := e.first
		reason := "refused: " + p.limits.reason(key.bound)
		if e.count > 1 {
			ev.Attempts = e.count
			reason += fmt.Sprintf(" (%d queries aggregated into this receipt; the first is recorded)", e.count)
		}
		out := kernel.Outcome{Verdict: kernel.VerdictDeny, Guard: kernel.GuardLimit, MatchedRule: key.bound, Reason: reason}
		eg := e.k.Snapshot().DecideDNS(kernel.Seen{Event: ev, Decided: &out})
		p.record(ctx, key.workload, &eg, uint64(e.count))
	}
}
