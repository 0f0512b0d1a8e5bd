package receipts

import (
	"context"
	"testing"
	"time"
)

// The async committer sleeps through its linger instead of receiving each
// receipt, so what must not wait for it has to end it: a Flush, and Close.
// With a linger of an hour, both still return once the queue is committed.
func TestAsyncLingerEndsForFlushAndClose(t *testing.T) {
	key := testKey("linger")
	l, _ := openTest(t, Options{Key: key, Mode: ModeAsync, AsyncLinger: time.Hour})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for i := range 3 {
		if _, err := l.Append(ctx, receipt(t, key, i)); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.Flush(ctx, false); err != nil {
		t.Fatalf("flush while the committer lingers: %v", err)
	}
	if got := l.durable.Load(); got != 3 {
		t.Fatalf("durable through seq %d after flush, want 3", got)
	}
	for i := 3; i < 5; i++ {
		if _, err := l.Append(ctx, receipt(t, key, i)); err != nil {
			t.Fatal(err)
		}
	}
	closed := make(chan error, 1)
	go func() { closed <- l.Close() }()
	select {
	case err := <-closed:
		if err != nil {
			t.Fatal(err)
		}
	case <-ctx.Done():
		t.Fatal("close while the committer lingers did not return")
	}
	ro, err := Open(l.path, Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer ro.Close()
	st, err := ro.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if st.Receipts != 5 || st.Unsealed != 0 {
		t.Fatalf("after close: %d receipts, %d unsealed; want 5 and 0", st.Receipts, st.Unsealed)
	}
}
