package session

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"time"

	"github.com/backbay-labs/chio-agent/kernel"
)

// Request is one call of a session as the journal accounts it.
type Request struct {
	// SessionID names the session. Required (ValidID).
	SessionID string
	// ToolServer and ToolName name the tool, as the receipt does.
	ToolServer, ToolName string
	// RequestBytes is the request body's declared length; -1 when unknown
	// (a chunked body), then the call reserves up to MaxBody bytes (or what
	// the session has left, if less) and settles what it read.
	RequestBytes int64
	// MaxBody bounds a body of unknown length (the sidecar's
	// max_body_bytes). 0: unbounded but for the session's limit.
	MaxBody int64
}

// Call is one call of a session: the kernel.CallGuard given to
// PrepareToolCall, then the handle that waits for the entry to be durable
// and settles what the call used. Use it for one call only.
type Call struct {
	j   *Journal
	req Request

	s     *session // locked from Check to Bind
	entry Entry
	rec   *record
	// reserved is what the call may read of a request body (-1: no bound
	// from the session).
	reserved int64

	settleOnce sync.Once
}

var _ kernel.CallGuard = (*Call)(nil)

// Call starts accounting one call. Give the result to the kernel as
// ToolCall.Guard; after the response, call Settle (always, also when the
// call was denied or failed: it is then a no-op).
func (j *Journal) Call(req Request) *Call { return &Call{j: j, req: req, reserved: -1} }

// Check locks the session, starts a new epoch if it was idle past its
// expiry, turns an allowed call past a limit into a deny by the session
// guard, and builds the call's entry. The receipt's metadata gets a
// "session" member naming the entry (id, epoch, seq, entry_hash) and, for a
// denial, the limit's figures.
func (c *Call) Check(out *kernel.Outcome, at time.Time) (map[string]any, error) {
	j := c.j
	if j.opts.ReadOnly {
		return nil, fmt.Errorf("session call: %w", ErrClosed)
	}
	if !ValidID(c.req.SessionID) {
		return nil, fmt.Errorf("session call: %w", ErrInvalidID)
	}
	if p := j.failed.Load(); p != nil {
		return nil, fmt.Errorf("session call: %w", *p)
	}
	s, err := j.acquire(c.req.SessionID)
	if err != nil {
		return nil, fmt.Errorf("session call: %w", err)
	}
	c.s = s // Bind unlocks
	st := s.st
	if j.opts.Self != "" && !st.heldBy(j.opts.Self) {
		return nil, fmt.Errorf("session call: %w (%s)", ErrNotHeld, st.whereHeld())
	}
	now := at.Unix()
	epoch, totals := st.head.Epoch, &st.head.Totals
	if st.expired(now, j.opts.Limits.IdleExpiry) {
		// A new epoch with fresh totals; the state changes only when the
		// entry is appended (apply), as nothing may change without one.
		epoch, totals = epoch+1, &Totals{}
	}
	var figures map[string]any
	reserved := int64(0)
	if out.Verdict == kernel.VerdictAllow {
		rule, reason, f := check(j.opts.Limits, c.req.SessionID, totals, c.req.ToolName, c.req.RequestBytes)
		if rule != "" {
			out.Verdict, out.Guard, out.MatchedRule, out.Reason, out.Pattern = kernel.VerdictDeny, kernel.GuardSession, rule, reason, ""
			figures = f
		} else {
			reserved = c.reserve(totals)
		}
	}
	c.entry = Entry{
		Schema:       EntrySchema,
		SessionID:    c.req.SessionID,
		Epoch:        epoch,
		Seq:          st.head.Seq + 1,
		PrevHash:     st.head.Hash,
		Kind:         KindCall,
		Timestamp:    now,
		ToolServer:   c.req.ToolServer,
		ToolName:     c.req.ToolName,
		Allowed:      out.Verdict == kernel.VerdictAllow,
		RequestBytes: reserved,
	}
	if !c.entry.Allowed {
		c.entry.Guard = out.Guard
	}
	if c.entry.EntryHash, err = c.entry.Hash(); err != nil {
		return nil, err
	}
	meta := map[string]any{
		"id":         c.entry.SessionID,
		"epoch":      c.entry.Epoch,
		"seq":        c.entry.Seq,
		"entry_hash": c.entry.EntryHash,
	}
	for k, v := range figures {
		meta[k] = v
	}
	if g := st.head.Segment; g != nil {
		meta["segment"] = map[string]any{"start": g.Seq, "link": g.Link, "linked_hash": g.LinkedHash}
	}
	return map[string]any{"session": meta}, nil
}

// reserve is what an admitted call may read of its request body: its
// declared length, or for a body of unknown length the smaller of MaxBody
// and what the session's request byte limit leaves.
func (c *Call) reserve(t *Totals) int64 {
	if c.req.RequestBytes >= 0 {
		c.reserved = c.req.RequestBytes
		return c.req.RequestBytes
	}
	r := c.req.MaxBody
	if l := c.j.opts.Limits.MaxRequestBytes; l > 0 {
		left := l - t.RequestBytes
		if r <= 0 || left < r {
			r = left
		}
	}
	c.reserved = max(r, 0)
	if c.req.MaxBody <= 0 && c.j.opts.Limits.MaxRequestBytes <= 0 {
		c.reserved = -1 // nothing bounds it here
		return 0
	}
	return c.reserved
}

// Bind appends the entry with the receipt's id and unlocks the session.
// With an error (no receipt) nothing is appended.
func (c *Call) Bind(receiptID string, err error) {
	s := c.s
	if s == nil {
		return
	}
	defer s.mu.Unlock()
	if err != nil {
		c.s = nil
		return
	}
	c.entry.ReceiptID = receiptID
	r, perr := c.append(&c.entry, false)
	if perr != nil {
		// The receipt is prepared and will be written; the journal refuses
		// every later call (ErrFailed or ErrClosed), and Durable says so.
		c.rec = &record{done: closedChan(), err: perr}
		return
	}
	c.rec = r
	if c.entry.Allowed {
		s.inflight++
	}
	s.lastUse = c.j.opts.Now()
}

// append applies e to its session's state and queues it for the file
// (lazy: nobody will wait for it). Called with the session locked.
func (c *Call) append(e *Entry, lazy bool) (*record, error) {
	// A call's entry waits for its release when the journal holds them;
	// a settle is ready (behind its session's held entries).
	return c.j.appendEntry(c.s, e, lazy, !lazy && c.j.opts.HoldUntilReleased)
}

// appendEntry applies e to session s's state and queues it for the file,
// behind the session's pending entries; held entries wait for Release.
// Called with s locked.
func (j *Journal) appendEntry(s *session, e *Entry, lazy, held bool) (*record, error) {
	b, err := e.encode()
	if err != nil {
		return nil, err
	}
	s.st.apply(e)
	head, err := json.Marshal(&s.st.head)
	if err != nil {
		return nil, fmt.Errorf("encode session head: %w", err)
	}
	r := &record{key: entryKey(e.SessionID, e.Seq), entry: b, head: head, id: e.SessionID, s: s, lazy: lazy, ready: !held, done: make(chan struct{})}
	if err := j.submit(s, r); err != nil {
		return nil, err
	}
	return r, nil
}

// Release lets the call's entry go to the file, with a journal opened with
// HoldUntilReleased: call it once the call's receipt is durable (or once
// it is known it never will be: the entry then names a receipt the log
// lacks, and verify says so). A no-op otherwise, and after the first time.
func (c *Call) Release() {
	r := c.rec
	if r == nil || r.s == nil {
		return
	}
	r.s.mu.Lock()
	defer r.s.mu.Unlock()
	if r.ready {
		return
	}
	r.ready = true
	if err := c.j.flushPending(r.s); err != nil {
		c.j.log.WithError(err).Error("release session entry")
	}
}

// Entry is the call's journal entry (zero before Check).
func (c *Call) Entry() Entry { return c.entry }

// Allowed says whether the call's entry allows it.
func (c *Call) Allowed() bool { return c.rec != nil && c.entry.Allowed }

// BodyLimit is how many request body bytes the call may read: its
// reservation for a body of unknown length, -1 when the session sets no
// bound (the caller's own bound applies).
func (c *Call) BodyLimit() int64 { return c.reserved }

// Durable waits until the call's entry is in the file (sync mode: before
// the call takes effect). An error means it never will be.
func (c *Call) Durable(ctx context.Context) error {
	if c.rec == nil {
		return nil // no entry: nothing to wait for
	}
	select {
	case <-c.rec.done:
		if c.rec.err != nil {
			return fmt.Errorf("session journal: %w", c.rec.err)
		}
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Settle records what an allowed call used, once its response is done:
// the request body bytes read and the response body bytes written. It
// appends a settle entry (not waited for: the call is over) and is a no-op
// for a denied call or after the first time.
func (c *Call) Settle(requestBytes, responseBytes int64) {
	if !c.Allowed() {
		return
	}
	c.settleOnce.Do(func() {
		s, err := c.j.acquire(c.req.SessionID)
		if err != nil {
			c.j.log.WithError(err).Error("settle session call")
			return
		}
		defer s.mu.Unlock()
		if s != c.s {
			// Not possible while the call is in flight (an in-flight call
			// blocks eviction), but never settle into another object.
			c.j.log.Error("settle session call: session reloaded while in flight")
			return
		}
		s.inflight--
		st := s.st
		e := Entry{
			Schema:        EntrySchema,
			SessionID:     c.entry.SessionID,
			Epoch:         st.head.Epoch,
			Seq:           st.head.Seq + 1,
			PrevHash:      st.head.Hash,
			Kind:          KindSettle,
			Timestamp:     max(c.j.opts.Now().Unix(), st.head.LastActive),
			ToolServer:    c.entry.ToolServer,
			ToolName:      c.entry.ToolName,
			Allowed:       true,
			CallSeq:       c.entry.Seq,
			RequestBytes:  max(requestBytes, 0),
			ResponseBytes: max(responseBytes, 0),
		}
		if e.EntryHash, err = e.Hash(); err != nil {
			c.j.log.WithError(err).Error("settle session call")
			return
		}
		if _, err := c.append(&e, true); err != nil {
			c.j.log.WithError(err).Error("settle session call")
		}
		s.lastUse = c.j.opts.Now()
	})
}

func closedChan() chan struct{} {
	ch := make(chan struct{})
	close(ch)
	return ch
}
