package central

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"slices"

	bolt "go.etcd.io/bbolt"

	"github.com/backbay-labs/chio-agent/receipts"
)

// LogInfo summarises one stored log.
type LogInfo struct {
	LogID string `json:"log_id"`
	// KernelKey is the key of its first checkpoint; Keys all that signed.
	KernelKey string   `json:"kernel_key"`
	Keys      []string `json:"keys"`
	// SigningKey is the key that signs the log now, when a key rotation
	// made it another than KernelKey.
	SigningKey  string `json:"signing_key,omitempty"`
	Checkpoints uint64 `json:"checkpoints"`
	LastSeq     uint64 `json:"last_seq"`
	BodySHA256  string `json:"last_checkpoint_sha256,omitempty"`
}

// Logs lists the stored logs in log id order.
func (s *Store) Logs() ([]LogInfo, error) {
	var out []LogInfo
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bktLogs).ForEachBucket(func(k []byte) error {
			h, err := readHead(tx.Bucket(bktLogs).Bucket(k), string(k))
			if err != nil {
				return err
			}
			out = append(out, LogInfo{LogID: string(k), KernelKey: h.KernelKey, Keys: h.Keys, SigningKey: h.SigningKey, Checkpoints: h.CheckpointSeq,
				LastSeq: h.LastSeq, BodySHA256: h.BodySHA256})
			return nil
		})
	})
	return out, err
}

// Entry is a receipt of one log of the store.
type Entry struct {
	LogID string `json:"log_id"`
	receipts.Entry
}

// Scan calls fn for each receipt matching f, log by log in log id order and
// in sequence order within a log; logID "" means every log. f.Limit caps
// the total.
func (s *Store) Scan(ctx context.Context, logID string, f receipts.Filter, fn func(Entry) error) error {
	return s.db.View(func(tx *bolt.Tx) error {
		logs := tx.Bucket(bktLogs)
		var ids [][]byte
		if logID != "" {
			if logs.Bucket([]byte(logID)) == nil {
				return fmt.Errorf("scan log %s: %w", logID, receipts.ErrNotFound)
			}
			ids = [][]byte{[]byte(logID)}
		} else {
			_ = logs.ForEachBucket(func(k []byte) error { ids = append(ids, bytes.Clone(k)); return nil })
		}
		n := 0
		for _, id := range ids {
			c := logs.Bucket(id).Bucket(bktReceipts).Cursor()
			for k, v := c.Seek(u64key(f.AfterSeq + 1)); k != nil; k, v = c.Next() {
				if err := ctx.Err(); err != nil {
					return err
				}
				e, err := receipts.EntryAt(binary.BigEndian.Uint64(k), v)
				if err != nil {
					return err
				}
				if !f.Match(&e) {
					continue
				}
				if err := fn(Entry{LogID: string(id), Entry: e}); err != nil {
					return err
				}
				if n++; f.Limit > 0 && n >= f.Limit {
					return nil
				}
			}
		}
		return nil
	})
}

// Find returns the logs and sequence numbers holding the receipt with id
// (64 hex digits): one place, unless two logs hold the same receipt.
func (s *Store) Find(id string) ([]Entry, error) {
	idb, err := hex.DecodeString(id)
	if err != nil || len(idb) != 32 {
		return nil, fmt.Errorf("find receipt %q: id is not 64 hex digits: %w", id, receipts.ErrNotFound)
	}
	var out []Entry
	err = s.db.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(bktIDs).Cursor()
		for k, v := c.Seek(idb); k != nil && bytes.HasPrefix(k, idb); k, v = c.Next() {
			logID := string(k[32:])
			lb := tx.Bucket(bktLogs).Bucket(k[32:])
			if lb == nil || len(v) != 8 {
				return fmt.Errorf("find receipt %s: index names log %s: %w", id, logID, receipts.ErrCorrupt)
			}
			seq := binary.BigEndian.Uint64(v)
			e, err := receipts.EntryAt(seq, lb.Bucket(bktReceipts).Get(v))
			if err != nil {
				return err
			}
			out = append(out, Entry{LogID: logID, Entry: e})
		}
		return nil
	})
	if err == nil && len(out) == 0 {
		err = fmt.Errorf("find receipt %s: %w", id, receipts.ErrNotFound)
	}
	return out, err
}

// Prove builds the inclusion proof of receipt seq of log logID against the
// stored checkpoint that covers it.
func (s *Store) Prove(logID string, seq uint64) (*receipts.Proof, error) {
	var p *receipts.Proof
	err := s.db.View(func(tx *bolt.Tx) error {
		lb := tx.Bucket(bktLogs).Bucket([]byte(logID))
		if lb == nil {
			return fmt.Errorf("prove receipt seq %d: log %s: %w", seq, logID, receipts.ErrNotFound)
		}
		_, n := lb.Bucket(bktByEnd).Cursor().Seek(u64key(seq))
		if n == nil {
			return fmt.Errorf("prove receipt seq %d of log %s: %w", seq, logID, receipts.ErrNotFound)
		}
		cp, batch, err := readBatch(lb, binary.BigEndian.Uint64(n))
		if err != nil {
			return fmt.Errorf("prove receipt seq %d of log %s: %w", seq, logID, err)
		}
		p, err = receipts.NewProof(seq, cp, batch)
		return err
	})
	return p, err
}

// readBatch reads checkpoint n of a log and the receipts it covers.
func readBatch(lb *bolt.Bucket, n uint64) (receipts.Checkpoint, [][]byte, error) {
	data := lb.Bucket(bktCheckpoints).Get(u64key(n))
	if data == nil {
		return receipts.Checkpoint{}, nil, fmt.Errorf("checkpoint %d missing: %w", n, receipts.ErrCorrupt)
	}
	cp, err := receipts.ParseCheckpoint(bytes.Clone(data))
	if err != nil {
		return cp, nil, fmt.Errorf("checkpoint %d: %v: %w", n, err, receipts.ErrTampered)
	}
	recs := lb.Bucket(bktReceipts)
	batch := make([][]byte, 0, cp.Body.TreeSize)
	for seq := cp.Body.BatchStartSeq; seq <= cp.Body.BatchEndSeq && seq != 0; seq++ {
		r := recs.Get(u64key(seq))
		if r == nil {
			return cp, nil, fmt.Errorf("checkpoint %d: receipt seq %d missing: %w", n, seq, receipts.ErrTampered)
		}
		batch = append(batch, bytes.Clone(r))
	}
	return cp, batch, nil
}

// Batches calls fn with each stored batch of log logID after checkpoint
// afterCP, in order, as it was ingested (the first batch signed by a
// rotated key with the statements that handed the log to it).
func (s *Store) Batches(ctx context.Context, logID string, afterCP uint64, fn func(receipts.SealedBatch) error) error {
	return s.db.View(func(tx *bolt.Tx) error {
		lb := tx.Bucket(bktLogs).Bucket([]byte(logID))
		if lb == nil {
			return fmt.Errorf("read log %s: %w", logID, receipts.ErrNotFound)
		}
		h, err := readHead(lb, logID)
		if err != nil {
			return err
		}
		c := lb.Bucket(bktCheckpoints).Cursor()
		for k, _ := c.Seek(u64key(afterCP + 1)); k != nil; k, _ = c.Next() {
			if err := ctx.Err(); err != nil {
				return err
			}
			cp, batch, err := readBatch(lb, binary.BigEndian.Uint64(k))
			if err != nil {
				return fmt.Errorf("read log %s: %w", logID, err)
			}
			b := receipts.SealedBatch{LogID: logID, KernelKey: cp.Body.KernelKey, Checkpoint: bytes.Clone(lb.Bucket(bktCheckpoints).Get(k)),
				Rotations: receipts.RotationsAt(h.Rotations, cp.Body.BatchStartSeq)}
			for _, r := range batch {
				b.Receipts = append(b.Receipts, r)
			}
			if err := fn(b); err != nil {
				return err
			}
		}
		return nil
	})
}

// LogReport is one log's verification.
type LogReport struct {
	LogInfo
	// Verified is the count of receipts whose signature and id were checked.
	Verified uint64 `json:"verified"`
}

// Report summarises a verified store.
type Report struct {
	Logs []LogReport `json:"logs"`
	// Rejected counts the batches kept aside.
	Rejected int `json:"rejected"`
}

// Verify checks every log from scratch, as a witness ingesting its batches
// afresh would: every checkpoint and receipt through receipts.VerifyBatch,
// the log id against its first key, the stored head, the indexes; and,
// when the store was opened with TrustedKeys, that every signing key is
// one. The first defect is returned (a *receipts.BatchError for content, or
// ErrCorrupt for structure).
func (s *Store) Verify(ctx context.Context) (*Report, error) {
	rep := &Report{}
	err := s.db.View(func(tx *bolt.Tx) error {
		logs := tx.Bucket(bktLogs)
		var idsSeen uint64
		err := logs.ForEachBucket(func(k []byte) error {
			lr, err := s.verifyLog(ctx, tx, logs.Bucket(k), string(k))
			if err != nil {
				return err
			}
			idsSeen += lr.Verified
			rep.Logs = append(rep.Logs, *lr)
			return nil
		})
		if err != nil {
			return err
		}
		if n := uint64(tx.Bucket(bktIDs).Stats().KeyN); n != idsSeen {
			return fmt.Errorf("verify central store: id index has %d entries for %d receipts: %w", n, idsSeen, receipts.ErrCorrupt)
		}
		rep.Rejected = tx.Bucket(bktRejected).Stats().KeyN
		return nil
	})
	return rep, err
}

// follow checks batch b, checkpoint n, as the successor of h, the chain
// rebuilt so far, as a witness ingesting it afresh would
// (receipts.VerifyBatch, trust in its key when the store trusts keys, the
// key that may sign it: acceptKey), and moves h on to it.
func (s *Store) follow(h *head, b *receipts.SealedBatch, n uint64) error {
	cp, next, err := receipts.VerifyBatch(h.ChainHead, b, nil)
	if err != nil {
		return err
	}
	if len(s.trusted) > 0 && !s.trusted[cp.Body.KernelKey] {
		return &receipts.BatchError{Defect: receipts.DefectUntrustedKey, LogID: b.LogID, CheckpointSeq: n,
			Reason: fmt.Sprintf("kernel key %s is not a trusted node key", cp.Body.KernelKey)}
	}
	if err := s.acceptKey(h, b, n); err != nil {
		return err
	}
	h.ChainHead = next
	if !slices.Contains(h.Keys, cp.Body.KernelKey) {
		h.Keys = append(h.Keys, cp.Body.KernelKey)
	}
	return nil
}

// VerifyBatches checks the batches of log logID that src yields from
// checkpoint 1, as Verify checks each log a store holds (a witness
// ingesting them afresh): every batch through receipts.VerifyBatch from an
// empty chain (a checkpoint missing is a gap, naming the one that came
// instead), the log id against its first key, one key signing at a time
// (key rotation statements), and, when trusted is not empty, that every
// signing key is one of them. It reads what a sink holds (receipts/sink)
// without storing it. The first defect is returned, a
// *receipts.BatchError naming the log and checkpoint.
func VerifyBatches(ctx context.Context, logID string, trusted []string, src BatchSource) (*LogReport, error) {
	w := &Store{trusted: map[string]bool{}} // a witness with no file: follow only reads trusted
	for _, k := range trusted {
		w.trusted[k] = true
	}
	var h head
	lr := &LogReport{}
	var n uint64
	err := src(ctx, func(b receipts.SealedBatch) error {
		n++
		if b.LogID != logID {
			return &receipts.BatchError{Defect: receipts.DefectMalformed, LogID: logID, CheckpointSeq: n,
				Reason: fmt.Sprintf("batch of log %s among the batches of log %s", b.LogID, logID)}
		}
		if err := w.follow(&h, &b, n); err != nil {
			return err
		}
		lr.Verified += uint64(len(b.Receipts))
		return nil
	})
	if err != nil {
		return nil, err
	}
	if n == 0 {
		return nil, fmt.Errorf("verify log %s: no batches", logID)
	}
	lr.LogInfo = LogInfo{LogID: logID, KernelKey: h.KernelKey, Keys: h.Keys, SigningKey: h.SigningKey, Checkpoints: n, LastSeq: h.LastSeq, BodySHA256: h.BodySHA256}
	return lr, nil
}

func (s *Store) verifyLog(ctx context.Context, tx *bolt.Tx, lb *bolt.Bucket, id string) (*LogReport, error) {
	stored, err := readHead(lb, id)
	if err != nil {
		return nil, err
	}
	if !validLogID(id) {
		return nil, &receipts.BatchError{Defect: receipts.DefectMalformed, LogID: id, Reason: "log id is not " + receipts.LogIDPrefix + " followed by 64 hex digits"}
	}
	var h head // rebuilt batch by batch, as ingesting them afresh would
	lr := &LogReport{}
	cps := lb.Bucket(bktCheckpoints)
	var n uint64
	c := cps.Cursor()
	for k, v := c.First(); k != nil; k, v = c.Next() {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		n++
		if len(k) != 8 || binary.BigEndian.Uint64(k) != n {
			return nil, &receipts.BatchError{Defect: receipts.DefectGap, LogID: id, CheckpointSeq: n, Reason: fmt.Sprintf("checkpoint %d missing (found key %x)", n, k)}
		}
		cp, batch, err := readBatch(lb, n)
		if err != nil {
			return nil, fmt.Errorf("verify log %s: %w", id, err)
		}
		b := receipts.SealedBatch{LogID: id, KernelKey: cp.Body.KernelKey, Checkpoint: v,
			Rotations: receipts.RotationsAt(stored.Rotations, cp.Body.BatchStartSeq)}
		for _, r := range batch {
			b.Receipts = append(b.Receipts, r)
		}
		if err := s.follow(&h, &b, n); err != nil {
			return nil, err
		}
		if e := lb.Bucket(bktByEnd).Get(u64key(cp.Body.BatchEndSeq)); len(e) != 8 || binary.BigEndian.Uint64(e) != n {
			return nil, fmt.Errorf("verify log %s: end index does not name checkpoint %d at seq %d: %w", id, n, cp.Body.BatchEndSeq, receipts.ErrCorrupt)
		}
		ids := tx.Bucket(bktIDs)
		for i, r := range batch {
			seq := cp.Body.BatchStartSeq + uint64(i)
			e, err := receipts.EntryAt(seq, r)
			if err != nil {
				return nil, err
			}
			if v := ids.Get(idKey(e.ID, id)); len(v) != 8 || binary.BigEndian.Uint64(v) != seq {
				return nil, fmt.Errorf("verify log %s: id index does not map %s to seq %d: %w", id, e.ID, seq, receipts.ErrCorrupt)
			}
		}
		lr.Verified += uint64(len(batch))
	}
	if h.ChainHead != stored.ChainHead || !slices.Equal(h.Keys, stored.Keys) || h.KernelKey != stored.KernelKey {
		return nil, fmt.Errorf("verify log %s: stored head (checkpoint %d, seq %d) does not match the checkpoints (checkpoint %d, seq %d): %w",
			id, stored.CheckpointSeq, stored.LastSeq, h.CheckpointSeq, h.LastSeq, receipts.ErrTampered)
	}
	if h.signer() != stored.signer() || len(h.Rotations) != len(stored.Rotations) {
		return nil, fmt.Errorf("verify log %s: stored head names signing key %s after %d key rotations; the checkpoints give %s after %d: %w",
			id, stored.signer(), len(stored.Rotations), h.signer(), len(h.Rotations), receipts.ErrTampered)
	}
	if got := uint64(lb.Bucket(bktReceipts).Stats().KeyN); got != h.LastSeq {
		return nil, fmt.Errorf("verify log %s: %d receipts stored, checkpoints seal %d: %w", id, got, h.LastSeq, receipts.ErrTampered)
	}
	if got := uint64(lb.Bucket(bktByEnd).Stats().KeyN); got != n {
		return nil, fmt.Errorf("verify log %s: end index has %d entries for %d checkpoints: %w", id, got, n, receipts.ErrCorrupt)
	}
	lr.LogInfo = LogInfo{LogID: id, KernelKey: stored.KernelKey, Keys: h.Keys, SigningKey: h.SigningKey, Checkpoints: n, LastSeq: h.LastSeq, BodySHA256: h.BodySHA256}
	return lr, nil
}
