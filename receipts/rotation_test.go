package receipts

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	bolt "go.etcd.io/bbolt"

	"github.com/backbay-labs/chio-agent/internal/testutil"
	"github.com/backbay-labs/chio-agent/kernel/jcs"
)

func pubHex(k ed25519.PrivateKey) string { return hex.EncodeToString(k.Public().(ed25519.PublicKey)) }

// appendN appends receipts n0..n0+count-1 signed by key.
func appendN(t *testing.T, l *Log, key ed25519.PrivateKey, n0, count int) {
	t.Helper()
	for n := n0; n < n0+count; n++ {
		if _, err := l.Append(context.Background(), receipt(t, key, n)); err != nil {
			t.Fatal(err)
		}
	}
}

// sealedBatches reads every sealed batch of the log at path.
func sealedBatches(t *testing.T, path string) []SealedBatch {
	t.Helper()
	ro, err := Open(path, Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer ro.Close()
	var out []SealedBatch
	if err := ro.SealedBatches(context.Background(), 0, func(b SealedBatch) error { out = append(out, b); return nil }); err != nil {
		t.Fatal(err)
	}
	return out
}

// checkChain walks bs as a witness would: every batch through VerifyBatch,
// and its key through FollowRotations from the log's first key.
func checkChain(t *testing.T, bs []SealedBatch) {
	t.Helper()
	var head ChainHead
	signer := bs[0].KernelKey
	for i := range bs {
		cp, next, err := VerifyBatch(head, &bs[i], nil)
		if err != nil {
			t.Fatalf("batch %d: %v", i+1, err)
		}
		to, _, err := FollowRotations(head, signer, &bs[i], cp.Body.CheckpointSeq)
		if err != nil || to != bs[i].KernelKey {
			t.Fatalf("batch %d signed by %s: statements lead to %s: %v", i+1, bs[i].KernelKey, to, err)
		}
		signer, head = to, next
	}
}

// A rotation given the previous key seals the unsealed tail with it and
// records a statement both keys signed, anchored to that checkpoint; the
// first batch the new key signs carries it, and no other batch carries
// anything. Rotating again before the new key signed a receipt chains the
// statements in one key record.
func TestRotateWithPreviousKey(t *testing.T) {
	path := filepath.Join(t.TempDir(), "r.db")
	k1, k2, k3, k4 := testKey("rot1"), testKey("rot2"), testKey("rot3"), testKey("rot4")
	l, err := Open(path, Options{Key: k1, CheckpointEvery: 10})
	if err != nil {
		t.Fatal(err)
	}
	appendN(t, l, k1, 0, 25)
	l.crashOnClose = true // leave 21-25 unsealed
	l.Close()

	l, err = Open(path, Options{Key: k2, RotateKey: true, PreviousKey: k1, CheckpointEvery: 10})
	if err != nil {
		t.Fatal(err)
	}
	if rec := l.Recovery(); !rec.Rotated || rec.Unsealed != 0 {
		t.Fatalf("recovery %+v: want rotated, tail sealed", rec)
	}
	appendN(t, l, k2, 100, 12)
	l.Close()
	verifyFile(t, path)

	bs := sealedBatches(t, path)
	if len(bs) != 5 {
		t.Fatalf("%d batches, want 5", len(bs))
	}
	for i, b := range bs {
		want := pubHex(k1)
		if i >= 3 {
			want = pubHex(k2)
		}
		if b.KernelKey != want || (len(b.Rotations) > 0) != (i == 3) {
			t.Fatalf("batch %d: key %s, %d statements", i+1, b.KernelKey, len(b.Rotations))
		}
	}
	r, err := ParseRotation(bs[3].Rotations[0])
	if err != nil {
		t.Fatal(err)
	}
	cp3, _ := ParseCheckpoint(bs[2].Checkpoint)
	sha, _ := cp3.Body.BodySHA256()
	if b := r.Body; b.PreviousKey != pubHex(k1) || b.NewKey != pubHex(k2) || b.FirstSeq != 26 || b.AnchorCheckpointSeq != 3 ||
		b.AnchorCheckpointSHA256 != sha || b.LogID != bs[0].LogID || cp3.Body.BatchStartSeq != 21 {
		t.Fatalf("statement %+v, anchor %+v", b, cp3.Body)
	}
	if raw, _ := json.Marshal(bs[2]); strings.Contains(string(raw), "rotations") {
		t.Fatalf("a batch without a rotation names one: %s", raw)
	}
	checkChain(t, bs)

	// k2 -> k3 -> k4 with no receipt in between: one record, two statements.
	for _, step := range [][2]ed25519.PrivateKey{{k2, k3}, {k3, k4}} {
		l, err = Open(path, Options{Key: step[1], RotateKey: true, PreviousKey: step[0], CheckpointEvery: 10})
		if err != nil {
			t.Fatal(err)
		}
		l.Close()
	}
	l, err = Open(path, Options{Key: k4, CheckpointEvery: 10})
	if err != nil {
		t.Fatal(err)
	}
	appendN(t, l, k4, 200, 3)
	l.Close()
	rep := verifyFile(t, path)
	if n := len(rep.Keys); n != 3 || rep.Keys[2].PreviousKey != pubHex(k2) || len(rep.Keys[2].Rotations) != 2 || rep.Keys[2].SinceSeq != 38 {
		t.Fatalf("key history %+v", rep.Keys)
	}
	bs = sealedBatches(t, path)
	if last := bs[len(bs)-1]; last.KernelKey != pubHex(k4) || len(last.Rotations) != 2 {
		t.Fatalf("last batch: key %s, %d statements", last.KernelKey, len(last.Rotations))
	}
	checkChain(t, bs)
}

// The previous key must be the log's; a log with no receipt has nothing
// to hand over; both leave the file as it was.
func TestRotateRefusals(t *testing.T) {
	k1, k2 := testKey("rf1"), testKey("rf2")
	empty := filepath.Join(t.TempDir(), "empty.db")
	l, err := Open(empty, Options{Key: k1})
	if err != nil {
		t.Fatal(err)
	}
	l.Close()
	if _, err := Open(empty, Options{Key: k2, RotateKey: true, PreviousKey: k1}); !errors.Is(err, ErrKeyMismatch) || !strings.Contains(err.Error(), "no receipt") {
		t.Fatalf("rotate an empty log: %v", err)
	}
	path := filepath.Join(t.TempDir(), "r.db")
	l, err = Open(path, Options{Key: k1})
	if err != nil {
		t.Fatal(err)
	}
	appendN(t, l, k1, 0, 3)
	l.Close()
	if _, err := Open(path, Options{Key: k2, RotateKey: true, PreviousKey: testKey("other")}); !errors.Is(err, ErrKeyMismatch) {
		t.Fatalf("rotate with a previous key that is not the log's: %v", err)
	}
	if rep := verifyFile(t, path); len(rep.Keys) != 1 {
		t.Fatalf("a refused rotation changed the key history: %+v", rep.Keys)
	}
}

// A statement changed in the key history (here: the new key's signature)
// fails verification and a writable open, naming the rotation.
func TestRotationStatementTampered(t *testing.T) {
	path := filepath.Join(t.TempDir(), "r.db")
	k1, k2 := testKey("tp1"), testKey("tp2")
	l, err := Open(path, Options{Key: k1, CheckpointEvery: 4})
	if err != nil {
		t.Fatal(err)
	}
	appendN(t, l, k1, 0, 6)
	l.Close()
	if l, err = Open(path, Options{Key: k2, RotateKey: true, PreviousKey: k1}); err != nil {
		t.Fatal(err)
	}
	l.Close()
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bktKeys)
		var kr KeyRecord
		if err := json.Unmarshal(b.Get(u64key(7)), &kr); err != nil {
			return err
		}
		var r Rotation
		if err := json.Unmarshal(kr.Rotations[0], &r); err != nil {
			return err
		}
		r.Body.FirstSeq = 5 // the new key claims receipts the old one sealed
		kr.Rotations[0], _ = jcs.Marshal(r)
		data, _ := json.Marshal(kr)
		return b.Put(u64key(7), data)
	}); err != nil {
		t.Fatal(err)
	}
	db.Close()
	ro, err := Open(path, Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	_, err = ro.Verify(context.Background(), VerifyOptions{})
	ro.Close()
	if !errors.Is(err, ErrTampered) || !strings.Contains(err.Error(), "key rotation previous_key signature does not verify") {
		t.Fatalf("verify with a changed statement: %v", err)
	}
	if _, err := Open(path, Options{Key: k2}); !errors.Is(err, ErrTampered) {
		t.Fatalf("writable open with a changed statement: %v", err)
	}
}

// Logs written before statements existed keep verifying: a format-1 log
// (testdata) rotated the old way, without the previous key, has a key
// record with no statements and verifies; rotated with it, its first
// batches (format 1's own checkpoints) and the new key's are one chain a
// witness follows.
func TestRotateExistingFormatLog(t *testing.T) {
	old, next := testKey("v1-fixture"), testKey("v1-next")
	for _, withPrevious := range []bool{false, true} {
		path := v1Fixture(t)
		o := Options{Key: next, RotateKey: true, CheckpointEvery: 50}
		if withPrevious {
			o.PreviousKey = old
		}
		l, err := Open(path, o)
		if err != nil {
			t.Fatal(err)
		}
		appendN(t, l, next, 500, 30)
		l.Close()
		rep := verifyFile(t, path)
		if len(rep.Keys) != 2 || (len(rep.Keys[1].Rotations) == 1) != withPrevious {
			t.Fatalf("previous key %v: key history %+v", withPrevious, rep.Keys)
		}
		if !withPrevious {
			continue
		}
		bs := sealedBatches(t, path)
		if len(bs) != 4 || bs[2].KernelKey != pubHex(old) || bs[3].KernelKey != pubHex(next) {
			t.Fatalf("%d batches", len(bs))
		}
		checkChain(t, bs)
	}
}

// A rotated log's JSON Lines export carries the statement right before
// the new key's first receipt, and the independent verifier follows the
// key across it; without the line (or after a rotation made without the
// previous key, which has none) it refuses the new key's receipts.
func TestExportAcrossRotationVerifiesWithPython(t *testing.T) {
	py := testutil.PythonCrypto(t)
	root, err := testutil.ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	k1, k2 := testKey("py-rot1"), testKey("py-rot2")
	dir := t.TempDir()
	export := func(previous ed25519.PrivateKey) []byte {
		path := filepath.Join(t.TempDir(), "r.db")
		l, err := Open(path, Options{Key: k1, CheckpointEvery: 10})
		if err != nil {
			t.Fatal(err)
		}
		appendN(t, l, k1, 0, 25)
		l.Close()
		if l, err = Open(path, Options{Key: k2, RotateKey: true, PreviousKey: previous, CheckpointEvery: 10}); err != nil {
			t.Fatal(err)
		}
		appendN(t, l, k2, 100, 12)
		defer l.Close()
		return exportLog(t, l)
	}
	run := func(name string, data []byte) (string, error) {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		out, err := exec.Command(py, filepath.Join(root, "scripts", "verify_export.py"), "--key", pubHex(k1), p).CombinedOutput()
		return string(out), err
	}
	good := export(k1)
	if n := bytes.Count(good, []byte(`{"kind":"rotation"`)); n != 1 {
		t.Fatalf("%d rotation lines in the export, want 1", n)
	}
	if out, err := run("good.jsonl", good); err != nil || !strings.Contains(out, "ok: 37 receipts, 4 checkpoints, 2 unsealed") {
		t.Fatalf("python verifier on a rotated log's export: %v\n%s", err, out)
	}
	var kept [][]byte
	for _, line := range bytes.SplitAfter(good, []byte("\n")) {
		if !bytes.HasPrefix(line, []byte(`{"kind":"rotation"`)) {
			kept = append(kept, line)
		}
	}
	if out, err := run("dropped.jsonl", bytes.Join(kept, nil)); err == nil || !strings.Contains(out, "receipt seq 26") {
		t.Fatalf("python verifier without the statement: %v\n%s", err, out)
	}
	if out, err := run("local.jsonl", export(nil)); err == nil || !strings.Contains(out, "receipt seq 26") {
		t.Fatalf("python verifier on a rotation without the previous key: %v\n%s", err, out)
	}
}

// A key rotated in without the previous key seals the old tail; rotating
// it out again before it signed a receipt would drop it from the key
// history (one record per first seq) and leave its checkpoint without a
// key: refused, the log unchanged.
func TestRotateAgainAfterSealingOnlyRefused(t *testing.T) {
	path := filepath.Join(t.TempDir(), "r.db")
	k1, k2, k3 := testKey("so1"), testKey("so2"), testKey("so3")
	l, err := Open(path, Options{Key: k1, CheckpointEvery: 10})
	if err != nil {
		t.Fatal(err)
	}
	appendN(t, l, k1, 0, 5)
	l.crashOnClose = true
	l.Close()
	if l, err = Open(path, Options{Key: k2, RotateKey: true}); err != nil {
		t.Fatal(err)
	}
	l.Close() // k2 seals k1's 5 receipts
	for _, prev := range []ed25519.PrivateKey{k2, nil} {
		if _, err := Open(path, Options{Key: k3, RotateKey: true, PreviousKey: prev}); !errors.Is(err, ErrKeyMismatch) || !strings.Contains(err.Error(), "sealed checkpoint 1") {
			t.Fatalf("rotate out a key that only sealed a checkpoint (previous key %v): %v", prev != nil, err)
		}
	}
	verifyFile(t, path)
}

// FuzzParseRotation: any bytes either fail or are a statement whose
// canonical form is those very bytes and whose keys both signed it.
func FuzzParseRotation(f *testing.F) {
	k1, k2 := testKey("fz1"), testKey("fz2")
	good, err := SignRotation(RotationBody{LogID: "local-log-" + strings.Repeat("0", 64), PreviousKey: pubHex(k1), NewKey: pubHex(k2),
		FirstSeq: 11, AnchorCheckpointSeq: 1, AnchorCheckpointSHA256: strings.Repeat("ab", 32), IssuedAt: 1760000000}, k1, k2)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(good)
	f.Add([]byte(`{"body":{},"new_key_signature":"","previous_key_signature":""}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		r, err := ParseRotation(data)
		if err != nil {
			return
		}
		again, err := jcs.Marshal(&r)
		if err != nil || !bytes.Equal(again, data) {
			t.Fatalf("accepted bytes that are not the statement's canonical form: %q", data)
		}
		body, _ := jcs.Marshal(&r.Body)
		for _, ks := range [][2]string{{r.Body.PreviousKey, r.PreviousKeySignature}, {r.Body.NewKey, r.NewKeySignature}} {
			pub, _ := hex.DecodeString(ks[0])
			sig, _ := hex.DecodeString(ks[1])
			if len(pub) != ed25519.PublicKeySize || !ed25519.Verify(pub, body, sig) {
				t.Fatalf("accepted a statement %s did not sign", ks[0])
			}
		}
	})
}
