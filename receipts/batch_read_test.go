package receipts

import (
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"testing"
	"time"
)

// TestSealedBatchesInOrder: every sealed batch after a checkpoint, in
// order, each with its receipts as stored and its checkpoint, across the
// read chunks (more checkpoints and more receipts than one chunk holds);
// unsealed receipts are not read; fn's error stops the walk.
func TestSealedBatchesInOrder(t *testing.T) {
	for _, every := range []int{10, 1500} {
		key := testKey("sealed")
		// The last 3 receipts must stay unsealed however slowly the test
		// runs: no idle or delay seal within it.
		l, _ := openTest(t, Options{Key: key, CheckpointEvery: every, Mode: ModeAsync, CheckpointIdle: time.Hour, CheckpointMaxDelay: time.Hour})
		ctx := context.Background()
		n := 60 * 10
		if every > 100 {
			n = 5 * every
		}
		for i := 0; i < n+3; i++ {
			if _, err := l.Append(ctx, receipt(t, key, i)); err != nil {
				t.Fatal(err)
			}
		}
		if err := l.Flush(ctx, false); err != nil {
			t.Fatal(err)
		}
		sum := sha256.Sum256(key.Public().(ed25519.PublicKey))
		wantID := "local-log-" + hex.EncodeToString(sum[:])
		if id, err := l.LogID(); err != nil || id != wantID {
			t.Fatalf("log id %q %v, want %q", id, err, wantID)
		}
		var seen []uint64
		next := uint64(1)
		err := l.SealedBatches(ctx, 0, func(b SealedBatch) error {
			var cp Checkpoint
			if err := json.Unmarshal(b.Checkpoint, &cp); err != nil {
				return err
			}
			if b.LogID != wantID || b.KernelKey != l.KernelKey() || cp.Body.BatchStartSeq != next || uint64(len(b.Receipts)) != cp.Body.TreeSize {
				t.Fatalf("batch %+v checkpoint %+v", b.LogID, cp.Body)
			}
			for i, r := range b.Receipts {
				e, err := l.Get(next + uint64(i))
				if err != nil || string(e.Receipt) != string(r) {
					t.Fatalf("receipt %d differs from the log's: %v", next+uint64(i), err)
				}
			}
			next = cp.Body.BatchEndSeq + 1
			seen = append(seen, cp.Body.CheckpointSeq)
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		if want := n / every; len(seen) != want || seen[len(seen)-1] != uint64(want) || next != uint64(n)+1 {
			t.Fatalf("every %d: read checkpoints %v up to seq %d; want 1..%d up to %d (3 unsealed)", every, seen, next-1, want, n)
		}
		var after []uint64
		l.SealedBatches(ctx, uint64(len(seen)-2), func(b SealedBatch) error {
			var cp Checkpoint
			json.Unmarshal(b.Checkpoint, &cp)
			after = append(after, cp.Body.CheckpointSeq)
			return nil
		})
		if len(after) != 2 || after[0] != uint64(len(seen)-1) {
			t.Fatalf("after checkpoint %d: read %v", len(seen)-2, after)
		}
		stop := errors.New("stop")
		calls := 0
		if err := l.SealedBatches(ctx, 0, func(SealedBatch) error { calls++; return stop }); !errors.Is(err, stop) || calls != 1 {
			t.Fatalf("fn's error: %v after %d calls", err, calls)
		}
	}
}
