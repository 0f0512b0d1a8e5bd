package receipts

import (
	"context"
	"errors"
	"fmt"

	"github.com/backbay-labs/chio-agent/kernel"
)

// AppendPrepared appends a receipt that kernel.Prepare (or
// Kernel.PrepareToolCall) made for this log's key, signing it with the
// log's key. Its id is final already, so a caller can answer with it.
//
// In ModeSync it signs at once and returns when the receipt is durable, as
// AppendReceipt does. In ModeAsync it returns once the receipt is queued
// (and counted by the crash-loss mark, like any async receipt); the
// committer, on its lower-priority thread, signs it just before it commits
// it, which takes the Ed25519 signature (~20 µs of CPU) off the caller's
// path. When the committer is behind (its queue half full), the caller
// signs instead, so that under load the signatures spread over every core
// rather than queue behind one thread.
func (l *Log) AppendPrepared(ctx context.Context, p *kernel.Prepared) (uint64, error) {
	if l.opts.ReadOnly {
		return 0, fmt.Errorf("append receipt: %w", ErrReadOnly)
	}
	if p.KernelKey() != l.pubHex {
		return 0, fmt.Errorf("append receipt %s: prepared for %s, log key is %s: %w", p.ID(), p.KernelKey(), l.pubHex, ErrKeyMismatch)
	}
	if l.opts.Mode == ModeAsync && len(l.queue) < cap(l.queue)/2 {
		seq, err := l.submit(ctx, &request{kind: reqAppend, prepared: p}, false)
		if !errors.Is(err, ErrQueueFull) {
			return seq, err
		}
	}
	rc, err := p.Sign(l.opts.Key)
	if err != nil {
		return 0, fmt.Errorf("append receipt: %v: %w", err, ErrInvalidReceipt)
	}
	return l.AppendReceipt(ctx, &rc)
}

// signPrepared signs the batch's prepared receipts and fills in their
// entries. One that cannot be signed (impossible for a receipt Prepare
// accepted for this key) gets an error result, and the log stops taking
// receipts: an async receipt was promised, so it must not go missing
// silently.
func (l *Log) signPrepared(batch []*request, res []result) {
	for i, r := range batch {
		if r.prepared == nil {
			continue
		}
		sr, err := l.signedRequest(r.prepared)
		if err != nil {
			err = fmt.Errorf("append receipt %s: %w", r.prepared.ID(), err)
			res[i].err = err
			l.failed.CompareAndSwap(nil, &err)
			l.log.WithError(err).Error("receipt log: a prepared receipt could not be signed; refusing further receipts")
			continue
		}
		r.entry, r.leaf, r.prepared = sr.entry, sr.leaf, nil
	}
}

func (l *Log) signedRequest(p *kernel.Prepared) (*request, error) {
	rc, err := p.Sign(l.opts.Key)
	if err != nil {
		return nil, err
	}
	return l.receiptRequest(&rc)
}
