package receipts

import (
	"context"
	"crypto/ed25519"
	"encoding/binary"
	"fmt"
	"time"

	"github.com/sirupsen/logrus"
	bolt "go.etcd.io/bbolt"

	"github.com/backbay-labs/chio-agent/kernel"
)

// Append adds one signed receipt to the log. data is the JSON of a signed
// chio.receipt.v1 (canonical or not: the log stores the canonical form). The
// work that scales with the receipt (canonicalizing, parsing, hashing the
// Merkle leaf) happens here, in the caller's goroutine, so that the single
// committer only writes.
//
// In ModeSync Append returns the receipt's sequence number once it is
// durable. In ModeAsync it returns 0 once the receipt is queued. A full queue
// blocks until there is room or ctx ends. If ctx ends after the receipt was
// queued, Append returns ctx.Err() and the receipt may still become durable.
func (l *Log) Append(ctx context.Context, data []byte) (uint64, error) {
	r, err := l.prepare(data)
	if err != nil {
		return 0, err
	}
	return l.submit(ctx, r, true)
}

// AppendReceipt is Append for a receipt the caller holds as a signed
// kernel.Receipt (what kernel.Sign returns). It reads the indexed fields
// from the struct instead of parsing JSON, which makes it the cheaper path
// for the agent's per-connection receipts.
func (l *Log) AppendReceipt(ctx context.Context, rc *kernel.Receipt) (uint64, error) {
	if l.opts.ReadOnly {
		return 0, fmt.Errorf("append receipt: %w", ErrReadOnly)
	}
	r, err := l.receiptRequest(rc)
	if err != nil {
		return 0, err
	}
	return l.submit(ctx, r, true)
}

func (l *Log) receiptRequest(rc *kernel.Receipt) (*request, error) {
	canon, err := rc.CanonicalJSON()
	if err != nil {
		return nil, fmt.Errorf("append receipt: %v: %w", err, ErrInvalidReceipt)
	}
	e := Entry{ID: rc.ID, Timestamp: int64(rc.Timestamp), Decision: "none", Receipt: canon}
	if rc.Decision != nil {
		e.Decision = rc.Decision.Verdict
	}
	// CanonicalJSON accepted both, so they are valid JSON.
	e.Workload = indexedString(rc.Metadata, workloadKeys)
	e.Host = indexedString(rc.Action.Parameters, hostKeys)
	if err := checkEntry(&e, rc.KernelKey, rc.Signature, rc.Timestamp); err != nil {
		return nil, fmt.Errorf("append receipt: %v: %w", err, ErrInvalidReceipt)
	}
	return l.request(e, rc.KernelKey, LeafHash(canon))
}

// TryAppend is Append that returns ErrQueueFull instead of blocking on a
// full queue.
func (l *Log) TryAppend(ctx context.Context, data []byte) (uint64, error) {
	r, err := l.prepare(data)
	if err != nil {
		return 0, err
	}
	return l.submit(ctx, r, false)
}

func (l *Log) prepare(data []byte) (*request, error) {
	if l.opts.ReadOnly {
		return nil, fmt.Errorf("append receipt: %w", ErrReadOnly)
	}
	canon, err := canonicalReceipt(data)
	if err != nil {
		return nil, fmt.Errorf("append receipt: %v: %w", err, ErrInvalidReceipt)
	}
	e, key, err := parseEntry(canon)
	if err != nil {
		return nil, fmt.Errorf("append receipt: %v: %w", err, ErrInvalidReceipt)
	}
	return l.request(e, key, LeafHash(canon))
}

func (l *Log) request(e Entry, key string, leaf Hash) (*request, error) {
	if key != l.pubHex {
		return nil, fmt.Errorf("append receipt %s: signed by %s, log key is %s: %w", e.ID, key, l.pubHex, ErrKeyMismatch)
	}
	r := &request{kind: reqAppend, entry: e, leaf: leaf}
	if l.opts.Mode == ModeSync {
		r.done = make(chan result, 1)
	}
	return r, nil
}

func (l *Log) submit(ctx context.Context, r *request, block bool) (uint64, error) {
	l.closeMu.RLock()
	if l.closed {
		l.closeMu.RUnlock()
		return 0, fmt.Errorf("append receipt: %w", ErrClosed)
	}
	if p := l.failed.Load(); p != nil {
		l.closeMu.RUnlock()
		return 0, fmt.Errorf("append receipt: %w", *p)
	}
	// Count the receipt as accepted before the committer can see it, so the
	// mark is never below what is durable.
	if r.kind == reqAppend && !r.counted {
		l.mark.v.Add(1)
	}
	if r.kind != reqAppend {
		l.urgent.Add(1) // before it is queued: see gather
	}
	var err error
	if block {
		select {
		case l.queue <- r:
		case <-ctx.Done():
			err = ctx.Err()
		}
	} else {
		select {
		case l.queue <- r:
		default:
			err = ErrQueueFull
		}
	}
	l.closeMu.RUnlock()
	if err == nil && (r.kind != reqAppend || len(l.queue) >= l.opts.MaxBatch) {
		l.kickCommitter()
	}
	if err != nil {
		if r.kind == reqAppend && !r.counted {
			l.mark.v.Add(^uint64(0))
		}
		if r.kind != reqAppend {
			l.urgent.Add(-1)
		}
		return 0, fmt.Errorf("append receipt: %w", err)
	}
	if r.done == nil {
		return 0, nil
	}
	select {
	case res := <-r.done:
		return res.seq, res.err
	case <-ctx.Done():
		return 0, fmt.Errorf("append receipt: %w", ctx.Err())
	}
}

// Flush returns once every receipt queued before it, and every reservation
// open before it (Reserve), is durable (useful in async mode). With seal, it
// also checkpoints the unsealed tail. A goroutine holding a reservation
// must not call Flush or Close before it appends or abandons it.
func (l *Log) Flush(ctx context.Context, seal bool) error {
	if l.opts.ReadOnly {
		return fmt.Errorf("flush receipt log: %w", ErrReadOnly)
	}
	// Wait for the reservations still open (receipts being made or signed
	// beside their callers): a barrier, not a critical section.
	l.signing.Lock()
	//lint:ignore SA2001 the Lock above is the barrier
	l.signing.Unlock()
	r := &request{kind: reqFlush, done: make(chan result, 1)}
	if seal {
		r.kind = reqSeal
	}
	_, err := l.submit(ctx, r, true)
	return err
}

// Close stops accepting receipts, commits everything queued, seals the
// tail with a checkpoint and closes the file. Appends blocked on a full
// queue are let through first.
func (l *Log) Close() error {
	if l.opts.ReadOnly {
		if p := l.broken.Load(); p != nil {
			return fmt.Errorf("close receipt log %s: left unclosed after bbolt failed: %w", l.path, *p)
		}
		return l.db.Close()
	}
	l.closeMu.Lock()
	if l.closed {
		l.closeMu.Unlock()
		return fmt.Errorf("close receipt log: %w", ErrClosed)
	}
	l.closed = true
	// Open reservations queue their receipts before the queue closes; no
	// other sender remains (each holds closeMu shared).
	l.signing.Lock()
	l.urgent.Add(1) // never taken: the committer lingers no more
	close(l.queue)
	l.signing.Unlock()
	l.closeMu.Unlock()
	l.kickCommitter()
	<-l.done
	if p := l.broken.Load(); p != nil {
		// bbolt may hold its own locks: closing would wait forever. The
		// mapping and the file stay open until the process exits.
		l.mark.close()
		return fmt.Errorf("close receipt log %s: left unclosed after bbolt failed: %w", l.path, *p)
	}
	err := l.db.Close()
	if merr := l.mark.close(); err == nil {
		err = merr
	}
	if err != nil {
		return fmt.Errorf("close receipt log %s: %w", l.path, err)
	}
	if p := l.failed.Load(); p != nil {
		return fmt.Errorf("close receipt log %s: %w", l.path, *p)
	}
	return nil
}

// run is the committer: it takes what is queued (up to MaxBatch), writes it
// in one transaction with one fsync, answers the waiters, and seals the
// tail when the log goes quiet.
// gather adds what is queued to batch (which holds the request just
// received), up to MaxBatch. In async mode it first lingers (AsyncLinger) so
// a trickle shares one transaction: it sleeps rather than receive each
// receipt as it comes, so that the committer's thread, locked and at low
// priority, is woken once per batch and not once per receipt (each wake is
// two thread switches; at one connection at a time the node agent paid them
// on every connection). A full batch, or a Flush, seal or Close waiting,
// ends the linger early (urgent and kick).
func (l *Log) gather(batch []*request) []*request {
	l.took(batch[0])
	if l.opts.Mode == ModeAsync && l.opts.AsyncLinger > 0 && batch[0].kind == reqAppend {
		select {
		case <-l.kick: // stale: sent for a batch already taken
		default:
		}
		// Checked after the stale kick is gone: whatever makes the
		// linger pointless from here on also kicks.
		if l.urgent.Load() == 0 && len(batch)+len(l.queue) < l.opts.MaxBatch {
			t := time.NewTimer(l.opts.AsyncLinger)
			select {
			case <-t.C:
			case <-l.kick:
				t.Stop()
			}
		}
	}
	for len(batch) < l.opts.MaxBatch {
		select {
		case r, ok := <-l.queue:
			if !ok {
				return batch
			}
			l.took(r)
			batch = append(batch, r)
		default:
			return batch
		}
	}
	return batch
}

// took notes that the committer has taken r from the queue.
func (l *Log) took(r *request) {
	if r.kind != reqAppend {
		l.urgent.Add(-1)
	}
}

// kickCommitter ends the committer's linger, if it is lingering.
func (l *Log) kickCommitter() {
	select {
	case l.kick <- struct{}{}:
	default:
	}
}

func (l *Log) run() {
	if l.opts.Mode == ModeAsync {
		deprioritize()
	}
	defer close(l.done)
	defer func() {
		close(l.replies)
		<-l.repliesDone
	}()
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	batch := make([]*request, 0, l.opts.MaxBatch)
	for {
		select {
		case r, ok := <-l.queue:
			if !ok {
				if !l.crashOnClose {
					l.seal()
				}
				return
			}
			batch = append(batch[:0], r)
			batch = l.gather(batch)
			l.commit(batch)
			clear(batch)
		case <-timer.C:
			l.seal()
		}
		if len(l.st.pending) > 0 {
			d := l.opts.CheckpointIdle
			if age := l.opts.Now().Sub(l.st.pendingSince); l.opts.CheckpointMaxDelay-age < d {
				d = max(l.opts.CheckpointMaxDelay-age, 0)
			}
			timer.Reset(d)
		} else {
			timer.Stop()
		}
	}
}

// commit writes one batch. On failure the in-memory chain state is rolled
// back with the transaction, so the next batch continues from what is on
// disk, without a gap.
func (l *Log) commit(batch []*request) {
	l.buildLater(batch)
	l.ids.fold()
	saved := l.st.clone()
	res := make([]result, len(batch))
	sealAfter := false
	appended := 0
	err := l.update(func(tx *bolt.Tx) error {
		bk := entryBuckets(tx)
		// bbolt keeps the keys it is given until the commit; carving them
		// out of one arena saves six allocations per receipt.
		var arena keyArena
		arena.buf = make([]byte, 0, len(batch)*entryKeysSize)
		for i, r := range batch {
			switch r.kind {
			case reqSeal:
				sealAfter = true
				continue
			case reqFlush, reqAbandoned:
				continue
			}
			idb := arena.take(32)
			if !decodeHex(idb, r.entry.ID) {
				return fmt.Errorf("receipt id %q is not hex: %w", r.entry.ID, ErrInvalidReceipt) // checkEntry made sure it is
			}
			if prev, ok := l.ids.find(bk.ids, idb); ok {
				res[i].err = fmt.Errorf("append receipt %s: already stored as seq %d: %w", r.entry.ID, prev, ErrInvalidReceipt)
				continue
			}
			seq := l.st.lastSeq + 1
			if err := bk.put(&arena, seq, idb, &r.entry); err != nil {
				return err
			}
			l.ids.add(idb, seq)
			l.st.lastSeq = seq
			if len(l.st.pending) == 0 {
				l.st.pendingStart = seq
				l.st.pendingSince = l.opts.Now()
			}
			l.st.pending = append(l.st.pending, r.leaf)
			res[i].seq = seq
			appended++
			if len(l.st.pending) >= l.opts.CheckpointEvery {
				if err := l.checkpointTx(tx); err != nil {
					return err
				}
			}
		}
		if sealAfter && len(l.st.pending) > 0 {
			if err := l.checkpointTx(tx); err != nil {
				return err
			}
		}
		return l.putMeta(tx)
	})
	if err != nil {
		l.st = saved
		l.ids.drop(saved.lastSeq)
		err = fmt.Errorf("commit receipts to %s: %w", l.path, err)
		lostAsync := false
		notDurable := uint64(0)
		for i, r := range batch {
			if r.kind == reqAppend {
				if r.done == nil {
					lostAsync = true
				} else {
					notDurable++
				}
			}
			res[i] = result{err: err}
		}
		// Sync callers learn of the failure, so their receipts are not
		// counted as lost; async ones were promised, so they are.
		l.mark.v.Add(-notDurable)
		if lostAsync {
			l.failed.CompareAndSwap(nil, &err)
		}
		l.log.WithError(err).WithField(fieldBatch, len(batch)).Error("receipt commit failed")
	} else {
		for i, r := range batch {
			if r.kind == reqAppend && res[i].err != nil {
				l.mark.v.Add(^uint64(0)) // refused duplicate: never to be stored
			}
		}
		if appended > 0 {
			l.durable.Store(l.st.lastSeq)
			l.notifyMu.Lock()
			close(l.notify)
			l.notify = make(chan struct{})
			l.notifyMu.Unlock()
		}
	}
	// Waking hundreds of waiters costs as much as building the next
	// transaction; hand it to the notifier so the committer moves on.
	waiters := make([]*request, 0, len(batch))
	results := make([]result, 0, len(batch))
	for i, r := range batch {
		if r.done != nil {
			waiters = append(waiters, r)
			results = append(results, res[i])
		}
	}
	if len(waiters) > 0 {
		l.replies <- replyBatch{waiters, results}
	}
}

type replyBatch struct {
	reqs []*request
	res  []result
}

// notifier delivers commit results to waiting Appends, in commit order.
func (l *Log) notifier() {
	defer close(l.repliesDone)
	for b := range l.replies {
		for i, r := range b.reqs {
			r.done <- b.res[i]
		}
	}
}

// seal checkpoints the unsealed tail on its own.
func (l *Log) seal() {
	if len(l.st.pending) == 0 {
		return
	}
	saved := l.st.clone()
	err := l.update(func(tx *bolt.Tx) error {
		if err := l.checkpointTx(tx); err != nil {
			return err
		}
		return l.putMeta(tx)
	})
	if err != nil {
		l.st = saved
		l.log.WithError(err).Error("seal receipt log tail")
	}
}

func (l *Log) putMeta(tx *bolt.Tx) error {
	meta := tx.Bucket(bktMeta)
	if err := meta.Put(metaLastSeq, u64key(l.st.lastSeq)); err != nil {
		return err
	}
	// The accepted mark as a lower bound that survives a power cut.
	return meta.Put(metaAccepted, u64key(max(l.mark.v.Load(), l.st.lastSeq)))
}

// appendOnlyFill is the fill percent for buckets whose keys only grow
// (receipts, seq_ids and the time index): bbolt's default of one half would leave
// every page of an append-only bucket half empty.
const appendOnlyFill = 0.95

// decodeHex decodes the hex string s into dst (len(s) == 2*len(dst))
// without converting s to a byte slice first.
func decodeHex(dst []byte, s string) bool {
	if len(s) != 2*len(dst) {
		return false
	}
	for i := range dst {
		hi, ok1 := unhex(s[2*i])
		lo, ok2 := unhex(s[2*i+1])
		if !ok1 || !ok2 {
			return false
		}
		dst[i] = hi<<4 | lo
	}
	return true
}

func unhex(c byte) (byte, bool) {
	switch {
	case '0' <= c && c <= '9':
		return c - '0', true
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10, true
	case 'A' <= c && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}

// entryBucketSet holds the buckets one receipt is written to, looked up once
// per transaction.
type entryBucketSet struct {
	recs, ids, time, decision, workload, host *bolt.Bucket
}

func entryBuckets(tx *bolt.Tx) entryBucketSet {
	b := entryBucketSet{
		recs: tx.Bucket(bktReceipts), ids: tx.Bucket(bktSeqIDs), time: tx.Bucket(bktTime),
		decision: tx.Bucket(bktDecision), workload: tx.Bucket(bktWorkload), host: tx.Bucket(bktHost),
	}
	b.recs.FillPercent = appendOnlyFill
	b.ids.FillPercent = appendOnlyFill
	b.time.FillPercent = appendOnlyFill
	return b
}

// entryKeysSize is what one receipt's keys usually take from a keyArena
// (seq, id, time, and three short index values).
const entryKeysSize = 8 + 32 + 16 + 3*(2+24+8)

// keyArena hands out key buffers from one allocation. A slice it returned
// stays valid after the arena grows (the old array lives on while used).
type keyArena struct{ buf []byte }

func (a *keyArena) take(n int) []byte {
	if cap(a.buf)-len(a.buf) < n {
		a.buf = make([]byte, 0, max(n, 2*cap(a.buf)))
	}
	b := a.buf[len(a.buf) : len(a.buf)+n : len(a.buf)+n]
	a.buf = a.buf[:len(a.buf)+n]
	return b
}

func (a *keyArena) valueKey(value string, seq uint64) []byte {
	b := a.take(2 + len(value) + 8)
	binary.BigEndian.PutUint16(b, uint16(len(value)))
	copy(b[2:], value)
	putU64(b[2+len(value):], seq)
	return b
}

func (bk *entryBucketSet) put(a *keyArena, seq uint64, idb []byte, e *Entry) error {
	k := a.take(8)
	putU64(k, seq)
	if err := bk.recs.Put(k, e.Receipt); err != nil {
		return fmt.Errorf("put receipt %d: %w", seq, err)
	}
	if err := bk.ids.Put(k, idb); err != nil {
		return fmt.Errorf("index receipt %d: %w", seq, err)
	}
	tk := a.take(16)
	putU64(tk, uint64(e.Timestamp))
	putU64(tk[8:], seq)
	for _, ix := range [...]struct {
		b   *bolt.Bucket
		key []byte
	}{
		{bk.time, tk},
		{bk.decision, a.valueKey(e.Decision, seq)},
		{bk.workload, a.valueKey(e.Workload, seq)},
		{bk.host, a.valueKey(e.Host, seq)},
	} {
		if err := ix.b.Put(ix.key, nil); err != nil {
			return fmt.Errorf("index receipt %d: %w", seq, err)
		}
	}
	return nil
}

// checkpointTx seals the pending leaves into the next checkpoint, signed
// with the log's key, chained to the previous one.
func (l *Log) checkpointTx(tx *bolt.Tx) error { return l.checkpointWith(tx, l.opts.Key, l.pubHex) }

// checkpointWith is checkpointTx with the key given: a rotation seals the
// tail with the previous key (recordRotation).
func (l *Log) checkpointWith(tx *bolt.Tx, key ed25519.PrivateKey, pubHex string) error {
	s := &l.st
	n := uint64(len(s.pending))
	body := CheckpointBody{
		Schema:                   CheckpointSchema,
		CheckpointSeq:            s.cpSeq + 1,
		BatchStartSeq:            s.pendingStart,
		BatchEndSeq:              s.pendingStart + n - 1,
		TreeSize:                 n,
		MerkleRoot:               MerkleRoot(s.pending).String(),
		IssuedAt:                 l.opts.Now().Unix(),
		KernelKey:                pubHex,
		PreviousCheckpointSHA256: s.prevSHA,
	}
	leaf, err := chainLeafHash(&body)
	if err != nil {
		return err
	}
	s.chain.push(leaf)
	body.ChainRoot = s.chain.root().String()
	_, stored, err := signCheckpoint(key, body)
	if err != nil {
		return err
	}
	if err := tx.Bucket(bktCheckpoints).Put(u64key(body.CheckpointSeq), stored); err != nil {
		return fmt.Errorf("put checkpoint %d: %w", body.CheckpointSeq, err)
	}
	if err := tx.Bucket(bktCPByEnd).Put(u64key(body.BatchEndSeq), u64key(body.CheckpointSeq)); err != nil {
		return fmt.Errorf("index checkpoint %d: %w", body.CheckpointSeq, err)
	}
	if err := tx.Bucket(bktMeta).Put(metaChain, s.chain.marshal()); err != nil {
		return fmt.Errorf("put chain frontier: %w", err)
	}
	sha, err := body.BodySHA256()
	if err != nil {
		return err
	}
	s.cpSeq = body.CheckpointSeq
	s.prevSHA = sha
	s.pendingStart = body.BatchEndSeq + 1
	s.pending = s.pending[:0]
	l.log.WithFields(logrus.Fields{fieldCheckpoint: body.CheckpointSeq, fieldSeq: body.BatchEndSeq}).Debug("checkpoint")
	return nil
}

// WaitAfter blocks until a receipt after seq is durable or ctx ends; it
// lets an in-process reader follow the log.
func (l *Log) WaitAfter(ctx context.Context, seq uint64) error {
	if l.opts.ReadOnly {
		return fmt.Errorf("wait for receipts: %w", ErrReadOnly)
	}
	for {
		l.notifyMu.Lock()
		ch := l.notify
		l.notifyMu.Unlock()
		if l.durable.Load() > seq {
			return nil
		}
		select {
		case <-ch:
		case <-l.done:
			return fmt.Errorf("wait for receipts: %w", ErrClosed)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}
