package agent

import (
	"context"
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/backbay-labs/chio-agent/bpf"
	"github.com/backbay-labs/chio-agent/internal/defaults"
	"github.com/backbay-labs/chio-agent/kernel"
)

// GuardLimit refuses a connection because one of the agent's resource
// bounds is full (Limits): a workload cannot make the agent hold more than
// the bounds allow, so its memory stays under a ceiling (MemoryCeiling).
const GuardLimit = kernel.GuardLimit

// Limits bound what a workload can make the agent hold. Every buffer a
// workload's connections fill is bounded by HeadBytes, and the number of
// connections that hold such buffers by the counts below; past a bound the
// connection is refused, with a receipt that names the bound.
type Limits struct {
	// HeadBytes caps the first bytes the proxy reads of any connection (TLS
	// ClientHello, HTTP/1.x request head) and every later HTTP/1.x request
	// or response head on a gated connection. Default 64 KiB. Larger heads
	// are refused.
	HeadBytes int
	// PendingPerWorkload caps one workload's accepted connections that are
	// not being relayed: waiting for first bytes, being decided, being
	// refused. Default 256. Danger: raising it raises MemoryCeiling.
	PendingPerWorkload int
	// Pending caps those connections over all workloads. Default 1024.
	Pending int
	// RelaysPerWorkload caps one workload's allowed connections being
	// relayed. Default 512.
	RelaysPerWorkload int
	// Relays caps relayed connections over all workloads. Default 2048.
	Relays int
}

// Default limits.
const (
	DefaultHeadBytes          = 64 << 10
	DefaultPendingPerWorkload = 256
	DefaultPending            = 1024
	DefaultRelaysPerWorkload  = 512
	DefaultRelays             = 2048
)

// Config keys that name each bound in receipts, as kernel.yaml spells them.
const (
	boundHeadBytes          = "agent.limits.head_bytes"
	boundPendingPerWorkload = "agent.limits.pending_per_workload"
	boundPending            = "agent.limits.pending"
	boundRelaysPerWorkload  = "agent.limits.relays_per_workload"
	boundRelays             = "agent.limits.relays"
)

func (l Limits) withDefaults() Limits {
	defaults.Set(&l.HeadBytes, DefaultHeadBytes)
	defaults.Set(&l.PendingPerWorkload, DefaultPendingPerWorkload)
	defaults.Set(&l.Pending, DefaultPending)
	defaults.Set(&l.RelaysPerWorkload, DefaultRelaysPerWorkload)
	defaults.Set(&l.Relays, DefaultRelays)
	return l
}

// Per-connection costs behind MemoryCeiling, in bytes of Go heap and stack,
// worst case. Measured figures are in docs/operations.md; these round up.
const (
	// memBase is the agent without connections: runtime, bbolt, BPF maps'
	// user-space side, metrics.
	memBase = 64 << 20
	// memConn is what every accepted connection holds besides head bytes:
	// its goroutines' stacks, socket and connection state, the dial.
	memConn = 64 << 10
	// memGateBuf is a gated HTTP connection's two 16 KiB read buffers.
	memGateBuf = 32 << 10
)

// MemoryCeiling is the most Go memory (heap and stacks) the agent can be
// made to hold by its workloads' connections with these limits: a pending
// connection holds its first bytes (at most HeadBytes, read into a buffer
// that doubles, so twice that while it grows); a relayed HTTP/1.x
// connection holds two read buffers and, while a head is parsed, that head
// twice over (its bytes and the parsed fields) on each side; other relays
// hold less. Refusals past a bound are aggregated in a table of bounded
// size. The Go collector may let garbage grow to GOGC percent above the live
// heap before it runs: set GOMEMLIMIT to this figure to hold the process to
// it.
func (l Limits) MemoryCeiling() int64 {
	l = l.withDefaults()
	h := int64(l.HeadBytes)
	pending := int64(l.Pending) * (memConn + 2*h)
	relays := int64(l.Relays) * (memConn + memGateBuf + 4*h)
	return memBase + pending + relays + overflowKeys*1024
}

// admitPending takes a pending slot for a connection of w, or names the
// bound that is full.
func (p *proxy) admitPending(w *workload) string {
	return admit(&w.pending, &p.pending, p.limits.PendingPerWorkload, p.limits.Pending, boundPendingPerWorkload, boundPending)
}

func (p *proxy) releasePending(w *workload) {
	w.pending.Add(-1)
	p.pending.Add(-1)
}

// admitRelay takes a relay slot for a connection of w, or names the bound
// that is full.
func (p *proxy) admitRelay(w *workload) string {
	return admit(&w.relays, &p.relays, p.limits.RelaysPerWorkload, p.limits.Relays, boundRelaysPerWorkload, boundRelays)
}

func (p *proxy) releaseRelay(w *workload) {
	w.relays.Add(-1)
	p.relays.Add(-1)
}

// admit takes one slot of a workload's count and of the total, or takes
// none and names the bound that is full.
func admit(mine, all *atomic.Int64, myLimit, allLimit int, myBound, allBound string) string {
	if mine.Add(1) > int64(myLimit) {
		mine.Add(-1)
		return myBound
	}
	if all.Add(1) > int64(allLimit) {
		all.Add(-1)
		mine.Add(-1)
		return allBound
	}
	return ""
}

func (p *proxy) boundReason(bound string) string {
	var n int
	what := "connections awaiting a decision"
	switch bound {
	case boundPendingPerWorkload:
		n, what = p.limits.PendingPerWorkload, "of this workload's connections awaiting a decision"
	case boundPending:
		n = p.limits.Pending
	case boundRelaysPerWorkload:
		n, what = p.limits.RelaysPerWorkload, "of this workload's connections being relayed"
	case boundRelays:
		n, what = p.limits.Relays, "connections being relayed"
	case boundHeadBytes:
		return fmt.Sprintf("head larger than %d bytes (%s)", p.limits.HeadBytes, bound)
	}
	return fmt.Sprintf("the agent already holds %d %s (%s)", n, what, bound)
}

// overflowKeys bounds the table of refusals waiting for their aggregated
// receipt: past it, refusals to new destinations are folded into one entry
// per workload and bound.
const overflowKeys = 1024

// overflow aggregates the refusals of connections turned away at accept
// because a pending bound was full. Refusing must cost less than deciding,
// or a flood would still pile up work: the accept loop only counts the
// refusal here, and one goroutine writes a receipt per workload, bound and
// destination for everything counted since its last write, whose reason
// carries the count.
type overflow struct {
	mu   sync.Mutex
	m    map[overflowKey]*overflowEntry
	wake chan struct{}
	// refused counts every refusal (for tests and status), receipted or
	// waiting.
	refused atomic.Uint64
}

type overflowKey struct {
	workload uint32
	bound    string
	dst      netip.AddrPort // zero: the entry for destinations past the table's bound
}

type overflowEntry struct {
	w     *workload
	first bpf.Original // the first refused connection's destination and process
	count uint32
	mixed bool // counts connections to several destinations
	at    time.Time
}

func newOverflow() *overflow {
	return &overflow{m: map[overflowKey]*overflowEntry{}, wake: make(chan struct{}, 1)}
}

// add counts one refused connection.
func (o *overflow) add(w *workload, orig bpf.Original, bound string, now time.Time) {
	o.refused.Add(1)
	k := overflowKey{workload: w.id, bound: bound, dst: orig.Dst}
	o.mu.Lock()
	e := o.m[k]
	if e == nil && len(o.m) >= overflowKeys {
		k.dst = netip.AddrPort{}
		if e = o.m[k]; e != nil {
			e.mixed = true
		}
	}
	if e == nil {
		e = &overflowEntry{w: w, first: orig, at: now}
		o.m[k] = e
	}
	if e.count < ^uint32(0) {
		e.count++
	}
	o.mu.Unlock()
	select {
	case o.wake <- struct{}{}:
	default:
	}
}

// run writes the aggregated receipts until ctx is done, then once more.
func (o *overflow) run(ctx context.Context, p *proxy) {
	for {
		select {
		case <-ctx.Done():
			o.flush(ctx, p)
			return
		case <-o.wake:
			o.flush(ctx, p)
		}
	}
}

func (o *overflow) flush(ctx context.Context, p *proxy) {
	o.mu.Lock()
	m := o.m
	if len(m) == 0 {
		o.mu.Unlock()
		return
	}
	o.m = map[overflowKey]*overflowEntry{}
	o.mu.Unlock()
	for k, e := range m {
		reason := "refused at accept: " + p.boundReason(k.bound)
		switch {
		case e.mixed:
			reason += fmt.Sprintf(" (%d refusals to this and other destinations aggregated into this receipt)", e.count)
		case e.count > 1:
			reason += fmt.Sprintf(" (%d refusals of this destination aggregated into this receipt)", e.count)
		}
		out := kernel.Outcome{Verdict: kernel.VerdictDeny, Guard: GuardLimit, Reason: reason}
		cn := p.newConn(nil, e.first, e.w)
		d := cn.decision(e.at, "", out)
		d.Count = e.count
		eg := cn.snap.DecideEgress(ctx, kernel.Seen{Event: cn.eg.Event, Decided: &out})
		p.record(ctx, &eg, &d)
		p.counts.denied.Add(uint64(e.count))
		p.report(d)
	}
}
