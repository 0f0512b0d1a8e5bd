package receipts

import (
	"bufio"
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"

	bolt "go.etcd.io/bbolt"

	"github.com/backbay-labs/chio-agent/kernel/jcs"
)

// Get returns the receipt stored under seq.
func (l *Log) Get(seq uint64) (Entry, error) {
	var e Entry
	err := l.view(func(tx *bolt.Tx) error {
		data := tx.Bucket(bktReceipts).Get(u64key(seq))
		if data == nil {
			return fmt.Errorf("get receipt seq %d: %w", seq, ErrNotFound)
		}
		var err error
		e, err = entryAt(seq, data)
		return err
	})
	return e, err
}

// Lookup returns the receipt with the given id (64 hex digits).
func (l *Log) Lookup(id string) (Entry, error) {
	idb, err := hex.DecodeString(id)
	if err != nil || len(idb) != 32 {
		return Entry{}, fmt.Errorf("look up receipt %q: id is not 64 hex digits: %w", id, ErrNotFound)
	}
	var e Entry
	err = l.view(func(tx *bolt.Tx) error {
		k := l.findID(tx, idb)
		if len(k) != 8 {
			return fmt.Errorf("look up receipt %s: %w", id, ErrNotFound)
		}
		data := tx.Bucket(bktReceipts).Get(k)
		if data == nil {
			return fmt.Errorf("look up receipt %s: indexed as seq %d, which is missing: %w", id, getU64(k), ErrCorrupt)
		}
		var err error
		if e, err = entryAt(getU64(k), data); err != nil {
			return err
		}
		if e.ID != id {
			return fmt.Errorf("look up receipt %s: indexed as seq %d, which holds receipt %s: %w", id, e.Seq, e.ID, ErrCorrupt)
		}
		return nil
	})
	return e, err
}

// findID returns the seq key of the receipt with id idb, nil when none: in
// a writable log from its in-memory index, in a read-only one by reading
// seq_ids in order (one pass over 40 bytes per receipt), in a format-1 log
// from its ids bucket.
func (l *Log) findID(tx *bolt.Tx, idb []byte) []byte {
	switch {
	case l.v1:
		return tx.Bucket(bktIDs).Get(idb)
	case l.ids != nil:
		if seq, ok := l.ids.find(tx.Bucket(bktSeqIDs), idb); ok {
			return u64key(seq)
		}
		return nil
	}
	c := tx.Bucket(bktSeqIDs).Cursor()
	for k, v := c.First(); k != nil; k, v = c.Next() {
		if bytes.Equal(v, idb) {
			return k
		}
	}
	return nil
}

// entryAt decodes stored bytes, copying them out of the bbolt page (which
// is only valid inside the transaction).
func entryAt(seq uint64, data []byte) (Entry, error) {
	e, _, err := parseEntry(bytes.Clone(data))
	if err != nil {
		return Entry{}, fmt.Errorf("read receipt seq %d: %v: %w", seq, err, ErrCorrupt)
	}
	e.Seq = seq
	return e, nil
}

// Filter selects receipts for Scan. Zero fields match everything.
type Filter struct {
	// AfterSeq skips receipts with seq <= AfterSeq.
	AfterSeq uint64
	// Since keeps receipts whose timestamp is >= Since (unix seconds); 0
	// means no bound.
	Since int64
	// Decision keeps receipts with this verdict (allow, deny, none).
	Decision string
	// Workload keeps receipts from this workload.
	Workload string
	// Host keeps receipts whose destination host is Host.
	Host string
	// Limit stops after this many receipts; 0 means no limit.
	Limit int
}

func (f *Filter) match(e *Entry) bool {
	return e.Seq > f.AfterSeq && (f.Since == 0 || e.Timestamp >= f.Since) &&
		(f.Decision == "" || e.Decision == f.Decision) &&
		(f.Workload == "" || e.Workload == f.Workload) &&
		(f.Host == "" || e.Host == f.Host)
}

// Scan calls fn for each receipt matching f, in sequence order, using the
// most selective index the filter allows. fn's Entry is its own copy.
func (l *Log) Scan(ctx context.Context, f Filter, fn func(Entry) error) error {
	return l.view(func(tx *bolt.Tx) error {
		recs := tx.Bucket(bktReceipts)
		n := 0
		emit := func(seq uint64, data []byte) (bool, error) {
			if err := ctx.Err(); err != nil {
				return false, err
			}
			e, err := entryAt(seq, data)
			if err != nil {
				return false, err
			}
			if !f.match(&e) {
				return true, nil
			}
			if err := fn(e); err != nil {
				return false, err
			}
			n++
			return f.Limit == 0 || n < f.Limit, nil
		}
		var ix []byte
		var val string
		switch {
		case f.Host != "":
			ix, val = bktHost, f.Host
		case f.Workload != "":
			ix, val = bktWorkload, f.Workload
		case f.Decision != "":
			ix, val = bktDecision, f.Decision
		}
		if ix != nil {
			prefix := valuePrefix(val)
			c := tx.Bucket(ix).Cursor()
			for k, _ := c.Seek(valueKey(val, f.AfterSeq+1)); k != nil && bytes.HasPrefix(k, prefix) && len(k) == len(prefix)+8; k, _ = c.Next() {
				seq := getU64(k[len(prefix):])
				data := recs.Get(k[len(prefix):])
				if data == nil {
					return fmt.Errorf("scan receipts: index %s names seq %d, which is missing: %w", ix, seq, ErrCorrupt)
				}
				more, err := emit(seq, data)
				if err != nil || !more {
					return err
				}
			}
			return nil
		}
		c := recs.Cursor()
		for k, data := c.Seek(u64key(f.AfterSeq + 1)); k != nil; k, data = c.Next() {
			more, err := emit(getU64(k), data)
			if err != nil || !more {
				return err
			}
		}
		return nil
	})
}

// Stats summarises a log.
type Stats struct {
	// FormatVersion is the header's format.
	FormatVersion string `json:"format"`
	// KernelKey is the key the header names now.
	KernelKey string `json:"kernel_key"`
	// Receipts is the number of stored receipts; LastSeq the highest seq.
	Receipts uint64 `json:"receipts"`
	LastSeq  uint64 `json:"last_seq"`
	// Checkpoints is the number of checkpoints; SealedSeq the last receipt
	// they cover; Unsealed the receipts after it.
	Checkpoints uint64 `json:"checkpoints"`
	SealedSeq   uint64 `json:"sealed_seq"`
	Unsealed    uint64 `json:"unsealed"`
	// Keys is the key history, oldest first.
	Keys []KeyRecord `json:"keys"`
	// Losses are the recorded crash losses of accepted receipts.
	Losses []LossRecord `json:"losses,omitempty"`
}

// Stats reads the header, key history and counts.
func (l *Log) Stats() (Stats, error) {
	var s Stats
	err := l.view(func(tx *bolt.Tx) error {
		meta := tx.Bucket(bktMeta)
		s.FormatVersion = string(meta.Get(metaFormat))
		s.KernelKey = string(meta.Get(metaKernelKey))
		s.Receipts = uint64(tx.Bucket(bktReceipts).Stats().KeyN)
		if k, _ := tx.Bucket(bktReceipts).Cursor().Last(); k != nil {
			s.LastSeq = getU64(k)
		}
		if k, v := tx.Bucket(bktCPByEnd).Cursor().Last(); k != nil {
			s.SealedSeq = getU64(k)
			s.Checkpoints = getU64(v)
		}
		if s.LastSeq > s.SealedSeq {
			s.Unsealed = s.LastSeq - s.SealedSeq
		}
		var err error
		s.Keys, err = readKeys(tx)
		if err != nil {
			return err
		}
		return tx.Bucket(bktLosses).ForEach(func(_, v []byte) error {
			var lr LossRecord
			if err := json.Unmarshal(v, &lr); err != nil {
				return fmt.Errorf("read loss record: %v: %w", err, ErrCorrupt)
			}
			s.Losses = append(s.Losses, lr)
			return nil
		})
	})
	return s, err
}

func readKeys(tx *bolt.Tx) ([]KeyRecord, error) {
	var keys []KeyRecord
	err := tx.Bucket(bktKeys).ForEach(func(k, v []byte) error {
		var kr KeyRecord
		if err := json.Unmarshal(v, &kr); err != nil || len(k) != 8 || kr.SinceSeq != getU64(k) {
			return fmt.Errorf("read key history: bad record %x: %w", k, ErrCorrupt)
		}
		keys = append(keys, kr)
		return nil
	})
	if err == nil && len(keys) == 0 {
		err = fmt.Errorf("read key history: empty: %w", ErrCorrupt)
	}
	return keys, err
}

// Checkpoint returns checkpoint number cpSeq.
func (l *Log) Checkpoint(cpSeq uint64) (Checkpoint, error) {
	var cp Checkpoint
	err := l.view(func(tx *bolt.Tx) error {
		data := tx.Bucket(bktCheckpoints).Get(u64key(cpSeq))
		if data == nil {
			return fmt.Errorf("get checkpoint %d: %w", cpSeq, ErrNotFound)
		}
		var err error
		cp, err = parseCheckpoint(bytes.Clone(data))
		if err != nil {
			return fmt.Errorf("get checkpoint %d: %v: %w", cpSeq, err, ErrCorrupt)
		}
		return nil
	})
	return cp, err
}

// Proof is an inclusion proof for one receipt: everything needed to check,
// offline and with only the kernel's public key, that the receipt is in the
// log: hash the receipt into a leaf, fold the audit path into the root,
// compare with the checkpoint's merkle_root, check the checkpoint signature.
type Proof struct {
	// Schema names this document's format.
	Schema string `json:"schema"`
	// Seq is the receipt's sequence number; LeafIndex its position in the
	// checkpoint's batch (Seq - batch_start_seq); TreeSize the batch size.
	Seq       uint64 `json:"seq"`
	LeafIndex uint64 `json:"leaf_index"`
	TreeSize  uint64 `json:"tree_size"`
	// LeafHash is SHA-256(0x00 || canonical receipt), "0x" + hex.
	LeafHash string `json:"leaf_hash"`
	// AuditPath is the sibling hashes, bottom up ("0x" + hex). A node that
	// is carried up without a sibling contributes none.
	AuditPath []string `json:"audit_path"`
	// Receipt is the signed receipt, canonical.
	Receipt json.RawMessage `json:"receipt"`
	// Checkpoint is the signed checkpoint whose merkle_root the path yields.
	Checkpoint Checkpoint `json:"checkpoint"`
}

// ProofSchema names the Proof format.
const ProofSchema = "chio-agent.receipt_inclusion_proof.v1"

// Prove builds the inclusion proof of receipt seq against the checkpoint
// that covers it. A receipt not yet sealed has no proof yet (ErrNotFound
// says so); Flush(ctx, true) seals it.
func (l *Log) Prove(seq uint64) (*Proof, error) {
	var p *Proof
	err := l.view(func(tx *bolt.Tx) error {
		k, v := tx.Bucket(bktCPByEnd).Cursor().Seek(u64key(seq))
		if k == nil {
			return fmt.Errorf("prove receipt seq %d: not sealed by a checkpoint yet: %w", seq, ErrNotFound)
		}
		data := tx.Bucket(bktCheckpoints).Get(v)
		if data == nil {
			return fmt.Errorf("prove receipt seq %d: checkpoint %d missing: %w", seq, getU64(v), ErrCorrupt)
		}
		cp, err := parseCheckpoint(bytes.Clone(data))
		if err != nil {
			return fmt.Errorf("prove receipt seq %d: checkpoint %d: %v: %w", seq, getU64(v), err, ErrCorrupt)
		}
		if seq < cp.Body.BatchStartSeq {
			return fmt.Errorf("prove receipt seq %d: %w", seq, ErrNotFound)
		}
		batch := make([][]byte, 0, cp.Body.TreeSize)
		c := tx.Bucket(bktReceipts).Cursor()
		want := cp.Body.BatchStartSeq
		for rk, rv := c.Seek(u64key(want)); rk != nil && getU64(rk) <= cp.Body.BatchEndSeq; rk, rv = c.Next() {
			if getU64(rk) != want {
				return fmt.Errorf("prove receipt seq %d: receipt seq %d missing: %w", seq, want, ErrTampered)
			}
			batch = append(batch, bytes.Clone(rv))
			want++
		}
		p, err = NewProof(seq, cp, batch)
		return err
	})
	return p, err
}

// NewProof builds the inclusion proof of receipt seq from the checkpoint
// that covers it and that checkpoint's receipts (batch_start_seq..
// batch_end_seq, as stored), checking that they hash to its merkle_root.
func NewProof(seq uint64, cp Checkpoint, batch [][]byte) (*Proof, error) {
	if seq < cp.Body.BatchStartSeq || seq > cp.Body.BatchEndSeq {
		return nil, fmt.Errorf("prove receipt seq %d: checkpoint %d covers seq %d-%d: %w", seq, cp.Body.CheckpointSeq, cp.Body.BatchStartSeq, cp.Body.BatchEndSeq, ErrNotFound)
	}
	if uint64(len(batch)) != cp.Body.TreeSize {
		return nil, fmt.Errorf("prove receipt seq %d: checkpoint %d covers %d receipts, %d stored: %w",
			seq, cp.Body.CheckpointSeq, cp.Body.TreeSize, len(batch), ErrTampered)
	}
	leaves := make([]Hash, len(batch))
	for i, r := range batch {
		leaves[i] = LeafHash(r)
	}
	if MerkleRoot(leaves).String() != cp.Body.MerkleRoot {
		return nil, fmt.Errorf("prove receipt seq %d: checkpoint %d root does not match its receipts: %w", seq, cp.Body.CheckpointSeq, ErrTampered)
	}
	idx := seq - cp.Body.BatchStartSeq
	path, err := InclusionPath(leaves, int(idx))
	if err != nil {
		return nil, err
	}
	p := &Proof{Schema: ProofSchema, Seq: seq, LeafIndex: idx, TreeSize: cp.Body.TreeSize,
		LeafHash: leaves[idx].String(), Receipt: batch[idx], Checkpoint: cp, AuditPath: []string{}}
	for _, h := range path {
		p.AuditPath = append(p.AuditPath, h.String())
	}
	return p, nil
}

// Check verifies the proof on its own: the leaf is the receipt's hash, the
// path folds to the checkpoint's root, and the checkpoint is signed by its
// kernel_key. trustedKey, when not "", must equal that key. The receipt's
// own signature is checked by check when given (see VerifyReceipt).
func (p *Proof) Check(trustedKey string, check ReceiptChecker) error {
	if p.Schema != ProofSchema {
		return fmt.Errorf("check proof: schema %q, want %q", p.Schema, ProofSchema)
	}
	canon, err := jcs.Canonicalize(p.Receipt)
	if err != nil {
		return fmt.Errorf("check proof: receipt: %w", err)
	}
	leaf := LeafHash(canon)
	if leaf.String() != p.LeafHash {
		return fmt.Errorf("check proof: leaf_hash does not match the receipt")
	}
	b := &p.Checkpoint.Body
	if err := checkBody(b); err != nil {
		return fmt.Errorf("check proof: checkpoint: %w", err)
	}
	if p.Seq < b.BatchStartSeq || p.Seq > b.BatchEndSeq || p.LeafIndex != p.Seq-b.BatchStartSeq || p.TreeSize != b.TreeSize {
		return fmt.Errorf("check proof: seq %d, leaf %d of %d do not fit checkpoint %d (%d-%d)",
			p.Seq, p.LeafIndex, p.TreeSize, b.CheckpointSeq, b.BatchStartSeq, b.BatchEndSeq)
	}
	path := make([]Hash, len(p.AuditPath))
	for i, s := range p.AuditPath {
		if path[i], err = parseRoot(s); err != nil {
			return fmt.Errorf("check proof: audit path: %w", err)
		}
	}
	root, err := RootFromPath(leaf, p.LeafIndex, p.TreeSize, path)
	if err != nil {
		return fmt.Errorf("check proof: %w", err)
	}
	if root.String() != b.MerkleRoot {
		return fmt.Errorf("check proof: path yields %s, checkpoint %d root is %s", root, b.CheckpointSeq, b.MerkleRoot)
	}
	if trustedKey != "" && b.KernelKey != trustedKey {
		return fmt.Errorf("check proof: checkpoint signed by %s, trusted key is %s", b.KernelKey, trustedKey)
	}
	if err := p.Checkpoint.VerifySignature(); err != nil {
		return fmt.Errorf("check proof: %w", err)
	}
	if check != nil {
		if err := check(canon); err != nil {
			return fmt.Errorf("check proof: receipt: %w", err)
		}
	}
	return nil
}

// exportLine shapes of the JSON Lines export.
type exportReceipt struct {
	Kind    string          `json:"kind"`
	Seq     uint64          `json:"seq"`
	Receipt json.RawMessage `json:"receipt"`
}

type exportCheckpoint struct {
	Kind       string          `json:"kind"`
	Checkpoint json.RawMessage `json:"checkpoint"`
}

type exportRotation struct {
	Kind     string          `json:"kind"`
	Rotation json.RawMessage `json:"rotation"`
}

// Export writes the log as JSON Lines in sequence order: each receipt as
// {"kind":"receipt","seq":N,"receipt":{...}}, and each checkpoint right
// after the last receipt it covers as {"kind":"checkpoint","checkpoint":
// {"body":{...},"signature":"..."}}; right before the first receipt a
// rotated key signs, the key rotation statements that hand the log to it,
// each as {"kind":"rotation","rotation":{...}}. Every line is canonical
// JSON, and the embedded objects are the stored bytes, so the export can be
// checked without this package. It reads one consistent snapshot.
func (l *Log) Export(ctx context.Context, w io.Writer) error {
	bw := bufio.NewWriterSize(w, 1<<16)
	err := l.view(func(tx *bolt.Tx) error {
		keys, err := readKeys(tx)
		if err != nil {
			return err
		}
		rotations := map[uint64][]json.RawMessage{}
		for _, k := range keys {
			rotations[k.SinceSeq] = k.Rotations
		}
		cps := tx.Bucket(bktCheckpoints)
		byEnd := tx.Bucket(bktCPByEnd)
		c := tx.Bucket(bktReceipts).Cursor()
		var line []byte
		for k, v := c.First(); k != nil; k, v = c.Next() {
			if err := ctx.Err(); err != nil {
				return err
			}
			for _, r := range rotations[getU64(k)] {
				if line, err = jcs.AppendMarshal(line[:0], exportRotation{Kind: "rotation", Rotation: r}); err != nil {
					return fmt.Errorf("export key rotation at seq %d: %v: %w", getU64(k), err, ErrCorrupt)
				}
				bw.Write(append(line, '\n'))
			}
			line, err = jcs.AppendMarshal(line[:0], exportReceipt{Kind: "receipt", Seq: getU64(k), Receipt: v})
			if err != nil {
				return fmt.Errorf("export receipt seq %d: %v: %w", getU64(k), err, ErrCorrupt)
			}
			bw.Write(append(line, '\n'))
			if cpk := byEnd.Get(k); cpk != nil {
				data := cps.Get(cpk)
				if data == nil {
					return fmt.Errorf("export checkpoint %d: missing: %w", getU64(cpk), ErrCorrupt)
				}
				line, err = jcs.AppendMarshal(line[:0], exportCheckpoint{Kind: "checkpoint", Checkpoint: data})
				if err != nil {
					return fmt.Errorf("export checkpoint %d: %v: %w", getU64(cpk), err, ErrCorrupt)
				}
				bw.Write(append(line, '\n'))
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("export receipt log: %w", err)
	}
	return nil
}

// Snapshot writes a consistent copy of the whole log file to w (a bbolt
// read transaction's WriteTo), while appends go on. A reader that cannot
// open the file because the agent holds it (ErrLocked) can open such a copy
// instead: every read, verify, export and proof then works on it.
func (l *Log) Snapshot(w io.Writer) (int64, error) {
	var n int64
	err := l.view(func(tx *bolt.Tx) error {
		var err error
		n, err = tx.WriteTo(w)
		return err
	})
	if err != nil {
		return n, fmt.Errorf("snapshot receipt log %s: %w", l.path, err)
	}
	return n, nil
}
