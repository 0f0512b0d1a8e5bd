package session

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// closeRO closes the replicas' journals and opens them read-only, as the
// CLI does.
func closeRO(t *testing.T, hs ...*harness) []*Journal {
	t.Helper()
	var out []*Journal
	for _, h := range hs {
		if h.j != nil {
			if err := h.j.Close(); err != nil {
				t.Fatal(err)
			}
			h.j = nil
		}
		j, err := Open(h.path, Options{ReadOnly: true})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { j.Close() })
		out = append(out, j)
	}
	return out
}

// forge rewrites entry seq of session id with fn and re-hashes it and the
// rest of its run, as someone without the signing key could: only the
// receipts, which Stitch does not read, would tell.
func (h *harness) forge(id string, seq uint64, fn func(*Entry)) {
	h.t.Helper()
	if h.j != nil {
		h.j.Close()
		h.j = nil
	}
	h.tampered = true
	h.edit(func(eb, _ *bolt.Bucket) error {
		var keys, vals [][]byte
		prefix := append([]byte(id), 0)
		c := eb.Cursor()
		for k, v := c.Seek(entryKey(id, seq)); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
			keys, vals = append(keys, bytes.Clone(k)), append(vals, bytes.Clone(v))
		}
		prev := ""
		for i, k := range keys {
			e, err := decodeEntry(vals[i])
			if err != nil {
				return err
			}
			switch {
			case i == 0:
				fn(&e)
			case e.Kind == KindSegment:
				return nil // the next run links elsewhere
			default:
				e.PrevHash = prev
			}
			if e.EntryHash, err = e.Hash(); err != nil {
				return err
			}
			prev = e.EntryHash
			b, err := e.encode()
			if err != nil {
				return err
			}
			if err := eb.Put(k, b); err != nil {
				return err
			}
		}
		return nil
	})
}

func (h *harness) calls(id string, n int) {
	h.t.Helper()
	for range n {
		_, _, c := h.call(id, "read", 1)
		c.Settle(1, 10)
		h.clock.Add(time.Second)
	}
}

// chain moves session s over replicas hs in turn: the first starts it
// (2 calls), seals it for the next (1 call each), and so on. It returns
// the seq of each one's segment entry.
func chain(t *testing.T, hs ...*harness) []uint64 {
	t.Helper()
	ctx := context.Background()
	if err := hs[0].j.Start(ctx, "s", LinkNew); err != nil {
		t.Fatal(err)
	}
	hs[0].calls("s", 2)
	segs := []uint64{1}
	for i, h := range hs[1:] {
		tr, err := hs[i].j.Seal(ctx, "s", h.opts.Self)
		if err != nil {
			t.Fatal(err)
		}
		if err := h.j.Continue(ctx, "s", tr); err != nil {
			t.Fatal(err)
		}
		segs = append(segs, tr.Head.Seq+1)
		h.clock.Add(time.Duration(10*(i+1)) * time.Second)
		h.calls("s", 1)
	}
	return segs
}

func stitch(t *testing.T, js ...*Journal) *StitchedSession {
	t.Helper()
	out, err := Stitch(context.Background(), js, "")
	if err != nil {
		t.Fatal(err)
	}
	if len(out.Sessions) != 1 {
		t.Fatalf("%d sessions stitched, want 1: %+v", len(out.Sessions), out.Sessions)
	}
	return out.Sessions[0]
}

// kinds lists a session's findings as "kind@seq".
func kinds(s *StitchedSession) string {
	var out []string
	for _, f := range s.Findings {
		out = append(out, f.Kind)
	}
	return strings.Join(out, ",")
}

// TestStitch: a session's runs over three replicas' journals, as they
// are, forged, partial and forked. Each case names the findings it must
// give (kinds in order) and checks one detail of the worst.
func TestStitch(t *testing.T) {
	lim := Limits{MaxCalls: 10}
	three := func(t *testing.T) (a, b, c *harness) {
		return replica(t, "a:1", lim), replica(t, "b:1", lim), replica(t, "c:1", lim)
	}
	t.Run("linked over three journals", func(t *testing.T) {
		a, b, c := three(t)
		chain(t, a, b, c)
		out, err := Stitch(context.Background(), closeRO(t, a, b, c), "")
		if err != nil {
			t.Fatal(err)
		}
		s := out.Sessions[0]
		if len(s.Findings) != 0 || out.Resolved != 2 || out.Segments[LinkNew] != 1 || out.Segments[LinkLinked] != 2 {
			t.Fatalf("findings %+v, resolved %d, segments %v", s.Findings, out.Resolved, out.Segments)
		}
		if s.Calls != 4 || s.Totals == nil || s.Totals.Calls != 4 || len(s.Holders) != 1 || s.Holders[0] != "c:1" || len(s.Runs) != 3 {
			t.Fatalf("session %+v totals %+v", s, s.Totals)
		}
	})
	t.Run("a journal not given", func(t *testing.T) {
		a, b, c := three(t)
		chain(t, a, b, c)
		js := closeRO(t, a, b, c)
		s := stitch(t, js[1], js[2])
		if kinds(s) != FindingUnresolved || s.Findings[0].Journal != b.path {
			t.Fatalf("findings %+v, want b's link unresolved", s.Findings)
		}
	})
	t.Run("a link to a hash no journal has", func(t *testing.T) {
		a, b, _ := three(t)
		bSeg := chain(t, a, b)[1]
		b.forge("s", bSeg, func(e *Entry) { e.PrevHash = strings.Repeat("ab", 32) })
		s := stitch(t, closeRO(t, a, b)...)
		// b's run now continues nothing a handed over, so a's handover is
		// taken by nobody.
		if kinds(s) != FindingUnresolved+","+FindingHanded || s.Findings[0].Journal != b.path || s.Findings[0].Seq != bSeg {
			t.Fatalf("findings %+v", s.Findings)
		}
	})
	t.Run("a link to an entry that is no handover", func(t *testing.T) {
		a, b, _ := three(t)
		bSeg := chain(t, a, b)[1]
		js := closeRO(t, a)
		es, err := js[0].Entries("s")
		if err != nil {
			t.Fatal(err)
		}
		b.forge("s", bSeg, func(e *Entry) { e.PrevHash = es[1].EntryHash })
		s := stitch(t, js[0], closeRO(t, b)[0])
		if kinds(s) != FindingBroken+","+FindingHanded || !strings.Contains(s.Findings[0].Detail, "not another replica's handover") {
			t.Fatalf("findings %+v", s.Findings)
		}
	})
	t.Run("carried figures differ from the handover's", func(t *testing.T) {
		a, b, _ := three(t)
		bSeg := chain(t, a, b)[1]
		b.forge("s", bSeg, func(e *Entry) { e.Totals.Calls = 0 }) // a fresh budget
		s := stitch(t, closeRO(t, a, b)...)
		if kinds(s) != FindingBroken || s.Findings[0].Journal != b.path || !strings.Contains(s.Findings[0].Detail, "adds up to epoch 1 (2 calls") {
			t.Fatalf("findings %+v", s.Findings)
		}
	})
	t.Run("a chain that fails in its journal", func(t *testing.T) {
		a, b, c := three(t)
		chain(t, a, b, c)
		a.j.Close()
		a.j = nil
		a.tampered = true
		a.edit(func(eb, _ *bolt.Bucket) error {
			mutateEntry(t, eb, "s", 2, func(e *Entry) { e.RequestBytes = 0 }) // not re-hashed
			return nil
		})
		s := stitch(t, closeRO(t, a, b, c)...)
		if kinds(s) != FindingBroken+","+FindingUnresolved || s.Findings[0].Journal != a.path || s.Findings[0].Seq != 2 {
			t.Fatalf("findings %+v", s.Findings)
		}
	})
	t.Run("two takers of one handover", func(t *testing.T) {
		ctx := context.Background()
		a, b1, b2 := replica(t, "a:1", lim), replica(t, "b:1", lim), replica(t, "b:1", lim) // one self, two journals
		if err := a.j.Start(ctx, "s", LinkNew); err != nil {
			t.Fatal(err)
		}
		a.calls("s", 2)
		tr, err := a.j.Seal(ctx, "s", "b:1")
		if err != nil {
			t.Fatal(err)
		}
		for _, b := range []*harness{b1, b2} {
			if err := b.j.Continue(ctx, "s", tr); err != nil {
				t.Fatal(err)
			}
			b.calls("s", 1)
		}
		s := stitch(t, closeRO(t, a, b1, b2)...)
		if kinds(s) != FindingFork || s.Findings[0].Journal != b2.path || !strings.Contains(s.Findings[0].Detail, "a second taker") || s.Calls != 4 {
			t.Fatalf("findings %+v calls %d", s.Findings, s.Calls)
		}
	})
	unlinked := func(t *testing.T, later time.Duration) *StitchedSession {
		ctx := context.Background()
		a, c := replica(t, "a:1", lim), replica(t, "c:1", lim)
		if err := a.j.Start(ctx, "s", LinkNew); err != nil {
			t.Fatal(err)
		}
		c.clock.Add(later)
		if err := c.j.Start(ctx, "s", LinkUnlinked); err != nil { // a is thought down
			t.Fatal(err)
		}
		a.calls("s", 4) // seconds 0 to 3
		c.calls("s", 2)
		return stitch(t, closeRO(t, a, c)...)
	}
	t.Run("an unlinked holder after the previous one stopped", func(t *testing.T) {
		s := unlinked(t, 10*time.Second)
		if kinds(s) != FindingUnlinked || len(s.Holders) != 2 || s.Calls != 6 || s.Totals != nil {
			t.Fatalf("findings %+v holders %v calls %d", s.Findings, s.Holders, s.Calls)
		}
	})
	t.Run("two unlinked holders deciding at once", func(t *testing.T) {
		s := unlinked(t, time.Second)
		if kinds(s) != FindingUnlinked+","+FindingFork || !strings.Contains(s.Findings[1].Detail, "two holders at once") {
			t.Fatalf("findings %+v", s.Findings)
		}
	})
	t.Run("histories that diverged and met", func(t *testing.T) {
		ctx := context.Background()
		a, c := replica(t, "a:1", lim), replica(t, "c:1", lim)
		if err := a.j.Start(ctx, "s", LinkNew); err != nil {
			t.Fatal(err)
		}
		a.calls("s", 2)
		if _, err := a.j.Seal(ctx, "s", "b:1"); err != nil { // b is cut off
			t.Fatal(err)
		}
		c.clock.Add(10 * time.Second)
		if err := c.j.Start(ctx, "s", LinkUnlinked); err != nil {
			t.Fatal(err)
		}
		c.calls("s", 1)
		tr, err := c.j.Seal(ctx, "s", "a:1")
		if err != nil {
			t.Fatal(err)
		}
		if err := a.j.Continue(ctx, "s", tr); err != nil { // a adds both
			t.Fatal(err)
		}
		s := stitch(t, closeRO(t, a, c)...)
		if kinds(s) != FindingUnlinked+","+FindingHanded || s.Totals == nil || s.Totals.Calls != 3 || s.Holders[0] != "a:1" {
			t.Fatalf("findings %+v totals %+v", s.Findings, s.Totals)
		}
	})
	t.Run("one journal given twice", func(t *testing.T) {
		a := replica(t, "a:1", lim)
		js := closeRO(t, a, a)
		if _, err := Stitch(context.Background(), js, ""); err == nil || !strings.Contains(err.Error(), "given twice") {
			t.Fatalf("err %v", err)
		}
	})
}
