package receipts

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"sync"
	"testing"

	"github.com/backbay-labs/chio-agent/kernel"
)

func prepared(t testing.TB, l *Log, n int) *kernel.Prepared {
	t.Helper()
	params, _ := json.Marshal(map[string]any{"host": "api.example.com", "port": 443, "conn": n})
	p, err := kernel.Prepare(kernel.Receipt{
		Timestamp:     uint64(fixedNow.Unix()) + uint64(n),
		ToolServer:    "chio-agent",
		ToolName:      "egress",
		Action:        kernel.Action{Parameters: params},
		Decision:      &kernel.Decision{Verdict: kernel.VerdictAllow, Guard: "egress"},
		ReceiptKind:   kernel.KindMediatedDecision,
		BoundaryClass: kernel.BoundaryPrevent,
		TrustLevel:    kernel.TrustMediated,
	}, l.opts.Key.Public().(ed25519.PublicKey))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// Every prepared receipt lands in the log, signed, under the id it had
// before it was signed, in both modes; in async mode Flush waits for the
// signer too.
func TestAppendPrepared(t *testing.T) {
	for _, mode := range []Mode{ModeSync, ModeAsync} {
		t.Run(mode.String(), func(t *testing.T) {
			l, path := openTest(t, Options{Mode: mode})
			ctx := context.Background()
			var ids []string
			for i := range 300 {
				p := prepared(t, l, i)
				seq, err := l.AppendPrepared(ctx, p)
				if err != nil {
					t.Fatal(err)
				}
				if (mode == ModeSync) != (seq != 0) {
					t.Fatalf("%s: AppendPrepared returned seq %d", mode, seq)
				}
				ids = append(ids, p.ID())
			}
			if err := l.Flush(ctx, false); err != nil {
				t.Fatal(err)
			}
			if got := l.LastSeq(); got != 300 {
				t.Fatalf("after Flush: last seq %d, want 300", got)
			}
			for _, id := range ids {
				e, err := l.Lookup(id)
				if err != nil {
					t.Fatalf("lookup %s: %v", id, err)
				}
				if err := VerifyReceipt(e.Receipt); err != nil {
					t.Fatalf("receipt %s: %v", id, err)
				}
			}
			if err := l.Close(); err != nil {
				t.Fatal(err)
			}
			if rep := verifyFile(t, path); rep.Verified != 300 {
				t.Fatalf("verified %d receipts, want 300", rep.Verified)
			}
		})
	}
}

// Close queues and commits what the signer still holds: nothing accepted
// is lost, and reopening finds no loss to report.
func TestAppendPreparedCloseDrains(t *testing.T) {
	l, path := openTest(t, Options{Mode: ModeAsync})
	ctx := context.Background()
	var wg sync.WaitGroup
	const writers, each = 8, 500 // 4,000: more than the signer's queue holds
	errs := make(chan error, writers)
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				if _, err := l.AppendPrepared(ctx, prepared(t, l, w*each+i)); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := l.AppendPrepared(ctx, prepared(t, l, 0)); !errors.Is(err, ErrClosed) {
		t.Fatalf("AppendPrepared after Close: %v, want ErrClosed", err)
	}
	l2, err := Open(path, Options{Key: l.opts.Key})
	if err != nil {
		t.Fatal(err)
	}
	defer l2.Close()
	if rec := l2.Recovery(); rec.LastSeq != writers*each || rec.Lost != 0 {
		t.Fatalf("reopened: %+v, want last seq %d and nothing lost", rec, writers*each)
	}
}

// A receipt prepared for another key is refused at once, in both modes.
func TestAppendPreparedWrongKey(t *testing.T) {
	for _, mode := range []Mode{ModeSync, ModeAsync} {
		l, _ := openTest(t, Options{Mode: mode})
		other, _ := openTest(t, Options{Mode: mode, Key: testKey("other")})
		_, err := l.AppendPrepared(context.Background(), prepared(t, other, 1))
		if !errors.Is(err, ErrKeyMismatch) {
			t.Fatalf("%s: %v, want ErrKeyMismatch", mode, err)
		}
	}
}

// The signer's order is the callers' order: one writer's receipts keep
// their sequence.
func TestAppendPreparedOrder(t *testing.T) {
	l, _ := openTest(t, Options{Mode: ModeAsync})
	ctx := context.Background()
	var ids []string
	for i := range 50 {
		p := prepared(t, l, i)
		if _, err := l.AppendPrepared(ctx, p); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, p.ID())
	}
	if err := l.Flush(ctx, false); err != nil {
		t.Fatal(err)
	}
	for i, id := range ids {
		e, err := l.Get(uint64(i + 1))
		if err != nil {
			t.Fatal(err)
		}
		if e.ID != id {
			t.Fatalf("seq %d holds %s, want %s", i+1, e.ID, id)
		}
	}

}
