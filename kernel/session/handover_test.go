package session

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/backbay-labs/chio-agent/kernel"
)

// replica is a harness whose journal belongs to replica self.
func replica(t *testing.T, self string, l Limits) *harness {
	t.Helper()
	h := newHarness(t, l)
	h.opts.Self = self
	h.reopen()
	return h
}

// refused checks that a call of session id is refused with ErrNotHeld.
func (h *harness) refused(id string) {
	h.t.Helper()
	c := h.j.Call(Request{SessionID: id, ToolServer: "srv", ToolName: "read"})
	if _, _, err := h.k.EvaluateToolCall(context.Background(), kernel.ToolCall{ToolServer: "srv", ToolName: "read", Guard: c, RequestID: newID()}); !errors.Is(err, ErrNotHeld) {
		h.t.Fatalf("a call of %s on %s: %v, want ErrNotHeld", id, h.opts.Self, err)
	}
}

func (h *harness) report() Report {
	h.t.Helper()
	rep, err := h.j.Verify(context.Background(), "", h.lookup)
	if err != nil || !rep.OK() {
		h.t.Fatalf("verify %s: %v %+v", h.opts.Self, err, rep.Problems)
	}
	return rep
}

// TestHandoverContinuesChain: a session moves from replica a to b sealed:
// a decides none of its calls after the seal, b continues from a's
// figures in a segment linked to a's handover, receipts name the segment,
// and both journals verify with the link and the handover reported.
func TestHandoverContinuesChain(t *testing.T) {
	ctx := context.Background()
	a, b := replica(t, "a:1", Limits{MaxCalls: 3}), replica(t, "b:1", Limits{MaxCalls: 3})
	a.refused("s") // not taken yet
	if err := a.j.Start(ctx, "s", LinkNew); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		_, _, c := a.call("s", "read", 0)
		c.Settle(0, 10)
	}
	tr, err := a.j.Seal(ctx, "s", "b:1")
	if err != nil {
		t.Fatal(err)
	}
	a.refused("s")
	again, err := a.j.Seal(ctx, "s", "b:1") // b lost the answer: sent again
	if err != nil || again.Head.Hash != tr.Head.Hash || len(again.Entries) != len(tr.Entries) {
		t.Fatalf("second seal for b: %v %+v", err, again.Head)
	}
	if _, err := a.j.Seal(ctx, "s", "c:1"); !errors.Is(err, ErrNotHeld) {
		t.Fatalf("seal for c after b: %v", err)
	}
	if err := b.j.Continue(ctx, "s", tr); err != nil {
		t.Fatal(err)
	}
	out, r, c := b.call("s", "read", 0)
	c.Settle(0, 10)
	if out.Verdict != kernel.VerdictAllow {
		t.Fatalf("third call on b: %+v", out)
	}
	seg, _ := sessionMeta(t, r)["segment"].(map[string]any)
	if seg["link"] != LinkLinked || seg["linked_hash"] != tr.Head.Hash {
		t.Fatalf("receipt's segment %v, want linked to %s", seg, tr.Head.Hash)
	}
	if out, _, _ := b.call("s", "read", 0); out.Verdict != kernel.VerdictDeny || out.Guard != kernel.GuardSession {
		t.Fatalf("fourth call on b with max_calls 3: %+v", out)
	}
	ra, rb := a.report(), b.report()
	if len(ra.Handovers) != 1 || ra.Handovers[0].Hash != tr.Head.Hash || ra.Handovers[0].Holder != "b:1" {
		t.Fatalf("a's handovers %+v", ra.Handovers)
	}
	if len(rb.Links) != 1 || rb.Links[0].Link != LinkLinked || rb.Links[0].PrevHash != tr.Head.Hash {
		t.Fatalf("b's links %+v", rb.Links)
	}
}

// TestContinueRefusesBadTransfers: a transfer whose chain was changed,
// whose head lies about its figures, or that was sealed for another
// replica is refused, and the session is not taken.
func TestContinueRefusesBadTransfers(t *testing.T) {
	ctx := context.Background()
	a := replica(t, "a:1", Limits{MaxCalls: 3})
	if err := a.j.Start(ctx, "s", LinkNew); err != nil {
		t.Fatal(err)
	}
	_, _, c := a.call("s", "read", 0)
	c.Settle(0, 10)
	tr, err := a.j.Seal(ctx, "s", "b:1")
	if err != nil {
		t.Fatal(err)
	}
	changed := *tr
	changed.Entries = append([]json.RawMessage(nil), tr.Entries...)
	changed.Entries[1] = bytes.Replace(tr.Entries[1], []byte(`"allowed":true`), []byte(`"allowed":false`), 1)
	lying := *tr
	lying.Head.Totals.Calls = 0
	for name, bad := range map[string]*Transfer{"changed entry": &changed, "lying head": &lying} {
		b := replica(t, "b:1", Limits{MaxCalls: 3})
		if err := b.j.Continue(ctx, "s", bad); !errors.Is(err, ErrCorrupt) {
			t.Errorf("%s: %v, want ErrCorrupt", name, err)
		}
		b.refused("s")
	}
	other := replica(t, "c:1", Limits{MaxCalls: 3})
	if err := other.j.Continue(ctx, "s", tr); !errors.Is(err, ErrCorrupt) {
		t.Errorf("a transfer sealed for b taken by c: %v", err)
	}
}

// TestUnlinkedAndDiverged: the holder b of a session cannot be reached
// (takeover "unlinked"): replica c, which never held it, continues from
// nothing it can prove (zero figures), and its receipts say "unlinked".
// When c hands the session to a, whose own history (up to its handover
// to b) is not in c's, a adds both histories' figures: an over-count,
// never fewer.
func TestUnlinkedAndDiverged(t *testing.T) {
	ctx := context.Background()
	a, c := replica(t, "a:1", Limits{MaxCalls: 10}), replica(t, "c:1", Limits{MaxCalls: 10})
	if err := a.j.Start(ctx, "s", LinkNew); err != nil {
		t.Fatal(err)
	}
	_, _, call := a.call("s", "read", 0)
	call.Settle(0, 0)
	toB, err := a.j.Seal(ctx, "s", "b:1") // b takes it, then is cut off
	if err != nil {
		t.Fatal(err)
	}
	if err := c.j.Start(ctx, "s", LinkUnlinked); err != nil {
		t.Fatal(err)
	}
	_, r, call := c.call("s", "read", 0)
	call.Settle(0, 0)
	seg, _ := sessionMeta(t, r)["segment"].(map[string]any)
	if seg["link"] != LinkUnlinked || seg["linked_hash"] != GenesisHash {
		t.Fatalf("receipt's segment %v, want unlinked from nothing", seg)
	}
	toA, err := c.j.Seal(ctx, "s", "a:1")
	if err != nil {
		t.Fatal(err)
	}
	if err := a.j.Continue(ctx, "s", toA); err != nil {
		t.Fatal(err)
	}
	if h, _ := a.j.Holding("s"); !h.Here || h.Head.Totals.Calls != 2 {
		t.Fatalf("a's figures after the histories meet: %+v, want c's 1 + a's 1", h.Head)
	}
	if rep := c.report(); len(rep.Links) != 1 || rep.Links[0].Link != LinkUnlinked {
		t.Fatalf("c's links %+v", rep.Links)
	}
	if rep := a.report(); len(rep.Links) != 2 || rep.Links[1].Link != LinkLinked || len(rep.Handovers) != 1 || rep.Handovers[0].Hash != toB.Head.Hash {
		t.Fatalf("a's links %+v handovers %+v", rep.Links, rep.Handovers)
	}
}

// TestHintsAndHistoryWrittenAside: hints and the other replicas' entries a
// hand-over brings are written by the journal's writer (sharing its
// commits): a hint is in the file when AddHint returns, however many are
// written at once beside calls; a continued session's whole history is in
// the file once Continue returns (its next seal sends it after a
// restart); a read-only journal refuses a hint rather than wait.
func TestHintsAndHistoryWrittenAside(t *testing.T) {
	ctx := context.Background()
	a, b := replica(t, "a:1", Limits{}), replica(t, "b:1", Limits{})
	if err := a.j.Start(ctx, "s", LinkNew); err != nil {
		t.Fatal(err)
	}
	_, _, c := a.call("s", "read", 0)
	c.Settle(0, 1)
	tr, err := a.j.Seal(ctx, "s", "b:1")
	if err != nil {
		t.Fatal(err)
	}
	if err := b.j.Start(ctx, "own", LinkNew); err != nil {
		t.Fatal(err)
	}
	const n = 40
	errs := make(chan error, n+1)
	for i := range n {
		go func() {
			if i%4 == 0 {
				_, _, c := b.call("own", "read", 0) // calls share the writer
				c.Settle(0, 1)
			}
			errs <- b.j.AddHint(fmt.Sprintf("h-%d", i%10), fmt.Sprintf("p%d:1", i))
		}()
	}
	go func() { errs <- b.j.Continue(ctx, "s", tr) }()
	for range n + 1 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	b.reopen()
	for i := range 10 {
		h, err := b.j.Holding(fmt.Sprintf("h-%d", i))
		if err != nil || len(h.Hints) != n/10 {
			t.Fatalf("h-%d after a restart: hints %v, %v; want %d", i, h.Hints, err, n/10)
		}
	}
	moved, err := b.j.Seal(ctx, "s", "c:1")
	if err != nil {
		t.Fatal(err)
	}
	if len(moved.Entries) != len(tr.Entries)+2 { // a's run, b's segment, b's handover
		t.Fatalf("b's transfer after a restart has %d entries, want %d", len(moved.Entries), len(tr.Entries)+2)
	}
	b.j.Close()
	ro, err := Open(b.path, Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer ro.Close()
	if err := ro.AddHint("x", "p:1"); err == nil || !strings.Contains(err.Error(), "read-only") {
		t.Fatalf("a hint in a read-only journal: %v", err)
	}
}
