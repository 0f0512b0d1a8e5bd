// Package receiptstest fills real receipt logs with synthetic signed
// receipts, for the tests of the packages that ship, collect and store
// them (as net/http/httptest serves the tests of HTTP clients).
package receiptstest

import (
	"context"
	"crypto/ed25519"
	"path/filepath"
	"testing"
	"time"

	"github.com/backbay-labs/chio-agent/receipts"
)

// Open opens the log at path signed by key, in async mode, sealing every
// `every` receipts (and after 50 ms idle). The caller closes it: tests
// that crash and reopen a log need it open past t's helpers.
func Open(t testing.TB, path string, key ed25519.PrivateKey, every int) *receipts.Log {
	t.Helper()
	l, err := receipts.Open(path, receipts.Options{Key: key, Mode: receipts.ModeAsync, CheckpointEvery: every,
		CheckpointIdle: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// Fresh opens a new log in t's temporary directory (Open), closed when t
// ends.
func Fresh(t testing.TB, key ed25519.PrivateKey, every int) *receipts.Log {
	t.Helper()
	l := Open(t, filepath.Join(t.TempDir(), "receipts.db"), key, every)
	t.Cleanup(func() { l.Close() })
	return l
}

// Append appends n synthetic receipts signed by key, numbered from first.
func Append(t testing.TB, l *receipts.Log, key ed25519.PrivateKey, first, n int) {
	t.Helper()
	now := time.Now()
	for i := first; i < first+n; i++ {
		data, err := receipts.SyntheticReceipt(key, i, now)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := l.Append(context.Background(), data); err != nil {
			t.Fatal(err)
		}
	}
}

// Seal makes every appended receipt durable and sealed by a checkpoint.
func Seal(t testing.TB, l *receipts.Log) {
	t.Helper()
	if err := l.Flush(context.Background(), true); err != nil {
		t.Fatal(err)
	}
}
