package central

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/backbay-labs/chio-agent/kernel"
	"github.com/backbay-labs/chio-agent/kernel/jcs"
	"github.com/backbay-labs/chio-agent/receipts"
)

func testKey(name string) ed25519.PrivateKey {
	seed := sha256.Sum256([]byte("central-test:" + name))
	return ed25519.NewKeyFromSeed(seed[:])
}

func pubHex(k ed25519.PrivateKey) string { return hex.EncodeToString(k.Public().(ed25519.PublicKey)) }

// makeLog writes n receipts signed by key into a fresh local log (a
// checkpoint every `every`), seals it, and returns its path. offset shifts
// the receipts' content, so two logs with one key differ.
func makeLog(t testing.TB, key ed25519.PrivateKey, n, every, offset int) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "node.db")
	appendLog(t, path, key, 0, n, every, offset)
	return path
}

// appendLog appends receipts from..to-1 to the log at path and seals them.
func appendLog(t testing.TB, path string, key ed25519.PrivateKey, from, to, every, offset int) {
	t.Helper()
	// A fixed clock: two logs built from the same receipts seal the same
	// checkpoints, whenever they are built (fork tests depend on it).
	clock := func() time.Time { return time.Unix(1760000000, 0) }
	l, err := receipts.Open(path, receipts.Options{Key: key, CheckpointEvery: every, Now: clock})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for i := from; i < to; i++ {
		r, err := receipts.SyntheticReceipt(key, i+offset, time.Unix(1760000000+int64(i), 0))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := l.Append(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.Flush(ctx, true); err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
}

func batchesOf(t testing.TB, path string) []receipts.SealedBatch {
	t.Helper()
	l, err := receipts.Open(path, receipts.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	var out []receipts.SealedBatch
	if err := LocalBatches(context.Background(), l, 0, func(b receipts.SealedBatch) error {
		out = append(out, b)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return out
}

func openStore(t *testing.T, keys ...ed25519.PrivateKey) (*Store, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "central.db")
	var trusted []string
	for _, k := range keys {
		trusted = append(trusted, pubHex(k))
	}
	s, err := Open(path, Options{TrustedKeys: trusted})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s, path
}

func ingestAll(t *testing.T, s *Store, bs []receipts.SealedBatch) {
	t.Helper()
	for _, b := range bs {
		if _, err := s.Ingest(context.Background(), b); err != nil {
			t.Fatal(err)
		}
	}
}

func mustVerify(t *testing.T, s *Store) *Report {
	t.Helper()
	rep, err := s.Verify(context.Background())
	if err != nil {
		t.Fatalf("verify central store: %v", err)
	}
	return rep
}

// clone deep-copies a batch so a test can damage it.
func clone(b receipts.SealedBatch) receipts.SealedBatch {
	c := b
	c.Checkpoint = bytes.Clone(b.Checkpoint)
	c.Receipts = nil
	for _, r := range b.Receipts {
		c.Receipts = append(c.Receipts, bytes.Clone(r))
	}
	return c
}

func TestTwoLogsSideBySide(t *testing.T) {
	ka, kb := testKey("a"), testKey("b")
	a, b := batchesOf(t, makeLog(t, ka, 25, 10, 0)), batchesOf(t, makeLog(t, kb, 12, 5, 100))
	if len(a) != 3 || len(b) != 3 {
		t.Fatalf("batches: %d and %d, want 3 and 3", len(a), len(b))
	}
	s, _ := openStore(t, ka, kb)
	// Interleaved, as a collector receives them.
	for i := range a {
		ingestAll(t, s, []receipts.SealedBatch{a[i], b[i]})
	}
	rep := mustVerify(t, s)
	if len(rep.Logs) != 2 {
		t.Fatalf("logs %d, want 2", len(rep.Logs))
	}
	got := map[string]uint64{}
	for _, l := range rep.Logs {
		got[l.LogID] = l.Verified
	}
	if got[a[0].LogID] != 25 || got[b[0].LogID] != 12 {
		t.Fatalf("verified per log %v, want 25 for %s and 12 for %s", got, a[0].LogID, b[0].LogID)
	}
	// Each log's receipts stay in their own sequence.
	var n int
	if err := s.Scan(context.Background(), b[0].LogID, receipts.Filter{}, func(e Entry) error {
		n++
		if e.LogID != b[0].LogID || e.Seq != uint64(n) {
			t.Fatalf("entry %d: log %s seq %d", n, e.LogID, e.Seq)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if n != 12 {
		t.Fatalf("scan log b: %d receipts", n)
	}
	// A receipt of either log is provable from the store.
	for _, lb := range [][]receipts.SealedBatch{a, b} {
		p, err := s.Prove(lb[0].LogID, 7)
		if err != nil {
			t.Fatal(err)
		}
		if err := p.Check(lb[0].KernelKey, receipts.VerifyReceipt); err != nil {
			t.Fatal(err)
		}
		e, err := receipts.EntryAt(7, p.Receipt)
		if err != nil {
			t.Fatal(err)
		}
		found, err := s.Find(e.ID)
		if err != nil || len(found) != 1 || found[0].LogID != lb[0].LogID || found[0].Seq != 7 {
			t.Fatalf("find %s: %v %v", e.ID, found, err)
		}
	}
}

func TestIngestTwiceChangesNothing(t *testing.T) {
	k := testKey("idem")
	bs := batchesOf(t, makeLog(t, k, 30, 10, 0))
	s, path := openStore(t, k)
	ingestAll(t, s, bs)
	before := snapshot(t, s)
	for _, b := range bs {
		res, err := s.Ingest(context.Background(), b)
		if err != nil {
			t.Fatal(err)
		}
		if !res.Duplicate {
			t.Fatalf("re-ingest of checkpoint %d not reported as a duplicate", res.CheckpointSeq)
		}
	}
	if after := snapshot(t, s); !bytes.Equal(before, after) {
		t.Fatalf("re-ingest changed the store %s", path)
	}
	mustVerify(t, s)
}

// snapshot is every key and value of the store, to compare states.
func snapshot(t *testing.T, s *Store) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := s.Scan(context.Background(), "", receipts.Filter{}, func(e Entry) error {
		buf.WriteString(e.LogID)
		buf.Write(e.Receipt)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	logs, err := s.Logs()
	if err != nil {
		t.Fatal(err)
	}
	j, _ := json.Marshal(logs)
	buf.Write(j)
	if err := s.Rejections(func(r Rejection) error { buf.WriteString(r.SHA256); return nil }); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// rejected ingests bad and checks it is refused with defect d and a message
// containing want, kept aside, and that the store still verifies.
func rejected(t *testing.T, s *Store, bad receipts.SealedBatch, d receipts.BatchDefect, want ...string) {
	t.Helper()
	before := countRejected(t, s)
	_, err := s.Ingest(context.Background(), bad)
	var be *receipts.BatchError
	if !errors.As(err, &be) || be.Defect != d {
		t.Fatalf("ingest: %v, want a %s", err, d)
	}
	if !errors.Is(err, receipts.ErrTampered) {
		t.Fatalf("ingest: %v does not wrap ErrTampered", err)
	}
	for _, w := range want {
		if !strings.Contains(err.Error(), w) {
			t.Fatalf("ingest: %v, want it to name %q", err, w)
		}
	}
	if n := countRejected(t, s); n != before+1 {
		t.Fatalf("rejections %d after a refused batch, want %d", n, before+1)
	}
	var kept *Rejection
	_ = s.Rejections(func(r Rejection) error {
		if r.Error.Defect == d && r.Batch.LogID == bad.LogID && bytes.Equal(r.Batch.Checkpoint, asJSON(bad.Checkpoint)) &&
			len(r.Batch.Receipts) == len(bad.Receipts) && (len(bad.Receipts) == 0 || bytes.Equal(r.Batch.Receipts[0], bad.Receipts[0])) {
			kept = &r
		}
		return nil
	})
	if kept == nil {
		t.Fatalf("the refused batch is not kept aside as it came")
	}
	mustVerify(t, s)
}

func countRejected(t *testing.T, s *Store) int {
	n := 0
	if err := s.Rejections(func(Rejection) error { n++; return nil }); err != nil {
		t.Fatal(err)
	}
	return n
}

func TestForgedReceiptRejected(t *testing.T) {
	k := testKey("forge")
	bs := batchesOf(t, makeLog(t, k, 20, 10, 0))
	s, _ := openStore(t, k)
	ingestAll(t, s, bs[:1])
	bad := clone(bs[1])
	// Another workload, same length, still canonical: the id no longer
	// matches the body.
	r := bad.Receipts[3]
	i := bytes.Index(r, []byte(`"workload":"agent-`)) + len(`"workload":"agent-`)
	r[i] = '0' + (r[i]-'0'+1)%7
	rejected(t, s, bad, receipts.DefectForgedReceipt, "seq 14")
	// The honest batch still follows.
	ingestAll(t, s, bs[1:])
	mustVerify(t, s)
}

func TestForgedCheckpointRejected(t *testing.T) {
	k := testKey("forgecp")
	bs := batchesOf(t, makeLog(t, k, 20, 10, 0))
	s, _ := openStore(t, k)
	ingestAll(t, s, bs[:1])
	bad := clone(bs[1])
	bad.Checkpoint = bytes.Replace(bad.Checkpoint, []byte(`"issued_at":`), []byte(`"issued_at":1`), 1)
	rejected(t, s, bad, receipts.DefectForgedCheckpoint, "signature")
	// A batch whose checkpoint covers fewer receipts than it carries.
	extra := clone(bs[1])
	extra.Receipts = append(extra.Receipts, bs[0].Receipts[0])
	rejected(t, s, extra, receipts.DefectOutside, "11 receipts")
	// A batch whose receipts are each valid but not the ones sealed.
	swapped := clone(bs[1])
	swapped.Receipts[0] = bs[0].Receipts[0]
	rejected(t, s, swapped, receipts.DefectOutside, "merkle_root")
}

func TestEquivocationRejectedNamingBoth(t *testing.T) {
	k := testKey("equiv")
	honest := batchesOf(t, makeLog(t, k, 20, 10, 0))
	// The same key signs another history: its checkpoint 2 differs.
	other := batchesOf(t, makeLog(t, k, 20, 10, 1000))
	s, _ := openStore(t, k)
	ingestAll(t, s, honest)
	var hcp, ocp receipts.Checkpoint
	json.Unmarshal(honest[1].Checkpoint, &hcp)
	json.Unmarshal(other[1].Checkpoint, &ocp)
	hs, _ := hcp.Body.BodySHA256()
	osha, _ := ocp.Body.BodySHA256()
	rejected(t, s, other[1], receipts.DefectFork, "checkpoint 2", hs, osha)
	rejected(t, s, other[0], receipts.DefectFork, "checkpoint 1")
}

func TestGapRejected(t *testing.T) {
	k := testKey("gap")
	bs := batchesOf(t, makeLog(t, k, 40, 10, 0))
	s, _ := openStore(t, k)
	ingestAll(t, s, bs[:1])
	rejected(t, s, bs[2], receipts.DefectGap, "checkpoint 3 does not follow checkpoint 1")
	// A new log must start at its first checkpoint.
	k2 := testKey("gap2")
	s2, _ := openStore(t, k2)
	rejected(t, s2, batchesOf(t, makeLog(t, k2, 20, 10, 0))[1], receipts.DefectGap)
	ingestAll(t, s, bs[1:])
	mustVerify(t, s)
}

func TestUntrustedKeyRejected(t *testing.T) {
	trusted, stranger := testKey("trusted"), testKey("stranger")
	s, _ := openStore(t, trusted)
	bs := batchesOf(t, makeLog(t, stranger, 10, 10, 0))
	rejected(t, s, bs[0], receipts.DefectUntrustedKey, pubHex(stranger))
	// A trusted key's batch under another log's id.
	own := clone(batchesOf(t, makeLog(t, trusted, 10, 10, 0))[0])
	own.LogID = bs[0].LogID
	rejected(t, s, own, receipts.DefectUntrustedKey, "does not belong")
	// The batch claims a trusted key but is signed by the stranger.
	claim := clone(bs[0])
	claim.KernelKey = pubHex(trusted)
	rejected(t, s, claim, receipts.DefectForgedCheckpoint)
	if logs, _ := s.Logs(); len(logs) != 0 {
		t.Fatalf("refused batches created logs: %v", logs)
	}
}

func TestRejectedTwiceKeptOnce(t *testing.T) {
	trusted, stranger := testKey("t1"), testKey("s1")
	s, _ := openStore(t, trusted)
	b := batchesOf(t, makeLog(t, stranger, 10, 10, 0))[0]
	rejected(t, s, b, receipts.DefectUntrustedKey)
	if _, err := s.Ingest(context.Background(), b); err == nil {
		t.Fatal("second ingest of an untrusted batch accepted")
	}
	if n := countRejected(t, s); n != 1 {
		t.Fatalf("rejections %d, want 1", n)
	}
}

func TestVerifyFindsTamperedStore(t *testing.T) {
	k := testKey("tamper")
	bs := batchesOf(t, makeLog(t, k, 20, 10, 0))
	s, path := openStore(t, k)
	ingestAll(t, s, bs)
	// Rewrite one stored receipt behind the store's back.
	err := s.db.Update(func(tx *bolt.Tx) error {
		recs := tx.Bucket(bktLogs).Bucket([]byte(bs[0].LogID)).Bucket(bktReceipts)
		r := bytes.Clone(recs.Get(u64key(5)))
		r[len(r)-3] ^= 1
		return recs.Put(u64key(5), r)
	})
	if err != nil {
		t.Fatal(err)
	}
	_, err = s.Verify(context.Background())
	var be *receipts.BatchError
	if !errors.As(err, &be) || be.Seq != 5 {
		t.Fatalf("verify %s after tampering seq 5: %v", path, err)
	}
}

// TestTrustedNodeCannotContinueAnotherLog: node a's key is trusted, and log
// b's head is no secret; a batch a signs that chains onto b's head is still
// refused, since a's key signs none of b's checkpoints.
func TestTrustedNodeCannotContinueAnotherLog(t *testing.T) {
	ka, kb := testKey("hijacker"), testKey("victim")
	victim := batchesOf(t, makeLog(t, kb, 10, 10, 0))
	s, _ := openStore(t, ka, kb)
	ingestAll(t, s, victim)
	// a signs a log of 20 whose first checkpoint is then replaced by b's
	// history: build a's checkpoint 2 as a continuation of b's chain.
	forged := hijack(t, ka, victim[0])
	forged.LogID = victim[0].LogID
	rejected(t, s, forged, receipts.DefectUntrustedKey, "does not sign it")
	if logs, _ := s.Logs(); len(logs) != 1 || logs[0].LastSeq != 10 {
		t.Fatalf("logs after the hijack attempt: %+v", logs)
	}
}

// hijack builds a batch of receipts signed by key whose checkpoint 2,
// signed by key, continues the chain that prev (checkpoint 1) starts.
func hijack(t *testing.T, key ed25519.PrivateKey, prev receipts.SealedBatch) receipts.SealedBatch {
	t.Helper()
	pcp, err := receipts.ParseCheckpoint(prev.Checkpoint)
	if err != nil {
		t.Fatal(err)
	}
	var rs []json.RawMessage
	var leaves []receipts.Hash
	for i := 0; i < 5; i++ {
		r, err := receipts.SyntheticReceipt(key, 900+i, time.Unix(1760000100+int64(i), 0))
		if err != nil {
			t.Fatal(err)
		}
		rs = append(rs, r)
		leaves = append(leaves, receipts.LeafHash(r))
	}
	prevSHA, _ := pcp.Body.BodySHA256()
	body := receipts.CheckpointBody{Schema: receipts.CheckpointSchema, CheckpointSeq: 2, BatchStartSeq: pcp.Body.BatchEndSeq + 1,
		BatchEndSeq: pcp.Body.BatchEndSeq + 5, TreeSize: 5, MerkleRoot: receipts.MerkleRoot(leaves).String(), IssuedAt: 1760000200,
		KernelKey: pubHex(key), PreviousCheckpointSHA256: prevSHA}
	// The chain root over checkpoints 1 and 2, as VerifyBatch computes it.
	body.ChainRoot = chainRoot(t, &pcp.Body, &body)
	cp := receipts.Checkpoint{Body: body, Signature: signBody(t, key, &body)}
	data, err := jcs.Marshal(&cp)
	if err != nil {
		t.Fatal(err)
	}
	return receipts.SealedBatch{LogID: prev.LogID, KernelKey: pubHex(key), Receipts: rs, Checkpoint: data}
}

func chainRoot(t *testing.T, bodies ...*receipts.CheckpointBody) string {
	t.Helper()
	var leaves []receipts.Hash
	for _, b := range bodies {
		data, err := jcs.Marshal(struct {
			CheckpointSeq uint64 `json:"checkpoint_seq"`
			BatchStartSeq uint64 `json:"batch_start_seq"`
			BatchEndSeq   uint64 `json:"batch_end_seq"`
			MerkleRoot    string `json:"merkle_root"`
		}{b.CheckpointSeq, b.BatchStartSeq, b.BatchEndSeq, b.MerkleRoot})
		if err != nil {
			t.Fatal(err)
		}
		leaves = append(leaves, receipts.LeafHash(data))
	}
	return receipts.MerkleRoot(leaves).String()
}

func signBody(t *testing.T, key ed25519.PrivateKey, b *receipts.CheckpointBody) string {
	t.Helper()
	data, err := jcs.Marshal(b)
	if err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(ed25519.Sign(key, data))
}

// TestIngestAfterHTMLEscapingEncoder: a workload controls the host its
// receipts name; "<", ">" and "&" in it reach the batch's JSON, which Go's
// json.Marshal (a shipper's likely encoder) escapes as \u003c…. The batch
// must still be ingested, and stored as the log stored it.
func TestIngestAfterHTMLEscapingEncoder(t *testing.T) {
	k := testKey("html")
	path := filepath.Join(t.TempDir(), "node.db")
	l, err := receipts.Open(path, receipts.Options{Key: k, CheckpointEvery: 4})
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 4; i++ {
		params, _ := json.Marshal(map[string]any{"host": "a<b>&c.example", "port": 443, "conn": i})
		r, err := kernel.Sign(kernel.Receipt{Timestamp: uint64(1760000000 + i), ToolServer: "chio-agent", ToolName: "egress",
			Action: kernel.Action{Parameters: params}, Decision: &kernel.Decision{Verdict: kernel.VerdictDeny, Guard: "egress"},
			ReceiptKind: kernel.KindMediatedDecision, BoundaryClass: kernel.BoundaryPrevent, TrustLevel: kernel.TrustMediated}, k)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := l.AppendReceipt(context.Background(), &r); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.Flush(context.Background(), true); err != nil {
		t.Fatal(err)
	}
	l.Close()
	bs := batchesOf(t, path)
	wire, err := json.Marshal(bs[0])
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(wire, []byte(`\u003c`)) {
		t.Fatalf("json.Marshal did not escape: the test proves nothing")
	}
	var got receipts.SealedBatch
	if err := json.Unmarshal(wire, &got); err != nil {
		t.Fatal(err)
	}
	s, _ := openStore(t, k)
	if _, err := s.Ingest(context.Background(), got); err != nil {
		t.Fatal(err)
	}
	p, err := s.Prove(bs[0].LogID, 2)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(p.Receipt, bs[0].Receipts[1]) {
		t.Fatalf("stored receipt differs from the log's:\n%s\n%s", p.Receipt, bs[0].Receipts[1])
	}
	// Sent again unescaped, it is the same batch.
	if res, err := s.Ingest(context.Background(), bs[0]); err != nil || !res.Duplicate {
		t.Fatalf("the same batch unescaped: %+v %v", res, err)
	}
	mustVerify(t, s)
}

// TestOpenRefusesLocalLog: a node's receipt log given as a central store is
// refused and left as it was.
func TestOpenRefusesLocalLog(t *testing.T) {
	k := testKey("local")
	path := makeLog(t, k, 10, 5, 0)
	before, _ := os.ReadFile(path)
	if _, err := Open(path, Options{TrustedKeys: []string{pubHex(k)}}); !errors.Is(err, ErrNotCentral) {
		t.Fatalf("open a local log as a central store: %v", err)
	}
	if IsCentral(path) {
		t.Fatal("IsCentral says a local log is a central store")
	}
	if after, _ := os.ReadFile(path); !bytes.Equal(before, after) {
		t.Fatal("opening a local log as a central store changed it")
	}
	// A truncated central store fails cleanly.
	_, cpath := openStore(t, k)
	data, _ := os.ReadFile(cpath)
	bad := filepath.Join(t.TempDir(), "cut.db")
	os.WriteFile(bad, data[:len(data)/2], 0o600)
	if _, err := Open(bad, Options{ReadOnly: true}); !errors.Is(err, receipts.ErrCorrupt) {
		t.Fatalf("open a truncated central store: %v", err)
	}
}

// TestConcurrentIngest: several consumers ingest several logs' batches at
// once, each log in order, and the same batch twice at the same time.
func TestConcurrentIngest(t *testing.T) {
	keys := []ed25519.PrivateKey{testKey("c1"), testKey("c2"), testKey("c3")}
	s, _ := openStore(t, keys...)
	var logs [][]receipts.SealedBatch
	for i, k := range keys {
		logs = append(logs, batchesOf(t, makeLog(t, k, 50, 10, i*100)))
	}
	errc := make(chan error, 2*len(logs))
	for _, bs := range logs {
		for range 2 { // every batch delivered twice, concurrently
			go func() {
				for _, b := range bs {
					for {
						_, err := s.Ingest(context.Background(), b)
						var be *receipts.BatchError
						// The twin may be a batch behind: a gap is
						// redelivered, as a consumer's nack would.
						if errors.As(err, &be) && be.Defect == receipts.DefectGap {
							continue
						}
						if err != nil {
							errc <- err
							return
						}
						break
					}
				}
				errc <- nil
			}()
		}
	}
	for range 2 * len(logs) {
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
	}
	rep := mustVerify(t, s)
	if len(rep.Logs) != 3 {
		t.Fatalf("logs %d", len(rep.Logs))
	}
	for _, l := range rep.Logs {
		if l.Verified != 50 {
			t.Fatalf("log %s: %d receipts, want 50", l.LogID, l.Verified)
		}
	}
}

func TestMalformedBatchesRejected(t *testing.T) {
	k := testKey("malformed")
	b := batchesOf(t, makeLog(t, k, 10, 5, 0))[0]
	s, _ := openStore(t, k)
	cases := []struct {
		name string
		edit func(*receipts.SealedBatch)
		d    receipts.BatchDefect
	}{
		{"log id without prefix", func(b *receipts.SealedBatch) { b.LogID = strings.TrimPrefix(b.LogID, receipts.LogIDPrefix) }, receipts.DefectMalformed},
		{"log id upper case", func(b *receipts.SealedBatch) { b.LogID = strings.ToUpper(b.LogID) }, receipts.DefectMalformed},
		{"log id with a path", func(b *receipts.SealedBatch) { b.LogID = "../" + b.LogID }, receipts.DefectMalformed},
		{"no checkpoint", func(b *receipts.SealedBatch) { b.Checkpoint = nil }, receipts.DefectForgedCheckpoint},
		{"checkpoint not JSON", func(b *receipts.SealedBatch) { b.Checkpoint = []byte("{") }, receipts.DefectForgedCheckpoint},
		{"no receipts", func(b *receipts.SealedBatch) { b.Receipts = nil }, receipts.DefectOutside},
		{"receipt not JSON", func(b *receipts.SealedBatch) { b.Receipts[2] = []byte(`"x`) }, receipts.DefectForgedReceipt},
		{"receipt of another key", func(b *receipts.SealedBatch) {
			b.Receipts[1] = batchesOf(t, makeLog(t, testKey("other"), 5, 5, 0))[0].Receipts[1]
		}, receipts.DefectForgedReceipt},
		{"key not hex", func(b *receipts.SealedBatch) { b.KernelKey = "zz" }, receipts.DefectUntrustedKey},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			bad := clone(b)
			c.edit(&bad)
			rejected(t, s, bad, c.d)
		})
	}
	if logs, _ := s.Logs(); len(logs) != 0 {
		t.Fatalf("malformed batches created logs: %+v", logs)
	}
}

// FuzzIngestMutation: any change to a valid batch's bytes is refused, or
// is the same batch in other JSON spelling (stored once); the store
// verifies either way.
func FuzzIngestMutation(f *testing.F) {
	k := testKey("fuzz")
	bs := batchesOf(f, makeLog(f, k, 12, 4, 0))
	f.Add(0, 10, byte(1))
	f.Add(1, 200, byte(0x20))
	f.Add(2, 5, byte(0x80))
	f.Add(-1, 30, byte(1))
	f.Fuzz(func(t *testing.T, which, at int, x byte) {
		s, _ := openStore(t, k)
		ingestAll(t, s, bs[:1])
		bad := clone(bs[1])
		target := []byte(bad.Checkpoint)
		if which >= 0 {
			target = bad.Receipts[which%len(bad.Receipts)]
		}
		if len(target) == 0 || x == 0 {
			return
		}
		target[(at%len(target)+len(target))%len(target)] ^= x
		res, err := s.Ingest(context.Background(), bad)
		if err == nil && res.Duplicate {
			t.Fatalf("a changed batch 2 is a duplicate of nothing stored")
		}
		if err == nil {
			// Accepted: it must be the signed batch, spelled otherwise.
			p, perr := s.Prove(bad.LogID, 5)
			if perr != nil || !bytes.Equal(p.Receipt, bs[1].Receipts[0]) {
				t.Fatalf("a changed batch was stored as something else: %v", perr)
			}
		}
		mustVerify(t, s)
	})
}

// TestIngestAllAsOneByOne: a group with a duplicate, a gap and the batches
// that fill it gives each batch the outcome Ingest gives it alone: the gap
// is kept aside, then stored after its predecessor (and gone from the
// rejections), and comes again as a duplicate.
func TestIngestAllAsOneByOne(t *testing.T) {
	k := testKey("all")
	bs := batchesOf(t, makeLog(t, k, 50, 10, 0))
	s, _ := openStore(t, k)
	group := []receipts.SealedBatch{bs[0], bs[0], bs[2], bs[1], bs[2], bs[3], bs[4]}
	res, errs, err := s.IngestAll(context.Background(), group)
	if err != nil {
		t.Fatal(err)
	}
	var be *receipts.BatchError
	if !res[1].Duplicate || !errors.As(errs[2], &be) || be.Defect != receipts.DefectGap {
		t.Fatalf("group outcomes: %+v %v", res, errs)
	}
	if len(res[3].Resumed) != 1 || res[3].Resumed[0].CheckpointSeq != 3 || !res[4].Duplicate {
		t.Fatalf("the gap was not stored after its predecessor: %+v", res)
	}
	for _, i := range []int{0, 1, 3, 4, 5, 6} {
		if errs[i] != nil {
			t.Fatalf("batch %d of the group: %v", i, errs[i])
		}
	}
	if n := countRejected(t, s); n != 0 {
		t.Fatalf("%d kept aside after the gap was filled, want none", n)
	}
	if rep := mustVerify(t, s); rep.Logs[0].LastSeq != 50 {
		t.Fatalf("after the group: %+v", rep.Logs[0])
	}
}

// TestGapResumedWhenPredecessorStored: batches 3 and 4 come before 2 and
// are kept aside as gaps; when 2 is stored, 3 and 4 are stored after it
// (in order, in the same transaction) and leave the rejections, so the
// log's chain goes on with 5. An equivocating batch 3 (the node's key
// signed another history) kept aside as a gap beside the real one is
// refused again, now as the fork it is, and stays.
func TestGapResumedWhenPredecessorStored(t *testing.T) {
	k := testKey("resume")
	bs := batchesOf(t, makeLog(t, k, 50, 10, 0))
	other := batchesOf(t, makeLog(t, k, 50, 10, 1000))
	s, _ := openStore(t, k)
	ingestAll(t, s, bs[:1])
	for _, b := range []receipts.SealedBatch{bs[3], bs[2], other[2]} {
		rejected(t, s, b, receipts.DefectGap)
	}
	res, err := s.Ingest(context.Background(), bs[1])
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Resumed) != 2 || res.Resumed[0].CheckpointSeq != 3 || res.Resumed[1].CheckpointSeq != 4 {
		t.Fatalf("storing checkpoint 2 resumed %+v, want checkpoints 3 and 4", res.Resumed)
	}
	var left []Rejection
	_ = s.Rejections(func(r Rejection) error { left = append(left, r); return nil })
	if len(left) != 1 || left[0].Error.Defect != receipts.DefectFork || left[0].Error.CheckpointSeq != 3 {
		t.Fatalf("rejections after the gap was filled: %+v, want only the equivocation, as a fork of checkpoint 3", left)
	}
	ingestAll(t, s, bs[4:])
	if rep := mustVerify(t, s); rep.Logs[0].LastSeq != 50 || rep.Rejected != 1 {
		t.Fatalf("after the chain went on: %+v", rep)
	}
}

// TestGapsIndexedOnOpen: a store written before gaps were indexed (its
// gaps bucket removed here) indexes its kept-aside gaps when opened for
// writing, and resumes them as usual.
func TestGapsIndexedOnOpen(t *testing.T) {
	k := testKey("reindex")
	bs := batchesOf(t, makeLog(t, k, 30, 10, 0))
	s, path := openStore(t, k)
	ingestAll(t, s, bs[:1])
	rejected(t, s, bs[2], receipts.DefectGap)
	if err := s.db.Update(func(tx *bolt.Tx) error { return tx.DeleteBucket(bktGaps) }); err != nil {
		t.Fatal(err)
	}
	s.Close()
	s, err := Open(path, Options{TrustedKeys: []string{pubHex(k)}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if res, err := s.Ingest(context.Background(), bs[1]); err != nil || len(res.Resumed) != 1 {
		t.Fatalf("ingest checkpoint 2 after reopening: %+v %v, want checkpoint 3 resumed", res, err)
	}
	if rep := mustVerify(t, s); rep.Logs[0].LastSeq != 30 || rep.Rejected != 0 {
		t.Fatalf("after reopening: %+v", rep)
	}
}

// TestHeldStoreNamedAsOne: a central store another writer holds is still
// told apart from a held node log (read from its pages without the lock),
// and opening it fails with ErrHeld, saying what to do.
func TestHeldStoreNamedAsOne(t *testing.T) {
	k := testKey("held")
	s, path := openStore(t, k)
	ingestAll(t, s, batchesOf(t, makeLog(t, k, 20, 10, 0)))
	if !IsCentral(path) {
		t.Fatal("IsCentral: false for a central store held by a writer")
	}
	_, err := Open(path, Options{ReadOnly: true, LockTimeout: 50 * time.Millisecond})
	if !errors.Is(err, ErrHeld) || !errors.Is(err, receipts.ErrLocked) || !strings.Contains(err.Error(), "receipts collect") {
		t.Fatalf("open a held central store: %v", err)
	}
	local := filepath.Join(t.TempDir(), "node.db")
	l, err := receipts.Open(local, receipts.Options{Key: k})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if IsCentral(local) {
		t.Fatal("IsCentral: true for a node's log held by its writer")
	}
	if _, err := Open(local, Options{LockTimeout: 50 * time.Millisecond}); errors.Is(err, ErrHeld) || !errors.Is(err, receipts.ErrLocked) {
		t.Fatalf("open a held node log as a central store: %v", err)
	}
}
