package session

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/backbay-labs/chio-agent/kernel"
	"github.com/backbay-labs/chio-agent/kernel/jcs"
)

// TestExactlyOnceAdmission: N concurrent calls of one session against
// max_calls K admit exactly K, while calls of other sessions run beside
// them and are counted apart.
func TestExactlyOnceAdmission(t *testing.T) {
	const n, k, others = 384, 17, 8
	h := newHarness(t, Limits{MaxCalls: k})
	var allowed, denied atomic.Int64
	otherAllowed := make([]atomic.Int64, others)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			sid := "hot"
			if i%4 == 0 {
				sid = fmt.Sprintf("cold-%d", (i/4)%others)
			}
			out, _, c := h.call(sid, "read", 0)
			c.Settle(0, 0)
			switch {
			case sid != "hot":
				if out.Verdict == kernel.VerdictAllow {
					otherAllowed[(i/4)%others].Add(1)
				}
			case out.Verdict == kernel.VerdictAllow:
				allowed.Add(1)
			default:
				if out.Guard != kernel.GuardSession {
					t.Errorf("denied by %q, want %s", out.Guard, kernel.GuardSession)
				}
				denied.Add(1)
			}
		}()
	}
	close(start)
	wg.Wait()
	if allowed.Load() != k || allowed.Load()+denied.Load() != n*3/4 {
		t.Fatalf("admitted %d and denied %d of %d calls against max_calls %d", allowed.Load(), denied.Load(), n*3/4, k)
	}
	for i := range others {
		if got := otherAllowed[i].Load(); got != n/4/others {
			t.Errorf("session cold-%d: %d allowed", i, got)
		}
	}
	h.j.Flush(context.Background())
	head, ok, err := h.j.Head("hot")
	if err != nil || !ok || head.Totals.Calls != k || head.Totals.Denied != n*3/4-k {
		t.Fatalf("head %+v ok %v err %v", head, ok, err)
	}
}

// TestDenialNamesGuardAndFigures: the receipt of a call past a limit names
// the session guard, the kernel.yaml key and the figures, and its entry.
func TestDenialNamesGuardAndFigures(t *testing.T) {
	h := newHarness(t, Limits{MaxCallsPerTool: 2})
	for range 2 {
		if out, _, _ := h.call("s1", "write", 0); out.Verdict != kernel.VerdictAllow {
			t.Fatalf("call denied: %+v", out)
		}
	}
	out, r, c := h.call("s1", "write", 0)
	if out.Verdict != kernel.VerdictDeny || r.Decision.Guard != kernel.GuardSession || !strings.Contains(r.Decision.Reason, "has made 2 calls of write (sessions.max_calls_per_tool 2)") {
		t.Fatalf("outcome %+v decision %+v", out, r.Decision)
	}
	m := sessionMeta(t, r)
	if m["limit"] != RuleMaxCallsPerTool || m["max"] != 2.0 || m["used"] != 2.0 || m["seq"] != 3.0 || m["entry_hash"] != c.Entry().EntryHash || m["id"] != "s1" {
		t.Fatalf("metadata.session = %v", m)
	}
	if c.Entry().ReceiptID != r.ID || c.Entry().Guard != kernel.GuardSession || c.Entry().Allowed {
		t.Fatalf("entry %+v", c.Entry())
	}
	// Another tool of the same session is still allowed; a policy denial
	// is journaled but spends nothing.
	if out, _, _ := h.call("s1", "read", 0); out.Verdict != kernel.VerdictAllow {
		t.Fatalf("read denied: %+v", out)
	}
	if out, _, c := h.call("s1", "delete", 0); out.Verdict != kernel.VerdictDeny || out.Guard != kernel.GuardToolAccess || c.Entry().Guard != kernel.GuardToolAccess {
		t.Fatalf("delete: %+v", out)
	}
	h.j.Flush(context.Background())
	head, _, _ := h.j.Head("s1")
	if head.Totals.Calls != 3 || head.Totals.Denied != 2 || head.Totals.ToolCalls["write"] != 2 {
		t.Fatalf("totals %+v", head.Totals)
	}
}

// TestResponseBytesSettle: response bytes are known only after the call;
// the call that crosses max_response_bytes completes, the next is denied.
func TestResponseBytesSettle(t *testing.T) {
	h := newHarness(t, Limits{MaxResponseBytes: 100})
	out, _, c := h.call("s", "read", 0)
	if out.Verdict != kernel.VerdictAllow {
		t.Fatal(out)
	}
	c.Settle(0, 60)
	out, _, c = h.call("s", "read", 0) // 60 < 100: admitted
	if out.Verdict != kernel.VerdictAllow {
		t.Fatal(out)
	}
	c.Settle(0, 70) // crosses to 130: this call completed
	out, r, _ := h.call("s", "read", 0)
	if out.Verdict != kernel.VerdictDeny || out.MatchedRule != RuleMaxResponseBytes || !strings.Contains(r.Decision.Reason, "has received 130 response bytes") {
		t.Fatalf("after crossing: %+v", out)
	}
	c.Settle(0, 1000) // a second settle is ignored
	h.j.Flush(context.Background())
	head, _, _ := h.j.Head("s")
	if head.Totals.ResponseBytes != 130 {
		t.Fatalf("response bytes %d", head.Totals.ResponseBytes)
	}
}

// TestRequestBytes: a declared length past what is left is denied; a body
// of unknown length may read what is left, and settles what it read.
func TestRequestBytes(t *testing.T) {
	h := newHarness(t, Limits{MaxRequestBytes: 1000})
	out, _, c := h.call("s", "write", 600)
	if out.Verdict != kernel.VerdictAllow {
		t.Fatal(out)
	}
	c.Settle(600, 0)
	if out, _, _ := h.call("s", "write", 401); out.Verdict != kernel.VerdictDeny || out.MatchedRule != RuleMaxRequestBytes {
		t.Fatalf("401 bytes over 400 left: %+v", out)
	}
	out, _, c = h.call("s", "write", -1)
	if out.Verdict != kernel.VerdictAllow || c.BodyLimit() != 400 {
		t.Fatalf("unknown length: %+v limit %d", out, c.BodyLimit())
	}
	c.Settle(150, 0) // read 150 of the 400 reserved
	h.j.Flush(context.Background())
	head, _, _ := h.j.Head("s")
	if head.Totals.RequestBytes != 750 {
		t.Fatalf("request bytes %d, want 750", head.Totals.RequestBytes)
	}
	out, _, c = h.call("s", "write", 250)
	if out.Verdict != kernel.VerdictAllow {
		t.Fatal(out)
	}
	c.Settle(250, 0)
	if out, _, _ := h.call("s", "write", -1); out.Verdict != kernel.VerdictDeny {
		t.Fatalf("unknown length with nothing left: %+v", out)
	}
	if out, _, c := h.call("s", "write", 0); out.Verdict != kernel.VerdictAllow {
		t.Fatalf("an empty body spends nothing: %+v", out)
	} else {
		c.Settle(0, 0)
	}
}

// TestIdleExpiry: a session idle past its expiry starts a new epoch with
// fresh totals, in the same chain.
func TestIdleExpiry(t *testing.T) {
	h := newHarness(t, Limits{MaxCalls: 1, IdleExpiry: time.Minute})
	out, _, c := h.call("s", "read", 0)
	if out.Verdict != kernel.VerdictAllow {
		t.Fatal(out)
	}
	c.Settle(0, 0)
	h.clock.Add(59 * time.Second)
	if out, _, _ := h.call("s", "read", 0); out.Verdict != kernel.VerdictDeny {
		t.Fatal("second call inside the expiry was allowed")
	}
	h.clock.Add(time.Minute)
	out, r, c := h.call("s", "read", 0)
	if out.Verdict != kernel.VerdictAllow || sessionMeta(t, r)["epoch"] != 2.0 || sessionMeta(t, r)["seq"] != 4.0 {
		t.Fatalf("after expiry: %+v %v", out, sessionMeta(t, r))
	}
	// An unsettled call keeps its session in memory; settled, it goes,
	// and the reload from the file keeps the state.
	h.clock.Add(2 * time.Minute)
	if n := h.j.Sweep(); n != 1 {
		t.Fatalf("a session with a call in flight was evicted")
	}
	c.Settle(0, 0)
	h.j.Flush(context.Background())
	h.clock.Add(2 * time.Minute)
	if n := h.j.Sweep(); n != 0 {
		t.Fatalf("%d sessions still in memory", n)
	}
	out, r, _ = h.call("s", "read", 0)
	if out.Verdict != kernel.VerdictAllow || sessionMeta(t, r)["epoch"] != 3.0 || sessionMeta(t, r)["seq"] != 6.0 {
		t.Fatalf("after eviction: %+v %v", out, sessionMeta(t, r))
	}
}

// TestRestartKeepsJournal: a reopened journal continues each chain and its
// totals; the limit still holds across the restart.
func TestRestartKeepsJournal(t *testing.T) {
	h := newHarness(t, Limits{MaxCalls: 3})
	for range 2 {
		_, _, c := h.call("s", "read", 0)
		c.Settle(0, 10)
	}
	h.reopen()
	out, r, _ := h.call("s", "read", 0)
	if out.Verdict != kernel.VerdictAllow || sessionMeta(t, r)["seq"] != 5.0 {
		t.Fatalf("after restart: %+v %v", out, sessionMeta(t, r))
	}
	if out, _, _ := h.call("s", "read", 0); out.Verdict != kernel.VerdictDeny {
		t.Fatal("fourth call allowed across a restart")
	}
	entries, err := h.j.Entries("s")
	if err != nil || len(entries) != 6 {
		t.Fatalf("%d entries, %v", len(entries), err)
	}
}

// TestInvalidSessionFailsClosed: a malformed id is refused, with no receipt.
func TestInvalidSessionFailsClosed(t *testing.T) {
	h := newHarness(t, Limits{})
	for _, id := range []string{"", "a b", strings.Repeat("x", MaxIDBytes+1), "é", "a\x00b"} {
		c := h.j.Call(Request{SessionID: id, ToolServer: "srv", ToolName: "read"})
		out, _, err := h.k.EvaluateToolCall(context.Background(), kernel.ToolCall{ToolServer: "srv", ToolName: "read", Guard: c})
		if err == nil || out.Verdict != kernel.VerdictDeny || c.Allowed() {
			t.Fatalf("id %q: out %+v err %v", id, out, err)
		}
	}
}

func FuzzValidID(f *testing.F) {
	f.Add("abc")
	f.Add("a\x7f")
	f.Fuzz(func(t *testing.T, id string) {
		if !ValidID(id) {
			return
		}
		sid, seq, ok := splitKey(entryKey(id, 42))
		if !ok || sid != id || seq != 42 {
			t.Fatalf("key of %q does not split back", id)
		}
	})
}

// FuzzEntryEncodingIsCanonical: the hand-written encoder agrees with
// jcs.Marshal of the struct, for any strings and integers (the only
// encoder of entries is checked against the general one).
func FuzzEntryEncodingIsCanonical(f *testing.F) {
	f.Add("s", "read", "\u2028\"\\x", int64(-1), uint64(1<<63), true)
	f.Fuzz(func(t *testing.T, sid, tool, guard string, n int64, u uint64, allowed bool) {
		e := Entry{Schema: EntrySchema, SessionID: sid, Epoch: u, Seq: u / 3, PrevHash: GenesisHash, Kind: KindCall, Timestamp: n,
			ToolServer: guard + tool, ToolName: tool, Allowed: allowed, Guard: guard, CallSeq: u % 7, RequestBytes: n, ResponseBytes: -n}
		for _, full := range []bool{false, true} {
			if full {
				e.EntryHash, e.ReceiptID = "h"+sid, tool
			}
			got, err := e.appendCanonical(nil, true)
			if !utf8.ValidString(sid) || !utf8.ValidString(tool) || !utf8.ValidString(guard) {
				// encoding/json would write U+FFFD; entries refuse instead.
				if err == nil {
					t.Fatal("invalid UTF-8 encoded")
				}
				return
			}
			want, werr := jcs.Marshal(e)
			if err != nil || werr != nil || string(got) != string(want) {
				t.Fatalf("\n got %s\nwant %s", got, want)
			}
		}
	})
}

// TestSessionFloodBoundsMemory: an attacker naming a new session per call
// cannot grow the journal's memory past MaxInMemory; dropped sessions come
// back from the file with their chain and totals.
func TestSessionFloodBoundsMemory(t *testing.T) {
	h := newHarness(t, Limits{MaxCalls: 1})
	h.opts.MaxInMemory = 20
	h.reopen()
	for i := range 300 {
		out, _, c := h.call(fmt.Sprintf("flood-%d", i), "read", 0)
		if out.Verdict != kernel.VerdictAllow {
			t.Fatalf("call %d: %+v", i, out)
		}
		c.Settle(0, 0)
		if n := h.j.InMemory(); n > 20 {
			t.Fatalf("%d sessions in memory, bound 20", n)
		}
	}
	// The first session was dropped long ago: its limit still holds.
	out, r, _ := h.call("flood-0", "read", 0)
	if out.Verdict != kernel.VerdictDeny || sessionMeta(t, r)["seq"] != 3.0 {
		t.Fatalf("flood-0 after eviction: %+v %v", out, sessionMeta(t, r))
	}
}

// TestHoldUntilReleased: with HoldUntilReleased, a call's entry reaches the
// file only once released, and the session's later entries wait behind it,
// so the file never holds an entry whose receipt might still be lost.
func TestHoldUntilReleased(t *testing.T) {
	h := newHarness(t, Limits{})
	h.opts.HoldUntilReleased = true
	h.reopen()
	ctx := context.Background()
	calls := make([]*Call, 2)
	for i := range calls {
		calls[i] = h.j.Call(Request{SessionID: "held", ToolServer: "srv", ToolName: "read"})
		_, r, err := h.k.EvaluateToolCall(ctx, kernel.ToolCall{ToolServer: "srv", ToolName: "read", RequestID: newID(), Guard: calls[i]})
		if err != nil {
			t.Fatal(err)
		}
		b, _ := json.Marshal(r)
		h.receipts[r.ID] = b
	}
	calls[1].Release() // the second is released, but waits behind the first
	calls[1].Settle(0, 5)
	if err := h.j.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if es, _ := h.j.Entries("held"); len(es) != 0 {
		t.Fatalf("%d entries in the file before the first release", len(es))
	}
	calls[0].Release()
	for _, c := range calls {
		if err := c.Durable(ctx); err != nil {
			t.Fatal(err)
		}
	}
	calls[0].Settle(0, 5)
	h.j.Flush(ctx)
	es, _ := h.j.Entries("held")
	if len(es) != 4 || es[0].Seq != 1 || es[3].Kind != KindSettle {
		t.Fatalf("entries %+v", es)
	}
}
