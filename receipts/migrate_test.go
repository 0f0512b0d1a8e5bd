package receipts

import (
	"compress/gzip"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// v1Fixture copies testdata/receipts-v1.db.gz (a log written by format 1's
// code: see testdata/README.md) to a temporary file.
func v1Fixture(t *testing.T) string {
	t.Helper()
	f, err := os.Open("testdata/receipts-v1.db.gz")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "receipts.db")
	out, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, zr); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
	return path
}

// fileFormat reads the header's format and whether the format-1 id index
// is still there, with bbolt directly.
func fileFormat(t *testing.T, path string) (string, bool) {
	t.Helper()
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var format string
	var hasIDs bool
	if err := db.View(func(tx *bolt.Tx) error {
		format = string(tx.Bucket(bktMeta).Get(metaFormat))
		hasIDs = tx.Bucket(bktIDs) != nil
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return format, hasIDs
}

// A log written by format 1's code (id index keyed by id) is read as it
// is by a read-only open, and migrated once by the first writable open:
// every receipt keeps its seq, its id lookup, its proof, and the chain
// continues across the migration; later opens do not migrate again.
func TestMigrateV1Log(t *testing.T) {
	ctx := context.Background()
	path := v1Fixture(t)
	if f, has := fileFormat(t, path); f != formatV1 || !has {
		t.Fatalf("fixture format %q, ids bucket %v", f, has)
	}
	key := testKey("v1-fixture")

	// Read-only: no migration, every read works on the old layout.
	ro, err := Open(path, Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	rep, err := ro.Verify(ctx, VerifyOptions{})
	if err != nil || rep.Verified != 120 {
		t.Fatalf("verify format 1: %+v %v", rep, err)
	}
	ids := make([]string, 121)
	for seq := uint64(1); seq <= 120; seq++ {
		e, err := ro.Get(seq)
		if err != nil {
			t.Fatal(err)
		}
		ids[seq] = e.ID
		if got, err := ro.Lookup(e.ID); err != nil || got.Seq != seq {
			t.Fatalf("format 1 lookup of seq %d: %+v %v", seq, got, err)
		}
	}
	ro.Close()
	if f, _ := fileFormat(t, path); f != formatV1 {
		t.Fatalf("a read-only open changed the format to %q", f)
	}

	l, err := Open(path, Options{Key: key, CheckpointEvery: 50})
	if err != nil {
		t.Fatal(err)
	}
	if rec := l.Recovery(); rec.LastSeq != 120 || rec.Unsealed != 20 {
		t.Fatalf("recovery after migration: %+v", rec)
	}
	for seq := uint64(1); seq <= 120; seq++ {
		if got, err := l.Lookup(ids[seq]); err != nil || got.Seq != seq {
			t.Fatalf("migrated lookup of seq %d: %+v %v", seq, got, err)
		}
	}
	// The old receipts are still ids the log refuses to store twice.
	if _, err := l.Append(ctx, receipt(t, key, 7)); !errors.Is(err, ErrInvalidReceipt) {
		t.Fatalf("append of a migrated receipt again: %v", err)
	}
	for n := 120; n < 160; n++ {
		if _, err := l.Append(ctx, receipt(t, key, n)); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if f, has := fileFormat(t, path); f != FormatVersion || has {
		t.Fatalf("after migration: format %q, ids bucket %v", f, has)
	}
	rep = verifyFile(t, path)
	if rep.Verified != 160 || rep.Checkpoints != 4 {
		t.Fatalf("after migration: %+v", rep)
	}

	ro, err = Open(path, Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer ro.Close()
	for _, seq := range []uint64{1, 50, 51, 100, 101, 120, 121, 160} {
		e, err := ro.Get(seq)
		if err != nil {
			t.Fatal(err)
		}
		if seq <= 120 && e.ID != ids[seq] {
			t.Fatalf("seq %d changed id", seq)
		}
		if got, err := ro.Lookup(e.ID); err != nil || got.Seq != seq {
			t.Fatalf("lookup of seq %d: %+v %v", seq, got, err)
		}
		p, err := ro.Prove(seq)
		if err != nil {
			t.Fatal(err)
		}
		if err := p.Check(l.KernelKey(), VerifyReceipt); err != nil {
			t.Fatalf("proof of seq %d: %v", seq, err)
		}
	}
	if _, err := ro.Lookup(strings.Repeat("0", 64)); !errors.Is(err, ErrNotFound) {
		t.Fatalf("lookup of an unknown id: %v", err)
	}
}

// Migration reads the ids from the receipts and refuses an old index that
// disagrees with them, leaving the file as it was.
func TestMigrateV1RefusesWrongIndex(t *testing.T) {
	path := v1Fixture(t)
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Update(func(tx *bolt.Tx) error {
		ids := tx.Bucket(bktIDs)
		k, _ := ids.Cursor().First()
		return ids.Put(k, u64key(99)) // some receipt's id now names seq 99
	}); err != nil {
		t.Fatal(err)
	}
	db.Close()
	_, err = Open(path, Options{Key: testKey("v1-fixture"), CheckpointEvery: 50})
	if !errors.Is(err, ErrCorrupt) {
		t.Fatalf("open with a wrong format-1 index: %v", err)
	}
	if f, has := fileFormat(t, path); f != formatV1 || !has {
		t.Fatalf("a refused migration changed the file: format %q, ids %v", f, has)
	}
}
