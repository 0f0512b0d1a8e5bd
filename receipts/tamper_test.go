package receipts

import (
	"bytes"
	"context"
	"errors"
	"path/filepath"
	"strings"
	"testing"

	bolt "go.etcd.io/bbolt"
)

// buildLog writes n receipts with checkpoints every 10 and closes the log;
// with seal false the tail stays unsealed (the log is closed by reopening
// the file raw, not by Close).
func buildLog(t *testing.T, n int) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "t.db")
	key := testKey("tamper")
	l, err := Open(path, Options{Key: key, CheckpointEvery: 10})
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < n; i++ {
		if _, err := l.Append(context.Background(), receipt(t, key, i)); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	verifyFile(t, path)
	return path
}

func rawUpdate(t *testing.T, path string, fn func(tx *bolt.Tx) error) {
	t.Helper()
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if err := db.Update(fn); err != nil {
		t.Fatal(err)
	}
}

// flipHexAfter changes the first hex digit after marker to another hex
// digit, keeping the JSON valid and canonical.
func flipHexAfter(t *testing.T, data []byte, marker string) []byte {
	t.Helper()
	out := bytes.Clone(data)
	i := bytes.Index(out, []byte(marker))
	if i < 0 {
		t.Fatalf("marker %q not found", marker)
	}
	j := i + len(marker) + 5
	if out[j] == 'a' {
		out[j] = 'b'
	} else {
		out[j] = 'a'
	}
	return out
}

func wantDefect(t *testing.T, path string, seq, cp uint64, words string) {
	t.Helper()
	ro, err := Open(path, Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer ro.Close()
	_, err = ro.Verify(context.Background(), VerifyOptions{})
	var de *DefectError
	if !errors.As(err, &de) {
		t.Fatalf("verify: want a defect, got %v", err)
	}
	if de.Seq != seq || (cp != 0 && de.Checkpoint != cp) || !strings.Contains(err.Error(), words) {
		t.Fatalf("verify: want seq %d checkpoint %d (%q), got %v", seq, cp, words, err)
	}
	t.Logf("verify: %v", err)
}

func TestTamperReceiptByte(t *testing.T) {
	path := buildLog(t, 30)
	rawUpdate(t, path, func(tx *bolt.Tx) error {
		b := tx.Bucket(bktReceipts)
		return b.Put(u64key(15), flipHexAfter(t, b.Get(u64key(15)), `"signature":`))
	})
	wantDefect(t, path, 15, 2, "signature")
}

func TestTamperReceiptContent(t *testing.T) {
	path := buildLog(t, 30)
	rawUpdate(t, path, func(tx *bolt.Tx) error {
		b := tx.Bucket(bktReceipts)
		return b.Put(u64key(5), bytes.Replace(b.Get(u64key(5)), []byte(`"deny"`), []byte(`"allw"`), 1))
	})
	// Receipt 4 of SyntheticReceipt is a deny (evil.example); rewriting the
	// verdict must break its id.
	wantDefect(t, path, 5, 1, "")
}

func TestTamperCheckpointByte(t *testing.T) {
	path := buildLog(t, 30)
	rawUpdate(t, path, func(tx *bolt.Tx) error {
		b := tx.Bucket(bktCheckpoints)
		return b.Put(u64key(2), flipHexAfter(t, b.Get(u64key(2)), `"merkle_root":`))
	})
	wantDefect(t, path, 11, 2, "merkle_root")
}

func TestTamperCheckpointSignature(t *testing.T) {
	path := buildLog(t, 30)
	rawUpdate(t, path, func(tx *bolt.Tx) error {
		b := tx.Bucket(bktCheckpoints)
		return b.Put(u64key(3), flipHexAfter(t, b.Get(u64key(3)), `"signature":`))
	})
	wantDefect(t, path, 0, 3, "signature")
}

func TestTamperDeleteReceipt(t *testing.T) {
	path := buildLog(t, 30)
	rawUpdate(t, path, func(tx *bolt.Tx) error { return tx.Bucket(bktReceipts).Delete(u64key(17)) })
	wantDefect(t, path, 17, 2, "missing")
}

func TestTamperDeleteUnsealedTail(t *testing.T) {
	// Receipts after the last checkpoint have no Merkle root yet; the
	// header's last_seq still catches their removal.
	path := filepath.Join(t.TempDir(), "tail.db")
	key := testKey("tamper")
	l, err := Open(path, Options{Key: key, CheckpointEvery: 10})
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 14; i++ {
		if _, err := l.Append(context.Background(), receipt(t, key, i)); err != nil {
			t.Fatal(err)
		}
	}
	l.crashOnClose = true
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	rawUpdate(t, path, func(tx *bolt.Tx) error { return tx.Bucket(bktReceipts).Delete(u64key(14)) })
	wantDefect(t, path, 14, 0, "missing")
	if _, err := Open(path, Options{Key: key}); !errors.Is(err, ErrTampered) {
		t.Fatalf("writable open of a log missing its tail: %v", err)
	}
}

func TestTamperSwapReceipts(t *testing.T) {
	path := buildLog(t, 30)
	rawUpdate(t, path, func(tx *bolt.Tx) error {
		b := tx.Bucket(bktReceipts)
		a, c := bytes.Clone(b.Get(u64key(21))), bytes.Clone(b.Get(u64key(22)))
		if err := b.Put(u64key(21), c); err != nil {
			return err
		}
		return b.Put(u64key(22), a)
	})
	wantDefect(t, path, 21, 3, "")
}
