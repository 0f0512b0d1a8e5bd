package receipts

import (
	"context"
	"errors"
	"fmt"

	"github.com/backbay-labs/chio-agent/kernel"
)

// maxReservations bounds the async receipts reserved and not yet queued (being
// built or signed beside their callers). Past it, AppendPrepared signs on
// the caller's goroutine and Reserve reports ErrQueueFull (backpressure,
// never unbounded goroutines).
const maxReservations = 1024

// AppendPrepared appends a receipt that kernel.Prepare (or
// Kernel.PrepareToolCall) made for this log's key, signing it with the
// log's key. Its id is final already, so a caller can answer with it.
//
// In ModeSync it signs at once and returns when the receipt is durable, as
// AppendReceipt does. In ModeAsync it returns as soon as the receipt is
// accepted, counted by the crash-loss mark like any async receipt: a
// goroutine beside the caller signs it (Ed25519, ~20 µs of CPU) and queues
// it, so the caller's answer does not wait for the signature. When
// maxReservations receipts are already pending, the caller signs.
//
// Measured on 2 cores (docs/receipt-log.md): signing beside the caller beat both
// signing in the caller (p50) and signing on the committer's lower-priority
// thread, whose batches of signatures ran as bursts that stretched p99.
func (l *Log) AppendPrepared(ctx context.Context, p *kernel.Prepared) (uint64, error) {
	if l.opts.ReadOnly {
		return 0, fmt.Errorf("append receipt: %w", ErrReadOnly)
	}
	if err := l.checkPrepared(p); err != nil {
		return 0, err
	}
	if l.opts.Mode == ModeAsync {
		res, err := l.Reserve()
		switch {
		case err == nil:
			go res.append(p)
			return 0, nil
		case !errors.Is(err, ErrQueueFull):
			return 0, err
		}
	}
	r, err := l.signedRequest(p)
	if err != nil {
		return 0, fmt.Errorf("append receipt: %v: %w", err, ErrInvalidReceipt)
	}
	return l.submit(ctx, r, true)
}

// Reservation is a place held for one async receipt that its caller
// builds later, off its critical path (the node agent relays an allowed
// connection while its receipt is made). From Reserve on, the crash-loss
// mark counts the receipt, so a crash before it is written is reported as
// a loss, and Flush and Close wait until it is appended or abandoned.
// Exactly one of AppendPrepared and Abandon must be called.
type Reservation struct {
	l *Log
}

// Reserve holds a place for one receipt, in ModeAsync only. It fails with
// ErrClosed, the log's failure, or ErrQueueFull when maxReservations receipts
// are pending already (the caller should append in line instead).
func (l *Log) Reserve() (*Reservation, error) {
	if l.opts.ReadOnly {
		return nil, fmt.Errorf("reserve receipt: %w", ErrReadOnly)
	}
	if l.opts.Mode != ModeAsync {
		return nil, fmt.Errorf("reserve receipt: only in async mode (log is %s)", l.opts.Mode)
	}
	l.closeMu.RLock()
	defer l.closeMu.RUnlock()
	if l.closed {
		return nil, fmt.Errorf("reserve receipt: %w", ErrClosed)
	}
	if f := l.failed.Load(); f != nil {
		return nil, fmt.Errorf("reserve receipt: %w", *f)
	}
	select {
	case l.reservations <- struct{}{}:
	default:
		return nil, fmt.Errorf("reserve receipt: %w", ErrQueueFull)
	}
	// Held until the receipt is queued: Close and Flush wait for it.
	l.signing.RLock()
	l.mark.v.Add(1)
	return &Reservation{l: l}, nil
}

// AppendPrepared signs p with the log's key and queues it in the place
// held. A receipt that cannot be signed or stored (prepared for another
// key, malformed) is abandoned, and returned as the error.
func (r *Reservation) AppendPrepared(p *kernel.Prepared) error {
	if err := r.l.checkPrepared(p); err != nil {
		r.Abandon(err)
		return err
	}
	return r.append(p)
}

func (r *Reservation) append(p *kernel.Prepared) error {
	l := r.l
	req, err := l.signedRequest(p)
	if err != nil {
		err = fmt.Errorf("append receipt %s: %w", p.ID(), err)
		r.Abandon(err)
		return err
	}
	req.counted = true
	l.queue <- req // the queue closes only after every reservation ends
	if len(l.queue) >= l.opts.MaxBatch {
		l.kickCommitter()
	}
	r.release()
	return nil
}

// AppendLater queues, in the place held, a receipt that the committer
// makes and signs itself: it calls build, checks and signs what it returns
// with the log's key, and stores it in the batch it is committing. The
// caller's goroutine does none of the receipt's work, and no goroutine of
// its own wakes for it: the committer, woken once per batch, builds and
// signs the batch's receipts on its thread (locked, at low priority in async
// mode) before the batch's one transaction.
//
// build runs on the committer's goroutine, once, and must not block or
// append to this log. If it fails, or what it returns cannot be signed for
// this log, the receipt is not stored and stays counted as lost, as with
// Abandon, and the error is logged.
func (r *Reservation) AppendLater(build func() (*kernel.Prepared, error)) {
	l := r.l
	l.queue <- &request{kind: reqAppend, build: build, counted: true} // the queue closes only after every reservation ends
	if len(l.queue) >= l.opts.MaxBatch {
		l.kickCommitter()
	}
	r.release()
}

// buildLater makes and signs the receipts of the batch's AppendLater
// requests, in place. One that cannot be made is abandoned (counted as
// lost, never stored).
func (l *Log) buildLater(batch []*request) {
	for _, r := range batch {
		if r.build == nil {
			continue
		}
		build := r.build
		r.build = nil // the caller's state is not held past its receipt
		req, err := l.builtRequest(build)
		if err != nil {
			r.kind = reqAbandoned
			l.log.WithError(err).Error("receipt log: a reserved receipt was not written; counted as lost")
			continue
		}
		r.entry, r.leaf = req.entry, req.leaf
	}
}

func (l *Log) builtRequest(build func() (*kernel.Prepared, error)) (*request, error) {
	p, err := build()
	if err != nil {
		return nil, fmt.Errorf("append receipt: %w", err)
	}
	if err := l.checkPrepared(p); err != nil {
		return nil, err
	}
	req, err := l.signedRequest(p)
	if err != nil {
		return nil, fmt.Errorf("append receipt %s: %w", p.ID(), err)
	}
	return req, nil
}

// Abandon gives the place up without a receipt, because err kept the
// caller from making one. The receipt stays counted by the crash-loss mark:
// a decision was taken without its receipt, which is a loss, and the next
// Open reports it.
func (r *Reservation) Abandon(err error) {
	r.l.log.WithError(err).Error("receipt log: a reserved receipt was not written; counted as lost")
	r.release()
}

func (r *Reservation) release() {
	r.l.signing.RUnlock()
	<-r.l.reservations
}

func (l *Log) checkPrepared(p *kernel.Prepared) error {
	if p.KernelKey() != l.pubHex {
		return fmt.Errorf("append receipt %s: prepared for %s, log key is %s: %w", p.ID(), p.KernelKey(), l.pubHex, ErrKeyMismatch)
	}
	return nil
}

// signedRequest signs p and makes its request from what Prepare already
// holds: the canonical bytes are written once from its canonical parts
// (never re-canonicalized), and the indexed workload and host come typed
// from the producer when it gave them (egress receipts), else from one
// scan of the canonical metadata and parameters.
func (l *Log) signedRequest(p *kernel.Prepared) (*request, error) {
	rc, canon, err := p.SignCanonical(l.opts.Key)
	if err != nil {
		return nil, err
	}
	e := Entry{ID: rc.ID, Timestamp: int64(rc.Timestamp), Decision: "none", Receipt: canon}
	if rc.Decision != nil {
		e.Decision = rc.Decision.Verdict
	}
	if ix, ok := p.Index(); ok {
		e.Workload, e.Host = ix.Workload, ix.Host
	} else {
		e.Workload = indexedString(rc.Metadata, workloadKeys)
		e.Host = indexedString(rc.Action.Parameters, hostKeys)
	}
	if err := checkEntry(&e, rc.KernelKey, rc.Signature, rc.Timestamp); err != nil {
		return nil, fmt.Errorf("%v: %w", err, ErrInvalidReceipt)
	}
	return l.request(e, rc.KernelKey, LeafHash(canon))
}
