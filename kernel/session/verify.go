package session

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"maps"
	"slices"

	bolt "go.etcd.io/bbolt"
)

// ReceiptLookup returns the receipt with the given id as stored (its JSON),
// or an error when the log has none. Verify uses it to check that entries
// and receipts name each other.
type ReceiptLookup func(id string) ([]byte, error)

// Problem is the first defect found in one session's journal.
type Problem struct {
	SessionID string `json:"session_id"`
	// Seq is the entry at fault; 0 when the problem is the head.
	Seq     uint64 `json:"seq"`
	Problem string `json:"problem"`
}

// Report is what Verify found.
type Report struct {
	Sessions int `json:"sessions"`
	Entries  int `json:"entries"`
	// Receipts counts the entries whose receipt was looked up and names
	// them (0 without a lookup).
	Receipts int       `json:"receipts"`
	Problems []Problem `json:"problems,omitempty"`
	// Links are the segment entries found: where a replica's run of a
	// session starts and how it joins the history before it.
	Links []Link `json:"links,omitempty"`
	// Handovers are the handover entries found: where a run ends and
	// which replica the session went to.
	Handovers []Link `json:"handovers,omitempty"`
}

// Link is one segment or handover entry of a chain.
type Link struct {
	SessionID string `json:"session_id"`
	Seq       uint64 `json:"seq"`
	// Link is the segment's link (LinkNew, LinkLinked, LinkUnlinked);
	// "" in a handover.
	Link string `json:"link,omitempty"`
	// PrevHash is the hash the segment links to (a handover's prev_hash
	// in another replica's journal, for LinkLinked); Hash is the entry's
	// own hash (what the next holder's segment links to, for a handover).
	PrevHash string `json:"prev_hash"`
	Hash     string `json:"hash"`
	Holder   string `json:"holder"`
}

// OK says whether no problem was found.
func (r *Report) OK() bool { return len(r.Problems) == 0 }

// Heads returns every session's head as written to the file (a live
// journal's latest entries may still be on their way), in session id order.
func (j *Journal) Heads() ([]Head, error) {
	var out []Head
	err := j.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bktHeads).ForEach(func(k, v []byte) error {
			var h Head
			if err := json.Unmarshal(v, &h); err != nil {
				return fmt.Errorf("%w: head of session %q: %w", ErrCorrupt, k, err)
			}
			out = append(out, h)
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("read session heads: %w", err)
	}
	return out, nil
}

// Head returns one session's head as written to the file; ok is false
// when the journal has none.
func (j *Journal) Head(id string) (h Head, ok bool, err error) {
	err = j.db.View(func(tx *bolt.Tx) error {
		v := tx.Bucket(bktHeads).Get([]byte(id))
		if v == nil {
			return nil
		}
		ok = true
		if err := json.Unmarshal(v, &h); err != nil {
			return fmt.Errorf("%w: head of session %q: %w", ErrCorrupt, id, err)
		}
		return nil
	})
	if err != nil {
		return Head{}, false, fmt.Errorf("read session head: %w", err)
	}
	return h, ok, nil
}

// Entries returns one session's entries as stored, in key order.
func (j *Journal) Entries(id string) ([]Entry, error) {
	var out []Entry
	err := j.db.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(bktEntries).Cursor()
		prefix := append([]byte(id), 0)
		for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
			e, err := decodeEntry(v)
			if err != nil {
				return err
			}
			out = append(out, e)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read session %s: %w", id, err)
	}
	return out, nil
}

// Verify checks the chain of one session (id) or of all (id ""): every
// entry's key, schema, sequence, prev_hash and entry_hash, epochs that only
// move forward, settle entries that settle an open call, and the stored head
// against the one the chain builds (same accounting rule as the live
// journal). With lookup, each call entry's receipt must exist and its
// metadata must name the entry (session id, epoch, seq, entry_hash) with the
// same tool and verdict: receipts are signed, so a chain rewritten with
// fresh hashes still fails here. It reports the first problem of each
// session; an error means the file could not be read.
func (j *Journal) Verify(ctx context.Context, id string, lookup ReceiptLookup) (Report, error) {
	var rep Report
	err := j.db.View(func(tx *bolt.Tx) error {
		heads := map[string][]byte{}
		if id != "" {
			if v := tx.Bucket(bktHeads).Get([]byte(id)); v != nil {
				heads[id] = slices.Clone(v)
			}
		} else {
			tx.Bucket(bktHeads).ForEach(func(k, v []byte) error {
				heads[string(k)] = slices.Clone(v)
				return nil
			})
		}
		c := tx.Bucket(bktEntries).Cursor()
		var k, v []byte
		if id != "" {
			k, v = c.Seek(append([]byte(id), 0))
		} else {
			k, v = c.First()
		}
		var cur *verifier
		finish := func() {
			if cur == nil {
				return
			}
			cur.finish(heads[cur.id])
			delete(heads, cur.id)
			rep.add(cur)
			cur = nil
		}
		for ; k != nil; k, v = c.Next() {
			if err := ctx.Err(); err != nil {
				return err
			}
			sid, seq, ok := splitKey(k)
			if !ok {
				finish()
				rep.Problems = append(rep.Problems, Problem{Problem: fmt.Sprintf("malformed entry key %x", k)})
				continue
			}
			if id != "" && sid != id {
				break
			}
			if cur == nil || cur.id != sid {
				finish()
				cur = &verifier{id: sid, st: newChainState(sid), lookup: lookup}
			}
			cur.entry(seq, v)
		}
		finish()
		for _, sid := range slices.Sorted(maps.Keys(heads)) {
			rep.Sessions++
			rep.Problems = append(rep.Problems, Problem{SessionID: sid, Problem: "head names a session with no entries"})
		}
		return nil
	})
	if err != nil {
		return Report{}, fmt.Errorf("verify session journal %s: %w", j.path, err)
	}
	return rep, nil
}

func (r *Report) add(v *verifier) {
	r.Sessions++
	r.Entries += v.entries
	r.Receipts += v.receipts
	r.Links = append(r.Links, v.links...)
	r.Handovers = append(r.Handovers, v.handovers...)
	if v.problem != nil {
		r.Problems = append(r.Problems, *v.problem)
	}
}

// verifier walks one session's chain.
type verifier struct {
	id       string
	st       *chainState
	lookup   ReceiptLookup
	entries  int
	receipts int
	problem  *Problem
	// links and handovers are the segment and handover entries walked.
	links, handovers []Link
	ended            bool
	// seen, when set, is told of each entry that extends the chain, with
	// the session's head before it (Stitch follows runs with it).
	seen func(e *Entry, before Head)
}

func (v *verifier) fail(seq uint64, format string, a ...any) {
	if v.problem == nil {
		v.problem = &Problem{SessionID: v.id, Seq: seq, Problem: fmt.Sprintf(format, a...)}
	}
}

func (v *verifier) entry(keySeq uint64, raw []byte) {
	v.entries++
	if v.problem != nil {
		return // the chain is broken already: later entries cannot be judged
	}
	h := &v.st.head
	want := h.Seq + 1
	e, err := decodeEntry(raw)
	if err != nil {
		v.fail(keySeq, "%v", err)
		return
	}
	// A segment entry starts a run: the entries before it, down to its
	// link, are other replicas' (a gap here), and its prev_hash names
	// the last of them.
	segment := e.Kind == KindSegment
	if keySeq != want && !(segment && keySeq > want) {
		v.fail(want, "entry %d is missing (next stored entry is %d)", want, keySeq)
		return
	}
	switch {
	case e.Schema != EntrySchema:
		v.fail(keySeq, "schema %q, want %q", e.Schema, EntrySchema)
	case e.SessionID != v.id || e.Seq != keySeq:
		v.fail(keySeq, "entry stored as session %s seq %d says session %s seq %d", v.id, keySeq, e.SessionID, e.Seq)
	case !segment && e.PrevHash != h.Hash:
		v.fail(keySeq, "prev_hash %s does not name entry %d's hash %s", e.PrevHash, h.Seq, h.Hash)
	case segment && !v.segmentOK(&e, keySeq):
	case !segment && v.ended:
		v.fail(keySeq, "entry after a handover: the session went to another replica")
	}
	if v.problem != nil {
		return
	}
	if sum, err := e.Hash(); err != nil || sum != e.EntryHash {
		v.fail(keySeq, "entry_hash %s does not match its contents (%s)", e.EntryHash, sum)
		return
	}
	switch e.Kind {
	case KindCall:
		if e.Epoch != h.Epoch && e.Epoch != h.Epoch+1 {
			v.fail(keySeq, "epoch %d after epoch %d", e.Epoch, h.Epoch)
			return
		}
		if e.CallSeq != 0 || e.ResponseBytes != 0 || e.RequestBytes < 0 || e.Allowed == (e.Guard != "") || e.Holder != "" || e.Link != "" || e.Totals != nil {
			v.fail(keySeq, "call entry with settle fields, negative bytes, or a guard that disagrees with allowed")
			return
		}
		if !v.checkReceipt(&e) {
			return
		}
	case KindSettle:
		if e.Epoch != h.Epoch {
			v.fail(keySeq, "settle entry in epoch %d while the session is in epoch %d", e.Epoch, h.Epoch)
			return
		}
		if _, open := v.st.open[e.CallSeq]; !open {
			v.fail(keySeq, "settles call %d, which is not an open allowed call", e.CallSeq)
			return
		}
		if e.ReceiptID != "" || !e.Allowed || e.RequestBytes < 0 || e.ResponseBytes < 0 || e.Holder != "" || e.Link != "" || e.Totals != nil {
			v.fail(keySeq, "settle entry with a receipt id, not allowed, or negative bytes")
			return
		}
	case KindHandover:
		if e.Holder == "" || e.ReceiptID != "" || e.Allowed || e.Link != "" || e.Totals != nil {
			v.fail(keySeq, "handover entry without a holder, with a receipt, allowed, or with segment fields")
			return
		}
		v.handovers = append(v.handovers, Link{SessionID: v.id, Seq: keySeq, PrevHash: e.PrevHash, Hash: e.EntryHash, Holder: e.Holder})
	case KindSegment:
		v.links = append(v.links, Link{SessionID: v.id, Seq: keySeq, Link: e.Link, PrevHash: e.PrevHash, Hash: e.EntryHash, Holder: e.Holder})
	default:
		v.fail(keySeq, "unknown kind %q", e.Kind)
		return
	}
	var before Head
	if v.seen != nil {
		before = v.st.head
		before.Totals = cloneTotals(before.Totals)
	}
	v.st.apply(&e)
	v.ended = e.Kind == KindHandover // nothing but a segment may follow
	if v.seen != nil {
		v.seen(&e, before)
	}
}

// segmentOK checks a segment entry's own fields and its link.
func (v *verifier) segmentOK(e *Entry, keySeq uint64) bool {
	h := &v.st.head
	switch {
	case e.Holder == "" || e.Totals == nil || e.ReceiptID != "" || e.Allowed:
		v.fail(keySeq, "segment entry without a holder or totals, with a receipt, or allowed")
	case e.Link == LinkNew && (keySeq != 1 || e.PrevHash != GenesisHash || e.Totals.Calls != 0 || e.Totals.Denied != 0 || e.Totals.RequestBytes != 0 || e.Totals.ResponseBytes != 0 || len(e.Totals.ToolCalls) != 0):
		v.fail(keySeq, "a new session's segment that is not entry 1 from the genesis hash with zero totals")
	case e.Link == LinkUnlinked && (keySeq != h.Seq+1 || e.PrevHash != h.Hash):
		v.fail(keySeq, "unlinked segment not continuing this journal's last entry %d (%s)", h.Seq, h.Hash)
	case e.Link == LinkUnlinked && (e.Epoch != max(h.Epoch, 1) || !equalTotals(*e.Totals, h.Totals)):
		v.fail(keySeq, "unlinked segment starts from other figures than this journal's last entry %d", h.Seq)
	case e.Link == LinkLinked && keySeq <= h.Seq:
		v.fail(keySeq, "linked segment at entry %d, not after entry %d", keySeq, h.Seq)
	case e.Link != LinkNew && e.Link != LinkUnlinked && e.Link != LinkLinked:
		v.fail(keySeq, "segment link %q", e.Link)
	case e.Epoch < h.Epoch:
		v.fail(keySeq, "segment in epoch %d after epoch %d", e.Epoch, h.Epoch)
	default:
		return true
	}
	return false
}

// checkReceipt checks a call entry against its receipt.
func (v *verifier) checkReceipt(e *Entry) bool {
	if b, err := hex.DecodeString(e.ReceiptID); err != nil || len(b) != 32 {
		v.fail(e.Seq, "receipt_id %q is not 64 hex digits", e.ReceiptID)
		return false
	}
	if v.lookup == nil {
		return true
	}
	raw, err := v.lookup(e.ReceiptID)
	if err != nil {
		v.fail(e.Seq, "receipt %s: %v", e.ReceiptID, err)
		return false
	}
	var r struct {
		ToolServer string `json:"tool_server"`
		ToolName   string `json:"tool_name"`
		Decision   *struct {
			Verdict string `json:"verdict"`
		} `json:"decision"`
		Metadata struct {
			Session *struct {
				ID        string `json:"id"`
				Epoch     uint64 `json:"epoch"`
				Seq       uint64 `json:"seq"`
				EntryHash string `json:"entry_hash"`
			} `json:"session"`
		} `json:"metadata"`
	}
	if err := json.Unmarshal(raw, &r); err != nil {
		v.fail(e.Seq, "receipt %s is not JSON: %v", e.ReceiptID, err)
		return false
	}
	s := r.Metadata.Session
	switch {
	case s == nil:
		v.fail(e.Seq, "receipt %s names no session entry", e.ReceiptID)
	case s.ID != e.SessionID || s.Seq != e.Seq || s.Epoch != e.Epoch || s.EntryHash != e.EntryHash:
		v.fail(e.Seq, "receipt %s names session %s epoch %d seq %d entry %s, not this entry (%s)", e.ReceiptID, s.ID, s.Epoch, s.Seq, s.EntryHash, e.EntryHash)
	case r.ToolName != e.ToolName || r.ToolServer != e.ToolServer:
		v.fail(e.Seq, "receipt %s is for tool %s on %s, the entry says %s on %s", e.ReceiptID, r.ToolName, r.ToolServer, e.ToolName, e.ToolServer)
	case r.Decision == nil || (r.Decision.Verdict == "allow") != e.Allowed:
		v.fail(e.Seq, "receipt %s and the entry disagree on the verdict", e.ReceiptID)
	default:
		v.receipts++
		return true
	}
	return false
}

// finish compares the stored head with the one the chain built.
func (v *verifier) finish(raw []byte) {
	if v.problem != nil {
		return
	}
	if raw == nil {
		v.fail(0, "no head for a session with %d entries", v.entries)
		return
	}
	var stored Head
	if err := json.Unmarshal(raw, &stored); err != nil {
		v.fail(0, "head is not JSON: %v", err)
		return
	}
	got := v.st.head
	if stored.Seq != got.Seq || stored.Hash != got.Hash {
		v.fail(got.Seq, "head names entry %d (%s) but the chain ends at entry %d (%s)", stored.Seq, stored.Hash, got.Seq, got.Hash)
		return
	}
	if stored.SessionID != got.SessionID || stored.Epoch != got.Epoch || stored.LastActive != got.LastActive || !equalTotals(stored.Totals, got.Totals) || stored.Holder != got.Holder || (stored.Segment == nil) != (got.Segment == nil) || stored.Segment != nil && *stored.Segment != *got.Segment {
		v.fail(0, "head's totals or epoch differ from what the chain adds up to")
	}
}

func equalTotals(a, b Totals) bool {
	return a.Calls == b.Calls && a.Denied == b.Denied && a.RequestBytes == b.RequestBytes &&
		a.ResponseBytes == b.ResponseBytes && maps.Equal(a.ToolCalls, b.ToolCalls)
}

func splitKey(k []byte) (string, uint64, bool) {
	if len(k) < 10 || k[len(k)-9] != 0 {
		return "", 0, false
	}
	id := string(k[:len(k)-9])
	if !ValidID(id) {
		return "", 0, false
	}
	return id, binary.BigEndian.Uint64(k[len(k)-8:]), true
}
