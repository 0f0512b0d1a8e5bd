package session

import (
	"cmp"
	"context"
	"fmt"
	"maps"
	"slices"

	bolt "go.etcd.io/bbolt"
)

// Stitching a session's history across replicas' journals
// (docs/sessions.md, "Verifying replicas' journals together"). Each
// journal holds its own runs of a session, each from a segment entry to a
// handover (or to its last entry); a linked segment names, by prev_hash,
// the handover entry in the previous holder's journal it continues. Verify
// checks one journal; Stitch checks the runs of every journal given
// against each other.

// Kinds of findings of Stitch.
const (
	// FindingBroken: a link or figures that cannot be right (a linked
	// segment naming an entry that is not a handover to its holder,
	// figures that differ from the handover's, a chain that fails).
	FindingBroken = "broken"
	// FindingFork: two holders of one session at once: two segments
	// continuing one handover, two new starts, or two runs that are not
	// one after the other deciding calls at overlapping times.
	FindingFork = "fork"
	// FindingUnresolved: a linked segment whose handover no journal given
	// has (a journal not given, or a forged link).
	FindingUnresolved = "unresolved"
	// FindingUnlinked: a segment that continues without its previous
	// holder's history (takeover "unlinked"): what that holder decided
	// after the hash it links to is not counted in it.
	FindingUnlinked = "unlinked"
	// FindingHanded: a handover no segment of the journals given
	// continues (its taker's journal is not given, or it never continued).
	FindingHanded = "handed"
)

// Finding is one thing Stitch found about a session, at an entry of one
// journal.
type Finding struct {
	Kind    string `json:"kind"`
	Journal string `json:"journal"`
	Seq     uint64 `json:"seq"`
	Detail  string `json:"detail"`
}

// Run is one replica's run of a session in one journal: from its segment
// entry (or the chain's first entry, in a journal without segments) to a
// handover or the journal's last entry of it.
type Run struct {
	Journal string `json:"journal"`
	Holder  string `json:"holder,omitempty"`
	// Link is the segment's link; "" for entries before any segment.
	Link string `json:"link,omitempty"`
	// Start and End are the run's first and last entries (seq).
	Start uint64 `json:"start"`
	End   uint64 `json:"end"`
	// PrevHash is what the run's first entry links to.
	PrevHash string `json:"prev_hash"`
	// HandedTo names the replica a handover ending the run sent it to.
	HandedTo string `json:"handed_to,omitempty"`
	// Calls and Denied count the calls decided in this run.
	Calls  int64 `json:"calls"`
	Denied int64 `json:"denied"`
	// Epoch and Totals are the session's at the run's last entry.
	Epoch  uint64 `json:"epoch"`
	Totals Totals `json:"totals"`
	// From is the first entry's timestamp; To the last's (unix seconds).
	From int64 `json:"from"`
	To   int64 `json:"to"`

	j         int
	before    Head   // the journal's head before the segment
	seg       *Entry // the segment entry, nil before any
	firstCall int64
	lastCall  int64
	endHash   string
	parent    *Run
	prevInJ   *Run
}

// StitchedSession is one session over every journal given.
type StitchedSession struct {
	SessionID string `json:"session_id"`
	// Runs in the order of their first entry (seq), then journal.
	Runs []*Run `json:"runs"`
	// Calls and Denied add up the calls decided in every run.
	Calls  int64 `json:"calls"`
	Denied int64 `json:"denied"`
	// Holders are the replicas whose run is not handed over.
	Holders []string `json:"holders,omitempty"`
	// Totals are the figures of its one run not handed over (nil when
	// there is not exactly one).
	Totals   *Totals   `json:"totals,omitempty"`
	Findings []Finding `json:"findings,omitempty"`
}

// Stitched is what Stitch found.
type Stitched struct {
	Journals []string           `json:"journals"`
	Sessions []*StitchedSession `json:"sessions"`
	// Counts of the segments over all sessions by link, of the links
	// resolved to a handover, and of the findings by kind.
	Segments map[string]int `json:"segments"`
	Resolved int            `json:"resolved"`
	Findings map[string]int `json:"findings"`
}

// entryRef is where an entry of a session is: its run, kind and seq.
type entryRef struct {
	run  *Run
	kind string
	seq  uint64
}

// stitcher gathers one session's runs over the journals.
type stitcher struct {
	names []string
	runs  map[string][]*Run
	// refs finds an entry of a session by its hash.
	refs   map[string]map[string][]entryRef
	broken map[string][]Finding
}

// Stitch checks the runs of every session (id "": all) over journals, one
// per replica, opened read-only: each journal's chain as Verify walks it
// (a session failing there is reported broken, with its first problem);
// each linked segment resolves to a handover to its holder in exactly one
// other journal and starts from the figures that handover's chain adds up
// to (Continue's rule, divergence included); no handover is continued
// twice, no session starts new twice, and no two runs that are not one
// after the other decide calls at overlapping times (forks); unlinked
// segments and handovers nobody continued are reported. An error means a
// journal could not be read.
func Stitch(ctx context.Context, journals []*Journal, id string) (*Stitched, error) {
	st := &stitcher{runs: map[string][]*Run{}, refs: map[string]map[string][]entryRef{}, broken: map[string][]Finding{}}
	for i, j := range journals {
		if slices.Contains(st.names, j.Path()) {
			return nil, fmt.Errorf("stitch session journals: %s given twice", j.Path())
		}
		st.names = append(st.names, j.Path())
		if err := st.walk(ctx, i, j, id); err != nil {
			return nil, fmt.Errorf("stitch session journals: %s: %w", j.Path(), err)
		}
	}
	out := &Stitched{Journals: st.names, Segments: map[string]int{}, Findings: map[string]int{}}
	ids := slices.Sorted(maps.Keys(st.runs))
	for sid := range st.broken {
		if _, ok := st.runs[sid]; !ok {
			ids = append(ids, sid)
		}
	}
	slices.Sort(ids)
	for _, sid := range ids {
		s := st.session(sid, out)
		for _, f := range s.Findings {
			out.Findings[f.Kind]++
		}
		out.Sessions = append(out.Sessions, s)
	}
	return out, nil
}

// walk reads journal i's chains (of session id, or all) into runs.
func (st *stitcher) walk(ctx context.Context, i int, j *Journal, id string) error {
	name := j.Path()
	return j.db.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(bktEntries).Cursor()
		var k, val []byte
		if id != "" {
			k, val = c.Seek(append([]byte(id), 0))
		} else {
			k, val = c.First()
		}
		var v *verifier
		var cur *Run
		done := func() {
			if v != nil && v.problem != nil {
				st.broken[v.id] = append(st.broken[v.id], Finding{Kind: FindingBroken, Journal: name, Seq: v.problem.Seq,
					Detail: "the journal's chain fails here: " + v.problem.Problem})
			}
		}
		for ; k != nil; k, val = c.Next() {
			if err := ctx.Err(); err != nil {
				return err
			}
			sid, seq, ok := splitKey(k)
			if !ok {
				continue // Verify reports it; it names no session
			}
			if id != "" && sid != id {
				break
			}
			if v == nil || v.id != sid {
				done()
				cur = nil
				v = &verifier{id: sid, st: newChainState(sid)}
				v.seen = func(e *Entry, before Head) {
					cur = st.add(i, name, cur, e, before, v.st.head)
				}
			}
			v.entry(seq, val)
		}
		done()
		return nil
	})
}

// add takes entry e of journal i into the session's runs: a segment
// entry (or a session's first entry) starts a run.
func (st *stitcher) add(i int, name string, cur *Run, e *Entry, before, after Head) *Run {
	if cur == nil || e.Kind == KindSegment {
		r := &Run{Journal: name, j: i, Start: e.Seq, PrevHash: e.PrevHash, From: e.Timestamp, before: before, prevInJ: cur}
		if e.Kind == KindSegment {
			seg := *e
			r.seg, r.Holder, r.Link = &seg, e.Holder, e.Link
		}
		st.runs[e.SessionID] = append(st.runs[e.SessionID], r)
		cur = r
	}
	cur.End, cur.To, cur.endHash = e.Seq, e.Timestamp, e.EntryHash
	cur.Epoch, cur.Totals = after.Epoch, cloneTotals(after.Totals)
	switch e.Kind {
	case KindCall:
		if e.Allowed {
			cur.Calls++
		} else {
			cur.Denied++
		}
		if cur.firstCall == 0 {
			cur.firstCall = e.Timestamp
		}
		cur.lastCall = e.Timestamp
	case KindHandover:
		cur.HandedTo = e.Holder
	}
	m := st.refs[e.SessionID]
	if m == nil {
		m = map[string][]entryRef{}
		st.refs[e.SessionID] = m
	}
	m[e.EntryHash] = append(m[e.EntryHash], entryRef{run: cur, kind: e.Kind, seq: e.Seq})
	return cur
}

// session stitches one session's runs.
func (st *stitcher) session(sid string, out *Stitched) *StitchedSession {
	runs := st.runs[sid]
	slices.SortStableFunc(runs, func(a, b *Run) int {
		return cmp.Or(cmp.Compare(a.Start, b.Start), cmp.Compare(a.j, b.j))
	})
	s := &StitchedSession{SessionID: sid, Runs: runs, Findings: slices.Clone(st.broken[sid])}
	find := func(kind string, r *Run, seq uint64, format string, a ...any) {
		s.Findings = append(s.Findings, Finding{Kind: kind, Journal: r.Journal, Seq: seq, Detail: fmt.Sprintf(format, a...)})
	}
	refs := st.refs[sid]
	// Links: each run's parent, the run its first entry continues.
	takers := map[string][]*Run{}
	var news []*Run
	for _, r := range runs {
		s.Calls += r.Calls
		s.Denied += r.Denied
		if r.seg != nil {
			out.Segments[r.Link]++
		}
		switch r.Link {
		case LinkNew:
			news = append(news, r)
		case LinkUnlinked:
			for _, ref := range refs[r.PrevHash] {
				if ref.run.j == r.j {
					r.parent = ref.run
				}
			}
			from := "nothing it could prove (zero figures)"
			if r.PrevHash != GenesisHash {
				from = fmt.Sprintf("its own entry %d (%s)", r.Start-1, short(r.PrevHash))
			}
			find(FindingUnlinked, r, r.Start, "held by %s unlinked from %s: what the previous holder decided after that is not counted here", r.Holder, from)
		case LinkLinked:
			st.resolve(r, refs[r.PrevHash], find)
			if r.parent != nil {
				out.Resolved++
				takers[r.PrevHash] = append(takers[r.PrevHash], r)
			}
		}
	}
	// Figures, once every parent is known (divergence asks for history).
	for _, r := range runs {
		if r.Link != LinkLinked || r.parent == nil {
			continue
		}
		diverged := r.before.Seq > 0 && !st.inHistory(refs, r.parent, r.before.Hash)
		got := Head{Epoch: r.parent.Epoch, Totals: r.parent.Totals}
		want, epoch := carried(got, r.before, diverged)
		if r.seg.Epoch != epoch || !equalTotals(*r.seg.Totals, want) {
			find(FindingBroken, r, r.Start, "starts from epoch %d %s, but the handover it continues (%s entry %d) adds up to epoch %d %s",
				r.seg.Epoch, figures(*r.seg.Totals), r.parent.Journal, r.parent.End, epoch, figures(want))
		}
	}
	// Forks.
	for _, h := range slices.Sorted(maps.Keys(takers)) {
		if ts := takers[h]; len(ts) > 1 {
			find(FindingFork, ts[1], ts[1].Start, "a second taker of the handover %s (%s entry %d): %s entry %d (held by %s) continues it too",
				short(h), ts[1].parent.Journal, ts[1].parent.End, ts[0].Journal, ts[0].Start, ts[0].Holder)
		}
	}
	if len(news) > 1 {
		find(FindingFork, news[1], news[1].Start, "a second new start of the session (held by %s); %s entry %d (held by %s) started it too",
			news[1].Holder, news[0].Journal, news[0].Start, news[0].Holder)
	}
	for a := 0; a < len(runs); a++ {
		for b := a + 1; b < len(runs); b++ {
			ra, rb := runs[a], runs[b]
			if ra.j == rb.j || ra.firstCall == 0 || rb.firstCall == 0 || ancestor(ra, rb) || ancestor(rb, ra) ||
				ra.Link == rb.Link && ra.Link != LinkUnlinked && ra.PrevHash == rb.PrevHash { // reported above
				continue
			}
			// Whole seconds: a run is live from its first entry to its
			// last call; sharing one second is not proof of two holders.
			if ra.From < rb.lastCall && rb.From < ra.lastCall {
				find(FindingFork, rb, rb.Start, "two holders at once: held by %s from %d to %d, while %s entry %d (held by %s) decided calls from %d to %d",
					rb.Holder, rb.From, rb.lastCall, ra.Journal, ra.Start, ra.Holder, ra.From, ra.lastCall)
			}
		}
	}
	// Where the session is now, and handovers nobody continued.
	var open []*Run
	for _, r := range runs {
		if r.HandedTo == "" {
			open = append(open, r)
			s.Holders = append(s.Holders, r.Holder)
			continue
		}
		if len(takers[r.endHash]) == 0 {
			find(FindingHanded, r, r.End, "handed to %s, which continues it in none of the journals given", r.HandedTo)
		}
	}
	if len(open) == 1 {
		t := cloneTotals(open[0].Totals)
		s.Totals = &t
	}
	return s
}

// resolve finds the handover linked segment r continues, and sets its
// parent when it is one.
func (st *stitcher) resolve(r *Run, refs []entryRef, find func(string, *Run, uint64, string, ...any)) {
	var hs []entryRef
	for _, ref := range refs {
		if ref.kind == KindHandover && ref.run.j != r.j {
			hs = append(hs, ref)
		}
	}
	switch {
	case len(hs) == 0 && len(refs) > 0:
		find(FindingBroken, r, r.Start, "linked to %s, which is %s entry %d (%s), not another replica's handover", short(r.PrevHash), refs[0].run.Journal, refs[0].seq, refs[0].kind)
	case len(hs) == 0:
		find(FindingUnresolved, r, r.Start, "linked to the handover %s, which none of the journals given has (a journal not given, or a forged link)", short(r.PrevHash))
	case len(hs) > 1:
		find(FindingBroken, r, r.Start, "linked to the handover %s, which %s and %s both have", short(r.PrevHash), hs[0].run.Journal, hs[1].run.Journal)
	case hs[0].run.HandedTo != r.Holder:
		find(FindingBroken, r, r.Start, "held by %s, but linked to %s entry %d, a handover to %s", r.Holder, hs[0].run.Journal, hs[0].seq, hs[0].run.HandedTo)
	default:
		r.parent = hs[0].run
	}
}

// inHistory says whether the entry with hash h is in the history a run
// ends: its own entries up to its end, and those of every run before it in
// its journal or that it continues, as a transfer at its handover holds.
func (st *stitcher) inHistory(refs map[string][]entryRef, end *Run, h string) bool {
	for _, ref := range refs[h] {
		if ref.run == end || ancestor(ref.run, end) {
			return true
		}
	}
	return false
}

// ancestor says whether run a is before run b in b's history: b continues
// it (linked or unlinked), or it is earlier in a journal b's history
// passes through.
func ancestor(a, b *Run) bool {
	seen := map[*Run]bool{}
	stack := []*Run{b.parent, b.prevInJ}
	for len(stack) > 0 {
		r := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		if r == nil || seen[r] {
			continue
		}
		if r == a {
			return true
		}
		seen[r] = true
		stack = append(stack, r.parent, r.prevInJ)
	}
	return false
}

func figures(t Totals) string {
	return fmt.Sprintf("(%d calls, %d denied, %d request bytes, %d response bytes, per tool %v)", t.Calls, t.Denied, t.RequestBytes, t.ResponseBytes, t.ToolCalls)
}

func short(h string) string {
	if len(h) > 12 {
		return h[:12]
	}
	return h
}
