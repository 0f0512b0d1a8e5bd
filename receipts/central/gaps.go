package central

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"fmt"

	bolt "go.etcd.io/bbolt"

	"github.com/backbay-labs/chio-agent/receipts"
)

// A batch refused as a gap is not wrong, only early: its predecessor had not
// been stored when it came (or had not come by the collector's gap wait).
// The store indexes such batches in bktGaps (log id ‖ checkpoint_seq ‖
// SHA-256 of the kept-aside record's batch → nothing) and, each time it
// stores a log's batch, takes the kept-aside gaps of that log that now
// follow it back out of rejected and ingests them, in chain order, until
// none follows. One stored is removed from rejected (it is in its log now:
// `receipts list --rejected` shows only what is still refused); one refused
// again for another reason (a fork, a broken chain link, a key that does
// not sign the log) stays kept aside with that reason and its first
// received_at; one still a gap stays as it was.

var bktGaps = []byte("gaps")

func gapKey(logID string, cpSeq uint64, sum []byte) []byte {
	k := make([]byte, 0, len(logID)+8+len(sum))
	k = append(append(k, logID...), u64key(cpSeq)...)
	return append(k, sum...)
}

// indexGap records a batch kept aside as a gap (sum its record's key).
func indexGap(tx *bolt.Tx, b *receipts.SealedBatch, why *receipts.BatchError, sum []byte) error {
	if why.Defect != receipts.DefectGap || why.CheckpointSeq == 0 || !validLogID(b.LogID) {
		return nil
	}
	return tx.Bucket(bktGaps).Put(gapKey(b.LogID, why.CheckpointSeq, sum), nil)
}

// indexGaps builds bktGaps for a store written before it existed.
func indexGaps(tx *bolt.Tx) error {
	if _, err := tx.CreateBucket(bktGaps); err != nil {
		return err
	}
	return tx.Bucket(bktRejected).ForEach(func(k, v []byte) error {
		var r Rejection
		if err := json.Unmarshal(v, &r); err != nil {
			return fmt.Errorf("read rejection: %v: %w", err, receipts.ErrCorrupt)
		}
		if r.Error == nil || r.Batch == nil {
			return nil
		}
		return indexGap(tx, r.Batch, r.Error, k)
	})
}

// resume ingests the kept-aside gaps of log id that follow its head, again
// and again while one is stored, and returns what was stored.
func (s *Store) resume(tx *bolt.Tx, id string) ([]Result, error) {
	gaps := tx.Bucket(bktGaps)
	var out []Result
	for {
		lb := tx.Bucket(bktLogs).Bucket([]byte(id))
		h, err := readHead(lb, id)
		if err != nil {
			return out, err
		}
		prefix := gapKey(id, h.CheckpointSeq+1, nil)
		var sums [][]byte
		c := gaps.Cursor()
		for k, _ := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, _ = c.Next() {
			sums = append(sums, bytes.Clone(k[len(prefix):]))
		}
		stored := false
		var refused [][]byte
		for _, sum := range sums {
			r, ok, err := s.retryGap(tx, gaps, gapKey(id, h.CheckpointSeq+1, sum), sum)
			if err != nil {
				return out, err
			}
			if ok {
				out = append(out, r)
				stored = true
			} else if tx.Bucket(bktRejected).Get(sum) != nil && gaps.Get(gapKey(id, h.CheckpointSeq+1, sum)) == nil {
				refused = append(refused, sum)
			}
		}
		if !stored {
			return out, nil
		}
		// Refused beside the one stored (tried before it, by the order of
		// their hashes): now a fork of it or the same batch, whichever
		// order they were tried in.
		for _, sum := range refused {
			if _, _, err := s.retryGap(tx, gaps, gapKey(id, h.CheckpointSeq+1, sum), sum); err != nil {
				return out, err
			}
		}
	}
}

// retryGap ingests the kept-aside batch sum (indexed as a gap under key)
// and says whether it was stored (not a duplicate). Stored or a duplicate,
// it leaves the rejections; refused as a gap again, it stays as it was;
// refused otherwise, it stays with the new reason, no longer a gap.
func (s *Store) retryGap(tx *bolt.Tx, gaps *bolt.Bucket, key, sum []byte) (Result, bool, error) {
	rb := tx.Bucket(bktRejected)
	data := rb.Get(sum)
	if data == nil {
		return Result{}, false, gaps.Delete(key)
	}
	var rj Rejection
	if err := json.Unmarshal(data, &rj); err != nil || rj.Batch == nil {
		return Result{}, false, fmt.Errorf("read rejection %s: %v: %w", hex.EncodeToString(sum), err, receipts.ErrCorrupt)
	}
	res, err := s.ingestOne(tx, Prepare(*rj.Batch))
	refused := asBatchError(err)
	switch {
	case err == nil:
		if err := rb.Delete(sum); err != nil {
			return res, false, err
		}
		return res, !res.Duplicate, gaps.Delete(key)
	case refused == nil:
		return res, false, err
	case refused.Defect == receipts.DefectGap:
		return res, false, nil
	}
	if err := gaps.Delete(key); err != nil {
		return res, false, err
	}
	rj.Error = refused
	rec, err := marshal(rj)
	if err != nil {
		return res, false, err
	}
	return res, false, rb.Put(sum, rec)
}
