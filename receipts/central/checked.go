package central

import (
	"context"
	"encoding/json"
	"fmt"
	"runtime"
	"sync"

	bolt "go.etcd.io/bbolt"

	"github.com/backbay-labs/chio-agent/receipts"
)

// Checked is a sealed batch on its way into a store. Its own checks
// (receipts.CheckBatch: every signature, id and the Merkle root, nearly all
// of a witness's work) need nothing stored, so they run in Check before the
// store's write lock is taken, on every core (CheckAll); what needs the
// stored chain (trust, continuity, forks) runs in Tx.Ingest. A Checked
// whose Check was never called is checked by Tx.Ingest, under the lock.
// Its methods are safe for concurrent use.
type Checked struct {
	in    receipts.SealedBatch // as it came: kept aside as such
	cpSeq uint64

	canonOnce sync.Once
	canon     receipts.SealedBatch

	checkOnce sync.Once
	cp        receipts.Checkpoint
	entries   []receipts.Entry
	err       error
}

// Prepare wraps b for Check and Tx.Ingest. It does no work.
func Prepare(b receipts.SealedBatch) *Checked {
	c := &Checked{in: b}
	var cp struct {
		Body struct {
			CheckpointSeq uint64 `json:"checkpoint_seq"`
		} `json:"body"`
	}
	if json.Unmarshal(b.Checkpoint, &cp) == nil {
		c.cpSeq = cp.Body.CheckpointSeq
	}
	return c
}

// Batch is the batch as it came.
func (c *Checked) Batch() *receipts.SealedBatch { return &c.in }

// LogID is the log the batch names.
func (c *Checked) LogID() string { return c.in.LogID }

// CheckpointSeq is the checkpoint_seq its checkpoint names, 0 when the
// checkpoint cannot be read (the store refuses it).
func (c *Checked) CheckpointSeq() uint64 { return c.cpSeq }

func (c *Checked) canonical() *receipts.SealedBatch {
	c.canonOnce.Do(func() { c.canon = canonical(c.in) })
	return &c.canon
}

// Check runs the batch's own checks once (later calls return the first
// outcome): nil, or the *receipts.BatchError Tx.Ingest will refuse it with
// unless it is a duplicate or a fork of a stored checkpoint.
func (c *Checked) Check() error {
	c.checkOnce.Do(func() { c.cp, c.entries, c.err = receipts.CheckBatch(c.canonical(), nil) })
	return c.err
}

// CheckAll runs Check on every batch, several batches at a time on every
// core.
func CheckAll(cs []*Checked) {
	work := make(chan *Checked)
	var wg sync.WaitGroup
	for range min(len(cs), runtime.GOMAXPROCS(0)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for c := range work {
				c.Check()
			}
		}()
	}
	for _, c := range cs {
		work <- c
	}
	close(work)
	wg.Wait()
}

// Tx is one write transaction of the store (Update): batches ingested in
// it are committed together, with one fsync.
type Tx struct {
	s  *Store
	tx *bolt.Tx
}

// Update runs fn in one write transaction and commits it when fn returns
// nil; fn's error (or a failed commit) stores nothing of it. A refused batch
// is kept aside in the same transaction, so it is committed with the rest.
func (s *Store) Update(ctx context.Context, fn func(*Tx) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return s.db.Update(func(tx *bolt.Tx) error { return fn(&Tx{s: s, tx: tx}) })
}

// Head is the last checkpoint_seq stored for log id in this transaction, 0
// for a log with nothing stored.
func (t *Tx) Head(id string) (uint64, error) {
	lb := t.tx.Bucket(bktLogs).Bucket([]byte(id))
	if lb == nil {
		return 0, nil
	}
	h, err := readHead(lb, id)
	return h.CheckpointSeq, err
}

// Ingest ingests c as Store.Ingest would, within the transaction: a
// refused batch is kept aside and its *receipts.BatchError returned; any
// other error is the store's, and the transaction must not be committed
// (return it from Update's fn).
func (t *Tx) Ingest(c *Checked) (Result, error) {
	res, err := t.s.ingest(t.tx, c)
	if refused := asBatchError(err); refused != nil {
		if kerr := t.s.keepAside(t.tx, &c.in, refused); kerr != nil {
			return res, kerr
		}
	}
	return res, err
}

// KeepAside keeps b aside as refused for why, without trying to store it
// (Store.KeepAside within the transaction).
func (t *Tx) KeepAside(b receipts.SealedBatch, why *receipts.BatchError) error {
	if err := t.s.keepAside(t.tx, &b, why); err != nil {
		return fmt.Errorf("keep batch aside: %w", err)
	}
	return nil
}
