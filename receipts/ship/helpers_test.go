package ship

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/backbay-labs/chio-agent/internal/testutil"
	"github.com/backbay-labs/chio-agent/internal/testutil/natscluster"
	"github.com/backbay-labs/chio-agent/receipts"
	"github.com/backbay-labs/chio-agent/receipts/sink/sinktest"
)

func TestMain(m *testing.M) { os.Exit(natscluster.Main(m)) }

// testKey derives a signing key from name (each test its own log id).
var testKey = testutil.Key

// openLog opens a log at path signed by key, sealing every `every`
// receipts.
func openLog(t testing.TB, path string, key ed25519.PrivateKey, every int) *receipts.Log {
	t.Helper()
	l, err := receipts.Open(path, receipts.Options{Key: key, Mode: receipts.ModeAsync, CheckpointEvery: every,
		CheckpointIdle: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// logFor opens a fresh log for t, signed by a key of its own (its own log
// id), sealing every `every` receipts; it is closed when t ends.
func logFor(t testing.TB, every int) (*receipts.Log, ed25519.PrivateKey) {
	t.Helper()
	key := testKey(t.Name())
	l := openLog(t, tempLog(t), key, every)
	t.Cleanup(func() { l.Close() })
	return l, key
}

// appendN appends n synthetic receipts numbered from first.
func appendN(t testing.TB, l *receipts.Log, key ed25519.PrivateKey, first, n int) {
	t.Helper()
	sinktest.Append(t, l, key, first, n, false)
}

// sealAll makes every appended receipt durable and sealed.
func sealAll(t testing.TB, l *receipts.Log) {
	t.Helper()
	if err := l.Flush(context.Background(), true); err != nil {
		t.Fatal(err)
	}
}

// uniqueNames gives a test its own stream and subject prefix, so tests
// sharing a cluster do not see each other's batches.
func uniqueNames(o *Options) {
	b := make([]byte, 4)
	rand.Read(b)
	s := hex.EncodeToString(b)
	o.Stream = "T_" + s
	o.SubjectPrefix = "t" + s + ".receipts"
}

// clusterOptions are Options for cluster c: its URLs and its token from a
// variable.
func clusterOptions(c *natscluster.Cluster) Options {
	o := Options{Servers: strings.Split(c.URLs(), ","), Credentials: Credentials{TokenEnv: "TEST_NATS_TOKEN"},
		Lookup: func(k string) (string, bool) {
			if k == "TEST_NATS_TOKEN" {
				return c.Token, true
			}
			return "", false
		}}
	uniqueNames(&o)
	return o
}

// startShipper runs a shipper for l until the test ends.
func startShipper(t testing.TB, l *receipts.Log, o Options) *Shipper {
	t.Helper()
	s, err := New(l, o)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { s.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done; s.Close() })
	return s
}

// waitShipped waits until the shipper acknowledged every checkpoint the log
// holds (the log sealed and quiet), polling; bounded.
func waitShipped(t testing.TB, l *receipts.Log, s *Shipper, within time.Duration) Status {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		last, _, err := l.SealedCheckpoints()
		if err != nil {
			t.Fatal(err)
		}
		st := s.Status()
		if st.AckedCheckpoint == last && last > 0 {
			return st
		}
		if time.Now().After(deadline) {
			t.Fatalf("shipped checkpoint %d of %d after %v; status %+v", st.AckedCheckpoint, last, within, st)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// streamBatches reads every batch of the stream, in stream order, with
// its Nats-Msg-Id.
func streamBatches(t testing.TB, c *natscluster.Cluster, stream string) ([]receipts.SealedBatch, []string) {
	t.Helper()
	var bs []receipts.SealedBatch
	var ids []string
	for _, m := range c.Messages(t, stream) {
		var b receipts.SealedBatch
		if err := json.Unmarshal(m.Data, &b); err != nil {
			t.Fatalf("stream message %d: %v", m.Sequence, err)
		}
		bs = append(bs, b)
		ids = append(ids, m.Header.Get(jetstream.MsgIDHeader))
	}
	return bs, ids
}

// checkStream checks that the stream holds exactly the log's sealed
// batches: checkpoints 1..last once each and in order, each with its
// receipts (seq by seq, byte for byte), its signature and Merkle root
// verifying, and the message id naming log and checkpoint.
func checkStream(t testing.TB, c *natscluster.Cluster, stream string, l *receipts.Log) int {
	t.Helper()
	got, ids := streamBatches(t, c, stream)
	return checkBatches(t, got, ids, l)
}

// checkStreamAnyOrder is checkStream for a stream that may hold a batch
// after its successor (publishes in flight when a server failed, re-sent):
// every checkpoint once, whatever the order.
func checkStreamAnyOrder(t testing.TB, c *natscluster.Cluster, stream string, l *receipts.Log) int {
	t.Helper()
	got, ids := streamBatches(t, c, stream)
	idx := make([]int, len(got))
	seqs := make([]uint64, len(got))
	for i, b := range got {
		idx[i] = i
		cp, err := receipts.ParseCheckpoint(b.Checkpoint)
		if err != nil {
			t.Fatal(err)
		}
		seqs[i] = cp.Body.CheckpointSeq
	}
	sort.SliceStable(idx, func(a, b int) bool { return seqs[idx[a]] < seqs[idx[b]] })
	sorted, sortedIDs := make([]receipts.SealedBatch, len(got)), make([]string, len(got))
	for i, j := range idx {
		sorted[i], sortedIDs[i] = got[j], ids[j]
	}
	return checkBatches(t, sorted, sortedIDs, l)
}

func checkBatches(t testing.TB, got []receipts.SealedBatch, ids []string, l *receipts.Log) int {
	t.Helper()
	last, sealed, err := l.SealedCheckpoints()
	if err != nil {
		t.Fatal(err)
	}
	logID, _ := l.LogID()
	if uint64(len(got)) != last {
		t.Fatalf("stream holds %d batches, the log %d checkpoints (0 lost, 0 duplicated wanted); ids %v", len(got), last, ids)
	}
	nextSeq := uint64(1)
	for i, b := range got {
		var cp receipts.Checkpoint
		if err := json.Unmarshal(b.Checkpoint, &cp); err != nil {
			t.Fatal(err)
		}
		if cp.Body.CheckpointSeq != uint64(i+1) {
			t.Fatalf("stream message %d carries checkpoint %d: out of order or duplicated", i+1, cp.Body.CheckpointSeq)
		}
		if want := MsgID(logID, uint64(i+1)); ids[i] != want || b.LogID != logID {
			t.Fatalf("message %d: id %q log %q, want %q %q", i+1, ids[i], b.LogID, want, logID)
		}
		if err := cp.VerifySignature(); err != nil {
			t.Fatalf("checkpoint %d: %v", i+1, err)
		}
		if cp.Body.BatchStartSeq != nextSeq || uint64(len(b.Receipts)) != cp.Body.TreeSize {
			t.Fatalf("checkpoint %d covers %d..%d with %d receipts, want start %d", i+1, cp.Body.BatchStartSeq, cp.Body.BatchEndSeq, len(b.Receipts), nextSeq)
		}
		leaves := make([]receipts.Hash, len(b.Receipts))
		for j, r := range b.Receipts {
			e, err := l.Get(cp.Body.BatchStartSeq + uint64(j))
			if err != nil {
				t.Fatal(err)
			}
			if string(e.Receipt) != string(r) {
				t.Fatalf("checkpoint %d receipt %d differs from the log's", i+1, j)
			}
			leaves[j] = receipts.LeafHash(r)
		}
		if receipts.MerkleRoot(leaves).String() != cp.Body.MerkleRoot {
			t.Fatalf("checkpoint %d: Merkle root does not match the shipped receipts", i+1)
		}
		nextSeq = cp.Body.BatchEndSeq + 1
	}
	if nextSeq-1 != sealed {
		t.Fatalf("stream seals receipts up to %d, the log %d", nextSeq-1, sealed)
	}
	return int(sealed)
}

func tempLog(t testing.TB) string { return filepath.Join(t.TempDir(), "receipts.db") }

func streamInfo(t testing.TB, c *natscluster.Cluster, stream string) *jetstream.StreamInfo {
	t.Helper()
	info, err := c.StreamInfo(stream)
	if err != nil {
		t.Fatalf("read stream %s: %v", stream, err)
	}
	return info
}

// streamLeader is the index of the server leading stream.
func streamLeader(t testing.TB, c *natscluster.Cluster, stream string) int {
	t.Helper()
	info := streamInfo(t, c, stream)
	if info.Cluster == nil {
		t.Fatal("stream has no cluster info")
	}
	for i := 0; i < natscluster.Size; i++ {
		if info.Cluster.Leader == fmt.Sprintf("n%d", i) {
			return i
		}
	}
	t.Fatalf("stream leader %q is none of the cluster's servers", info.Cluster.Leader)
	return 0
}

func readStateFile(t testing.TB, path string) uint64 {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var st state
	if err := json.Unmarshal(b, &st); err != nil {
		t.Fatal(err)
	}
	return st.AckedCheckpint
}

// streamInversions counts the stream's batches stored after a successor
// (a batch N+1 before N).
func streamInversions(t testing.TB, c *natscluster.Cluster, stream string) int {
	t.Helper()
	got, _ := streamBatches(t, c, stream)
	n, top := 0, uint64(0)
	for _, b := range got {
		cp, err := receipts.ParseCheckpoint(b.Checkpoint)
		if err != nil {
			t.Fatal(err)
		}
		if cp.Body.CheckpointSeq < top {
			n++
		}
		top = max(top, cp.Body.CheckpointSeq)
	}
	return n
}
