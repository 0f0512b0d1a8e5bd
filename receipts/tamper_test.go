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

// buildLog writes n receipts with checkpoints every 10, closes the log and
// verifies it.
func buildLog(t *testing.T, n int) string {
	t.Helper()
	path := writeLog(t, n, true)
	verifyFile(t, path)
	return path
}

// writeLog writes n receipts, signed with testKey("tamper"), with
// checkpoints every 10 and closes the log; with seal false the receipts
// after the last checkpoint stay unsealed, as a crash leaves them.
func writeLog(t *testing.T, n int, seal bool) string {
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
	l.crashOnClose = !seal
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
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

// TestTamper changes a sealed log of 30 receipts (checkpoints every 10) as
// an attacker with the file would, and wants verify to name the first
// receipt (and checkpoint) at fault.
func TestTamper(t *testing.T) {
	// put rewrites key of bucket with what edit makes of its value.
	put := func(bucket []byte, key uint64, edit func(t *testing.T, v []byte) []byte) func(*testing.T, *bolt.Tx) error {
		return func(t *testing.T, tx *bolt.Tx) error {
			b := tx.Bucket(bucket)
			return b.Put(u64key(key), edit(t, b.Get(u64key(key))))
		}
	}
	flip := func(marker string) func(*testing.T, []byte) []byte {
		return func(t *testing.T, v []byte) []byte { return flipHexAfter(t, v, marker) }
	}
	for _, c := range []struct {
		name    string
		tamper  func(*testing.T, *bolt.Tx) error
		seq, cp uint64
		words   string
	}{
		{"receipt byte", put(bktReceipts, 15, flip(`"signature":`)), 15, 2, "signature"},
		// Receipt 4 of SyntheticReceipt is a deny (evil.example); rewriting
		// the verdict must break its id.
		{"receipt content", put(bktReceipts, 5, func(_ *testing.T, v []byte) []byte {
			return bytes.Replace(v, []byte(`"deny"`), []byte(`"allw"`), 1)
		}), 5, 1, ""},
		{"checkpoint byte", put(bktCheckpoints, 2, flip(`"merkle_root":`)), 11, 2, "merkle_root"},
		{"checkpoint signature", put(bktCheckpoints, 3, flip(`"signature":`)), 0, 3, "signature"},
		{"delete receipt", func(_ *testing.T, tx *bolt.Tx) error { return tx.Bucket(bktReceipts).Delete(u64key(17)) }, 17, 2, "missing"},
		{"swap receipts", func(_ *testing.T, tx *bolt.Tx) error {
			b := tx.Bucket(bktReceipts)
			a, c := bytes.Clone(b.Get(u64key(21))), bytes.Clone(b.Get(u64key(22)))
			if err := b.Put(u64key(21), c); err != nil {
				return err
			}
			return b.Put(u64key(22), a)
		}, 21, 3, ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			path := buildLog(t, 30)
			rawUpdate(t, path, func(tx *bolt.Tx) error { return c.tamper(t, tx) })
			wantDefect(t, path, c.seq, c.cp, c.words)
		})
	}
}

func TestTamperDeleteUnsealedTail(t *testing.T) {
	// Receipts after the last checkpoint have no Merkle root yet; the
	// header's last_seq still catches their removal.
	path := writeLog(t, 14, false)
	rawUpdate(t, path, func(tx *bolt.Tx) error { return tx.Bucket(bktReceipts).Delete(u64key(14)) })
	wantDefect(t, path, 14, 0, "missing")
	if _, err := Open(path, Options{Key: testKey("tamper")}); !errors.Is(err, ErrTampered) {
		t.Fatalf("writable open of a log missing its tail: %v", err)
	}
}
