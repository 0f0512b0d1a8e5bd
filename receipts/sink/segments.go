package sink

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/backbay-labs/chio-agent/internal/blobstore"
	"github.com/backbay-labs/chio-agent/kernel/jcs"
	"github.com/backbay-labs/chio-agent/receipts"
)

// A segment sink (s3://BUCKET/PREFIX, gs://BUCKET/PREFIX,
// azblob://ACCOUNT/CONTAINER/PREFIX; PREFIX may be empty) keeps one object
// per sealed batch:
//
//	PREFIX/LOG_ID/CHECKPOINT_SEQ.jsonl   (checkpoint seq zero-padded to 20 digits)
//
// so that object names sort in checkpoint order and a put of the same
// batch names the same object. The object is JSON lines, one line per
// record, in this order: the batch's receipts (in sequence order), the key
// rotation statements it carries (oldest first; most batches have none),
// then its signed checkpoint. Every line has one schema, which BigQuery
// loads as it is (docs/receipt-log.md, "Receipts in BigQuery"):
//
//	{"body":{...},"checkpoint_seq":C,"kernel_key":"HEX","kind":"receipt","log_id":"local-log-...","seq":S}
//
//	body            the record exactly as the log stores it (the signed receipt,
//	                rotation statement or checkpoint, canonical JSON)
//	checkpoint_seq  the checkpoint that seals the record (the object's)
//	kernel_key      the key that signed the batch (hex Ed25519 public key)
//	kind            "receipt", "rotation" or "checkpoint"
//	log_id          the log the batch belongs to
//	seq             the receipt's sequence number; on receipt lines only
//
// Each line is canonical JSON (RFC 8785), so its body is byte for byte the
// stored record and signatures verify over it as they do in the log.
//
// Put is a conditional create: the object is written only when the sink
// does not hold it. A batch put again (a retry after a lost answer, a
// shipper resuming) finds it there and succeeds when the stored bytes are
// the ones it would write; other bytes under the same name (another
// content for the same checkpoint: a fork, or a log restored from an old
// copy) are never overwritten, and the put fails with ErrConflict.
// Overwriting identical content would be idempotent too, but it would also
// overwrite different content, destroying the evidence stored first.

// Segment line kinds.
const (
	KindReceipt    = "receipt"
	KindRotation   = "rotation"
	KindCheckpoint = "checkpoint"
)

// maxSegment bounds the object Batches reads (1 GiB, as an evidence
// package file).
const maxSegment = 1 << 30

// segmentExt ends every segment's name.
const segmentExt = ".jsonl"

// SegmentLine is one line of a segment object.
type SegmentLine struct {
	Body          json.RawMessage `json:"body"`
	CheckpointSeq uint64          `json:"checkpoint_seq"`
	KernelKey     string          `json:"kernel_key"`
	Kind          string          `json:"kind"`
	LogID         string          `json:"log_id"`
	Seq           uint64          `json:"seq,omitempty"`
}

// segments is a segment sink.
type segments struct {
	url    string
	loc    *blobstore.URL
	prefix string // "" or the prefix with a trailing "/"
	st     blobstore.Store
}

// parseSegments checks a segment sink URL and returns its key prefix ("" or
// ending in "/").
func parseSegments(raw string) (string, error) {
	_, prefix, err := parseSegmentURL(raw)
	return prefix, err
}

func parseSegmentURL(raw string) (*blobstore.URL, string, error) {
	bad := func(format string, a ...any) (*blobstore.URL, string, error) {
		return nil, "", fmt.Errorf("receipt sink %q: %s (want s3://BUCKET/PREFIX, gs://BUCKET/PREFIX or azblob://ACCOUNT/CONTAINER/PREFIX)",
			blobstore.Redact(raw), fmt.Sprintf(format, a...))
	}
	u, err := blobstore.ParseURL(raw)
	if err != nil {
		return bad("%v", err)
	}
	if u.Fragment != "" {
		return bad("a fragment (#%s) is not part of a prefix", u.Fragment)
	}
	p := strings.TrimSuffix(u.Path, "/")
	if p == "" {
		return u, "", nil
	}
	if path.Clean(p) != p || !filepath.IsLocal(p) {
		return bad("prefix %q is not a clean relative path (no '.', '..' or empty segments)", p)
	}
	return u, p + "/", nil
}

func openSegments(ctx context.Context, raw string) (Store, error) {
	u, prefix, err := parseSegmentURL(raw)
	if err != nil {
		return nil, err
	}
	st, err := blobstore.Open(ctx, u.Scheme, u.Bucket, u.Container)
	if err != nil {
		return nil, fmt.Errorf("receipt sink %s: %w", blobstore.Redact(raw), err)
	}
	return &segments{url: blobstore.Redact(raw), loc: u, prefix: prefix, st: st}, nil
}

func (s *segments) String() string { return s.url }

func (s *segments) Close() error { return s.st.Close() }

// logDir is the prefix of log logID's objects.
func (s *segments) logDir(logID string) string { return s.prefix + logID + "/" }

// SegmentName is the object name of checkpoint cpSeq of log logID below
// a sink's prefix.
func SegmentName(logID string, cpSeq uint64) string {
	return fmt.Sprintf("%s/%020d%s", logID, cpSeq, segmentExt)
}

// objectURL names an object of the sink in errors.
func (s *segments) objectURL(key string) string { return s.loc.Base() + key }

// EncodeSegment is the object Put writes for batch b, checkpoint cpSeq.
// The receipts, statements and checkpoint must be canonical JSON, as a log
// stores them.
func EncodeSegment(b *receipts.SealedBatch, cpSeq uint64) ([]byte, error) {
	if !receipts.ValidLogID(b.LogID) {
		return nil, fmt.Errorf("segment of log %q: not a log id", b.LogID)
	}
	cp, err := receipts.ParseCheckpoint(b.Checkpoint)
	if err != nil {
		return nil, fmt.Errorf("segment of log %s checkpoint %d: %w", b.LogID, cpSeq, err)
	}
	if cp.Body.CheckpointSeq != cpSeq || cpSeq == 0 {
		return nil, fmt.Errorf("segment of log %s checkpoint %d: the batch's checkpoint is checkpoint %d", b.LogID, cpSeq, cp.Body.CheckpointSeq)
	}
	var out []byte
	add := func(kind string, seq uint64, body json.RawMessage) error {
		if c, err := jcs.Canonicalize(body); err != nil || !bytes.Equal(c, body) {
			return fmt.Errorf("segment of log %s checkpoint %d: a %s is not canonical JSON, as a log stores it", b.LogID, cpSeq, kind)
		}
		line, err := jcs.AppendMarshal(out, SegmentLine{Body: body, CheckpointSeq: cpSeq, KernelKey: b.KernelKey, Kind: kind, LogID: b.LogID, Seq: seq})
		if err != nil {
			return fmt.Errorf("segment of log %s checkpoint %d: %w", b.LogID, cpSeq, err)
		}
		out = append(line, '\n')
		return nil
	}
	for i, r := range b.Receipts {
		if err := add(KindReceipt, cp.Body.BatchStartSeq+uint64(i), r); err != nil {
			return nil, err
		}
	}
	for _, r := range b.Rotations {
		if err := add(KindRotation, 0, r); err != nil {
			return nil, err
		}
	}
	if err := add(KindCheckpoint, 0, b.Checkpoint); err != nil {
		return nil, err
	}
	return out, nil
}

// DecodeSegment rebuilds the batch of a segment object of log logID,
// checkpoint cpSeq, byte for byte as the log holds it; anything else in
// the object (a line out of place, not canonical, of another log or
// checkpoint, a seq that does not follow) is an error.
func DecodeSegment(data []byte, logID string, cpSeq uint64) (receipts.SealedBatch, error) {
	b := receipts.SealedBatch{LogID: logID}
	if len(data) == 0 || data[len(data)-1] != '\n' {
		return b, fmt.Errorf("empty, or does not end with a newline: %w", ErrDamaged)
	}
	lines := bytes.Split(data[:len(data)-1], []byte{'\n'})
	var start uint64
	for i, raw := range lines {
		bad := func(format string, a ...any) error {
			return fmt.Errorf("line %d: %s: %w", i+1, fmt.Sprintf(format, a...), ErrDamaged)
		}
		var l SegmentLine
		dec := json.NewDecoder(bytes.NewReader(raw))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&l); err != nil {
			return b, bad("%v", err)
		}
		if c, err := jcs.Canonicalize(raw); err != nil || !bytes.Equal(c, raw) {
			return b, bad("not canonical JSON")
		}
		if l.LogID != logID || l.CheckpointSeq != cpSeq {
			return b, bad("log %s checkpoint %d in the object of log %s checkpoint %d", l.LogID, l.CheckpointSeq, logID, cpSeq)
		}
		if i == 0 {
			b.KernelKey = l.KernelKey
		} else if l.KernelKey != b.KernelKey {
			return b, bad("kernel_key %s, line 1 says %s", l.KernelKey, b.KernelKey)
		}
		last := i == len(lines)-1
		switch {
		case l.Kind == KindCheckpoint && last:
			b.Checkpoint = l.Body
		case l.Kind == KindRotation && !last:
			b.Rotations = append(b.Rotations, l.Body)
		case l.Kind == KindReceipt && !last && b.Rotations == nil:
			if len(b.Receipts) == 0 {
				start = l.Seq
			}
			if want := start + uint64(len(b.Receipts)); l.Seq != want || l.Seq == 0 {
				return b, bad("receipt seq %d, want %d", l.Seq, want)
			}
			b.Receipts = append(b.Receipts, l.Body)
		default:
			return b, bad("a %q line there: want receipts, then rotation statements, then the checkpoint, last", l.Kind)
		}
		if l.Kind != KindReceipt && l.Seq != 0 {
			return b, bad("a %s line has a seq", l.Kind)
		}
	}
	if b.Receipts == nil {
		b.Receipts = []json.RawMessage{}
	}
	cp, err := receipts.ParseCheckpoint(b.Checkpoint)
	if err != nil {
		return b, fmt.Errorf("checkpoint line: %v: %w", err, ErrDamaged)
	}
	if cp.Body.CheckpointSeq != cpSeq || len(b.Receipts) > 0 && start != cp.Body.BatchStartSeq {
		return b, fmt.Errorf("checkpoint line names checkpoint %d from seq %d; the object is checkpoint %d from seq %d: %w",
			cp.Body.CheckpointSeq, cp.Body.BatchStartSeq, cpSeq, start, ErrDamaged)
	}
	return b, nil
}

func (s *segments) Put(ctx context.Context, b receipts.SealedBatch, cpSeq uint64) error {
	data, err := EncodeSegment(&b, cpSeq)
	if err != nil {
		return fmt.Errorf("put to %s: %w", s.url, err)
	}
	key := s.prefix + SegmentName(b.LogID, cpSeq)
	err = s.st.Create(ctx, key, data)
	if !errors.Is(err, blobstore.ErrExists) {
		if err != nil {
			return fmt.Errorf("put %s: %w", s.objectURL(key), err)
		}
		return nil
	}
	held, _, err := s.st.Get(ctx, key, maxSegment)
	if err != nil {
		return fmt.Errorf("put %s: it exists; reading it back: %w", s.objectURL(key), err)
	}
	if !bytes.Equal(held, data) {
		return fmt.Errorf("put %s: %w: the object holds %d other bytes than the %d of log %s checkpoint %d (a fork, or a log restored from an old copy?); it is left as it is",
			s.objectURL(key), ErrConflict, len(held), len(data), b.LogID, cpSeq)
	}
	return nil
}

// checkpoints lists the checkpoint seqs of log logID's objects past after,
// ascending, with their object names; a name that is not a segment's is
// an error naming it.
func (s *segments) checkpoints(ctx context.Context, logID string, after uint64) ([]uint64, []string, error) {
	if !receipts.ValidLogID(logID) {
		return nil, nil, fmt.Errorf("list %s: %q is not a log id", s.url, logID)
	}
	dir := s.logDir(logID)
	var seqs []uint64
	var keys []string
	err := s.st.List(ctx, dir, dir+fmt.Sprintf("%020d%s", after, segmentExt), func(key string) error {
		name := strings.TrimPrefix(key, dir)
		digits, ok := strings.CutSuffix(name, segmentExt)
		n, err := strconv.ParseUint(digits, 10, 64)
		if !ok || len(digits) != 20 || err != nil || n == 0 {
			return fmt.Errorf("%s: the name is not CHECKPOINT_SEQ%s (20 digits): %w", s.objectURL(key), segmentExt, ErrDamaged)
		}
		if n <= after {
			return nil
		}
		if len(seqs) > 0 && n <= seqs[len(seqs)-1] {
			return fmt.Errorf("list %s: the store listed checkpoint %d after %d", s.objectURL(dir), n, seqs[len(seqs)-1])
		}
		seqs = append(seqs, n)
		keys = append(keys, key)
		return nil
	})
	if err != nil {
		if errors.Is(err, ErrDamaged) {
			return nil, nil, err
		}
		return nil, nil, fmt.Errorf("list %s: %w", s.objectURL(dir), err)
	}
	return seqs, keys, nil
}

func (s *segments) Stored(ctx context.Context, logID string, after uint64) ([]uint64, error) {
	seqs, _, err := s.checkpoints(ctx, logID, after)
	return seqs, err
}

func (s *segments) Logs(ctx context.Context) ([]string, error) {
	dirs, err := s.st.Dirs(ctx, s.prefix)
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", s.url, err)
	}
	for _, d := range dirs {
		if !receipts.ValidLogID(d) {
			return nil, fmt.Errorf("%s%s/ is not a log's directory (%s followed by 64 hex digits): %w", s.loc.Base(), s.prefix+d, receipts.LogIDPrefix, ErrDamaged)
		}
	}
	slices.Sort(dirs)
	return dirs, nil
}

// readAhead is how many segments Batches reads ahead of the one fn is
// given: a sink of many objects is read at several round trips at a time,
// with at most this many objects held.
const readAhead = 8

func (s *segments) Batches(ctx context.Context, logID string, after uint64, fn func(receipts.SealedBatch) error) error {
	seqs, keys, err := s.checkpoints(ctx, logID, after)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel() // stops the reads ahead when fn or a read fails
	type read struct {
		b   receipts.SealedBatch
		err error
	}
	reads := make([]chan read, len(keys))
	for i := range reads {
		reads[i] = make(chan read, 1) // a read never waits for its reader
	}
	slots := make(chan struct{}, readAhead)
	go func() {
		for i, key := range keys {
			select {
			case slots <- struct{}{}:
			case <-ctx.Done():
				return
			}
			go func() {
				b, err := s.segment(ctx, key, logID, seqs[i])
				reads[i] <- read{b, err}
			}()
		}
	}()
	for i := range keys {
		var r read
		select {
		case r = <-reads[i]:
		case <-ctx.Done():
			return ctx.Err()
		}
		<-slots
		if r.err != nil {
			return r.err
		}
		if err := fn(r.b); err != nil {
			return err
		}
	}
	return nil
}

// segment reads and decodes the object key, checkpoint cpSeq of log logID.
func (s *segments) segment(ctx context.Context, key, logID string, cpSeq uint64) (receipts.SealedBatch, error) {
	data, _, err := s.st.Get(ctx, key, maxSegment)
	if err != nil {
		return receipts.SealedBatch{}, fmt.Errorf("read %s: %w", s.objectURL(key), err)
	}
	b, err := DecodeSegment(data, logID, cpSeq)
	if err != nil {
		return b, fmt.Errorf("read %s: %w", s.objectURL(key), err)
	}
	return b, nil
}
