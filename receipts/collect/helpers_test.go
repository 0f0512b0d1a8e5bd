package collect

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/backbay-labs/chio-agent/internal/testutil"
	"github.com/backbay-labs/chio-agent/internal/testutil/natscluster"
	"github.com/backbay-labs/chio-agent/receipts"
	"github.com/backbay-labs/chio-agent/receipts/central"
	"github.com/backbay-labs/chio-agent/receipts/receiptstest"
	"github.com/backbay-labs/chio-agent/receipts/ship"
	"github.com/backbay-labs/chio-agent/receipts/sink/sinktest"
)

func TestMain(m *testing.M) { os.Exit(natscluster.Main(m)) }

// testKey derives a signing key from name (each test its own log id).
var testKey = testutil.Key

// openLog opens a fresh log signed by key sealing every `every` receipts,
// holding n synthetic receipts, all sealed; closed when t ends.
func openLog(t testing.TB, key ed25519.PrivateKey, every, n int) *receipts.Log {
	t.Helper()
	l := receiptstest.Fresh(t, key, every)
	appendN(t, l, key, 0, n)
	return l
}

// appendN appends n synthetic receipts numbered from first and seals them.
func appendN(t testing.TB, l *receipts.Log, key ed25519.PrivateKey, first, n int) {
	t.Helper()
	receiptstest.Append(t, l, key, first, n)
	receiptstest.Seal(t, l)
}

// batchesOf reads every sealed batch of l.
func batchesOf(t testing.TB, l *receipts.Log) []receipts.SealedBatch {
	t.Helper()
	return sinktest.Sealed(t, l)
}

// env is one test's stream on the shared cluster (its own names, so tests
// sharing the cluster do not see each other's batches).
type env struct {
	c      *natscluster.Cluster
	stream string
	prefix string
	js     jetstream.JetStream
}

func newEnv(t testing.TB, c *natscluster.Cluster) *env {
	t.Helper()
	b := make([]byte, 4)
	rand.Read(b)
	s := hex.EncodeToString(b)
	e := &env{c: c, stream: "C_" + s, prefix: "c" + s + ".receipts"}
	nc, err := c.Connect()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	if e.js, err = jetstream.New(nc); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := e.js.CreateStream(ctx, jetstream.StreamConfig{Name: e.stream, Subjects: []string{e.prefix + ".>"},
		Storage: jetstream.FileStorage, Replicas: 3, Duplicates: time.Minute}); err != nil {
		t.Fatal(err)
	}
	return e
}

func (e *env) lookup(k string) (string, bool) {
	if k == "TEST_NATS_TOKEN" {
		return e.c.Token, true
	}
	return "", false
}

// shipOptions ship into e's stream.
func (e *env) shipOptions() ship.Options {
	return ship.Options{Servers: strings.Split(e.c.URLs(), ","), Credentials: ship.Credentials{TokenEnv: "TEST_NATS_TOKEN"},
		Lookup: e.lookup, Stream: e.stream, SubjectPrefix: e.prefix}
}

// options collect from e's stream.
func (e *env) options() Options {
	return Options{Servers: strings.Split(e.c.URLs(), ","), Credentials: ship.Credentials{TokenEnv: "TEST_NATS_TOKEN"},
		Lookup: e.lookup, Stream: e.stream, Subject: e.prefix + ".>", Durable: "collector",
		AckWait: 2 * time.Second, GapDelay: 50 * time.Millisecond, GapWait: 20 * time.Second}
}

// publish puts raw bytes on log id's subject, as a shipper would.
func (e *env) publishRaw(t testing.TB, logID, msgID string, data []byte) {
	t.Helper()
	m := nats.NewMsg(e.prefix + "." + logID)
	m.Data = data
	m.Header.Set(jetstream.MsgIDHeader, msgID)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := e.js.PublishMsg(ctx, m); err != nil {
		t.Fatal(err)
	}
}

// publish puts batch b on its log's subject; tag tells apart message ids of
// forgeries of one checkpoint.
func (e *env) publish(t testing.TB, b receipts.SealedBatch, tag string) {
	t.Helper()
	data, err := json.Marshal(b)
	if err != nil {
		t.Fatal(err)
	}
	cp, err := receipts.ParseCheckpoint(b.Checkpoint)
	if err != nil {
		t.Fatal(err)
	}
	e.publishRaw(t, b.LogID, ship.MsgID(b.LogID, cp.Body.CheckpointSeq)+tag, data)
}

// shipNode is a node shipping into e: a log of its own key sealing every
// `every` receipts, holding n, shipped by a running shipper until t ends;
// and a central store trusting that key.
func shipNode(t testing.TB, e *env, every, n int) (*receipts.Log, ed25519.PrivateKey, *central.Store) {
	t.Helper()
	key := testKey(t.Name())
	l := openLog(t, key, every, n)
	s, err := ship.New(l, e.shipOptions())
	if err != nil {
		t.Fatal(err)
	}
	s.Start()
	t.Cleanup(func() { s.Stop(time.Second) })
	return l, key, openStore(t, filepath.Join(t.TempDir(), "central.db"), l.KernelKey())
}

// consumerLeader is the index of the server leading durable's consumer.
func (e *env) consumerLeader(t testing.TB, durable string) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cons, err := e.js.Consumer(ctx, e.stream, durable)
	if err != nil {
		t.Fatal(err)
	}
	ci, err := cons.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; ci.Cluster != nil && i < natscluster.Size; i++ {
		if ci.Cluster.Leader == fmt.Sprintf("n%d", i) {
			return i
		}
	}
	t.Fatalf("consumer leader %+v is none of the cluster's servers", ci.Cluster)
	return 0
}

// openStore opens a central store trusting keys; closed when t ends.
func openStore(t testing.TB, path string, keys ...string) *central.Store {
	t.Helper()
	s, err := central.Open(path, central.Options{TrustedKeys: keys})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// run runs a collector until the returned stop is called (or t ends).
func run(t testing.TB, s *central.Store, o Options) (*Collector, func()) {
	t.Helper()
	c, err := New(s, o)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	stopped := false
	stop := func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
		c.Close()
	}
	t.Cleanup(stop)
	return c, stop
}

// waitFor polls cond (bounded), failing t with what when it never holds.
func waitFor(t testing.TB, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// stored is the checkpoints and receipts s holds for log id.
func stored(t testing.TB, s *central.Store, id string) (cps, last uint64) {
	t.Helper()
	logs, err := s.Logs()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range logs {
		if l.LogID == id {
			return l.Checkpoints, l.LastSeq
		}
	}
	return 0, 0
}

// rejections are s's kept-aside batches by defect.
func rejections(t testing.TB, s *central.Store) map[receipts.BatchDefect]int {
	t.Helper()
	out := map[receipts.BatchDefect]int{}
	if err := s.Rejections(func(r central.Rejection) error {
		out[r.Error.Defect]++
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return out
}

// verifyStore checks the store as `receipts verify` does.
func verifyStore(t testing.TB, s *central.Store) *central.Report {
	t.Helper()
	rep, err := s.Verify(context.Background())
	if err != nil {
		t.Fatalf("central store fails verification: %v", err)
	}
	return rep
}

func logID(t testing.TB, l *receipts.Log) string {
	t.Helper()
	id, err := l.LogID()
	if err != nil {
		t.Fatal(err)
	}
	return id
}
