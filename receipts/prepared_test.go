package receipts

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

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

// Close queues and commits the receipts still being signed: nothing
// accepted is lost, and reopening finds no loss to report.
func TestAppendPreparedCloseDrains(t *testing.T) {
	l, path := openTest(t, Options{Mode: ModeAsync})
	ctx := context.Background()
	var wg sync.WaitGroup
	const writers, each = 8, 500
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

// A reservation counts its receipt from the start: appended, it lands like
// any other; abandoned, the next Open reports it lost. Close waits for a
// reservation still open.
func TestReservation(t *testing.T) {
	if _, err := openSync(t).Reserve(); err == nil {
		t.Fatal("Reserve on a sync log succeeded")
	}
	l, path := openTest(t, Options{Mode: ModeAsync})
	ctx := context.Background()
	kept, err := l.Reserve()
	if err != nil {
		t.Fatal(err)
	}
	lost, err := l.Reserve()
	if err != nil {
		t.Fatal(err)
	}
	late, err := l.Reserve()
	if err != nil {
		t.Fatal(err)
	}
	p := prepared(t, l, 1)
	if err := kept.AppendPrepared(p); err != nil {
		t.Fatal(err)
	}
	lost.Abandon(errors.New("test: no receipt"))
	go func() {
		time.Sleep(50 * time.Millisecond)
		late.AppendPrepared(prepared(t, l, 2))
	}()
	if err := l.Flush(ctx, false); err != nil { // waits for late
		t.Fatal(err)
	}
	if got := l.LastSeq(); got != 2 {
		t.Fatalf("after Flush: last seq %d, want 2", got)
	}
	if _, err := l.Lookup(p.ID()); err != nil {
		t.Fatal(err)
	}
	l2 := reopen(t, l, path)
	if rec := l2.Recovery(); rec.LastSeq != 2 || rec.Lost != 1 {
		t.Fatalf("reopened: %+v, want last seq 2 and the abandoned receipt lost", rec)
	}
}

// A reservation's receipt prepared for another key is refused and counted
// lost, not stored.
func TestReservationWrongKey(t *testing.T) {
	l, _ := openTest(t, Options{Mode: ModeAsync})
	other, _ := openTest(t, Options{Mode: ModeAsync, Key: testKey("other")})
	res, err := l.Reserve()
	if err != nil {
		t.Fatal(err)
	}
	if err := res.AppendPrepared(prepared(t, other, 1)); !errors.Is(err, ErrKeyMismatch) {
		t.Fatalf("%v, want ErrKeyMismatch", err)
	}
	if err := l.Flush(context.Background(), false); err != nil {
		t.Fatal(err)
	}
	if got := l.LastSeq(); got != 0 {
		t.Fatalf("last seq %d, want nothing stored", got)
	}
}

func openSync(t *testing.T) *Log {
	l, _ := openTest(t, Options{Mode: ModeSync})
	return l
}

// AppendLater's receipts are made and signed by the committer, once each,
// and stored in order; one whose build fails, or that was made for another
// key, is not stored and stays counted as lost; Flush waits for a
// reservation appended later.
func TestReservationAppendLater(t *testing.T) {
	l, path := openTest(t, Options{Mode: ModeAsync})
	other, _ := openTest(t, Options{Mode: ModeAsync, Key: testKey("other")})
	reserve := func() *Reservation {
		t.Helper()
		res, err := l.Reserve()
		if err != nil {
			t.Fatal(err)
		}
		return res
	}
	kept, failed, wrongKey, late := reserve(), reserve(), reserve(), reserve()
	p1 := prepared(t, l, 1)
	var builds atomic.Int32
	kept.AppendLater(func() (*kernel.Prepared, error) {
		builds.Add(1)
		return p1, nil
	})
	failed.AppendLater(func() (*kernel.Prepared, error) { return nil, errors.New("test: no receipt") })
	wrongKey.AppendLater(func() (*kernel.Prepared, error) { return prepared(t, other, 3), nil })
	go func() {
		time.Sleep(50 * time.Millisecond)
		late.AppendLater(func() (*kernel.Prepared, error) { return prepared(t, l, 2), nil })
	}()
	if err := l.Flush(context.Background(), false); err != nil { // waits for late
		t.Fatal(err)
	}
	if got := l.LastSeq(); got != 2 {
		t.Fatalf("after Flush: last seq %d, want 2 (kept and late)", got)
	}
	if n := builds.Load(); n != 1 {
		t.Fatalf("build called %d times, want once", n)
	}
	if _, err := l.Lookup(p1.ID()); err != nil {
		t.Fatal(err)
	}
	l2 := reopen(t, l, path)
	if rec := l2.Recovery(); rec.LastSeq != 2 || rec.Lost != 2 {
		t.Fatalf("reopened: %+v, want last seq 2 and the two receipts not made lost", rec)
	}
	if rep, err := l2.Verify(context.Background(), VerifyOptions{}); err != nil || rep.Verified != 2 {
		t.Fatalf("verify: %+v, %v; want 2 receipts verified", rep, err)
	}
}

// reopen closes l and opens the log at path again with its key; the log
// reopened is closed when t ends.
func reopen(t *testing.T, l *Log, path string) *Log {
	t.Helper()
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	l2, err := Open(path, Options{Key: l.opts.Key})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l2.Close() })
	return l2
}
