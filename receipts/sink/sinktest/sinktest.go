// Package sinktest checks any sink.Store the same way, for the tests of
// each store (dynamodb://, and the object storage segment sinks): a real
// receipt log's sealed batches put, put again, read back byte for byte, and
// verified both by this module's batch verifier and by the independent
// Python verifier (scripts/verify_export.py).
package sinktest

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/backbay-labs/chio-agent/internal/testutil"
	"github.com/backbay-labs/chio-agent/kernel/jcs"
	"github.com/backbay-labs/chio-agent/receipts"
	"github.com/backbay-labs/chio-agent/receipts/receiptstest"
	"github.com/backbay-labs/chio-agent/receipts/sink"
)

// NewLog opens a fresh receipt log for t, signed by a key of its own (its
// own log id), sealing every `every` receipts and never on idleness (so a
// slow test's batches are still whole); closed when t ends. Fill it with
// receiptstest.Append and Seal.
func NewLog(t testing.TB, every int) (*receipts.Log, ed25519.PrivateKey) {
	t.Helper()
	return openLog(t, t.Name(), every)
}

func openLog(t testing.TB, name string, every int) (*receipts.Log, ed25519.PrivateKey) {
	t.Helper()
	key := testutil.Key(name)
	l, err := receipts.Open(filepath.Join(t.TempDir(), "receipts.db"), receipts.Options{Key: key,
		Mode: receipts.ModeAsync, CheckpointEvery: every, CheckpointIdle: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l, key
}

// Sealed is every sealed batch of l, in checkpoint order.
func Sealed(t testing.TB, l *receipts.Log) []receipts.SealedBatch {
	t.Helper()
	var bs []receipts.SealedBatch
	if err := l.SealedBatches(context.Background(), 0, func(b receipts.SealedBatch) error {
		bs = append(bs, b)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return bs
}

// ReadAll is every batch st holds of logID, in the order Batches gives.
func ReadAll(t testing.TB, st sink.Store, logID string) []receipts.SealedBatch {
	t.Helper()
	return ReadAfter(t, st, logID, 0)
}

// ReadAfter is every batch st holds of logID past checkpoint after, in the
// order Batches gives.
func ReadAfter(t testing.TB, st sink.Store, logID string, after uint64) []receipts.SealedBatch {
	t.Helper()
	var bs []receipts.SealedBatch
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := st.Batches(ctx, logID, after, func(b receipts.SealedBatch) error {
		bs = append(bs, b)
		return nil
	}); err != nil {
		t.Fatalf("read back %s: %v", st, err)
	}
	return bs
}

// Same says whether two batches are byte for byte the same.
func Same(a, b receipts.SealedBatch) bool {
	eq := func(x, y []json.RawMessage) bool {
		return slices.EqualFunc(x, y, func(p, q json.RawMessage) bool { return bytes.Equal(p, q) })
	}
	return a.LogID == b.LogID && a.KernelKey == b.KernelKey && bytes.Equal(a.Checkpoint, b.Checkpoint) &&
		eq(a.Receipts, b.Receipts) && eq(a.Rotations, b.Rotations)
}

// PutAll puts bs, the sealed batches of one log from its first
// checkpoint, in order.
func PutAll(t testing.TB, ctx context.Context, st sink.Store, bs []receipts.SealedBatch) {
	t.Helper()
	for i, b := range bs {
		if err := st.Put(ctx, b, uint64(i+1)); err != nil {
			t.Fatalf("put checkpoint %d to %s: %v", i+1, st, err)
		}
	}
}

// CheckSame checks that got, batches read back from st, are want byte for
// byte: as many (0 lost, 0 duplicated), in the same order.
func CheckSame(t testing.TB, st sink.Store, got, want []receipts.SealedBatch) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: read back %d batches, want %d (0 lost, 0 duplicated)", st, len(got), len(want))
	}
	for i := range want {
		if !Same(got[i], want[i]) {
			t.Fatalf("%s: batch %d read back differs from the log's", st, i+1)
		}
	}
}

// CheckHolds checks that st holds exactly l's sealed batches (0 lost, 0
// duplicated, byte for byte, in checkpoint order), that they verify as one
// chain with the module's batch verifier (what `receipts verify` and a
// central store run), and that the independent Python verifier agrees on
// them. It returns the receipts they seal.
func CheckHolds(t testing.TB, st sink.Store, l *receipts.Log) int {
	t.Helper()
	logID, err := l.LogID()
	if err != nil {
		t.Fatal(err)
	}
	want := Sealed(t, l)
	got := ReadAll(t, st, logID)
	CheckSame(t, st, got, want)
	n := Verify(t, got)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	seqs, err := st.Stored(ctx, logID, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(seqs) != len(want) || (len(seqs) > 0 && seqs[len(seqs)-1] != uint64(len(want))) {
		t.Fatalf("%s: Stored says %v, want checkpoints 1..%d", st, seqs, len(want))
	}
	return n
}

// Verify checks bs as one log's chain from its first checkpoint with
// receipts.VerifyBatch, then with scripts/verify_export.py on the JSON
// Lines export of the same batches; it returns the receipts sealed.
func Verify(t testing.TB, bs []receipts.SealedBatch) int {
	t.Helper()
	var head receipts.ChainHead
	for i := range bs {
		var err error
		if _, head, err = receipts.VerifyBatch(head, &bs[i], nil); err != nil {
			t.Fatalf("verify batch %d read back: %v", i+1, err)
		}
	}
	if len(bs) == 0 {
		return 0
	}
	py := testutil.PythonCrypto(t)
	root, err := testutil.ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "sink.jsonl")
	if err := os.WriteFile(p, ExportLines(t, bs), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(py, filepath.Join(root, "scripts", "verify_export.py"), "--key", bs[0].KernelKey, p).CombinedOutput()
	want := fmt.Sprintf("ok: %d receipts, %d checkpoints", head.LastSeq, head.CheckpointSeq)
	if err != nil || !strings.Contains(string(out), want) {
		t.Fatalf("python verifier on the batches read back: %v\n%s(want %q)", err, out, want)
	}
	return int(head.LastSeq)
}

// ExportLines writes batches as `chio-agent receipts export` writes a log
// (JSON Lines: each rotation statement, receipt and checkpoint, canonical).
func ExportLines(t testing.TB, bs []receipts.SealedBatch) []byte {
	t.Helper()
	var out []byte
	line := func(v any) {
		b, err := jcs.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		out = append(append(out, b...), '\n')
	}
	for _, b := range bs {
		cp, err := receipts.ParseCheckpoint(b.Checkpoint)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range b.Rotations {
			line(map[string]any{"kind": "rotation", "rotation": r})
		}
		for i, r := range b.Receipts {
			line(map[string]any{"kind": "receipt", "seq": cp.Body.BatchStartSeq + uint64(i), "receipt": r})
		}
		line(map[string]any{"kind": "checkpoint", "checkpoint": b.Checkpoint})
	}
	return out
}

// Contract runs the Store contract against stores open makes (each call a
// fresh, empty store for t): put, Stored, Logs, Batches byte for byte,
// idempotent re-puts (concurrent ones too) leaving the store as it was, a
// different batch under a held checkpoint refused, and two logs apart.
func Contract(t *testing.T, open func(t *testing.T) sink.Store) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	t.Run("RoundTrip", func(t *testing.T) {
		st := open(t)
		l, key := NewLog(t, 10)
		receiptstest.Append(t, l, key, 0, 95)
		receiptstest.Seal(t, l) // 10 batches, the last of 5
		bs := Sealed(t, l)
		logID, _ := l.LogID()
		if got, err := st.Stored(ctx, logID, 0); err != nil || len(got) != 0 {
			t.Fatalf("empty store: Stored %v, %v", got, err)
		}
		// Out of order, as a window of puts lands: 2, 4, 5, ... then 1, 3.
		order := []int{1, 3, 4, 5, 6, 7, 8, 9, 0, 2}
		for _, i := range order[:8] {
			if err := st.Put(ctx, bs[i], uint64(i+1)); err != nil {
				t.Fatal(err)
			}
		}
		got, err := st.Stored(ctx, logID, 0)
		if err != nil || !slices.Equal(got, []uint64{2, 4, 5, 6, 7, 8, 9, 10}) {
			t.Fatalf("Stored after puts of 2 and 4..10: %v, %v", got, err)
		}
		if got, _ := st.Stored(ctx, logID, 5); !slices.Equal(got, []uint64{6, 7, 8, 9, 10}) {
			t.Fatalf("Stored past 5: %v", got)
		}
		for _, i := range order[8:] {
			if err := st.Put(ctx, bs[i], uint64(i+1)); err != nil {
				t.Fatal(err)
			}
		}
		if n := CheckHolds(t, st, l); n != 95 {
			t.Fatalf("read back %d receipts, want 95", n)
		}
		if ids, err := st.Logs(ctx); err != nil || !slices.Equal(ids, []string{logID}) {
			t.Fatalf("Logs: %v, %v; want [%s]", ids, err, logID)
		}
		var past []receipts.SealedBatch
		if err := st.Batches(ctx, logID, 7, func(b receipts.SealedBatch) error { past = append(past, b); return nil }); err != nil || len(past) != 3 || !Same(past[0], bs[7]) {
			t.Fatalf("Batches past 7: %d batches, %v", len(past), err)
		}
	})
	t.Run("IdempotentPut", func(t *testing.T) {
		st := open(t)
		l, key := NewLog(t, 10)
		receiptstest.Append(t, l, key, 0, 40)
		receiptstest.Seal(t, l)
		bs := Sealed(t, l)
		// Each batch put by three writers at once (a retry racing the
		// put whose answer was lost), then once more.
		errs := make(chan error, 3*len(bs))
		for range 3 {
			for i, b := range bs {
				go func() { errs <- st.Put(ctx, b, uint64(i+1)) }()
			}
		}
		for range 3 * len(bs) {
			if err := <-errs; err != nil {
				t.Fatalf("concurrent put: %v", err)
			}
		}
		for i, b := range bs {
			if err := st.Put(ctx, b, uint64(i+1)); err != nil {
				t.Fatalf("re-put of a held batch: %v", err)
			}
		}
		CheckHolds(t, st, l)
		// A different batch under a held checkpoint seq (another log
		// under the same id, or a fork) is refused; the held one stays.
		forged := bs[1]
		forged.Checkpoint = bs[2].Checkpoint
		if err := st.Put(ctx, forged, 2); err == nil {
			t.Fatal("a batch of other content under held checkpoint 2 was accepted")
		}
		other := NewLogNamed(t, "other", 10)
		if err := st.Put(ctx, Sealed(t, other)[0], 1); err != nil {
			t.Fatal(err)
		}
		CheckHolds(t, st, l)
		CheckHolds(t, st, other)
		if ids, _ := st.Logs(ctx); len(ids) != 2 {
			t.Fatalf("Logs %v, want 2", ids)
		}
	})
}

// NewLogNamed is a second log of t (its key from name), one batch of
// every receipts sealed.
func NewLogNamed(t testing.TB, name string, every int) *receipts.Log {
	t.Helper()
	l, key := openLog(t, t.Name()+"/"+name, every)
	receiptstest.Append(t, l, key, 0, every)
	receiptstest.Seal(t, l)
	return l
}
