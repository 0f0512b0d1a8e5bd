package receipts

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strings"

	bolt "go.etcd.io/bbolt"
)

// LogIDPrefix starts every log id.
const LogIDPrefix = "local-log-"

// ValidLogID says whether id has the form of a log id: LogIDPrefix and 64
// lowercase hex digits.
func ValidLogID(id string) bool {
	rest, ok := strings.CutPrefix(id, LogIDPrefix)
	if !ok || len(rest) != 64 || strings.ToLower(rest) != rest {
		return false
	}
	_, err := hex.DecodeString(rest)
	return err == nil
}

// LogIDOf is the id a log signed by kernelKey (hex Ed25519 public key) goes
// by beyond this node: "local-log-" + hex SHA-256 of the 32 key bytes, as
// Chio names a local log. A key that is not 32 bytes of hex is an error.
func LogIDOf(kernelKey string) (string, error) {
	pub, err := parseKey(kernelKey)
	if err != nil {
		return "", fmt.Errorf("derive log id: %w", err)
	}
	sum := sha256.Sum256(pub)
	return LogIDPrefix + hex.EncodeToString(sum[:]), nil
}

// LogID is this log's id: LogIDOf its first key (the key history's oldest),
// so that a rotated key keeps one log, one chain and one id.
func (l *Log) LogID() (string, error) {
	id, _, err := l.idAndKeys()
	return id, err
}

// idAndKeys reads the log id and the key history.
func (l *Log) idAndKeys() (string, []KeyRecord, error) {
	var keys []KeyRecord
	err := l.view(func(tx *bolt.Tx) (err error) {
		keys, err = readKeys(tx)
		return err
	})
	if err != nil {
		return "", nil, fmt.Errorf("read log id: %w", err)
	}
	id, err := LogIDOf(keys[0].KernelKey)
	return id, keys, err
}

// sealedReadChunk and sealedReadReceipts bound what one read transaction
// collects (checkpoints, receipts; at least one batch), so that a long
// backlog is read in short transactions (a long one keeps bbolt from
// reusing pages) and bounded memory, and fn never runs inside one.
const (
	sealedReadChunk    = 32
	sealedReadReceipts = 4096
)

// SealedBatches calls fn with every sealed batch after checkpoint
// afterCheckpointSeq, in checkpoint order, each batch's receipts in sequence
// order, until the last checkpoint stored when it gets there; fn's error
// stops it and is returned. It checks only the shape (every covered receipt
// present, the batch contiguous with the previous one), not signatures:
// the receiver verifies. Receipts not yet sealed are not read. The first
// batch signed by a rotated key carries the key rotation statements
// recorded for it (a key record whose since_seq is the batch's first seq).
func (l *Log) SealedBatches(ctx context.Context, afterCheckpointSeq uint64, fn func(SealedBatch) error) error {
	logID, keys, err := l.idAndKeys()
	if err != nil {
		return err
	}
	rotations := map[uint64][]json.RawMessage{}
	for _, k := range keys {
		if len(k.Rotations) > 0 {
			rotations[k.SinceSeq] = k.Rotations
		}
	}
	next := afterCheckpointSeq + 1
	for {
		var chunk []SealedBatch
		full := false
		err := l.view(func(tx *bolt.Tx) error {
			cps := tx.Bucket(bktCheckpoints)
			recs := tx.Bucket(bktReceipts).Cursor()
			held := 0
			for {
				if len(chunk) >= sealedReadChunk || held >= sealedReadReceipts {
					full = true
					return nil
				}
				data := cps.Get(u64key(next))
				if data == nil {
					return nil
				}
				cp, err := parseCheckpoint(bytes.Clone(data))
				if err != nil {
					return fmt.Errorf("read sealed batch %d: %v: %w", next, err, ErrCorrupt)
				}
				b := cp.Body
				if b.CheckpointSeq != next || b.BatchEndSeq < b.BatchStartSeq || b.TreeSize != b.BatchEndSeq-b.BatchStartSeq+1 {
					return fmt.Errorf("read sealed batch %d: checkpoint body names seq %d, receipts %d..%d, size %d: %w",
						next, b.CheckpointSeq, b.BatchStartSeq, b.BatchEndSeq, b.TreeSize, ErrCorrupt)
				}
				sb := SealedBatch{LogID: logID, KernelKey: b.KernelKey, Checkpoint: json.RawMessage(bytes.Clone(data)),
					Receipts: make([]json.RawMessage, 0, b.TreeSize), Rotations: rotations[b.BatchStartSeq]}
				want := b.BatchStartSeq
				for k, v := recs.Seek(u64key(want)); k != nil && getU64(k) <= b.BatchEndSeq; k, v = recs.Next() {
					if getU64(k) != want {
						break
					}
					sb.Receipts = append(sb.Receipts, json.RawMessage(bytes.Clone(v)))
					want++
				}
				if want != b.BatchEndSeq+1 {
					return fmt.Errorf("read sealed batch %d: receipt seq %d missing: %w", next, want, ErrTampered)
				}
				chunk = append(chunk, sb)
				held += len(sb.Receipts)
				next++
			}
		})
		if err != nil {
			return err
		}
		for _, sb := range chunk {
			if err := ctx.Err(); err != nil {
				return err
			}
			if err := fn(sb); err != nil {
				return err
			}
		}
		if !full {
			return nil
		}
	}
}

// SealedCheckpoints is the number of the last checkpoint stored (0 when
// none), and the last receipt seq it seals.
func (l *Log) SealedCheckpoints() (cpSeq, sealedSeq uint64, err error) {
	err = l.view(func(tx *bolt.Tx) error {
		if k, v := tx.Bucket(bktCPByEnd).Cursor().Last(); k != nil {
			sealedSeq, cpSeq = getU64(k), getU64(v)
		}
		return nil
	})
	return cpSeq, sealedSeq, err
}
