package session

import (
	"context"
	"encoding/json"
	"strings"
	"testing"

	bolt "go.etcd.io/bbolt"
)

// tamperHarness leaves a closed journal of three sessions (calls, denials,
// settles) for a test to damage.
func tamperHarness(t *testing.T) *harness {
	h := newHarness(t, Limits{MaxCalls: 3})
	for _, sid := range []string{"alpha", "beta", "gamma"} {
		for i := range 4 {
			_, _, c := h.call(sid, "read", int64(i))
			c.Settle(int64(i), 10)
		}
	}
	h.j.Close()
	h.j = nil
	h.tampered = true
	return h
}

func (h *harness) edit(fn func(eb, hb *bolt.Bucket) error) {
	h.t.Helper()
	db, err := bolt.Open(h.path, 0o600, nil)
	if err != nil {
		h.t.Fatal(err)
	}
	defer db.Close()
	if err := db.Update(func(tx *bolt.Tx) error { return fn(tx.Bucket(bktEntries), tx.Bucket(bktHeads)) }); err != nil {
		h.t.Fatal(err)
	}
}

func (h *harness) verify(id string, lookup ReceiptLookup) Report {
	h.t.Helper()
	j, err := Open(h.path, Options{ReadOnly: true})
	if err != nil {
		h.t.Fatal(err)
	}
	defer j.Close()
	rep, err := j.Verify(context.Background(), id, lookup)
	if err != nil {
		h.t.Fatal(err)
	}
	return rep
}

func mutateEntry(t *testing.T, eb *bolt.Bucket, id string, seq uint64, fn func(*Entry)) {
	t.Helper()
	k := entryKey(id, seq)
	e, err := decodeEntry(eb.Get(k))
	if err != nil {
		t.Fatal(err)
	}
	fn(&e)
	b, _ := e.encode()
	if err := eb.Put(k, b); err != nil {
		t.Fatal(err)
	}
}

// TestVerifyDetectsTampering: a changed, removed or reordered entry, a
// changed head, and a chain rewritten with fresh hashes (caught by the
// signed receipts naming the old ones) all fail verification, naming the
// session and the entry; the other sessions still verify.
func TestVerifyDetectsTampering(t *testing.T) {
	for _, tc := range []struct {
		name    string
		edit    func(t *testing.T, eb, hb *bolt.Bucket) error
		receipt bool // only the receipts can tell
		seq     uint64
		want    string
	}{
		{"changed entry", func(t *testing.T, eb, _ *bolt.Bucket) error {
			mutateEntry(t, eb, "beta", 3, func(e *Entry) { e.ResponseBytes = 1 })
			return nil
		}, false, 3, "does not match its contents"},
		{"changed receipt id", func(t *testing.T, eb, _ *bolt.Bucket) error {
			mutateEntry(t, eb, "beta", 3, func(e *Entry) { e.ReceiptID = strings.Repeat("ab", 32) })
			return nil
		}, true, 3, "no receipt"},
		{"removed entry", func(t *testing.T, eb, _ *bolt.Bucket) error {
			return eb.Delete(entryKey("beta", 4))
		}, false, 4, "entry 4 is missing"},
		{"removed last entry", func(t *testing.T, eb, _ *bolt.Bucket) error {
			return eb.Delete(entryKey("beta", 7))
		}, false, 6, "head names entry 7"},
		{"reordered entries", func(t *testing.T, eb, _ *bolt.Bucket) error {
			a, b := eb.Get(entryKey("beta", 2)), eb.Get(entryKey("beta", 3))
			a, b = append([]byte(nil), a...), append([]byte(nil), b...)
			eb.Put(entryKey("beta", 2), b)
			return eb.Put(entryKey("beta", 3), a)
		}, false, 2, "says session beta seq 3"},
		{"changed totals", func(t *testing.T, _, hb *bolt.Bucket) error {
			var head Head
			json.Unmarshal(hb.Get([]byte("beta")), &head)
			head.Totals.Calls = 0 // a forger giving the session its budget back
			b, _ := json.Marshal(head)
			return hb.Put([]byte("beta"), b)
		}, false, 0, "totals or epoch differ"},
		{"rewritten chain", func(t *testing.T, eb, hb *bolt.Bucket) error {
			// Turn the first call's tool into another and re-hash the whole
			// chain and head: self-consistent, but the receipts disagree.
			st := newChainState("beta")
			for seq := uint64(1); seq <= 7; seq++ {
				mutateEntry(t, eb, "beta", seq, func(e *Entry) {
					if seq == 1 {
						e.ToolName = "write"
					}
					if e.Kind == KindSettle && e.CallSeq == 1 {
						e.ToolName = "write"
					}
					e.PrevHash = st.head.Hash
					e.EntryHash, _ = e.Hash()
					st.apply(e)
				})
			}
			b, _ := json.Marshal(st.head)
			return hb.Put([]byte("beta"), b)
		}, true, 1, "receipt"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := tamperHarness(t)
			if rep := h.verify("", h.lookup); !rep.OK() || rep.Sessions != 3 || rep.Entries != 21 || rep.Receipts != 12 {
				t.Fatalf("before tampering: %+v", rep)
			}
			h.edit(func(eb, hb *bolt.Bucket) error { return tc.edit(t, eb, hb) })
			without := h.verify("", nil)
			if tc.receipt != without.OK() {
				t.Fatalf("without receipts: %+v (want ok=%v)", without.Problems, tc.receipt)
			}
			for _, id := range []string{"", "beta"} {
				rep := h.verify(id, h.lookup)
				if len(rep.Problems) != 1 {
					t.Fatalf("verify %q: problems %+v", id, rep.Problems)
				}
				p := rep.Problems[0]
				if p.SessionID != "beta" || p.Seq != tc.seq || !strings.Contains(p.Problem, tc.want) {
					t.Fatalf("verify %q: %+v; want beta seq %d %q", id, p, tc.seq, tc.want)
				}
			}
			if rep := h.verify("alpha", h.lookup); !rep.OK() {
				t.Fatalf("an untouched session fails: %+v", rep.Problems)
			}
		})
	}
}

// FuzzVerifyStoredEntry: whatever bytes a journal file holds as an entry,
// verification never panics, and it passes only entries that re-encode
// to a consistent chain.
func FuzzVerifyStoredEntry(f *testing.F) {
	e := Entry{Schema: EntrySchema, SessionID: "s", Epoch: 1, Seq: 1, PrevHash: GenesisHash, Kind: KindCall, ToolServer: "srv", ToolName: "read", Allowed: true, ReceiptID: strings.Repeat("ab", 32)}
	e.EntryHash, _ = e.Hash()
	good, _ := e.encode()
	f.Add(good)
	f.Add([]byte(`{"seq":1}`))
	f.Add([]byte(`[]`))
	f.Fuzz(func(t *testing.T, raw []byte) {
		v := &verifier{id: "s", st: newChainState("s")}
		v.entry(1, raw)
		if v.problem != nil {
			return
		}
		got, err := decodeEntry(raw)
		if err != nil || got.Seq != 1 || got.SessionID != "s" || got.PrevHash != GenesisHash {
			t.Fatalf("accepted %q", raw)
		}
		if sum, err := got.Hash(); err != nil || sum != got.EntryHash {
			t.Fatalf("accepted %q with a wrong hash", raw)
		}
	})
}
