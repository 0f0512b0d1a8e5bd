package session

import (
	"fmt"
	"maps"
	"time"
)

// Limits bound one session. Zero means unlimited.
type Limits struct {
	// MaxCalls bounds the allowed calls of a session (per epoch).
	MaxCalls int64
	// MaxCallsPerTool bounds the allowed calls of one tool in a session.
	MaxCallsPerTool int64
	// MaxRequestBytes bounds the request body bytes of a session's allowed
	// calls. A call whose declared length would pass it is denied; a body
	// of unknown length may reach what remains, and is cut there.
	MaxRequestBytes int64
	// MaxResponseBytes bounds the response body bytes of a session. They
	// are known only once a response is done: a call is admitted while the
	// total is below the bound, so the call that crosses it completes and
	// the next is denied.
	MaxResponseBytes int64
	// IdleExpiry ends a session after this long without an entry: the next
	// call naming its id starts a new epoch with fresh totals. 0: never.
	IdleExpiry time.Duration
}

// Matched rules of the session guard's denials: the kernel.yaml keys.
const (
	RuleMaxCalls         = "sessions.max_calls"
	RuleMaxCallsPerTool  = "sessions.max_calls_per_tool"
	RuleMaxRequestBytes  = "sessions.max_request_bytes"
	RuleMaxResponseBytes = "sessions.max_response_bytes"
)

// Totals are a session's figures in its current epoch.
type Totals struct {
	// Calls counts allowed calls, Denied denied ones.
	Calls  int64 `json:"calls"`
	Denied int64 `json:"denied"`
	// ToolCalls counts allowed calls per tool name.
	ToolCalls map[string]int64 `json:"tool_calls,omitempty"`
	// RequestBytes counts reserved request bytes, corrected to what was
	// read as calls settle.
	RequestBytes int64 `json:"request_bytes"`
	// ResponseBytes counts settled response bytes.
	ResponseBytes int64 `json:"response_bytes"`
}

// Head is a session's state: where its chain ends and its totals. It is
// derived from the chain (Verify recomputes it) and stored beside it so a
// restart or a reload after eviction reads one record, not the chain.
type Head struct {
	SessionID string `json:"session_id"`
	Epoch     uint64 `json:"epoch"`
	Seq       uint64 `json:"seq"`
	Hash      string `json:"hash"`
	// LastActive is the timestamp of the last entry, unix seconds.
	LastActive int64  `json:"last_active"`
	Totals     Totals `json:"totals"`
	// Holder is the replica holding the session as its last handover or
	// segment entry says; "" when the chain has neither (one replica).
	// A journal whose Self is another replica decides none of its calls.
	Holder string `json:"holder,omitempty"`
	// Segment is where this replica's current run of the session starts
	// (its last segment entry); nil when the chain has none.
	Segment *SegmentStart `json:"segment,omitempty"`
}

// SegmentStart names a segment entry: receipts of calls in the segment
// carry it in metadata.session.segment.
type SegmentStart struct {
	// Seq is the segment entry's seq, Link its link, and LinkedHash its
	// prev_hash: the last hash its holder could prove.
	Seq        uint64 `json:"start"`
	Link       string `json:"link"`
	LinkedHash string `json:"linked_hash"`
}

// cloneTotals copies t (its map included).
func cloneTotals(t Totals) Totals {
	t.ToolCalls = maps.Clone(t.ToolCalls)
	return t
}

// openCall is an allowed call not yet settled.
type openCall struct {
	epoch    uint64
	reserved int64
	tool     string
	server   string
}

// chainState is a session's state as its entries build it. apply is the
// one implementation of the accounting rule: the journal runs it on each
// entry it appends, Verify on each entry it reads.
type chainState struct {
	head Head
	open map[uint64]openCall
}

func newChainState(id string) *chainState {
	return &chainState{head: Head{SessionID: id, Hash: GenesisHash}, open: map[uint64]openCall{}}
}

// expired says whether a call at now starts a new epoch.
func (st *chainState) expired(now int64, idle time.Duration) bool {
	if st.head.Seq == 0 {
		return true // the first epoch
	}
	// Entries carry whole seconds: an expiry is at least one.
	secs := int64((idle + time.Second - 1) / time.Second)
	return idle > 0 && now-st.head.LastActive >= secs
}

// check returns the rule a call declaring request bytes (-1: unknown) would break,
// and the reason in words with the figures, or "" when it is within every
// limit. It is evaluated on the epoch the call belongs to.
func check(l Limits, id string, t *Totals, tool string, declared int64) (rule, reason string, figures map[string]any) {
	deny := func(rule string, max, used int64, words string) (string, string, map[string]any) {
		return rule, fmt.Sprintf("session %s %s (%s %d)", id, words, rule, max),
			map[string]any{"limit": rule, "max": max, "used": used}
	}
	switch {
	case l.MaxCalls > 0 && t.Calls >= l.MaxCalls:
		return deny(RuleMaxCalls, l.MaxCalls, t.Calls, fmt.Sprintf("has made %d calls", t.Calls))
	case l.MaxCallsPerTool > 0 && t.ToolCalls[tool] >= l.MaxCallsPerTool:
		return deny(RuleMaxCallsPerTool, l.MaxCallsPerTool, t.ToolCalls[tool], fmt.Sprintf("has made %d calls of %s", t.ToolCalls[tool], tool))
	case l.MaxRequestBytes > 0 && (declared < 0 && t.RequestBytes >= l.MaxRequestBytes || declared > 0 && t.RequestBytes+declared > l.MaxRequestBytes):
		words := fmt.Sprintf("has sent %d request bytes; this request declares %d", t.RequestBytes, declared)
		if declared < 0 {
			words = fmt.Sprintf("has sent %d request bytes", t.RequestBytes)
		}
		rule, reason, f := deny(RuleMaxRequestBytes, l.MaxRequestBytes, t.RequestBytes, words)
		if declared > 0 {
			f["requested"] = declared
		}
		return rule, reason, f
	case l.MaxResponseBytes > 0 && t.ResponseBytes >= l.MaxResponseBytes:
		return deny(RuleMaxResponseBytes, l.MaxResponseBytes, t.ResponseBytes, fmt.Sprintf("has received %d response bytes", t.ResponseBytes))
	}
	return "", "", nil
}

// apply advances the state by one entry already checked to extend the
// chain (seq, prev_hash, hash).
func (st *chainState) apply(e *Entry) {
	h := &st.head
	if e.Epoch != h.Epoch {
		h.Epoch = e.Epoch
		h.Totals = Totals{}
	}
	h.Seq, h.Hash, h.LastActive = e.Seq, e.EntryHash, e.Timestamp
	t := &h.Totals
	switch e.Kind {
	case KindHandover:
		// Sealed with no call in flight: a call still open was cut by a
		// crash and is never settled (its reservation stays counted).
		h.Holder = e.Holder
		clear(st.open)
	case KindSegment:
		// Calls open before it were settled (or never will be) elsewhere.
		h.Holder, h.Epoch, h.Totals = e.Holder, e.Epoch, Totals{}
		h.Segment = &SegmentStart{Seq: e.Seq, Link: e.Link, LinkedHash: e.PrevHash}
		if e.Totals != nil {
			h.Totals = cloneTotals(*e.Totals)
		}
		clear(st.open)
	case KindCall:
		if !e.Allowed {
			t.Denied++
			return
		}
		t.Calls++
		if t.ToolCalls == nil {
			t.ToolCalls = map[string]int64{}
		}
		t.ToolCalls[e.ToolName]++
		t.RequestBytes += e.RequestBytes
		st.open[e.Seq] = openCall{epoch: e.Epoch, reserved: e.RequestBytes, tool: e.ToolName, server: e.ToolServer}
	case KindSettle:
		c, ok := st.open[e.CallSeq]
		if !ok {
			return
		}
		delete(st.open, e.CallSeq)
		if c.epoch != h.Epoch {
			return // the call's epoch has ended; its figures went with it
		}
		t.RequestBytes += e.RequestBytes - c.reserved
		t.ResponseBytes += e.ResponseBytes
	}
}
