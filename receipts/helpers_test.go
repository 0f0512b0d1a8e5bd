package receipts

import (
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"errors"
	"path/filepath"
	"testing"
	"time"
)

// testKey derives a fixed key from name so tests are repeatable.
func testKey(name string) ed25519.PrivateKey {
	seed := sha256.Sum256([]byte("receipts-test:" + name))
	return ed25519.NewKeyFromSeed(seed[:])
}

var fixedNow = time.Unix(1760000000, 0)

func receipt(t testing.TB, key ed25519.PrivateKey, n int) []byte {
	t.Helper()
	b, err := SyntheticReceipt(key, n, fixedNow.Add(time.Duration(n)*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// openTest opens a fresh log in t.TempDir and, in t.Cleanup, closes it (if
// the test did not) and re-verifies the whole file read-only.
func openTest(t testing.TB, o Options) (*Log, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "receipts.db")
	if o.Key == nil {
		o.Key = testKey("default")
	}
	l, err := Open(path, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := l.Close(); err != nil && !errors.Is(err, ErrClosed) {
			t.Errorf("close: %v", err)
		}
		verifyFile(t, path)
	})
	return l, path
}

func verifyFile(t testing.TB, path string) *Report {
	t.Helper()
	ro, err := Open(path, Options{ReadOnly: true})
	if err != nil {
		t.Fatalf("reopen read-only: %v", err)
	}
	defer ro.Close()
	rep, err := ro.Verify(context.Background(), VerifyOptions{})
	if err != nil {
		t.Fatalf("verify %s: %v", path, err)
	}
	return rep
}
