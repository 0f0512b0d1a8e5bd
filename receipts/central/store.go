// Package central is a witness's store of many nodes' receipt logs: each
// log's sealed batches (receipts.SealedBatch) are verified as they arrive,
// against the trusted node keys and against what is stored for that log,
// and kept side by side, one bucket per log id, never merged row by row. A
// batch that fails is kept aside with the reason, as evidence.
//
// Layout (bbolt): meta (format); logs/<log id>/{head, receipts (seq →
// canonical receipt), checkpoints (checkpoint_seq → canonical checkpoint),
// by_end (batch_end_seq → checkpoint_seq)}; ids (receipt id ‖ log id →
// seq); rejected (SHA-256 of the batch → Rejection); gaps (log id ‖
// checkpoint_seq ‖ SHA-256 → nothing: the rejected batches that were gaps,
// stored once their predecessor is, see gaps.go).
package central

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"slices"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"

	"github.com/backbay-labs/chio-agent/kernel/jcs"
	"github.com/backbay-labs/chio-agent/receipts"
)

// Format is written in the store's header.
const Format = "chio-central-store/1"

var (
	bktMeta     = []byte("meta")
	bktLogs     = []byte("logs")
	bktIDs      = []byte("ids")
	bktRejected = []byte("rejected")

	bktReceipts    = []byte("receipts")
	bktCheckpoints = []byte("checkpoints")
	bktByEnd       = []byte("by_end")
	keyHead        = []byte("head")
	keyFormat      = []byte("format")
)

// ErrNotCentral: the file is a bbolt database but not a central store.
var ErrNotCentral = errors.New("not a central receipt store")

// Options configure Open.
type Options struct {
	// TrustedKeys are the node kernel keys (hex) whose batches Ingest
	// accepts. A batch signed by any other key is rejected. Default none:
	// every batch is rejected (a witness that trusts nobody).
	TrustedKeys []string
	// ReadOnly opens the store for reading under a shared lock. Default
	// false.
	ReadOnly bool
	// LockTimeout bounds the wait for another process holding the file.
	// Default 2s.
	LockTimeout time.Duration
	// Now is the clock for rejection records. Default time.Now.
	Now func() time.Time
}

// Store is an open central store. Its methods are safe for concurrent use.
type Store struct {
	db      *bolt.DB
	path    string
	trusted map[string]bool
	now     func() time.Time
}

// head is what a log's bucket records about its chain.
type head struct {
	receipts.ChainHead
	// KernelKey is the key of the log's first checkpoint, from which its id
	// derives; Keys every key that signed a stored checkpoint.
	KernelKey string   `json:"kernel_key"`
	Keys      []string `json:"keys"`
	// SigningKey is the key that signs the log now, when a key rotation
	// made it another than KernelKey; Rotations the statements that did,
	// oldest first (rotation.go).
	SigningKey string            `json:"signing_key,omitempty"`
	Rotations  []json.RawMessage `json:"rotations,omitempty"`
}

// Result says what Ingest did with a batch.
type Result struct {
	LogID         string `json:"log_id"`
	CheckpointSeq uint64 `json:"checkpoint_seq"`
	// Receipts is the count of receipts the batch carries.
	Receipts int `json:"receipts"`
	// Duplicate: the batch was stored already; nothing changed.
	Duplicate bool `json:"duplicate,omitempty"`
	// Resumed are the batches of the same log that had been kept aside as
	// gaps and were stored after this one, which they follow, in order.
	Resumed []Result `json:"resumed,omitempty"`
}

// Rejection is a batch kept aside: when, why, and the batch itself (a
// receipt or checkpoint that was not JSON at all is kept as a JSON string
// of its bytes).
type Rejection struct {
	// SHA256 is the hex SHA-256 of Batch, the record's key.
	SHA256     string                `json:"sha256"`
	ReceivedAt int64                 `json:"received_at"`
	Error      *receipts.BatchError  `json:"error"`
	Batch      *receipts.SealedBatch `json:"batch"`
}

// IsCentral reports whether the file at path is a central store (a bbolt
// file whose meta bucket names Format), held by another process (a running
// collector) or not. Any other file, or none, is false.
func IsCentral(path string) bool {
	ok, err := probe(path, 100*time.Millisecond)
	if errors.Is(err, receipts.ErrLocked) {
		return heldCentral(path)
	}
	return ok && err == nil
}

// lockedErr is the error for a file another process held past wait: a
// central store (ErrHeld, saying what to do), or some other bbolt file.
func lockedErr(path string, wait time.Duration) error {
	if heldCentral(path) {
		return fmt.Errorf("open central store %s: %w (waited %s): %s", path, ErrHeld, wait, heldHint)
	}
	return fmt.Errorf("open central store %s: %w (waited %s)", path, receipts.ErrLocked, wait)
}

// probe opens path read-only (after the structural check) to read its
// header; ErrLocked when another process holds it past timeout.
func probe(path string, timeout time.Duration) (bool, error) {
	if err := receipts.CheckDatabaseFile(path); err != nil {
		return false, err
	}
	db, err := bolt.Open(path, 0, &bolt.Options{ReadOnly: true, Timeout: timeout})
	if errors.Is(err, berrors.ErrTimeout) {
		return false, fmt.Errorf("open central store %s: %w", path, receipts.ErrLocked)
	}
	if err != nil {
		return false, err
	}
	defer db.Close()
	ok := false
	err = db.View(func(tx *bolt.Tx) error {
		if m := tx.Bucket(bktMeta); m != nil {
			ok = string(m.Get(keyFormat)) == Format
		}
		return nil
	})
	return ok, err
}

// Open opens (creating unless ReadOnly) the central store at path.
func Open(path string, o Options) (*Store, error) {
	if o.LockTimeout == 0 {
		o.LockTimeout = 2 * time.Second
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	s := &Store{path: path, trusted: map[string]bool{}, now: o.Now}
	for _, k := range o.TrustedKeys {
		if _, err := receipts.LogIDOf(k); err != nil {
			return nil, fmt.Errorf("open central store %s: trusted key: %w", path, err)
		}
		s.trusted[k] = true
	}
	if st, err := os.Stat(path); err == nil || o.ReadOnly {
		if err := receipts.CheckDatabaseFile(path); err != nil {
			return nil, fmt.Errorf("open central store: %w", err)
		}
		// Opening a file writable can change it (bbolt rewrites a
		// freelist it finds unsynced): anything that is not a central
		// store already is left as it is.
		if !o.ReadOnly && st.Size() > 0 {
			ok, err := probe(path, o.LockTimeout)
			if errors.Is(err, receipts.ErrLocked) {
				return nil, lockedErr(path, o.LockTimeout)
			}
			if err != nil {
				return nil, err
			}
			if !ok {
				return nil, fmt.Errorf("open central store %s: file is not one: %w", path, ErrNotCentral)
			}
		}
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: o.ReadOnly, Timeout: o.LockTimeout,
		// As the node's log: the map freelist, rebuilt on open, not synced.
		NoFreelistSync: true, FreelistType: bolt.FreelistMapType})
	if errors.Is(err, berrors.ErrTimeout) {
		return nil, lockedErr(path, o.LockTimeout)
	}
	if err != nil {
		return nil, fmt.Errorf("open central store %s: %w", path, err)
	}
	s.db = db
	check := func(tx *bolt.Tx) error {
		m := tx.Bucket(bktMeta)
		if m == nil || string(m.Get(keyFormat)) != Format {
			return fmt.Errorf("open central store %s: header does not name %s: %w", path, Format, ErrNotCentral)
		}
		for _, b := range [][]byte{bktLogs, bktIDs, bktRejected} {
			if tx.Bucket(b) == nil {
				return fmt.Errorf("open central store %s: bucket %q missing: %w", path, b, receipts.ErrCorrupt)
			}
		}
		return nil
	}
	if o.ReadOnly {
		err = db.View(check)
	} else {
		err = db.Update(func(tx *bolt.Tx) error {
			if tx.Bucket(bktMeta) == nil {
				if k, _ := tx.Cursor().First(); k != nil {
					return fmt.Errorf("open central store %s: database has no central store header (bucket %q found): %w", path, k, ErrNotCentral)
				}
				m, err := tx.CreateBucket(bktMeta)
				if err != nil {
					return err
				}
				if err := m.Put(keyFormat, []byte(Format)); err != nil {
					return err
				}
				for _, b := range [][]byte{bktLogs, bktIDs, bktRejected} {
					if _, err := tx.CreateBucket(b); err != nil {
						return err
					}
				}
			}
			if err := check(tx); err != nil {
				return err
			}
			if tx.Bucket(bktGaps) == nil {
				return indexGaps(tx)
			}
			return nil
		})
	}
	if err != nil {
		db.Close()
		return nil, err
	}
	return s, nil
}

// Close closes the store.
func (s *Store) Close() error { return s.db.Close() }

// Path is the store's file.
func (s *Store) Path() string { return s.path }

// Ingest verifies batch b as a witness and stores it: the key must be
// trusted, the batch must verify on its own (receipts.CheckBatch) and
// continue what is stored for its log (receipts.LinkBatch). A batch stored
// already changes nothing (Result.Duplicate). A refused batch is kept aside
// (Rejections) and Ingest returns its *receipts.BatchError: a gap, a fork
// (naming both checkpoints), a receipt outside its checkpoint, an untrusted
// key, a forged receipt or checkpoint. Batches kept aside as gaps that
// follow a stored batch are stored after it (Result.Resumed) and leave the
// rejections.
func (s *Store) Ingest(ctx context.Context, b receipts.SealedBatch) (Result, error) {
	res, errs, err := s.IngestAll(ctx, []receipts.SealedBatch{b})
	if err != nil {
		return Result{LogID: b.LogID, Receipts: len(b.Receipts)}, err
	}
	return res[0], errs[0]
}

// IngestAll ingests batches in order in one transaction (one fsync), as
// Ingest would one by one: a consumer that pulls messages in groups pays the
// commit once per group instead of once per batch. The batches' own checks
// run first, on every core, before the store's write lock is taken
// (CheckAll). It returns each batch's result and its *receipts.BatchError,
// if refused (kept aside as Ingest keeps it); err is for the store itself (a
// failed commit: nothing of the group is stored).
func (s *Store) IngestAll(ctx context.Context, bs []receipts.SealedBatch) ([]Result, []error, error) {
	if err := ctx.Err(); err != nil {
		return nil, nil, err
	}
	cs := make([]*Checked, len(bs))
	for i := range bs {
		cs[i] = Prepare(bs[i])
	}
	CheckAll(cs)
	res := make([]Result, len(bs))
	errs := make([]error, len(bs))
	err := s.Update(ctx, func(tx *Tx) error {
		for i, c := range cs {
			r, err := tx.Ingest(c)
			res[i], errs[i] = r, nil
			if refused := asBatchError(err); refused != nil {
				errs[i] = refused
			} else if err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, nil, fmt.Errorf("ingest batches: %w", err)
	}
	return res, errs, nil
}

// asBatchError is err as a refused batch, nil when it is none.
func asBatchError(err error) *receipts.BatchError {
	var refused *receipts.BatchError
	if errors.As(err, &refused) {
		return refused
	}
	return nil
}

// canonical returns b with its receipts and checkpoint in canonical JSON
// (RFC 8785), which is what was signed and what a log stores. A JSON encoder
// on the way may have written the same values otherwise (Go's escapes <, >
// and & as \u003c…): the values are still the signed ones, so they are put
// back into the signed form rather than refused. Bytes that are not JSON are
// left as they came, for VerifyBatch to refuse.
func canonical(b receipts.SealedBatch) receipts.SealedBatch {
	c := b
	if cp, err := jcs.Canonicalize(b.Checkpoint); err == nil {
		c.Checkpoint = cp
	}
	c.Receipts = make([]json.RawMessage, len(b.Receipts))
	for i, r := range b.Receipts {
		c.Receipts[i] = r
		if cr, err := jcs.Canonicalize(r); err == nil {
			c.Receipts[i] = cr
		}
	}
	return c
}

// ingest ingests c (ingestOne) and, when it stored it, the batches kept
// aside as gaps that now follow it (resume).
func (s *Store) ingest(tx *bolt.Tx, c *Checked) (Result, error) {
	res, err := s.ingestOne(tx, c)
	if err != nil || res.Duplicate {
		return res, err
	}
	res.Resumed, err = s.resume(tx, res.LogID)
	return res, err
}

func (s *Store) ingestOne(tx *bolt.Tx, c *Checked) (Result, error) {
	b := c.canonical()
	res := Result{LogID: b.LogID, Receipts: len(b.Receipts)}
	bad := func(d receipts.BatchDefect, cp uint64, format string, a ...any) error {
		return &receipts.BatchError{Defect: d, LogID: b.LogID, CheckpointSeq: cp, Reason: fmt.Sprintf(format, a...)}
	}
	if !validLogID(b.LogID) {
		return res, bad(receipts.DefectMalformed, 0, "log id %q is not %s followed by 64 hex digits", b.LogID, receipts.LogIDPrefix)
	}
	if !s.trusted[b.KernelKey] {
		return res, bad(receipts.DefectUntrustedKey, 0, "kernel key %q is not a trusted node key", b.KernelKey)
	}
	lb := tx.Bucket(bktLogs).Bucket([]byte(b.LogID))
	var h head
	if lb != nil {
		var err error
		if h, err = readHead(lb, b.LogID); err != nil {
			return res, err
		}
	}
	// A checkpoint_seq stored already: the same batch again, or a fork.
	if cp, err := receipts.ParseCheckpoint(b.Checkpoint); err == nil && cp.Body.CheckpointSeq != 0 && cp.Body.CheckpointSeq <= h.CheckpointSeq {
		n := cp.Body.CheckpointSeq
		res.CheckpointSeq = n
		stored := lb.Bucket(bktCheckpoints).Get(u64key(n))
		if stored == nil {
			return res, fmt.Errorf("log %s: checkpoint %d missing below the head: %w", b.LogID, n, receipts.ErrCorrupt)
		}
		if !bytes.Equal(stored, b.Checkpoint) {
			if err := cp.VerifySignature(); err != nil {
				return res, bad(receipts.DefectForgedCheckpoint, n, "%v", err)
			}
			if cp.Body.KernelKey != b.KernelKey {
				return res, bad(receipts.DefectForgedCheckpoint, n, "checkpoint names key %s, the batch %s", cp.Body.KernelKey, b.KernelKey)
			}
			old, err := receipts.ParseCheckpoint(stored)
			if err != nil {
				return res, fmt.Errorf("log %s: stored checkpoint %d: %v: %w", b.LogID, n, err, receipts.ErrCorrupt)
			}
			return res, bad(receipts.DefectFork, n, "two checkpoints %d: stored %s, offered %s", n, describe(&old), describe(&cp))
		}
		// The same checkpoint: its receipts must be the ones stored.
		recs := lb.Bucket(bktReceipts)
		if uint64(len(b.Receipts)) != cp.Body.TreeSize {
			return res, bad(receipts.DefectOutside, n, "%d receipts for a checkpoint covering seq %d-%d", len(b.Receipts), cp.Body.BatchStartSeq, cp.Body.BatchEndSeq)
		}
		for i, r := range b.Receipts {
			seq := cp.Body.BatchStartSeq + uint64(i)
			if !bytes.Equal(recs.Get(u64key(seq)), r) {
				e := &receipts.BatchError{Defect: receipts.DefectOutside, LogID: b.LogID, CheckpointSeq: n, Seq: seq,
					Reason: "receipt differs from the one stored under this same checkpoint"}
				if err := receipts.VerifyReceipt(r); err != nil {
					e.Defect, e.Reason = receipts.DefectForgedReceipt, err.Error()
				}
				return res, e
			}
		}
		res.Duplicate = true
		return res, nil
	}
	err := c.Check()
	cp := c.cp
	res.CheckpointSeq = cp.Body.CheckpointSeq
	if err != nil {
		return res, err
	}
	next, err := receipts.LinkBatch(h.ChainHead, b, &cp)
	if err != nil {
		return res, err
	}
	if err := s.acceptKey(&h, b, cp.Body.CheckpointSeq); err != nil {
		return res, err
	}
	if lb == nil {
		if lb, err = createLog(tx, b.LogID); err != nil {
			return res, err
		}
	}
	h.ChainHead = next
	if !slices.Contains(h.Keys, b.KernelKey) {
		h.Keys = append(h.Keys, b.KernelKey)
	}
	recs, ids := lb.Bucket(bktReceipts), tx.Bucket(bktIDs)
	for i, r := range b.Receipts {
		seq := cp.Body.BatchStartSeq + uint64(i)
		if err := recs.Put(u64key(seq), r); err != nil {
			return res, err
		}
		if err := ids.Put(idKey(c.entries[i].ID, b.LogID), u64key(seq)); err != nil {
			return res, err
		}
	}
	if err := lb.Bucket(bktCheckpoints).Put(u64key(cp.Body.CheckpointSeq), b.Checkpoint); err != nil {
		return res, err
	}
	if err := lb.Bucket(bktByEnd).Put(u64key(cp.Body.BatchEndSeq), u64key(cp.Body.CheckpointSeq)); err != nil {
		return res, err
	}
	data, err := json.Marshal(&h)
	if err != nil {
		return res, err
	}
	return res, lb.Put(keyHead, data)
}

// describe names a checkpoint well enough to tell two apart.
func describe(cp *receipts.Checkpoint) string {
	sha, _ := cp.Body.BodySHA256()
	return fmt.Sprintf("body sha256 %s (seq %d-%d, merkle_root %s, signature %.16s…)", sha, cp.Body.BatchStartSeq, cp.Body.BatchEndSeq, cp.Body.MerkleRoot, cp.Signature)
}

func (s *Store) keepAside(tx *bolt.Tx, in *receipts.SealedBatch, why *receipts.BatchError) error {
	// Bytes that are not JSON (possible through the Go API, never off the
	// wire) are kept as a JSON string of themselves.
	b := *in
	b.Receipts = slices.Clone(in.Receipts)
	for i, r := range b.Receipts {
		b.Receipts[i] = asJSON(r)
	}
	b.Checkpoint = asJSON(b.Checkpoint)
	data, err := marshal(&b)
	if err != nil {
		return err
	}
	sum := sha256.Sum256(data)
	rb := tx.Bucket(bktRejected)
	if rb.Get(sum[:]) != nil {
		return nil // kept already
	}
	if err := indexGap(tx, &b, why, sum[:]); err != nil {
		return err
	}
	rec, err := marshal(Rejection{SHA256: hex.EncodeToString(sum[:]), ReceivedAt: s.now().Unix(), Error: why, Batch: &b})
	if err != nil {
		return err
	}
	return rb.Put(sum[:], rec)
}

// KeepAside keeps b aside as refused for why, without trying to store it:
// a collector's record of a message that is no sealed batch at all (or
// that names another log than its subject), evidence like any rejection.
func (s *Store) KeepAside(b receipts.SealedBatch, why *receipts.BatchError) error {
	if err := s.db.Update(func(tx *bolt.Tx) error { return s.keepAside(tx, &b, why) }); err != nil {
		return fmt.Errorf("keep batch aside: %w", err)
	}
	return nil
}

func asJSON(r json.RawMessage) json.RawMessage {
	if json.Valid(r) {
		return r
	}
	q, _ := marshal(string(r))
	return q
}

// Rejections calls fn for every batch kept aside, ordered by its SHA-256.
func (s *Store) Rejections(fn func(Rejection) error) error {
	return s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bktRejected).ForEach(func(_, v []byte) error {
			var r Rejection
			if err := json.Unmarshal(v, &r); err != nil {
				return fmt.Errorf("read rejection: %v: %w", err, receipts.ErrCorrupt)
			}
			return fn(r)
		})
	})
}

func createLog(tx *bolt.Tx, id string) (*bolt.Bucket, error) {
	lb, err := tx.Bucket(bktLogs).CreateBucket([]byte(id))
	if err != nil {
		return nil, fmt.Errorf("create log %s: %w", id, err)
	}
	for _, n := range [][]byte{bktReceipts, bktCheckpoints, bktByEnd} {
		if _, err := lb.CreateBucket(n); err != nil {
			return nil, fmt.Errorf("create log %s: %w", id, err)
		}
	}
	return lb, nil
}

func readHead(lb *bolt.Bucket, id string) (head, error) {
	var h head
	for _, n := range [][]byte{bktReceipts, bktCheckpoints, bktByEnd} {
		if lb.Bucket(n) == nil {
			return h, fmt.Errorf("log %s: bucket %q missing: %w", id, n, receipts.ErrCorrupt)
		}
	}
	if err := json.Unmarshal(lb.Get(keyHead), &h); err != nil {
		return h, fmt.Errorf("log %s: read head: %v: %w", id, err, receipts.ErrCorrupt)
	}
	return h, nil
}

func validLogID(id string) bool { return receipts.ValidLogID(id) }

func u64key(v uint64) []byte {
	b := make([]byte, 8)
	binary.BigEndian.PutUint64(b, v)
	return b
}

func idKey(id, logID string) []byte {
	b, _ := hex.DecodeString(id)
	return append(b, logID...)
}

// marshal encodes v as JSON without escaping <, > and & (encoding/json's
// default would rewrite them inside the receipts' canonical bytes, which
// are the evidence).
func marshal(v any) ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n")), nil
}
