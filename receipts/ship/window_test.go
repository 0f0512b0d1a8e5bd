package ship

import (
	"context"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/backbay-labs/chio-agent/internal/testutil/natscluster"
	"github.com/backbay-labs/chio-agent/receipts"
)

// TestShipWindowInFlight: with a backlog, the shipper keeps more than one
// batch in flight, never more than its window, and the mark (status, OnAck,
// state file) advances over acknowledged batches in checkpoint order only.
func TestShipWindowInFlight(t *testing.T) {
	c := natscluster.Shared(t)
	l, key := logFor(t, 10)
	appendN(t, l, key, 0, 2000)
	sealAll(t, l)
	o := clusterOptions(c)
	o.Window = 8
	var mu sync.Mutex
	peak, prevAck, outOfOrder := 0, uint64(0), 0
	o.OnPublish = func(_ uint64, inFlight int) {
		mu.Lock()
		peak = max(peak, inFlight)
		mu.Unlock()
	}
	o.OnAck = func(cpSeq, _ uint64) {
		mu.Lock()
		if cpSeq != prevAck+1 {
			outOfOrder++
		}
		prevAck = cpSeq
		mu.Unlock()
	}
	s := startShipper(t, l, o)
	st := waitShipped(t, l, s, time.Minute)
	mu.Lock()
	defer mu.Unlock()
	if peak < 2 || peak > o.Window {
		t.Fatalf("at most %d batches were in flight at once; want 2..%d (a window, not one at a time)", peak, o.Window)
	}
	if outOfOrder != 0 || prevAck != 200 {
		t.Fatalf("the mark advanced out of checkpoint order %d times, last %d of 200", outOfOrder, prevAck)
	}
	if st.InFlight != 0 || st.Window != 8 || st.Batches != 200 {
		t.Fatalf("status after shipping: %+v", st)
	}
	if n := checkStream(t, c, o.Stream, l); n != 2000 {
		t.Fatalf("stream holds %d receipts, want 2000", n)
	}
	t.Logf("peak in flight %d of window %d", peak, o.Window)
}

// TestShipResumeOverHole: a stream holding batches past one it lacks (a
// publish failed in a window whose later publishes landed, then the
// shipper died) is resumed from the hole: the missing batch is published,
// those the stream holds are not published again, whether the state file
// is lost or records the mark before the hole.
func TestShipResumeOverHole(t *testing.T) {
	c := natscluster.Shared(t)
	for _, tc := range []struct {
		name  string
		state bool // keep the state file at checkpoint 2
	}{{"lost state", false}, {"state before the hole", true}} {
		t.Run(tc.name, func(t *testing.T) {
			l, key := logFor(t, 10)
			appendN(t, l, key, 0, 50)
			sealAll(t, l)
			o := clusterOptions(c)
			// The stream gets checkpoints 1, 2, 4, 5: 3 was lost in flight.
			markSeq := publishHole(t, l, o, 3)
			ctx := context.Background()
			os.Remove(l.Path() + ".shipped")
			if tc.state {
				logID, _ := l.LogID()
				if err := writeState(l.Path()+".shipped", logID, "", 2, markSeq); err != nil {
					t.Fatal(err)
				}
			}
			appendN(t, l, key, 50, 20)
			sealAll(t, l)

			published := map[uint64]int{}
			o.OnPublish = func(cpSeq uint64, _ int) { published[cpSeq]++ }
			s, err := New(l, o)
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			if err := s.Drain(ctx); err != nil {
				t.Fatal(err)
			}
			if len(published) != 3 || published[3] != 1 || published[6] != 1 || published[7] != 1 {
				t.Fatalf("the resumed shipper published checkpoints %v; want 3, 6 and 7 once each", published)
			}
			if st := s.Status(); st.AckedCheckpoint != 7 || st.AckedSeq != 70 || st.LagReceipts != 0 {
				t.Fatalf("status: %+v", st)
			}
			if n := checkStreamAnyOrder(t, c, o.Stream, l); n != 70 {
				t.Fatalf("stream holds %d receipts, want 70", n)
			}
			if got := readStateFile(t, l.Path()+".shipped"); got != 7 {
				t.Fatalf("state file records checkpoint %d, want 7", got)
			}
		})
	}
}

// publishHole publishes l's sealed batches into o's stream (creating it)
// but checkpoint hole, as a window whose publish of hole failed while later
// ones landed leaves it; it returns the stream seq of checkpoint hole-1.
func publishHole(t testing.TB, l *receipts.Log, o Options, hole uint64) (markSeq uint64) {
	t.Helper()
	s, err := New(l, o)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	if err := s.ensureStream(ctx); err != nil {
		t.Fatal(err)
	}
	err = l.SealedBatches(ctx, 0, func(b receipts.SealedBatch) error {
		cp, _ := receipts.ParseCheckpoint(b.Checkpoint)
		if cp.Body.CheckpointSeq == hole {
			return nil
		}
		f, err := s.publish(context.Background(), b, nil)
		if err == nil && f.wait(ctx, true) {
			err = f.err
		}
		if err == nil && cp.Body.CheckpointSeq == hole-1 {
			markSeq = f.streamSeq
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return markSeq
}
