package session

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"

	"github.com/backbay-labs/chio-agent/kernel"
)

// BenchmarkToolCall compares, in one run, a kernel decision with its
// receipt prepared without a session and with one (the journal's check,
// entry hash, append and settle; writes go to the file off the caller's
// path, not waited for). Parallel callers spread over 64 sessions.
func BenchmarkToolCall(b *testing.B) {
	for _, withSession := range []bool{false, true} {
		b.Run(fmt.Sprintf("session=%v", withSession), func(b *testing.B) {
			h := newHarness(b, Limits{MaxCalls: 1 << 40})
			h.tampered = true // no receipts kept to verify against
			var n atomic.Uint64
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					i := n.Add(1)
					call := kernel.ToolCall{ToolServer: "srv", ToolName: "read", RequestID: fmt.Sprint(i)}
					var c *Call
					if withSession {
						c = h.j.Call(Request{SessionID: fmt.Sprintf("s%d", i%64), ToolServer: "srv", ToolName: "read"})
						call.Guard = c
					}
					if _, _, err := h.k.PrepareToolCall(context.Background(), call); err != nil {
						b.Fatal(err)
					}
					if c != nil {
						c.Settle(0, 10)
					}
				}
			})
		})
	}
}

// BenchmarkDurableCall is one sequential caller that waits for each call's
// entry to be in the file, then settles it: with settle entries waiting to
// share the next call's commit (lazy), and committed at once (eager). Run
// with -count to alternate them (interleaving calls of both in one loop
// would hold each lazy settle for the other's call).
func BenchmarkDurableCall(b *testing.B) {
	for _, lazy := range []bool{true, false} {
		b.Run(fmt.Sprintf("lazy=%v", lazy), func(b *testing.B) {
			h := newHarness(b, Limits{})
			h.tampered = true
			if !lazy {
				h.j.lazyDelay = 0
			}
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				c := h.j.Call(Request{SessionID: fmt.Sprintf("s%d", i%10), ToolServer: "srv", ToolName: "read"})
				if _, _, err := h.k.PrepareToolCall(context.Background(), kernel.ToolCall{ToolServer: "srv", ToolName: "read", RequestID: fmt.Sprint(i), Guard: c}); err != nil {
					b.Fatal(err)
				}
				if err := c.Durable(context.Background()); err != nil {
					b.Fatal(err)
				}
				c.Settle(0, 1)
			}
		})
	}
}
