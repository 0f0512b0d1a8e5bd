package session

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strings"

	bolt "go.etcd.io/bbolt"
)

// Moving a session between replicas (docs/sessions.md, "Down owners and
// hand-over"). A replica's run of a session starts with a segment entry
// naming it (Start, Continue) and ends with a handover entry naming the
// replica the session went to (Seal). Between them, and only there, the
// replica decides the session's calls (Call.Check refuses the others with
// ErrNotHeld), so a session has at most one holder as long as it moves
// only by Seal and Continue.

// Transfer is a session's journal as its holder sealed it: every entry it
// stores of the session (its runs, each from a segment entry; the last
// one the handover) and its head after the handover.
type Transfer struct {
	Head    Head              `json:"head"`
	Entries []json.RawMessage `json:"entries"`
}

// Holding is what a journal knows of a session, for a replica deciding
// whether it may take it.
type Holding struct {
	// Here: this replica holds the session (it may decide its calls).
	Here bool
	// Head is the session's head in this journal (Seq 0: none).
	Head Head
	// Hints name the replicas that asked this one for the session (each
	// may hold it now, or have held it), in the order they first asked.
	Hints []string
}

// heldBy says whether replica self may decide the session's calls: the
// chain has entries and its last run is self's (or the chain never moved:
// a journal from one replica).
func (st *chainState) heldBy(self string) bool {
	return st.head.Seq > 0 && (st.head.Holder == "" || st.head.Holder == self)
}

func (st *chainState) whereHeld() string {
	if st.head.Seq == 0 {
		return "not taken here yet"
	}
	return "held by " + st.head.Holder
}

// Holding reports what the journal knows of session id.
func (j *Journal) Holding(id string) (Holding, error) {
	s, err := j.acquire(id)
	if err != nil {
		return Holding{}, err
	}
	h := Holding{Here: s.st.heldBy(j.opts.Self), Head: s.st.head}
	s.mu.Unlock()
	err = j.db.View(func(tx *bolt.Tx) error {
		if b := tx.Bucket(bktHints); b != nil {
			h.Hints = splitHints(b.Get([]byte(id)))
		}
		return nil
	})
	if err != nil {
		return Holding{}, fmt.Errorf("read session hint: %w", err)
	}
	return h, nil
}

// AddHint records, durably, that replica peer asked for session id: the
// session may be there from now on. Hints are never dropped: a replica
// that asked and was refused stays a suspect (a refusal more, never a
// session decided twice).
func (j *Journal) AddHint(id, peer string) error {
	err := j.writeAside(func(tx *bolt.Tx) error {
		b := tx.Bucket(bktHints)
		hints := splitHints(b.Get([]byte(id)))
		if slices.Contains(hints, peer) {
			return nil
		}
		return b.Put([]byte(id), []byte(strings.Join(append(hints, peer), "\n")))
	})
	if err != nil {
		return fmt.Errorf("record session hint: %w", err)
	}
	return nil
}

// Seal hands session id over to replica to: it appends a handover entry
// naming to, waits until it is in the file, and returns the session's
// journal. From then on this journal decides none of the session's
// calls. ErrNotFound when the journal has no entry of it, ErrNotHeld when
// another replica holds it, ErrBusy while an allowed call is in flight.
func (j *Journal) Seal(ctx context.Context, id, to string) (*Transfer, error) {
	if to == "" || to == j.opts.Self {
		return nil, fmt.Errorf("seal session %s: no other replica named", id)
	}
	s, err := j.acquire(id)
	if err != nil {
		return nil, fmt.Errorf("seal session %s: %w", id, err)
	}
	st := s.st
	switch {
	case st.head.Seq > 0 && st.head.Holder == to && !st.heldBy(j.opts.Self):
		// Sealed for to already (its answer was lost): send it again.
		head := st.head
		s.mu.Unlock()
		return j.transfer(id, head)
	case st.head.Seq == 0:
		s.mu.Unlock()
		return nil, fmt.Errorf("seal session %s: %w", id, ErrNotFound)
	case !st.heldBy(j.opts.Self):
		s.mu.Unlock()
		return nil, fmt.Errorf("seal session %s: %w (%s)", id, ErrNotHeld, st.whereHeld())
	case s.inflight > 0:
		s.mu.Unlock()
		return nil, fmt.Errorf("seal session %s: %w", id, ErrBusy)
	}
	e := Entry{Schema: EntrySchema, SessionID: id, Epoch: st.head.Epoch, Seq: st.head.Seq + 1, PrevHash: st.head.Hash,
		Kind: KindHandover, Timestamp: max(j.opts.Now().Unix(), st.head.LastActive), Holder: to}
	if e.EntryHash, err = e.Hash(); err != nil {
		s.mu.Unlock()
		return nil, err
	}
	r, err := j.appendEntry(s, &e, false, false)
	head := s.st.head
	s.mu.Unlock()
	if err == nil {
		err = wait(ctx, r)
	}
	if err != nil {
		return nil, fmt.Errorf("seal session %s: %w", id, err)
	}
	return j.transfer(id, head)
}

func (j *Journal) transfer(id string, head Head) (*Transfer, error) {
	t := &Transfer{Head: head}
	var err error
	if t.Entries, err = j.rawEntries(id); err != nil {
		return nil, err
	}
	return t, nil
}

// Start makes this replica the holder of session id with a segment entry
// (durable when Start returns): LinkNew for a session no replica holds
// (the journal must have none of it), LinkUnlinked to continue from this
// journal's last entry of it when the replica that holds it cannot be
// reached (its figures are the last this replica can prove). A no-op
// when the session is held here already.
func (j *Journal) Start(ctx context.Context, id, link string) error {
	if j.opts.Self == "" {
		return fmt.Errorf("start session %s: the journal has no Self", id)
	}
	s, err := j.acquire(id)
	if err != nil {
		return fmt.Errorf("start session %s: %w", id, err)
	}
	h := s.st.head
	if s.st.heldBy(j.opts.Self) {
		s.mu.Unlock()
		return nil
	}
	e := Entry{Schema: EntrySchema, SessionID: id, Kind: KindSegment, Holder: j.opts.Self, Link: link,
		Seq: h.Seq + 1, PrevHash: h.Hash, Epoch: max(h.Epoch, 1), Timestamp: max(j.opts.Now().Unix(), h.LastActive)}
	switch link {
	case LinkNew:
		if h.Seq != 0 {
			s.mu.Unlock()
			return fmt.Errorf("start session %s: not new (this journal has %d entries of it)", id, h.Seq)
		}
		e.Totals = &Totals{}
	case LinkUnlinked:
		t := cloneTotals(h.Totals)
		e.Totals = &t
	default:
		s.mu.Unlock()
		return fmt.Errorf("start session %s: link %q", id, link)
	}
	return j.appendSegment(ctx, s, &e)
}

// Continue makes this replica the holder of session id from the journal
// its previous holder sealed for it (Seal, to this replica): the chain is
// verified as `sessions verify --chain-only` does, must end with the
// handover to this replica, and the new segment entry links to that
// handover's hash and starts from its figures. When this journal holds
// entries of the session the transfer does not (the two diverged while
// replicas disagreed on who is down), the figures of both are added: an
// over-count, never an under-count.
func (j *Journal) Continue(ctx context.Context, id string, t *Transfer) error {
	if j.opts.Self == "" {
		return fmt.Errorf("continue session %s: the journal has no Self", id)
	}
	v := &verifier{id: id, st: newChainState(id)}
	hashes := map[uint64]string{}
	var last Entry
	for _, raw := range t.Entries {
		e, err := decodeEntry(raw)
		if err != nil {
			return fmt.Errorf("continue session %s: %w", id, err)
		}
		v.entry(e.Seq, raw)
		hashes[e.Seq], last = e.EntryHash, e
	}
	got := v.st.head
	switch {
	case v.problem != nil:
		return fmt.Errorf("continue session %s: %w: the transferred chain fails at entry %d: %s", id, ErrCorrupt, v.problem.Seq, v.problem.Problem)
	case len(t.Entries) == 0 || last.Kind != KindHandover || last.Holder != j.opts.Self:
		return fmt.Errorf("continue session %s: %w: the transferred chain does not end with a handover to %s", id, ErrCorrupt, j.opts.Self)
	case got.Seq != t.Head.Seq || got.Hash != t.Head.Hash || got.Epoch != t.Head.Epoch || !equalTotals(got.Totals, t.Head.Totals):
		return fmt.Errorf("continue session %s: %w: the transferred head is not what its chain adds up to", id, ErrCorrupt)
	}
	if err := j.keepOthers(id, t.Entries); err != nil {
		return err
	}
	s, err := j.acquire(id)
	if err != nil {
		return fmt.Errorf("continue session %s: %w", id, err)
	}
	local := s.st.head
	if s.st.heldBy(j.opts.Self) {
		s.mu.Unlock()
		return fmt.Errorf("continue session %s: held here already", id)
	}
	totals, epoch := carried(got, local, local.Seq > 0 && hashes[local.Seq] != local.Hash)
	e := Entry{Schema: EntrySchema, SessionID: id, Kind: KindSegment, Holder: j.opts.Self, Link: LinkLinked,
		Seq: max(local.Seq, got.Seq) + 1, PrevHash: got.Hash, Epoch: epoch, Totals: &totals,
		Timestamp: max(j.opts.Now().Unix(), got.LastActive, local.LastActive)}
	return j.appendSegment(ctx, s, &e)
}

// carried returns the figures and epoch a linked segment starts from: the
// handed-over chain's head (got), and, when the taker's own last entry of
// the session (local) is not in that chain (diverged), its figures too:
// added in the same epoch, instead in a later one. Continue writes them,
// Stitch checks them.
func carried(got, local Head, diverged bool) (Totals, uint64) {
	totals, epoch := cloneTotals(got.Totals), got.Epoch
	if diverged {
		switch {
		case local.Epoch > epoch:
			totals, epoch = cloneTotals(local.Totals), local.Epoch
		case local.Epoch == epoch:
			addTotals(&totals, local.Totals)
		}
	}
	return totals, epoch
}

// appendSegment appends segment entry e to the locked session s, unlocks
// it and waits until the entry is in the file.
func (j *Journal) appendSegment(ctx context.Context, s *session, e *Entry) error {
	var err error
	if e.EntryHash, err = e.Hash(); err != nil {
		s.mu.Unlock()
		return err
	}
	r, err := j.appendEntry(s, e, false, false)
	s.lastUse = j.opts.Now()
	s.mu.Unlock()
	if err == nil {
		err = wait(ctx, r)
	}
	if err != nil {
		return fmt.Errorf("start segment of session %s: %w", e.SessionID, err)
	}
	return nil
}

func splitHints(b []byte) []string {
	if len(b) == 0 {
		return nil
	}
	return strings.Split(string(b), "\n")
}

func addTotals(t *Totals, o Totals) {
	t.Calls += o.Calls
	t.Denied += o.Denied
	t.RequestBytes += o.RequestBytes
	t.ResponseBytes += o.ResponseBytes
	for k, v := range o.ToolCalls {
		if t.ToolCalls == nil {
			t.ToolCalls = map[string]int64{}
		}
		t.ToolCalls[k] += v
	}
}

func wait(ctx context.Context, r *record) error {
	select {
	case <-r.done:
		return r.err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// rawEntries returns one session's history as this replica can prove it:
// its own entries and those handed to it with the session (bucket
// others), in seq order; its own win where both have a seq.
func (j *Journal) rawEntries(id string) ([]json.RawMessage, error) {
	byKey := map[string][]byte{}
	err := j.db.View(func(tx *bolt.Tx) error {
		prefix := append([]byte(id), 0)
		for _, name := range [][]byte{bktOthers, bktEntries} {
			b := tx.Bucket(name)
			if b == nil {
				continue
			}
			c := b.Cursor()
			for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
				byKey[string(k)] = bytes.Clone(v)
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read session %s: %w", id, err)
	}
	out := make([]json.RawMessage, 0, len(byKey))
	for _, k := range slices.Sorted(maps.Keys(byKey)) {
		out = append(out, byKey[k])
	}
	return out, nil
}

// keepOthers queues the entries of a transfer this journal does not have
// for bucket others, so that its own transfers carry the whole history.
// It does not wait: they are in the file before the segment entry queued
// after them (Continue waits for that one), usually in its transaction.
func (j *Journal) keepOthers(id string, entries []json.RawMessage) error {
	keys := make([][]byte, len(entries))
	for i, raw := range entries {
		e, err := decodeEntry(raw)
		if err != nil {
			return fmt.Errorf("keep session %s's history: %w", id, err)
		}
		keys[i] = entryKey(id, e.Seq)
	}
	_, err := j.queueAside(func(tx *bolt.Tx) error {
		own, others := tx.Bucket(bktEntries), tx.Bucket(bktOthers)
		for i, k := range keys {
			if own.Get(k) != nil {
				continue
			}
			if err := others.Put(k, entries[i]); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("keep session %s's history: %w", id, err)
	}
	return nil
}
