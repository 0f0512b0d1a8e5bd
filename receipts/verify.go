package receipts

import (
	"bytes"
	"cmp"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"strings"
	"sync"

	bolt "go.etcd.io/bbolt"

	"github.com/backbay-labs/chio-agent/kernel"
)

// ReceiptChecker verifies one signed receipt given as canonical JSON: its
// id, its signature by its kernel_key, and whatever else the receipt format
// requires. It returns nil when the receipt is valid.
type ReceiptChecker func(canonical []byte) error

// VerifyOptions configure Verify.
type VerifyOptions struct {
	// TrustedKey, when set (hex), is the only key the log's first key record
	// may name; without it Verify trusts the header's key history, which
	// proves integrity but not origin.
	TrustedKey string
	// CheckReceipt verifies each receipt's signature and id. Default
	// VerifyReceipt.
	CheckReceipt ReceiptChecker
	// Workers bounds the goroutines checking signatures. Default GOMAXPROCS.
	Workers int
}

// Report summarises a verified log.
type Report struct {
	Stats
	// Verified is the number of receipts whose signature and id were checked.
	Verified uint64 `json:"verified"`
}

// Verify checks the whole log: the header and key history; every receipt's
// canonical form, id, signature and key; sequence continuity; the indexes;
// every checkpoint's body, Merkle root, signature, previous-checkpoint hash
// and chain root; and that the header's last_seq and chain frontier match
// what is stored. It returns the first defect in sequence order as a
// *DefectError (wrapping ErrTampered or ErrCorrupt).
func (l *Log) Verify(ctx context.Context, o VerifyOptions) (*Report, error) {
	if o.CheckReceipt == nil {
		o.CheckReceipt = VerifyReceipt
	}
	if o.Workers <= 0 {
		o.Workers = runtime.GOMAXPROCS(0)
	}
	rep := &Report{}
	err := l.view(func(tx *bolt.Tx) error {
		v := &verifier{tx: tx, o: o, rep: rep, ctx: ctx}
		return v.run()
	})
	if err != nil {
		return rep, err
	}
	st, err := l.Stats()
	if err != nil {
		return rep, err
	}
	rep.Stats = st
	return rep, nil
}

type verifier struct {
	tx   *bolt.Tx
	o    VerifyOptions
	rep  *Report
	ctx  context.Context
	keys []KeyRecord

	chain   frontier
	prevSHA string
	nextSeq uint64 // next receipt seq expected

	// quick is the check Open runs before appending (checkOnOpen): receipts
	// before fullFrom are hashed into their batch's Merkle root but their
	// signatures are not checked one by one (unless the root does not
	// match, to name the receipt at fault), and the indexes are not checked.
	quick    bool
	fullFrom uint64

	// v1: the log is in format 1 (id index keyed by id). ids collects
	// every receipt's id prefix, to find an id stored twice (format 2).
	v1  bool
	ids []idRef
}

// checkOnOpen checks the evidence before a writable Open appends to it:
// every checkpoint (signature, chain, previous hash) and every sealed batch's
// Merkle root over its stored receipts, so that a changed byte in any
// receipt or checkpoint is found; and every receipt of the last sealed batch
// and of the unsealed tail in full (canonical form, id, signature, key).
// Hashing is cheap beside signature checks, which is what keeps this
// proportional to the log's size in bytes, not its count of signatures
// (docs/receipt-log.md has figures).
func (l *Log) checkOnOpen(tx *bolt.Tx) error {
	v := &verifier{tx: tx, o: VerifyOptions{CheckReceipt: VerifyReceipt, Workers: runtime.GOMAXPROCS(0)},
		rep: &Report{}, ctx: context.Background(), quick: true, fullFrom: 1}
	if _, data := tx.Bucket(bktCheckpoints).Cursor().Last(); data != nil {
		if cp, err := parseCheckpoint(data); err == nil {
			v.fullFrom = cp.Body.BatchStartSeq
		}
	}
	if err := v.run(); err != nil {
		return fmt.Errorf("open receipt log %s: refusing to append: %w", l.path, err)
	}
	return nil
}

// findBad checks each receipt of a batch whose Merkle root did not match,
// to name the first one at fault.
func (v *verifier) findBad(b *CheckpointBody, cp uint64) error {
	recs := v.tx.Bucket(bktReceipts)
	for seq := b.BatchStartSeq; seq <= b.BatchEndSeq; seq++ {
		if _, err := v.checkOne(seq, recs.Get(u64key(seq))); err != nil {
			var de *DefectError
			if errors.As(err, &de) {
				de.Checkpoint = cp
				return de
			}
			return tampered(seq, cp, "%v", err)
		}
	}
	return nil
}

// keyAt is the key in effect for receipt seq, and its index in the history.
func (v *verifier) keyAt(seq uint64) (string, int) {
	i := 0
	for j, k := range v.keys {
		if k.SinceSeq <= seq {
			i = j
		}
	}
	return v.keys[i].KernelKey, i
}

func (v *verifier) run() error {
	meta := v.tx.Bucket(bktMeta)
	if meta == nil {
		return corrupt(0, 0, "bucket %q missing", bktMeta)
	}
	buckets := allBuckets
	switch f := string(meta.Get(metaFormat)); f {
	case FormatVersion:
	case formatV1:
		v.v1, buckets = true, bucketsV1
	default:
		return &DefectError{Reason: fmt.Sprintf("format %q, this build reads %q", f, FormatVersion), Err: ErrFormat}
	}
	for _, b := range buckets {
		if v.tx.Bucket(b) == nil {
			return corrupt(0, 0, "bucket %q missing", b)
		}
	}
	var err error
	if v.keys, err = readKeys(v.tx); err != nil {
		return corrupt(0, 0, "%v", err)
	}
	if v.keys[0].SinceSeq != 1 {
		return tampered(0, 0, "key history starts at seq %d, not 1", v.keys[0].SinceSeq)
	}
	if v.o.TrustedKey != "" && v.keys[0].KernelKey != v.o.TrustedKey {
		return tampered(0, 0, "log's first key is %s, trusted key is %s", v.keys[0].KernelKey, v.o.TrustedKey)
	}
	for i := 1; i < len(v.keys); i++ {
		if v.keys[i].PreviousKey != v.keys[i-1].KernelKey {
			return tampered(v.keys[i].SinceSeq, 0, "key rotation names previous key %s, history says %s", v.keys[i].PreviousKey, v.keys[i-1].KernelKey)
		}
	}
	if cur := string(meta.Get(metaKernelKey)); cur != v.keys[len(v.keys)-1].KernelKey {
		return tampered(0, 0, "header key %s is not the last key in the history", cur)
	}

	v.nextSeq = 1
	cps := v.tx.Bucket(bktCheckpoints).Cursor()
	rc := v.tx.Bucket(bktReceipts).Cursor()
	rk, rv := rc.First()
	var cpCount uint64
	for ck, cv := cps.First(); ck != nil; ck, cv = cps.Next() {
		cpCount++
		if len(ck) != 8 || getU64(ck) != cpCount {
			return tampered(v.nextSeq, cpCount, "checkpoint %d missing (found key %x)", cpCount, ck)
		}
		cp, err := parseCheckpoint(cv)
		if err != nil {
			return tampered(v.nextSeq, cpCount, "%v", err)
		}
		b := &cp.Body
		if b.CheckpointSeq != cpCount {
			return tampered(v.nextSeq, cpCount, "body says checkpoint_seq %d", b.CheckpointSeq)
		}
		if err := checkBody(b); err != nil {
			return tampered(v.nextSeq, cpCount, "%v", err)
		}
		if b.BatchStartSeq != v.nextSeq {
			return tampered(v.nextSeq, cpCount, "batch starts at seq %d, previous batch ended at %d", b.BatchStartSeq, v.nextSeq-1)
		}
		var leaves []Hash
		leaves, rk, rv, err = v.receipts(rc, rk, rv, b.BatchEndSeq, cpCount)
		if err != nil {
			return err
		}
		if uint64(len(leaves)) != b.TreeSize {
			return tampered(v.nextSeq, cpCount, "checkpoint covers seq %d-%d but the log ends at seq %d", b.BatchStartSeq, b.BatchEndSeq, v.nextSeq-1)
		}
		if root := MerkleRoot(leaves); root.String() != b.MerkleRoot {
			if v.quick {
				if err := v.findBad(b, cpCount); err != nil {
					return err
				}
			}
			return tampered(b.BatchStartSeq, cpCount, "merkle_root %s does not match receipts %d-%d (computed %s)", b.MerkleRoot, b.BatchStartSeq, b.BatchEndSeq, root)
		}
		if err := checkLink(b, v.prevSHA, &v.chain); err != nil {
			return tampered(0, cpCount, "%v", err)
		}
		_, endIdx := v.keyAt(b.BatchEndSeq)
		ok := false
		for _, k := range v.keys[endIdx:] {
			ok = ok || k.KernelKey == b.KernelKey
		}
		if !ok {
			return tampered(0, cpCount, "signed by %s, not a key of this log at or after seq %d", b.KernelKey, b.BatchEndSeq)
		}
		if err := cp.VerifySignature(); err != nil {
			return tampered(0, cpCount, "%v", err)
		}
		if e := v.tx.Bucket(bktCPByEnd).Get(u64key(b.BatchEndSeq)); len(e) != 8 || getU64(e) != cpCount {
			return corrupt(0, cpCount, "checkpoint index does not name checkpoint %d at seq %d", cpCount, b.BatchEndSeq)
		}
		if v.prevSHA, err = b.BodySHA256(); err != nil {
			return err
		}
	}
	if err := v.checkRotations(); err != nil {
		return err
	}
	// The unsealed tail.
	if _, rk, _, err = v.receipts(rc, rk, rv, ^uint64(0), 0); err != nil {
		return err
	}
	if rk != nil {
		return corrupt(getU64(rk), 0, "unexpected receipt key")
	}
	last := v.nextSeq - 1
	if hv := meta.Get(metaLastSeq); len(hv) != 8 || getU64(hv) != last {
		hl := uint64(0)
		if len(hv) == 8 {
			hl = getU64(hv)
		}
		if hl > last {
			return tampered(last+1, 0, "receipt missing: header says the log ends at seq %d, the last stored is %d", hl, last)
		}
		return tampered(hl+1, 0, "receipt not recorded in the header: header says the log ends at seq %d, the last stored is %d", hl, last)
	}
	fb := meta.Get(metaChain)
	if cpCount > 0 || fb != nil {
		if !bytes.Equal(fb, v.chain.marshal()) {
			return tampered(0, cpCount, "header chain frontier does not match the checkpoints")
		}
	}
	if v.quick {
		return nil
	}
	if n := uint64(v.tx.Bucket(bktCPByEnd).Stats().KeyN); n != cpCount {
		return corrupt(0, 0, "checkpoint index has %d entries for %d checkpoints", n, cpCount)
	}
	idBucket := bktSeqIDs
	if v.v1 {
		idBucket = bktIDs
	}
	for _, b := range [][]byte{idBucket, bktTime, bktDecision, bktWorkload, bktHost} {
		if n := uint64(v.tx.Bucket(b).Stats().KeyN); n != last {
			return corrupt(0, 0, "index %s has %d entries for %d receipts", b, n, last)
		}
	}
	return v.checkUniqueIDs()
}

// checkRotations checks the key rotation statements the key history
// carries (after the checkpoints, which anchor them, are checked): each
// record's statements must hand the log from its previous key to its key,
// anchored to the stored checkpoint that ends right before its first seq,
// as a witness would check them (FollowRotations). Records without
// statements (rotations made without the previous key, and every record
// written before statements existed) have nothing to check.
func (v *verifier) checkRotations() error {
	logID, err := LogIDOf(v.keys[0].KernelKey)
	if err != nil {
		return tampered(0, 0, "%v", err)
	}
	for _, k := range v.keys[1:] {
		if len(k.Rotations) == 0 {
			continue
		}
		var first Rotation
		if err := json.Unmarshal(k.Rotations[0], &first); err != nil {
			return tampered(k.SinceSeq, 0, "key rotation to %s: %v", k.KernelKey, err)
		}
		a := first.Body.AnchorCheckpointSeq
		data := v.tx.Bucket(bktCheckpoints).Get(u64key(a))
		if data == nil {
			return tampered(k.SinceSeq, 0, "key rotation to %s is anchored to checkpoint %d, which the log does not hold", k.KernelKey, a)
		}
		cp, err := parseCheckpoint(data)
		if err != nil {
			return tampered(k.SinceSeq, a, "%v", err)
		}
		sha, err := cp.Body.BodySHA256()
		if err != nil {
			return err
		}
		head := ChainHead{CheckpointSeq: a, LastSeq: cp.Body.BatchEndSeq, BodySHA256: sha}
		to, _, err := FollowRotations(head, k.PreviousKey, &SealedBatch{LogID: logID, Rotations: k.Rotations}, 0)
		if err != nil {
			return tampered(k.SinceSeq, 0, "key rotation to %s: %v", k.KernelKey, err)
		}
		if to != k.KernelKey || head.LastSeq+1 != k.SinceSeq {
			return tampered(k.SinceSeq, 0, "key rotation statements lead to key %s from seq %d; the history records key %s from seq %d",
				to, head.LastSeq+1, k.KernelKey, k.SinceSeq)
		}
	}
	return nil
}

// checkUniqueIDs finds an id stored under two seqs, which format 1's index
// (keyed by id) could not hold and format 2's (keyed by seq) could.
func (v *verifier) checkUniqueIDs() error {
	slices.SortFunc(v.ids, func(a, b idRef) int {
		if c := cmpRef(a, b); c != 0 {
			return c
		}
		return cmp.Compare(a.seq, b.seq)
	})
	ids := v.tx.Bucket(bktSeqIDs)
	for i := 1; i < len(v.ids); i++ {
		for j := i - 1; j >= 0 && v.ids[j].prefix == v.ids[i].prefix; j-- {
			a, b := ids.Get(u64key(v.ids[j].seq)), ids.Get(u64key(v.ids[i].seq))
			if bytes.Equal(a, b) {
				return tampered(v.ids[i].seq, 0, "receipt id %x is stored already as seq %d", b, v.ids[j].seq)
			}
		}
	}
	return nil
}

// receipts reads receipts from the cursor position up to seq end (or the
// last), checking continuity, storage form, indexes and (in parallel)
// signatures, and returns their leaves and the cursor's next position.
func (v *verifier) receipts(c *bolt.Cursor, k, val []byte, end uint64, cp uint64) ([]Hash, []byte, []byte, error) {
	const chunk = 1024
	var leaves []Hash
	for k != nil && v.nextSeq <= end {
		if err := v.ctx.Err(); err != nil {
			return nil, nil, nil, err
		}
		type item struct {
			seq  uint64
			data []byte
		}
		items := make([]item, 0, chunk)
		for ; k != nil && len(items) < chunk && v.nextSeq+uint64(len(items)) <= end; k, val = c.Next() {
			want := v.nextSeq + uint64(len(items))
			if len(k) != 8 || getU64(k) != want {
				if len(k) == 8 && getU64(k) > want {
					return nil, nil, nil, tampered(want, cp, "receipt missing (next stored is seq %d)", getU64(k))
				}
				return nil, nil, nil, corrupt(want, cp, "bad receipt key %x", k)
			}
			items = append(items, item{want, val})
		}
		errs := make([]error, len(items))
		ents := make([]Entry, len(items))
		full := make([]bool, len(items))
		var wg sync.WaitGroup
		per := (len(items) + v.o.Workers - 1) / v.o.Workers
		for w := 0; w < len(items); w += per {
			wg.Add(1)
			go func(lo, hi int) {
				defer wg.Done()
				for i := lo; i < hi; i++ {
					if full[i] = !v.quick || items[i].seq >= v.fullFrom; full[i] {
						ents[i], errs[i] = v.checkOne(items[i].seq, items[i].data)
					}
				}
			}(w, min(w+per, len(items)))
		}
		wg.Wait()
		for i, it := range items {
			if !full[i] {
				leaves = append(leaves, LeafHash(it.data))
				continue
			}
			if errs[i] != nil {
				var de *DefectError
				if errors.As(errs[i], &de) {
					de.Checkpoint = cp
					return nil, nil, nil, de
				}
				return nil, nil, nil, tampered(it.seq, cp, "%v", errs[i])
			}
			if !v.quick {
				if err := v.checkIndexes(&ents[i]); err != nil {
					err.(*DefectError).Checkpoint = cp
					return nil, nil, nil, err
				}
			}
			leaves = append(leaves, LeafHash(it.data))
			v.rep.Verified++
		}
		v.nextSeq += uint64(len(items))
	}
	return leaves, k, val, nil
}

// checkOne checks one stored receipt's own content. It runs on worker
// goroutines, so it must not touch the transaction: bbolt transactions are
// not safe for concurrent use, even for reads.
func (v *verifier) checkOne(seq uint64, data []byte) (Entry, error) {
	want, _ := v.keyAt(seq)
	e, err := checkStoredReceipt(data, want, v.o.CheckReceipt)
	if err != nil {
		return Entry{}, tampered(seq, 0, "%v", err)
	}
	e.Seq = seq
	return e, nil
}

// checkIndexes checks that every index names the receipt (main goroutine).
func (v *verifier) checkIndexes(e *Entry) error {
	idb, _ := hex.DecodeString(e.ID)
	if v.v1 {
		if s := v.tx.Bucket(bktIDs).Get(idb); len(s) != 8 || getU64(s) != e.Seq {
			return corrupt(e.Seq, 0, "id index does not map %s to this seq", e.ID)
		}
	} else {
		if s := v.tx.Bucket(bktSeqIDs).Get(u64key(e.Seq)); !bytes.Equal(s, idb) {
			return corrupt(e.Seq, 0, "id index does not map this seq to %s", e.ID)
		}
		v.ids = append(v.ids, idRef{idPrefix(idb), e.Seq})
	}
	for _, ix := range []struct {
		b   []byte
		key []byte
	}{
		{bktTime, timeKey(e.Timestamp, e.Seq)},
		{bktDecision, valueKey(e.Decision, e.Seq)},
		{bktWorkload, valueKey(e.Workload, e.Seq)},
		{bktHost, valueKey(e.Host, e.Seq)},
	} {
		if k, _ := v.tx.Bucket(ix.b).Cursor().Seek(ix.key); !bytes.Equal(k, ix.key) {
			return corrupt(e.Seq, 0, "index %s has no entry for this receipt", ix.b)
		}
	}
	return nil
}

// VerifyReceipt is the default ReceiptChecker: kernel.VerifyJSON's id,
// signature, parameter-hash and consistency checks must all pass. Whether
// the key is trusted is the log's question (its key history), not the
// receipt's.
func VerifyReceipt(canonical []byte) error {
	res, err := kernel.VerifyJSON(canonical)
	if err != nil {
		return err
	}
	if res.SignatureValid && res.ReceiptIDValid && res.ParameterHashValid {
		return nil
	}
	// Trust is decided by the log's key history; the kernel's "not a
	// trusted signer" note would only mislead here.
	var problems []string
	for _, p := range res.Problems {
		if !strings.Contains(p, "trusted") {
			problems = append(problems, p)
		}
	}
	res.Problems = problems
	switch {
	case !res.ReceiptIDValid:
		return fmt.Errorf("receipt id does not match its body (%s)", strings.Join(res.Problems, "; "))
	case !res.ParameterHashValid:
		return fmt.Errorf("parameter_hash does not match parameters (%s)", strings.Join(res.Problems, "; "))
	}
	return fmt.Errorf("signature invalid (%s)", strings.Join(res.Problems, "; "))
}
