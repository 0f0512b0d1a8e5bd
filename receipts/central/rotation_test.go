package central

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/backbay-labs/chio-agent/kernel/jcs"
	"github.com/backbay-labs/chio-agent/receipts"
)

// rotateLog reopens the log at path with key next (rotating from prev,
// given as the previous key unless nil), appends receipts from..to-1
// signed by next, and seals them.
func rotateLog(t testing.TB, path string, prev, next ed25519.PrivateKey, from, to, every int) {
	t.Helper()
	l, err := receipts.Open(path, receipts.Options{Key: next, RotateKey: true, PreviousKey: prev, CheckpointEvery: every})
	if err != nil {
		t.Fatal(err)
	}
	if !l.Recovery().Rotated {
		t.Fatal("no rotation recorded")
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	appendLog(t, path, next, from, to, every, 0)
}

// rotatedLog is a log of 25 receipts by k1 (checkpoints 1-3), rotated to
// k2 with k1's consent, then 15 receipts by k2 (checkpoints 4-5).
func rotatedLog(t testing.TB, k1, k2 ed25519.PrivateKey) string {
	t.Helper()
	path := makeLog(t, k1, 25, 10, 0)
	rotateLog(t, path, k1, k2, 25, 40, 10)
	return path
}

// restate re-signs the statement raw after edit, with the keys given.
func restate(t *testing.T, raw json.RawMessage, edit func(*receipts.RotationBody), prev, next ed25519.PrivateKey) json.RawMessage {
	t.Helper()
	r, err := receipts.ParseRotation(raw)
	if err != nil {
		t.Fatal(err)
	}
	edit(&r.Body)
	out, err := receipts.SignRotation(r.Body, prev, next)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func withRotations(b receipts.SealedBatch, rots ...json.RawMessage) receipts.SealedBatch {
	c := clone(b)
	c.Rotations = rots
	return c
}

// A log rotated with the old key's statement is one chain in the store,
// across the rotation: both keys recorded, the statement kept with it and
// handed on by Batches, the whole log verifying from checkpoint 1. The key
// rotated out no longer continues the log.
func TestRotatedLogContinues(t *testing.T) {
	k1, k2 := testKey("rot-old"), testKey("rot-new")
	path := rotatedLog(t, k1, k2)
	bs := batchesOf(t, path)
	if len(bs) != 5 || bs[3].KernelKey != pubHex(k2) || len(bs[3].Rotations) != 1 {
		t.Fatalf("%d batches; batch 4 by %s with %d statements", len(bs), bs[3].KernelKey, len(bs[3].Rotations))
	}
	s, _ := openStore(t, k1, k2)
	ingestAll(t, s, bs)
	rep := mustVerify(t, s)
	if l := rep.Logs[0]; len(rep.Logs) != 1 || l.Verified != 40 || !slices.Equal(l.Keys, []string{pubHex(k1), pubHex(k2)}) || l.KernelKey != pubHex(k1) {
		t.Fatalf("verify: %+v", rep.Logs)
	}
	var again []receipts.SealedBatch
	if err := s.Batches(context.Background(), bs[0].LogID, 0, func(b receipts.SealedBatch) error { again = append(again, b); return nil }); err != nil {
		t.Fatal(err)
	}
	for i := range bs {
		a, _ := json.Marshal(bs[i])
		b, _ := json.Marshal(again[i])
		if !bytes.Equal(a, b) {
			t.Fatalf("batch %d read back from the store differs:\n%s\n%s", i+1, a, b)
		}
	}
	if res, err := s.Ingest(context.Background(), bs[3]); err != nil || !res.Duplicate {
		t.Fatalf("batch 4 again: %+v %v", res, err)
	}

	// k1 signs on after handing the log over (a rotation back without
	// k2's consent): refused.
	rotateLog(t, path, nil, k1, 40, 45, 10)
	back := batchesOf(t, path)
	rejected(t, s, back[5], receipts.DefectUntrustedKey, "does not sign it")
}

// Every way to make a store accept another key for a log without the
// log's own key handing it over is refused and kept aside, naming the
// cause; the store is unchanged and the genuine batch is accepted after.
func TestRotationAttacksRefused(t *testing.T) {
	k1, k2, k3, kb := testKey("att-old"), testKey("att-new"), testKey("att-other"), testKey("att-node-b")
	bs := batchesOf(t, rotatedLog(t, k1, k2))
	other := batchesOf(t, makeLog(t, kb, 5, 5, 0))
	s, _ := openStore(t, k1, k2, k3, kb)
	ingestAll(t, s, bs[:3])
	ingestAll(t, s, other)
	real := bs[3].Rotations[0]

	// No statement: the old refusal.
	rejected(t, s, withRotations(bs[3]), receipts.DefectUntrustedKey, "carries no key rotation statement")
	// Forged: the old key's signature does not verify.
	var r receipts.Rotation
	if err := json.Unmarshal(real, &r); err != nil {
		t.Fatal(err)
	}
	r.PreviousKeySignature = strings.Repeat("0", 128)
	forged, _ := jcs.Marshal(&r)
	rejected(t, s, withRotations(bs[3], forged), receipts.DefectForgedRotation, "previous_key signature does not verify")
	// Signed by a key that does not sign this log: node b hands log 1 to k2.
	byB := restate(t, real, func(b *receipts.RotationBody) { b.PreviousKey = pubHex(kb) }, kb, k2)
	rejected(t, s, withRotations(bs[3], byB), receipts.DefectRotationMismatch, "does not sign this log")
	// A valid statement of another log.
	otherLog := restate(t, real, func(b *receipts.RotationBody) { b.LogID = other[0].LogID }, k1, k2)
	rejected(t, s, withRotations(bs[3], otherLog), receipts.DefectRotationMismatch, "statement is for log "+other[0].LogID)
	// Anchored to a checkpoint the store does not hold: a later one, and
	// checkpoint 3 with another body.
	later := restate(t, real, func(b *receipts.RotationBody) { b.AnchorCheckpointSeq = 4 }, k1, k2)
	rejected(t, s, withRotations(bs[3], later), receipts.DefectRotationAnchor, "not held")
	otherBody := restate(t, real, func(b *receipts.RotationBody) { b.AnchorCheckpointSHA256 = strings.Repeat("ab", 32) }, k1, k2)
	rejected(t, s, withRotations(bs[3], otherBody), receipts.DefectRotationAnchor, "body sha256")
	older := restate(t, real, func(b *receipts.RotationBody) { b.AnchorCheckpointSeq = 2 }, k1, k2)
	rejected(t, s, withRotations(bs[3], older), receipts.DefectRotationAnchor, "follow it")
	// A valid statement to k3 on k2's batch.
	toK3 := restate(t, real, func(b *receipts.RotationBody) { b.NewKey = pubHex(k3) }, k1, k3)
	rejected(t, s, withRotations(bs[3], toK3), receipts.DefectUntrustedKey, "not to the batch's key")

	ingestAll(t, s, bs[3:])
	rep := mustVerify(t, s)
	if rep.Rejected != 8 {
		t.Fatalf("%d batches kept aside, want 8", rep.Rejected)
	}
}

// A new key the store does not trust is refused, whether it signs the
// batch or only passes the log on (k1 -> k3 -> k2, k3 not trusted).
func TestRotationToUntrustedKeyRefused(t *testing.T) {
	k1, k2, k3 := testKey("ut-old"), testKey("ut-new"), testKey("ut-between")
	bs := batchesOf(t, rotatedLog(t, k1, k2))
	s, _ := openStore(t, k1)
	ingestAll(t, s, bs[:3])
	rejected(t, s, bs[3], receipts.DefectUntrustedKey, "not a trusted node key")

	path := makeLog(t, k1, 25, 10, 0)
	l, err := receipts.Open(path, receipts.Options{Key: k3, RotateKey: true, PreviousKey: k1})
	if err != nil {
		t.Fatal(err)
	}
	l.Close()
	rotateLog(t, path, k3, k2, 25, 40, 10)
	via := batchesOf(t, path)
	if len(via[3].Rotations) != 2 {
		t.Fatalf("batch 4 carries %d statements, want 2", len(via[3].Rotations))
	}
	s2, _ := openStore(t, k1, k2)
	ingestAll(t, s2, via[:3])
	rejected(t, s2, via[3], receipts.DefectUntrustedKey, "hands the log to key "+pubHex(k3))
	s3, _ := openStore(t, k1, k2, k3)
	ingestAll(t, s3, via)
	mustVerify(t, s3)
}

// A package of a rotated log carries its statements: the independent
// verifier and Import both follow the chain across the rotation, and the
// store's re-export is the same package. A package whose statement was
// changed, or dropped, is refused by both.
func TestPackageAcrossRotation(t *testing.T) {
	k1, k2 := testKey("pkg-rot-old"), testKey("pkg-rot-new")
	path := makeLog(t, k1, 25, 10, 0)
	before := exportLocal(t, path, k1)
	rotateLog(t, path, k1, k2, 25, 40, 10)
	dir := exportLocal(t, path, k1)
	// A store holding the log up to the rotation continues it from the
	// rotated log's package.
	s0, _ := openStore(t, k1, k2)
	if res, err := s0.Import(context.Background(), before); err != nil || res.Stored != 3 {
		t.Fatalf("import before the rotation: %+v %v", res, err)
	}
	if res, err := s0.Import(context.Background(), dir); err != nil || res.Stored != 2 || res.Duplicate != 3 {
		t.Fatalf("import across the rotation: %+v %v", res, err)
	}
	mustVerify(t, s0)
	if out, err := pythonVerify(t, dir, pubHex(k1)); err != nil || !strings.Contains(out, "40 receipts, 5 checkpoints, 40 proofs") {
		t.Fatalf("python verifier on a rotated log's package: %v\n%s", err, out)
	}
	s, _ := openStore(t, k1, k2)
	res, err := s.Import(context.Background(), dir)
	if err != nil || res.Stored != 5 {
		t.Fatalf("import: %+v %v", res, err)
	}
	mustVerify(t, s)
	id := batchesOf(t, path)[0].LogID
	again := filepath.Join(t.TempDir(), "again")
	src := func(ctx context.Context, fn func(receipts.SealedBatch) error) error { return s.Batches(ctx, id, 0, fn) }
	if _, err := WritePackage(context.Background(), again, id, pubHex(k1), src, k1, time.Unix(1760000000, 0)); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{ReceiptsFile, CheckpointsFile, ProofsFile, RotationsFile, ManifestFile} {
		a, _ := os.ReadFile(filepath.Join(dir, f))
		b, _ := os.ReadFile(filepath.Join(again, f))
		if !bytes.Equal(a, b) {
			t.Fatalf("%s differs between the node's package and the central store's", f)
		}
	}

	// The statement's new key claims one seq earlier, re-signed by both
	// keys and the manifest re-signed: only the anchor check finds it.
	bad := filepath.Join(t.TempDir(), "bad")
	copyDir(t, dir, bad)
	rot, _ := os.ReadFile(filepath.Join(bad, RotationsFile))
	changed := restate(t, bytes.TrimSuffix(rot, []byte("\n")), func(b *receipts.RotationBody) { b.FirstSeq-- }, k1, k2)
	if err := os.WriteFile(filepath.Join(bad, RotationsFile), append(changed, '\n'), 0o644); err != nil {
		t.Fatal(err)
	}
	resign(t, bad, k1)
	if out, err := pythonVerify(t, bad, pubHex(k1)); err == nil || !strings.Contains(out, "rotation") {
		t.Fatalf("python verifier on a changed statement: %v\n%s", err, out)
	}
	if _, _, err := ReadPackage(bad); !errors.Is(err, ErrPackage) && !errors.Is(err, receipts.ErrTampered) {
		t.Fatalf("read package with a changed statement: %v", err)
	}
	// Without its statements the new key's batches have no standing.
	none := filepath.Join(t.TempDir(), "none")
	copyDir(t, dir, none)
	dropRotations(t, none)
	resign(t, none, k1)
	if out, err := pythonVerify(t, none, pubHex(k1)); err == nil {
		t.Fatalf("python verifier on a package without its statement passed:\n%s", out)
	}
	if _, _, err := ReadPackage(none); err == nil {
		t.Fatal("read package without its statement: no error")
	}
}

// dropRotations removes the statements from the package in dir, manifest
// included (re-signed by resign afterwards).
func dropRotations(t *testing.T, dir string) {
	t.Helper()
	if err := os.Remove(filepath.Join(dir, RotationsFile)); err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(filepath.Join(dir, ManifestFile))
	if err != nil {
		t.Fatal(err)
	}
	var sm signedManifest
	if err := json.Unmarshal(raw, &sm); err != nil {
		t.Fatal(err)
	}
	sm.Body.Files = slices.DeleteFunc(sm.Body.Files, func(f PackageFile) bool { return f.Name == RotationsFile })
	sm.Body.Counts.Rotations = 0
	out, _ := jcs.Marshal(&sm)
	if err := os.WriteFile(filepath.Join(dir, ManifestFile), append(out, '\n'), 0o644); err != nil {
		t.Fatal(err)
	}
}
