package ship

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/backbay-labs/chio-agent/internal/testutil/dynalite"
	"github.com/backbay-labs/chio-agent/internal/testutil/emulator"
	"github.com/backbay-labs/chio-agent/internal/testutil/objstore"
	"github.com/backbay-labs/chio-agent/receipts"
	"github.com/backbay-labs/chio-agent/receipts/sink"
	"github.com/backbay-labs/chio-agent/receipts/sink/sinktest"
)

// waitStatus polls the shipper's status until ok holds; bounded.
func waitStatus(t testing.TB, s *Shipper, what string, within time.Duration, ok func(Status) bool) Status {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		st := s.Status()
		if ok(st) {
			return st
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not after %v; status %+v", what, within, st)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// storeEmulator starts an emulator of t's own keeping its data on disk,
// points this process's SDK at it, and returns a store sink's URL there
// and the emulator.
type storeEmulator func(t *testing.T) (url string, p *emulator.Proc)

// storeEmulators are the store sinks by scheme: dynamodb:// on dynalite,
// and the object stores' segment sinks (objstore.Stores).
func storeEmulators() map[string]storeEmulator {
	m := map[string]storeEmulator{"dynamodb": func(t *testing.T) (string, *emulator.Proc) {
		d := dynalite.Start(t)
		dynalite.Env(t, d.Endpoint())
		return "dynamodb://" + dynalite.Table(t), d.Proc
	}}
	for _, s := range objstore.Stores {
		m[s.Scheme] = func(t *testing.T) (string, *emulator.Proc) {
			base, p := s.Private(t)
			return base + "chio/receipts/", p
		}
	}
	return m
}

// TestShipStoreOutage ships a log to each store sink (dynamodb://, s3://,
// gs://, azblob://) on an emulator of the test's own, stops the emulator
// mid-stream while receipts keep coming (the lag grows in status, the
// backlog stays local), restarts it on the same port with its data, and
// the store ends with every sealed batch once, verifying.
func TestShipStoreOutage(t *testing.T) {
	ems := storeEmulators()
	for _, scheme := range []string{"dynamodb", "s3", "gs", "azblob"} {
		t.Run(scheme, func(t *testing.T) { shipStoreOutage(t, ems[scheme]) })
	}
	if len(ems) != 4 {
		t.Fatalf("%d store sinks, the test runs 4: add the new one here", len(ems))
	}
}

func shipStoreOutage(t *testing.T, start storeEmulator) {
	url, d := start(t)
	l, key := logFor(t, 10)
	// A short put timeout, so the outage shows in status within seconds
	// (the SDK's own retries would ride out a short one).
	s := startShipper(t, l, Options{StoreURL: url, CreateTable: true, Window: 4, AckTimeout: 2 * time.Second})
	if st := s.Status(); len(st.Servers) != 1 || st.Servers[0] != url || st.Stream != "" || st.Subject != "" {
		t.Fatalf("a store sink's status names %v / %q / %q, want %s alone", st.Servers, st.Stream, st.Subject, url)
	}
	appendN(t, l, key, 0, 200)
	sealAll(t, l)
	waitShipped(t, l, s, time.Minute)

	d.Stop()
	appendN(t, l, key, 200, 300)
	sealAll(t, l)
	down := waitStatus(t, s, "the outage in status", time.Minute, func(st Status) bool {
		return !st.Connected && st.Errors > 0 && st.LagReceipts >= 300 && st.LastError != ""
	})
	if down.AckedSeq > 200 || down.LagSeconds < 0 {
		t.Fatalf("status while the sink is down: %+v", down)
	}
	appendN(t, l, key, 500, 100)
	sealAll(t, l)

	if err := d.Restart(); err != nil {
		t.Fatal(err)
	}
	st := waitShipped(t, l, s, time.Minute)
	if st.LagReceipts != 0 || !st.Connected {
		t.Fatalf("status after the sink came back: %+v", st)
	}
	store, err := sink.Open(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	if n := sinktest.CheckHolds(t, store, l); n != 600 {
		t.Fatalf("%s seals %d receipts, want 600", url, n)
	}
	if readStateFile(t, l.Path()+".shipped") != 60 {
		t.Fatalf("state file mark %d, want 60", readStateFile(t, l.Path()+".shipped"))
	}
	t.Logf("down: %d errors, lag %d receipts / %.1fs, last error %q", down.Errors, down.LagReceipts, down.LagSeconds, down.LastError)
}

// flaky wraps a Store: the first puts wait until a window of them is in
// flight at once (the shipper puts concurrently), and puts 3, 8 and 13
// fail as a throttled table's would, 8 after its write landed.
type flaky struct {
	sink.Store
	window          int
	puts, failed    atomic.Int64
	inFlight, peak  atomic.Int64
	gate            chan struct{}
	gateOnce        sync.Once
	storedAfterFail atomic.Int64
}

var errThrottled = errors.New("ThrottlingException: rate of requests exceeds the allowed throughput")

func (f *flaky) Put(ctx context.Context, b receipts.SealedBatch, cpSeq uint64) error {
	n := f.inFlight.Add(1)
	defer f.inFlight.Add(-1)
	for p := f.peak.Load(); n > p && !f.peak.CompareAndSwap(p, n); p = f.peak.Load() {
	}
	if int(n) >= f.window {
		f.gateOnce.Do(func() { close(f.gate) })
	}
	select { // the first window waits for its fellows (bounded: a shipper putting one at a time fails below)
	case <-f.gate:
	case <-time.After(10 * time.Second):
	}
	switch k := f.puts.Add(1); k {
	case 3, 13:
		f.failed.Add(1)
		return errThrottled
	case 8:
		// The write lands, its answer is lost.
		if err := f.Store.Put(ctx, b, cpSeq); err != nil {
			return err
		}
		f.failed.Add(1)
		f.storedAfterFail.Add(1)
		return errThrottled
	}
	return f.Store.Put(ctx, b, cpSeq)
}

// TestShipStoreWindowAndRetries: the shipper keeps Window puts in flight
// at once and no more, backs off and retries failed puts (some of which
// landed), advances its mark only over contiguous successes, and the table
// ends with every batch once.
func TestShipStoreWindowAndRetries(t *testing.T) {
	d := dynalite.Shared(t)
	dynalite.Env(t, d.Endpoint())
	url := "dynamodb://" + dynalite.Table(t)
	inner, err := sink.OpenWith(context.Background(), url, sink.OpenOptions{CreateTable: true})
	if err != nil {
		t.Fatal(err)
	}
	f := &flaky{Store: inner, window: 4, gate: make(chan struct{})}
	l, key := logFor(t, 5)
	appendN(t, l, key, 0, 150)
	sealAll(t, l)
	// At each step of the mark, the table holds every checkpoint up to
	// it: the mark moves over contiguous successes only.
	logID, _ := l.LogID()
	var bad atomic.Value
	s := startShipper(t, l, Options{Store: f, Window: 4, OnAck: func(cp, _ uint64) {
		held, err := inner.Stored(context.Background(), logID, 0)
		if err != nil || uint64(len(held)) < cp || held[cp-1] != cp {
			bad.CompareAndSwap(nil, fmt.Sprintf("mark %d with the table holding %v (%v)", cp, held, err))
		}
	}})
	st := waitShipped(t, l, s, time.Minute)
	if p := f.peak.Load(); p != 4 {
		t.Fatalf("at most %d puts in flight at once, want the window, 4", p)
	}
	if f.failed.Load() == 0 || st.Errors == 0 || f.storedAfterFail.Load() == 0 {
		t.Fatalf("%d puts failed (%d after landing), %d errors in status: the wrapper did not bite", f.failed.Load(), f.storedAfterFail.Load(), st.Errors)
	}
	if v := bad.Load(); v != nil {
		t.Fatal(v)
	}
	if n := sinktest.CheckHolds(t, inner, l); n != 150 {
		t.Fatalf("the table seals %d receipts, want 150", n)
	}
	t.Logf("%d puts, %d failed (%d after landing), peak %d in flight", f.puts.Load(), f.failed.Load(), f.storedAfterFail.Load(), f.peak.Load())
}

// TestShipStoreNewSink: the state file's mark is of one sink; a log shipped
// to one table and then to another is shipped whole to the second, not from
// the first one's mark.
func TestShipStoreNewSink(t *testing.T) {
	d := dynalite.Shared(t)
	dynalite.Env(t, d.Endpoint())
	l, key := logFor(t, 10)
	appendN(t, l, key, 0, 50)
	sealAll(t, l)
	for _, url := range []string{"dynamodb://" + dynalite.Table(t), "dynamodb://" + dynalite.Table(t)} {
		s, err := New(l, Options{StoreURL: url, CreateTable: true})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		err = s.Drain(ctx)
		cancel()
		s.Close()
		if err != nil {
			t.Fatal(err)
		}
		store, err := sink.Open(context.Background(), url)
		if err != nil {
			t.Fatal(err)
		}
		if n := sinktest.CheckHolds(t, store, l); n != 50 {
			t.Fatalf("%s seals %d receipts, want 50", url, n)
		}
		store.Close()
		if b, _ := os.ReadFile(l.Path() + ".shipped"); !strings.Contains(string(b), `"sink":"`+url+`"`) {
			t.Fatalf("state file %s does not name the sink %s", b, url)
		}
	}
}
