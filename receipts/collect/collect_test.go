package collect

import (
	"bytes"
	"encoding/json"
	"path/filepath"
	"testing"
	"time"

	"github.com/backbay-labs/chio-agent/internal/testutil/natscluster"
	"github.com/backbay-labs/chio-agent/kernel/jcs"
	"github.com/backbay-labs/chio-agent/receipts"
)

// TestCollectShippedBatches: a real shipper ships a node's log into the
// cluster, a collector stores it centrally: every batch stored once, the
// store verifies, nothing kept aside.
func TestCollectShippedBatches(t *testing.T) {
	c := natscluster.Shared(t)
	e := newEnv(t, c)
	l, _, store := shipNode(t, e, 25, 500)
	col, _ := run(t, store, e.options())
	id := logID(t, l)
	waitFor(t, time.Minute, "20 batches stored", func() bool { n, _ := stored(t, store, id); return n == 20 })
	if _, last := stored(t, store, id); last != 500 {
		t.Fatalf("store holds receipts up to seq %d, want 500", last)
	}
	// The count follows the store's commit by a moment.
	waitFor(t, time.Minute, "the collector counting 20 batches", func() bool { return col.Stats().Batches == 20 })
	st := col.Stats()
	if st.Batches != 20 || st.Receipts != 500 || st.Rejected != 0 {
		t.Fatalf("stats %+v, want 20 batches, 500 receipts, none rejected", st)
	}
	rep := verifyStore(t, store)
	if rep.Rejected != 0 || len(rep.Logs) != 1 || rep.Logs[0].Verified != 500 {
		t.Fatalf("verify report %+v", rep)
	}
	waitFor(t, 10*time.Second, "lag 0", func() bool { return col.Stats().Lag == 0 })
}

// TestCollectOutOfOrder: batches arriving before their predecessor (as a
// redelivery after a collector's crash delivers them) wait for it rather
// than being kept aside as gaps; all are stored once, in chain order.
func TestCollectOutOfOrder(t *testing.T) {
	c := natscluster.Shared(t)
	e := newEnv(t, c)
	key := testKey(t.Name())
	l := openLog(t, key, 10, 50)
	bs := batchesOf(t, l)
	store := openStore(t, filepath.Join(t.TempDir(), "central.db"), l.KernelKey())
	for _, i := range []int{2, 4, 3, 1} {
		e.publish(t, bs[i], "")
	}
	col, _ := run(t, store, e.options())
	waitFor(t, 30*time.Second, "deferred batches", func() bool { return col.Stats().Deferred > 0 })
	e.publish(t, bs[0], "")
	id := logID(t, l)
	waitFor(t, 30*time.Second, "5 batches stored", func() bool { n, _ := stored(t, store, id); return n == 5 })
	if rj := rejections(t, store); len(rj) != 0 {
		t.Fatalf("kept aside %v, want nothing", rj)
	}
	waitFor(t, 30*time.Second, "the collector counting 5 batches", func() bool { return col.Stats().Batches == 5 })
	if st := col.Stats(); st.Batches != 5 || st.Rejected != 0 {
		t.Fatalf("stats %+v", st)
	}
	verifyStore(t, store)
}

// TestCollectPredecessorAfterGap: a batch whose predecessor does not come
// waits GapWait, then is kept aside as a gap (and acked: not retried
// forever), the batch before it stored; when the predecessor comes after
// all, the gap is stored after it and leaves the rejections, and the log's
// chain goes on.
func TestCollectPredecessorAfterGap(t *testing.T) {
	c := natscluster.Shared(t)
	e := newEnv(t, c)
	key := testKey(t.Name())
	l := openLog(t, key, 10, 50)
	bs := batchesOf(t, l)
	id := logID(t, l)
	store := openStore(t, filepath.Join(t.TempDir(), "central.db"), l.KernelKey())
	e.publish(t, bs[0], "")
	e.publish(t, bs[2], "")
	o := e.options()
	o.GapWait = 150 * time.Millisecond
	col, _ := run(t, store, o)
	waitFor(t, 30*time.Second, "the gap kept aside", func() bool { return col.Stats().Rejected == 1 })
	if rj := rejections(t, store); rj[receipts.DefectGap] != 1 || len(rj) != 1 {
		t.Fatalf("kept aside %v, want one gap", rj)
	}
	if n, _ := stored(t, store, id); n != 1 {
		t.Fatalf("%d batches stored, want 1", n)
	}
	if st := col.Stats(); st.Deferred == 0 {
		t.Fatalf("the gap was kept aside without waiting: %+v", st)
	}
	e.publish(t, bs[1], "")
	waitFor(t, 30*time.Second, "3 batches stored", func() bool { n, _ := stored(t, store, id); return n == 3 })
	if rj := rejections(t, store); len(rj) != 0 {
		t.Fatalf("kept aside %v after the gap was filled, want nothing", rj)
	}
	for _, b := range bs[3:] {
		e.publish(t, b, "")
	}
	waitFor(t, 30*time.Second, "5 batches stored", func() bool { n, _ := stored(t, store, id); return n == 5 })
	waitFor(t, 30*time.Second, "the collector counting 5 batches", func() bool { return col.Stats().Batches == 5 })
	if st := col.Stats(); st.Resumed != 1 || st.Rejected != 1 {
		t.Fatalf("stats %+v, want one batch resumed after being kept aside", st)
	}
	if rep := verifyStore(t, store); rep.Rejected != 0 || rep.Logs[0].Verified != 50 {
		t.Fatalf("verify report %+v", rep)
	}
}

// TestCollectRejectsForgeries: a forged receipt, a forged checkpoint, an
// equivocating checkpoint (validly signed by the node's key, from a second
// log kept with it) and a message that is no batch, published between good
// batches, are each kept aside with their defect; every good batch is
// stored and the store verifies.
func TestCollectRejectsForgeries(t *testing.T) {
	c := natscluster.Shared(t)
	e := newEnv(t, c)
	key := testKey(t.Name())
	l := openLog(t, key, 10, 100)
	bs := batchesOf(t, l)
	other := openLog(t, key, 10, 0)
	appendN(t, other, key, 1000, 30)
	equiv := batchesOf(t, other)[1] // a second checkpoint 2
	id := logID(t, l)
	store := openStore(t, filepath.Join(t.TempDir(), "central.db"), l.KernelKey())
	col, _ := run(t, store, e.options())

	for _, b := range bs[:3] {
		e.publish(t, b, "")
	}
	waitFor(t, 30*time.Second, "3 batches stored", func() bool { n, _ := stored(t, store, id); return n == 3 })

	forgedReceipt := bs[3]
	forgedReceipt.Receipts = append([]json.RawMessage(nil), bs[3].Receipts...)
	forgedReceipt.Receipts[4] = bytes.Replace(forgedReceipt.Receipts[4], []byte(`"chio-agent"`), []byte(`"chio-agenX"`), 1)
	if bytes.Equal(forgedReceipt.Receipts[4], bs[3].Receipts[4]) {
		t.Fatal("forgery changed nothing")
	}
	e.publish(t, forgedReceipt, "-forged-receipt")

	cp, err := receipts.ParseCheckpoint(bs[3].Checkpoint)
	if err != nil {
		t.Fatal(err)
	}
	sig := []byte(cp.Signature)
	sig[0] ^= 1
	cp.Signature = string(sig)
	forgedCP := bs[3]
	data, err := json.Marshal(cp)
	if err != nil {
		t.Fatal(err)
	}
	if forgedCP.Checkpoint, err = jcs.Canonicalize(data); err != nil {
		t.Fatal(err)
	}
	e.publish(t, forgedCP, "-forged-checkpoint")
	e.publish(t, equiv, "-equivocation")
	e.publishRaw(t, id, "junk", []byte("not a batch"))
	for _, b := range bs[3:] {
		e.publish(t, b, "")
	}

	waitFor(t, 30*time.Second, "10 batches stored", func() bool { n, _ := stored(t, store, id); return n == 10 })
	waitFor(t, 30*time.Second, "4 kept aside", func() bool { return col.Stats().Rejected == 4 })
	want := map[receipts.BatchDefect]int{receipts.DefectForgedReceipt: 1, receipts.DefectForgedCheckpoint: 1,
		receipts.DefectFork: 1, receipts.DefectMalformed: 1}
	got := rejections(t, store)
	for d, n := range want {
		if got[d] != n {
			t.Fatalf("kept aside %v, want %v", got, want)
		}
	}
	rep := verifyStore(t, store)
	if rep.Rejected != 4 || rep.Logs[0].Verified != 100 {
		t.Fatalf("verify report %+v", rep)
	}
}

// TestCollectTwoNodes: two nodes (two logs, two keys) into one collector,
// stored side by side; a key the store does not trust is kept aside.
func TestCollectTwoNodes(t *testing.T) {
	c := natscluster.Shared(t)
	e := newEnv(t, c)
	ka, kb, kc := testKey(t.Name()+"a"), testKey(t.Name()+"b"), testKey(t.Name()+"c")
	la, lb, lc := openLog(t, ka, 10, 60), openLog(t, kb, 15, 90), openLog(t, kc, 10, 10)
	store := openStore(t, filepath.Join(t.TempDir(), "central.db"), la.KernelKey(), lb.KernelKey())
	ba, bb := batchesOf(t, la), batchesOf(t, lb)
	for i := range ba {
		e.publish(t, ba[i], "")
		e.publish(t, bb[i], "")
	}
	e.publish(t, batchesOf(t, lc)[0], "")
	col, _ := run(t, store, e.options())
	waitFor(t, 30*time.Second, "both logs stored", func() bool {
		a, _ := stored(t, store, logID(t, la))
		b, _ := stored(t, store, logID(t, lb))
		return a == 6 && b == 6 && col.Stats().Rejected == 1
	})
	if rj := rejections(t, store); rj[receipts.DefectUntrustedKey] != 1 {
		t.Fatalf("kept aside %v, want the untrusted key's batch", rj)
	}
	rep := verifyStore(t, store)
	if len(rep.Logs) != 2 || rep.Logs[0].Verified+rep.Logs[1].Verified != 150 {
		t.Fatalf("verify report %+v", rep)
	}
}

// TestCollectRestart: the collector stopped mid-stream and started again
// (same durable, same store) while the node keeps shipping: every batch
// stored once, nothing kept aside.
func TestCollectRestart(t *testing.T) {
	c := natscluster.Shared(t)
	e := newEnv(t, c)
	l, key, store := shipNode(t, e, 10, 0)
	id := logID(t, l)

	col, stop := run(t, store, e.options())
	appendN(t, l, key, 0, 300)
	waitFor(t, time.Minute, "some batches", func() bool { return col.Stats().Batches >= 5 })
	stop()
	appendN(t, l, key, 300, 300)
	col2, _ := run(t, store, e.options())
	waitFor(t, time.Minute, "60 batches stored", func() bool { n, _ := stored(t, store, id); return n == 60 })
	if rj := rejections(t, store); len(rj) != 0 {
		t.Fatalf("kept aside %v", rj)
	}
	waitFor(t, time.Minute, "the collectors counting 60 batches", func() bool { return col.Stats().Batches+col2.Stats().Batches >= 60 })
	if col.Stats().Batches+col2.Stats().Batches != 60 {
		t.Fatalf("stored %d + %d batches, want 60", col.Stats().Batches, col2.Stats().Batches)
	}
	if rep := verifyStore(t, store); rep.Logs[0].Verified != 600 {
		t.Fatalf("verify report %+v", rep)
	}
}

// TestCollectSharedDurable: two collectors on one durable and one store
// share the messages; each log's batches, split between them, still land
// in chain order (a batch whose predecessor the other holds waits for it).
func TestCollectSharedDurable(t *testing.T) {
	c := natscluster.Shared(t)
	e := newEnv(t, c)
	key := testKey(t.Name())
	l := openLog(t, key, 5, 200)
	store := openStore(t, filepath.Join(t.TempDir(), "central.db"), l.KernelKey())
	for _, b := range batchesOf(t, l) {
		e.publish(t, b, "")
	}
	o := e.options()
	o.Fetch = 3
	c1, _ := run(t, store, o)
	c2, _ := run(t, store, o)
	waitFor(t, time.Minute, "40 batches stored", func() bool { n, _ := stored(t, store, logID(t, l)); return n == 40 })
	if rj := rejections(t, store); len(rj) != 0 {
		t.Fatalf("kept aside %v", rj)
	}
	if c1.Stats().Batches == 0 || c2.Stats().Batches == 0 {
		t.Logf("one collector took every batch: %+v %+v", c1.Stats(), c2.Stats())
	}
	verifyStore(t, store)
}

// TestCollectServerKilled: the consumer's leader, one server of three,
// killed while collecting;
// the collector goes on and stores everything.
func TestCollectServerKilled(t *testing.T) {
	c := natscluster.Start(t)
	e := newEnv(t, c)
	l, key, store := shipNode(t, e, 10, 0)
	id := logID(t, l)
	col, _ := run(t, store, e.options())
	appendN(t, l, key, 0, 200)
	waitFor(t, time.Minute, "some batches", func() bool { return col.Stats().Batches >= 5 })
	leader := e.consumerLeader(t, "collector")
	c.Kill(leader)
	appendN(t, l, key, 200, 400)
	waitFor(t, 2*time.Minute, "60 batches stored", func() bool { n, _ := stored(t, store, id); return n == 60 })
	if err := c.Restart(leader); err != nil {
		t.Fatal(err)
	}
	if rj := rejections(t, store); len(rj) != 0 {
		t.Fatalf("kept aside %v", rj)
	}
	if rep := verifyStore(t, store); rep.Logs[0].Verified != 600 {
		t.Fatalf("verify report %+v", rep)
	}
}

// TestCollectCrashHoldingBatches: a collector that fetched the first
// batches and died before acking them (they come again only after the ack
// wait) leaves the next collector with every later batch first: those
// wait for their predecessors instead of being kept aside as gaps, and
// every batch is stored once.
func TestCollectCrashHoldingBatches(t *testing.T) {
	c := natscluster.Shared(t)
	e := newEnv(t, c)
	key := testKey(t.Name())
	l := openLog(t, key, 10, 100)
	for _, b := range batchesOf(t, l) {
		e.publish(t, b, "")
	}
	store := openStore(t, filepath.Join(t.TempDir(), "central.db"), l.KernelKey())
	o := e.options()
	crashed, err := New(store, o)
	if err != nil {
		t.Fatal(err)
	}
	cons, err := crashed.consumer(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	mb, err := cons.Fetch(2)
	if err != nil {
		t.Fatal(err)
	}
	held := 0
	for range mb.Messages() {
		held++ // never acked
	}
	crashed.Close()
	if held != 2 {
		t.Fatalf("the crashed collector held %d batches, want 2", held)
	}
	col, _ := run(t, store, o)
	waitFor(t, time.Minute, "10 batches stored", func() bool { n, _ := stored(t, store, logID(t, l)); return n == 10 })
	if rj := rejections(t, store); len(rj) != 0 {
		t.Fatalf("kept aside %v", rj)
	}
	// The collector counts a batch once the store has committed it: the
	// store may show the tenth a moment before the count does.
	waitFor(t, time.Minute, "the collector counting 10 batches", func() bool { return col.Stats().Batches == 10 })
	if st := col.Stats(); st.Deferred == 0 || st.Batches != 10 {
		t.Fatalf("stats %+v: want later batches deferred, then all 10 stored", st)
	}
	verifyStore(t, store)
}

// TestCollectConsumerDeleted: the durable deleted under a running
// collector (by an operator) is created again; later batches are stored,
// the earlier ones delivered again change nothing.
func TestCollectConsumerDeleted(t *testing.T) {
	c := natscluster.Shared(t)
	e := newEnv(t, c)
	key := testKey(t.Name())
	l := openLog(t, key, 10, 50)
	bs := batchesOf(t, l)
	for _, b := range bs {
		e.publish(t, b, "")
	}
	store := openStore(t, filepath.Join(t.TempDir(), "central.db"), l.KernelKey())
	col, _ := run(t, store, e.options())
	id := logID(t, l)
	waitFor(t, 30*time.Second, "5 batches stored", func() bool { n, _ := stored(t, store, id); return n == 5 })
	if err := e.js.DeleteConsumer(t.Context(), e.stream, "collector"); err != nil {
		t.Fatal(err)
	}
	appendN(t, l, key, 50, 50)
	for _, b := range batchesOf(t, l)[5:] {
		e.publish(t, b, "")
	}
	waitFor(t, 30*time.Second, "10 batches stored after the consumer was deleted", func() bool {
		n, _ := stored(t, store, id)
		if n != 10 {
			t.Logf("%+v", col.Stats())
		}
		return n == 10
	})
	if st := col.Stats(); st.Batches != 10 || st.Rejected != 0 {
		t.Fatalf("stats %+v", st)
	}
}
