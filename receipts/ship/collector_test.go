package ship_test

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/backbay-labs/chio-agent/internal/testutil/natscluster"
	"github.com/backbay-labs/chio-agent/receipts"
	"github.com/backbay-labs/chio-agent/receipts/central"
	"github.com/backbay-labs/chio-agent/receipts/collect"
	"github.com/backbay-labs/chio-agent/receipts/ship"
)

// collectorFor runs a real collector (receipts/collect) reading o's stream
// into a fresh central store trusting key, until t ends.
func collectorFor(t testing.TB, c *natscluster.Cluster, o ship.Options, kernelKey string) (*collect.Collector, *central.Store) {
	t.Helper()
	store, err := central.Open(filepath.Join(t.TempDir(), "central.db"), central.Options{TrustedKeys: []string{kernelKey}})
	if err != nil {
		t.Fatal(err)
	}
	col, err := collect.New(store, collect.Options{Servers: strings.Split(c.URLs(), ","), Credentials: o.Credentials,
		Lookup: o.Lookup, Stream: o.Stream, Subject: o.SubjectPrefix + ".>", Durable: "collector",
		AckWait: 2 * time.Second, GapDelay: 50 * time.Millisecond, GapWait: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { col.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done; col.Close(); store.Close() })
	return col, store
}

// waitStored waits until store holds every checkpoint l has sealed.
func waitStored(t testing.TB, store *central.Store, l *receipts.Log, within time.Duration) {
	t.Helper()
	id, _ := l.LogID()
	last, _, err := l.SealedCheckpoints()
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(within)
	for {
		logs, err := store.Logs()
		if err != nil {
			t.Fatal(err)
		}
		for _, li := range logs {
			if li.LogID == id && li.Checkpoints == last {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("central store holds %+v after %v; want checkpoint %d of %s", logs, within, last, id)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// checkCentral checks that store holds exactly l's sealed batches: every
// checkpoint once, in order, its receipts byte for byte, nothing kept
// aside, and the store verifying as `receipts verify` does.
func checkCentral(t testing.TB, store *central.Store, l *receipts.Log) {
	t.Helper()
	id, _ := l.LogID()
	var want []receipts.SealedBatch
	if err := l.SealedBatches(context.Background(), 0, func(b receipts.SealedBatch) error {
		want = append(want, b)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	i := 0
	if err := store.Batches(context.Background(), id, 0, func(b receipts.SealedBatch) error {
		if i >= len(want) {
			t.Fatalf("central store holds more than the log's %d batches", len(want))
		}
		w := want[i]
		if string(b.Checkpoint) != string(w.Checkpoint) || len(b.Receipts) != len(w.Receipts) {
			t.Fatalf("central batch %d differs from the log's", i+1)
		}
		for j := range b.Receipts {
			if string(b.Receipts[j]) != string(w.Receipts[j]) {
				t.Fatalf("central batch %d receipt %d differs from the log's", i+1, j)
			}
		}
		i++
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if i != len(want) {
		t.Fatalf("central store holds %d batches, the log %d (0 lost wanted)", i, len(want))
	}
	rejected := 0
	if err := store.Rejections(func(central.Rejection) error { rejected++; return nil }); err != nil {
		t.Fatal(err)
	}
	if rejected != 0 {
		t.Fatalf("the collector kept %d batches aside (a gap the shipper left?)", rejected)
	}
	if _, err := store.Verify(context.Background()); err != nil {
		t.Fatalf("central store fails verification: %v", err)
	}
}

// TestShipLeaderKilledFullWindow kills the server leading the stream the
// moment the shipper has a full window in flight, while a real collector
// reads the stream into a central store: the publishes to the dead leader
// fail or time out, later ones may land first, the shipper resends from
// the first unacknowledged batch, and in the end the stream holds every
// batch once (dedup) and the collector's store every batch once, in order,
// nothing kept aside as a gap.
func TestShipLeaderKilledFullWindow(t *testing.T) {
	c := natscluster.Start(t)
	l, key := ship.LogFor(t, 20)
	o := ship.ClusterOptions(c)
	o.AckTimeout = 2 * time.Second
	o.Window = 16

	// Create the stream and learn its leader with a first batch or two.
	ship.AppendN(t, l, key, 0, 40)
	ship.SealAll(t, l)
	s0, err := ship.New(l, o)
	if err != nil {
		t.Fatal(err)
	}
	if err := s0.Drain(context.Background()); err != nil {
		t.Fatal(err)
	}
	s0.Close()
	leader := ship.StreamLeader(t, c, o.Stream)
	_, store := collectorFor(t, c, o, l.KernelKey())

	// A backlog of 300 batches, so that the window fills.
	ship.AppendN(t, l, key, 40, 6000)
	ship.SealAll(t, l)
	var killed atomic.Bool
	o.OnPublish = func(_ uint64, inFlight int) {
		if inFlight == o.Window && killed.CompareAndSwap(false, true) {
			c.Kill(leader)
		}
	}
	s, err := ship.New(l, o)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { s.Run(ctx); close(done) }()
	defer func() { cancel(); <-done; s.Close() }()
	// Decisions go on meanwhile.
	ship.AppendN(t, l, key, 6040, 1000)
	ship.SealAll(t, l)
	st := ship.WaitShipped(t, l, s, 2*time.Minute)
	if !killed.Load() {
		t.Fatal("the window never filled: the leader was not killed mid-window")
	}
	if err := c.Restart(leader); err != nil {
		t.Fatal(err)
	}
	if err := c.WaitReady(); err != nil {
		t.Fatal(err)
	}
	c.WaitStreamCurrent(t, o.Stream)
	if n := ship.CheckStreamAnyOrder(t, c, o.Stream, l); n != 7040 {
		t.Fatalf("stream holds %d receipts, want 7040", n)
	}
	waitStored(t, store, l, 2*time.Minute)
	checkCentral(t, store, l)
	t.Logf("leader n%d killed with %d in flight; %d batches stored after a successor; shipper errors %d (last %q)",
		leader, o.Window, ship.StreamInversions(t, c, o.Stream), st.Errors, st.LastError)
}

// TestShipHoleCollected: the stream holds checkpoints 1, 2, 4, 5 (3 lost
// in flight when its leader changed, the shipper then stopped) while a real
// collector reads it: the collector stores 1 and 2 and defers 4 and 5
// rather than keeping them aside as a gap; the restarted shipper publishes
// 3 (and what was sealed since), and the central store ends with every
// batch once, in order, nothing kept aside.
func TestShipHoleCollected(t *testing.T) {
	c := natscluster.Shared(t)
	l, key := ship.LogFor(t, 10)
	o := ship.ClusterOptions(c)
	ship.AppendN(t, l, key, 0, 50)
	ship.SealAll(t, l)
	ship.PublishHole(t, l, o, 3)
	col, store := collectorFor(t, c, o, l.KernelKey())
	deadline := time.Now().Add(time.Minute)
	for col.Stats().Deferred == 0 || col.Stats().Batches < 2 {
		if time.Now().After(deadline) {
			t.Fatalf("the collector did not defer the batches after the hole: %+v", col.Stats())
		}
		time.Sleep(20 * time.Millisecond)
	}
	ship.AppendN(t, l, key, 50, 30)
	ship.SealAll(t, l)
	s, err := ship.New(l, o)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := s.Drain(context.Background()); err != nil {
		t.Fatal(err)
	}
	if n := ship.CheckStreamAnyOrder(t, c, o.Stream, l); n != 80 {
		t.Fatalf("stream holds %d receipts, want 80", n)
	}
	waitStored(t, store, l, time.Minute)
	checkCentral(t, store, l)
	if st := col.Stats(); st.Batches != 8 || st.Rejected != 0 {
		t.Fatalf("collector: %+v", st)
	}
}

// BenchmarkShipCollectLag paces appends at 10,000 signed receipts/s (and,
// for comparison, at 2,000/s, which one collector keeps up with on a small
// machine) for 3 s (one writer, open loop, checkpoint_every 100) with a
// shipper and a real collector (receipts/collect, into a central store)
// reading the same three-server cluster, and reports, in the same run, each
// receipt's lag from its Append returning to (a) the stream acknowledging
// its batch and (b) its batch being stored in the central store (the
// store's head polled every millisecond).
func BenchmarkShipCollectLag(b *testing.B) {
	for _, rate := range []int{10000, 2000} {
		b.Run(fmt.Sprintf("rate=%d", rate), func(b *testing.B) { benchCollectLag(b, rate) })
	}
}

func benchCollectLag(b *testing.B, rate int) {
	c := natscluster.Start(b)
	l, key := ship.LogFor(b, 100)
	total := 3 * rate * b.N
	appended := make([]int64, total+1) // seq → unix ns
	var mu sync.Mutex
	var ackLags, storeLags []time.Duration
	lagsUpTo := func(lags *[]time.Duration, from, to uint64, now int64) {
		for seq := from + 1; seq <= to && seq <= uint64(total); seq++ {
			if at := atomic.LoadInt64(&appended[seq]); at > 0 {
				*lags = append(*lags, time.Duration(now-at))
			}
		}
	}
	prevAck := uint64(0)
	o := ship.ClusterOptions(c)
	o.OnAck = func(_, endSeq uint64) {
		now := time.Now().UnixNano()
		mu.Lock()
		lagsUpTo(&ackLags, prevAck, endSeq, now)
		prevAck = endSeq
		mu.Unlock()
	}
	id, _ := l.LogID()
	s := startShipper(b, l, o)
	_, store := collectorFor(b, c, o, l.KernelKey())
	stop := make(chan struct{})
	polled := make(chan struct{})
	go func() {
		defer close(polled)
		prev := uint64(0)
		for {
			logs, err := store.Logs()
			if err != nil {
				b.Error(err)
				return
			}
			now := time.Now().UnixNano()
			for _, li := range logs {
				if li.LogID == id && li.LastSeq > prev {
					lagsUpTo(&storeLags, prev, li.LastSeq, now)
					prev = li.LastSeq
				}
			}
			if prev >= uint64(total) {
				return
			}
			select {
			case <-stop:
				return
			case <-time.After(time.Millisecond):
			}
		}
	}()
	ship.Pace(b, l, key, total, rate, appended)
	ship.SealAll(b, l)
	ship.WaitShipped(b, l, s, 5*time.Minute)
	select {
	case <-polled:
	case <-time.After(5 * time.Minute):
		close(stop)
		<-polled
		b.Fatalf("the collector stored %d of %d receipts in 5 minutes", len(storeLags), total)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(ackLags) != total || len(storeLags) != total {
		b.Fatalf("measured %d ack lags and %d store lags of %d receipts", len(ackLags), len(storeLags), total)
	}
	for _, m := range []struct {
		name string
		lags []time.Duration
	}{{"ack", ackLags}, {"stored", storeLags}} {
		slices.Sort(m.lags)
		b.ReportMetric(float64(m.lags[len(m.lags)/2].Microseconds())/1000, m.name+"_p50_ms")
		b.ReportMetric(float64(m.lags[len(m.lags)*99/100].Microseconds())/1000, m.name+"_p99_ms")
		b.ReportMetric(float64(m.lags[len(m.lags)-1].Microseconds())/1000, m.name+"_max_ms")
	}
	b.ReportMetric(0, "ns/op")
}

// startShipper runs a shipper for l until tb ends.
func startShipper(tb testing.TB, l *receipts.Log, o ship.Options) *ship.Shipper {
	tb.Helper()
	s, err := ship.New(l, o)
	if err != nil {
		tb.Fatal(err)
	}
	s.Start()
	tb.Cleanup(func() { s.Stop(time.Second) })
	return s
}
