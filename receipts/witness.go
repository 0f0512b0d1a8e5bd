package receipts

import (
	"bytes"
	"encoding/hex"
	"fmt"
	"os"
	"runtime"
	"sync"

	"github.com/backbay-labs/chio-agent/kernel/jcs"
)

// A witness (a central store, an importer of evidence packages) checks one
// log's sealed batches in order without holding the log itself: it keeps a
// ChainHead per log and hands each batch to VerifyBatch, which runs the same
// checks Log.Verify runs on a stored log (checkStoredReceipt, checkBody,
// checkLink, the Merkle root and the checkpoint signature).

// ChainHead is what a witness keeps of one log's checkpoint chain to check
// the batch that follows: the zero value is a log with nothing stored yet.
type ChainHead struct {
	// CheckpointSeq is the last checkpoint stored, 0 for none.
	CheckpointSeq uint64 `json:"checkpoint_seq"`
	// LastSeq is the last receipt sequence number it sealed.
	LastSeq uint64 `json:"last_seq"`
	// BodySHA256 is the SHA-256 of its canonical body (what the next
	// checkpoint names as previous_checkpoint_sha256).
	BodySHA256 string `json:"body_sha256,omitempty"`
	// Frontier is the chain tree's frontier over checkpoints 1..CheckpointSeq
	// (the encoding the log header keeps), hex.
	Frontier string `json:"frontier,omitempty"`
}

// BatchDefect classifies why a witness refuses a batch.
type BatchDefect string

// The defects a witness tells apart.
const (
	// DefectMalformed: the batch is not the shape a sealed batch has.
	DefectMalformed BatchDefect = "malformed"
	// DefectForgedReceipt: a receipt's id, signature or form is wrong.
	DefectForgedReceipt BatchDefect = "forged_receipt"
	// DefectForgedCheckpoint: the checkpoint's signature or body is wrong,
	// or its chain fields do not follow from what is stored.
	DefectForgedCheckpoint BatchDefect = "forged_checkpoint"
	// DefectOutside: a receipt the checkpoint does not cover (a count or
	// Merkle root that does not match receipts that are each valid).
	DefectOutside BatchDefect = "receipt_outside_checkpoint"
	// DefectGap: the batch does not follow the last one stored.
	DefectGap BatchDefect = "gap"
	// DefectFork: a different checkpoint for a checkpoint_seq already
	// stored (equivocation).
	DefectFork BatchDefect = "fork"
	// DefectUntrustedKey: the signing key is not a trusted node key, or the
	// log id does not belong to it.
	DefectUntrustedKey BatchDefect = "untrusted_key"
)

// BatchError is a refused batch: which defect, where, and why in words. It
// wraps ErrTampered.
type BatchError struct {
	Defect        BatchDefect `json:"defect"`
	LogID         string      `json:"log_id"`
	CheckpointSeq uint64      `json:"checkpoint_seq,omitempty"`
	// Seq is the receipt at fault, 0 when not one receipt.
	Seq    uint64 `json:"seq,omitempty"`
	Reason string `json:"reason"`
}

func (e *BatchError) Error() string {
	where := ""
	if e.CheckpointSeq != 0 {
		where += fmt.Sprintf(" checkpoint %d", e.CheckpointSeq)
	}
	if e.Seq != 0 {
		where += fmt.Sprintf(" seq %d", e.Seq)
	}
	return fmt.Sprintf("log %s%s: %s: %s", e.LogID, where, e.Defect, e.Reason)
}

// Unwrap makes errors.Is(err, ErrTampered) hold.
func (e *BatchError) Unwrap() error { return ErrTampered }

// ParseCheckpoint decodes a checkpoint strictly (canonical bytes, no
// unknown fields), as the log stores it.
func ParseCheckpoint(data []byte) (Checkpoint, error) { return parseCheckpoint(data) }

// EntryAt decodes stored receipt bytes into an Entry with sequence number seq.
func EntryAt(seq uint64, data []byte) (Entry, error) { return entryAt(seq, data) }

// Match reports whether e passes the filter (Limit aside).
func (f *Filter) Match(e *Entry) bool { return f.match(e) }

// VerifyBatch checks batch b as the successor of head, the chain so far of
// log b.LogID: the checkpoint's form, signature and key; every receipt's
// canonical form, id, signature and key (check, default VerifyReceipt); the
// receipts' count and Merkle root against the checkpoint; and that the
// checkpoint follows head (checkpoint_seq, batch_start_seq,
// previous_checkpoint_sha256, chain_root). Trust in the key and forks
// against stored checkpoints are the caller's to decide; VerifyBatch
// returns the parsed checkpoint and the new head, or a *BatchError.
//
// It is CheckBatch and LinkBatch in one, a gap reported before the
// receipts are checked.
func VerifyBatch(head ChainHead, b *SealedBatch, check ReceiptChecker) (Checkpoint, ChainHead, error) {
	cp, err := checkSealedCheckpoint(b)
	if err != nil {
		return cp, head, err
	}
	if err := checkFollows(head, b, &cp.Body); err != nil {
		return cp, head, err
	}
	if _, err := checkBatchReceipts(b, &cp.Body, check); err != nil {
		return cp, head, err
	}
	next, err := LinkBatch(head, b, &cp)
	return cp, next, err
}

// CheckBatch runs VerifyBatch's checks that need no chain head: the
// checkpoint's form, signature and key, every receipt (check, default
// VerifyReceipt), their count and Merkle root. These are nearly all of a
// witness's work (the signatures), so a store runs them before it takes its
// write lock, and LinkBatch under it. It returns the parsed checkpoint and
// the receipts' entries (their seq from the checkpoint), or a *BatchError.
func CheckBatch(b *SealedBatch, check ReceiptChecker) (Checkpoint, []Entry, error) {
	cp, err := checkSealedCheckpoint(b)
	if err != nil {
		return cp, nil, err
	}
	es, err := checkBatchReceipts(b, &cp.Body, check)
	return cp, es, err
}

// LinkBatch runs VerifyBatch's checks against head on a batch that passed
// CheckBatch (cp its checkpoint): checkpoint_seq and batch_start_seq follow
// head, previous_checkpoint_sha256 names head's body, chain_root is the
// chain's root with cp. It returns the new head, or a *BatchError.
func LinkBatch(head ChainHead, b *SealedBatch, cp *Checkpoint) (ChainHead, error) {
	body := &cp.Body
	if err := checkFollows(head, b, body); err != nil {
		return head, err
	}
	chain, err := head.frontier()
	if err != nil {
		return head, err
	}
	if err := checkLink(body, head.BodySHA256, &chain); err != nil {
		return head, &BatchError{Defect: DefectForgedCheckpoint, LogID: b.LogID, CheckpointSeq: body.CheckpointSeq, Reason: err.Error()}
	}
	sha, err := body.BodySHA256()
	if err != nil {
		return head, err
	}
	return ChainHead{CheckpointSeq: body.CheckpointSeq, LastSeq: body.BatchEndSeq, BodySHA256: sha,
		Frontier: hex.EncodeToString(chain.marshal())}, nil
}

// checkSealedCheckpoint parses b's checkpoint and checks its form, body,
// key and signature.
func checkSealedCheckpoint(b *SealedBatch) (Checkpoint, error) {
	cp, err := parseCheckpoint(b.Checkpoint)
	if err != nil {
		return cp, &BatchError{Defect: DefectForgedCheckpoint, LogID: b.LogID, Reason: err.Error()}
	}
	body := &cp.Body
	bad := func(format string, a ...any) error {
		return &BatchError{Defect: DefectForgedCheckpoint, LogID: b.LogID, CheckpointSeq: body.CheckpointSeq, Reason: fmt.Sprintf(format, a...)}
	}
	if err := checkBody(body); err != nil {
		return cp, bad("%v", err)
	}
	if body.KernelKey != b.KernelKey {
		return cp, bad("checkpoint names key %s, the batch %s", body.KernelKey, b.KernelKey)
	}
	if err := cp.VerifySignature(); err != nil {
		return cp, bad("%v", err)
	}
	return cp, nil
}

// checkFollows checks that body's checkpoint and first receipt follow head.
func checkFollows(head ChainHead, b *SealedBatch, body *CheckpointBody) error {
	n := body.CheckpointSeq
	if n != head.CheckpointSeq+1 {
		return &BatchError{Defect: DefectGap, LogID: b.LogID, CheckpointSeq: n,
			Reason: fmt.Sprintf("checkpoint %d does not follow checkpoint %d, the last stored", n, head.CheckpointSeq)}
	}
	if body.BatchStartSeq != head.LastSeq+1 {
		return &BatchError{Defect: DefectGap, LogID: b.LogID, CheckpointSeq: n, Seq: body.BatchStartSeq,
			Reason: fmt.Sprintf("batch starts at seq %d, the last stored receipt is seq %d", body.BatchStartSeq, head.LastSeq)}
	}
	return nil
}

// checkBatchReceipts checks every receipt of b and their count and Merkle
// root against body, and returns their entries.
func checkBatchReceipts(b *SealedBatch, body *CheckpointBody, check ReceiptChecker) ([]Entry, error) {
	if check == nil {
		check = VerifyReceipt
	}
	n := body.CheckpointSeq
	bad := func(d BatchDefect, seq uint64, format string, a ...any) error {
		return &BatchError{Defect: d, LogID: b.LogID, CheckpointSeq: n, Seq: seq, Reason: fmt.Sprintf(format, a...)}
	}
	// Signatures dominate: check them on every core, as Log.Verify does.
	leaves := make([]Hash, len(b.Receipts))
	entries := make([]Entry, len(b.Receipts))
	errs := make([]error, len(b.Receipts))
	var wg sync.WaitGroup
	per := max(16, (len(b.Receipts)+runtime.GOMAXPROCS(0)-1)/runtime.GOMAXPROCS(0))
	for lo := 0; lo < len(b.Receipts); lo += per {
		wg.Add(1)
		go func(lo, hi int) {
			defer wg.Done()
			for i := lo; i < hi; i++ {
				entries[i], errs[i] = checkStoredReceipt(b.Receipts[i], b.KernelKey, check)
				entries[i].Seq = body.BatchStartSeq + uint64(i)
				leaves[i] = LeafHash(b.Receipts[i])
			}
		}(lo, min(lo+per, len(b.Receipts)))
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			return nil, bad(DefectForgedReceipt, body.BatchStartSeq+uint64(i), "%v", err)
		}
	}
	if uint64(len(leaves)) != body.TreeSize {
		return nil, bad(DefectOutside, 0, "%d receipts for a checkpoint covering seq %d-%d", len(leaves), body.BatchStartSeq, body.BatchEndSeq)
	}
	if root := MerkleRoot(leaves); root.String() != body.MerkleRoot {
		return nil, bad(DefectOutside, 0, "merkle_root %s does not match receipts %d-%d (computed %s)", body.MerkleRoot, body.BatchStartSeq, body.BatchEndSeq, root)
	}
	return entries, nil
}

func (h *ChainHead) frontier() (frontier, error) {
	if h.Frontier == "" {
		return frontier{}, nil
	}
	b, err := hex.DecodeString(h.Frontier)
	if err != nil {
		return frontier{}, fmt.Errorf("read chain head: %v: %w", err, ErrCorrupt)
	}
	f, err := unmarshalFrontier(b)
	if err != nil {
		return f, fmt.Errorf("read chain head: %v: %w", err, ErrCorrupt)
	}
	return f, nil
}

// checkStoredReceipt checks one receipt as stored: canonical JSON, the
// indexed fields' shape, signed by wantKey, and check (id, signature).
func checkStoredReceipt(data []byte, wantKey string, check ReceiptChecker) (Entry, error) {
	canon, err := jcs.Canonicalize(data)
	if err != nil {
		return Entry{}, fmt.Errorf("stored receipt is not JSON: %v", err)
	}
	if !bytes.Equal(canon, data) {
		return Entry{}, fmt.Errorf("stored receipt is not in canonical form")
	}
	e, key, err := parseEntry(data)
	if err != nil {
		return Entry{}, err
	}
	if key != wantKey {
		return Entry{}, fmt.Errorf("signed by %s, the log's key at this seq is %s", key, wantKey)
	}
	if err := check(data); err != nil {
		return Entry{}, err
	}
	return e, nil
}

// checkLink checks that body continues the chain whose last body hashes to
// prevSHA and whose tree is chain, and pushes body's leaf onto chain.
func checkLink(body *CheckpointBody, prevSHA string, chain *frontier) error {
	if body.PreviousCheckpointSHA256 != prevSHA {
		return fmt.Errorf("previous_checkpoint_sha256 %q, previous body hashes to %q", body.PreviousCheckpointSHA256, prevSHA)
	}
	leaf, err := chainLeafHash(body)
	if err != nil {
		return err
	}
	chain.push(leaf)
	if r := chain.root().String(); r != body.ChainRoot {
		return fmt.Errorf("chain_root %s, checkpoints 1-%d give %s", body.ChainRoot, body.CheckpointSeq, r)
	}
	return nil
}

// CheckDatabaseFile runs the structural check Open runs before bbolt maps a
// file (checkBoltFile) on any bbolt file at path, so that another store
// (a central store) refuses a truncated or damaged file with ErrCorrupt
// instead of crashing inside bbolt.
func CheckDatabaseFile(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	if !st.Mode().IsRegular() {
		return fmt.Errorf("check %s: not a regular file: %w", path, ErrCorrupt)
	}
	if err := checkBoltFile(f, st.Size()); err != nil {
		return fmt.Errorf("check %s: %w", path, err)
	}
	return nil
}
