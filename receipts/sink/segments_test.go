package sink_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/backbay-labs/chio-agent/internal/testutil"
	"github.com/backbay-labs/chio-agent/internal/testutil/objstore"
	"github.com/backbay-labs/chio-agent/receipts"
	"github.com/backbay-labs/chio-agent/receipts/receiptstest"
	"github.com/backbay-labs/chio-agent/receipts/sink"
	"github.com/backbay-labs/chio-agent/receipts/sink/sinktest"
)

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// sealedLog writes a log signed by the key named name: n receipts, then
// (rotate) 12 more by a rotated key, all sealed every `every`; it returns
// the log's id and sealed batches as the log reads them.
func sealedLog(t *testing.T, name string, n, every int, rotate bool) (string, []receipts.SealedBatch) {
	t.Helper()
	k1 := testutil.Key(name)
	path := filepath.Join(t.TempDir(), "receipts.db")
	l, err := receipts.Open(path, receipts.Options{Key: k1, CheckpointEvery: every})
	if err != nil {
		t.Fatal(err)
	}
	receiptstest.Append(t, l, k1, 0, n)
	if rotate {
		l.Close()
		k2 := testutil.Key(name + "/rotated")
		if l, err = receipts.Open(path, receipts.Options{Key: k2, RotateKey: true, PreviousKey: k1, CheckpointEvery: every}); err != nil {
			t.Fatal(err)
		}
		receiptstest.Append(t, l, k2, 100, 12)
	}
	defer l.Close()
	receiptstest.Seal(t, l)
	id, err := l.LogID()
	if err != nil {
		t.Fatal(err)
	}
	return id, sinktest.Sealed(t, l)
}

func openSink(t *testing.T, url string) sink.Store {
	t.Helper()
	st, err := sink.Open(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

func seqs(from, to uint64) []uint64 {
	var out []uint64
	for i := from; i <= to; i++ {
		out = append(out, i)
	}
	return out
}

// TestSegmentsContract runs the Store contract (sinktest.Contract, which
// dynamodb:// meets too) against each object store's emulator, a fresh
// bucket per case.
func TestSegmentsContract(t *testing.T) {
	objstore.Each(t, func(t *testing.T, s objstore.Store) {
		sinktest.Contract(t, func(t *testing.T) sink.Store {
			base, _ := s.Bucket(t)
			return openSink(t, base+"chio/receipts/")
		})
	})
}

// TestSegmentsRoundTrip, against each store's emulator through its SDK:
// the sealed batches of a real (rotated) log and of a second log are put,
// put again (nothing changes), listed and read back byte for byte; another
// batch for a checkpoint already held is refused and leaves the object as
// it was.
func TestSegmentsRoundTrip(t *testing.T) {
	objstore.Each(t, func(t *testing.T, b objstore.Store) {
		ctx := ctxT(t)
		base, _ := b.Bucket(t)
		idA, bsA := sealedLog(t, t.Name()+"/a", 15, 10, true)
		idB, bsB := sealedLog(t, t.Name()+"/b", 5, 10, false)
		rotated := 0
		for _, b := range bsA {
			rotated += len(b.Rotations)
		}
		if len(bsA) < 4 || rotated != 1 || len(bsB) != 1 {
			t.Fatalf("the logs sealed %d batches (%d rotation statements) and %d", len(bsA), rotated, len(bsB))
		}
		st := openSink(t, base+"chio/receipts/")
		if got := st.String(); got != base+"chio/receipts/" {
			t.Fatalf("String() = %q", got)
		}
		if logs, err := st.Logs(ctx); err != nil || len(logs) != 0 {
			t.Fatalf("Logs of an empty sink = %v, %v", logs, err)
		}
		sinktest.PutAll(t, ctx, st, bsA)
		sinktest.PutAll(t, ctx, st, bsB)
		sinktest.PutAll(t, ctx, st, bsA) // idempotent
		n := uint64(len(bsA))
		if got, err := st.Stored(ctx, idA, 0); err != nil || !slices.Equal(got, seqs(1, n)) {
			t.Fatalf("Stored(0) = %v, %v; want 1..%d", got, err, n)
		}
		if got, err := st.Stored(ctx, idA, 2); err != nil || !slices.Equal(got, seqs(3, n)) {
			t.Fatalf("Stored(2) = %v, %v; want 3..%d", got, err, n)
		}
		if got, err := st.Stored(ctx, idA, n); err != nil || len(got) != 0 {
			t.Fatalf("Stored(last) = %v, %v", got, err)
		}
		want := []string{idA, idB}
		slices.Sort(want)
		if logs, err := st.Logs(ctx); err != nil || !slices.Equal(logs, want) {
			t.Fatalf("Logs = %v, %v; want %v", logs, err, want)
		}
		sinktest.CheckSame(t, st, sinktest.ReadAll(t, st, idA), bsA)
		sinktest.CheckSame(t, st, sinktest.ReadAfter(t, st, idA, 2), bsA[2:])
		sinktest.CheckSame(t, st, sinktest.ReadAll(t, st, idB), bsB)

		// More objects than Batches reads ahead: in order, each once, and
		// a reader that stops early is told no more.
		idC, bsC := sealedLog(t, t.Name()+"/c", 30, 1, false)
		sinktest.PutAll(t, ctx, st, bsC)
		sinktest.CheckSame(t, st, sinktest.ReadAll(t, st, idC), bsC)
		stop, n3 := errors.New("enough"), 0
		if err := st.Batches(ctx, idC, 0, func(receipts.SealedBatch) error {
			if n3++; n3 == 3 {
				return stop
			}
			return nil
		}); err != stop || n3 != 3 {
			t.Fatalf("Batches stopped by its reader after %d batches: %v", n3, err)
		}

		// The same checkpoint with other content (the same key's log
		// written afresh): refused, and the stored object stays.
		_, fork := sealedLog(t, t.Name()+"/a", 3, 10, false)
		if err := st.Put(ctx, fork[0], 1); !errors.Is(err, sink.ErrConflict) || !strings.Contains(err.Error(), sink.SegmentName(idA, 1)) {
			t.Fatalf("put of another checkpoint 1: %v", err)
		}
		sinktest.CheckSame(t, st, sinktest.ReadAll(t, st, idA), bsA)

		// A batch put under another checkpoint seq than its own is refused
		// before anything is written.
		if err := st.Put(ctx, bsB[0], 7); err == nil || !strings.Contains(err.Error(), "checkpoint 1") {
			t.Fatalf("put of checkpoint 1 as 7: %v", err)
		}
		if got, _ := st.Stored(ctx, idB, 0); !slices.Equal(got, []uint64{1}) {
			t.Fatalf("Stored after a refused put = %v", got)
		}

		// A prefix of its own per sink: another prefix sees nothing.
		if logs, err := openSink(t, base+"chio").Logs(ctx); err != nil || len(logs) != 1 || logs[0] != "receipts" {
			// The parent prefix lists "receipts" as a directory that is
			// no log: that is an error, below.
			if err == nil || !errors.Is(err, sink.ErrDamaged) || !strings.Contains(err.Error(), "chio/receipts/") {
				t.Fatalf("Logs of the parent prefix = %v, %v", logs, err)
			}
		}
	})
}

// TestSegmentsDamaged: objects that are not segments as Put writes them
// are refused with an error naming the object: garbage, a segment under
// another checkpoint's name, a name that is not a checkpoint's, a
// directory that is not a log's.
func TestSegmentsDamaged(t *testing.T) {
	objstore.Each(t, func(t *testing.T, b objstore.Store) {
		ctx := ctxT(t)
		base, put := b.Bucket(t)
		id, bs := sealedLog(t, t.Name(), 25, 10, false)
		url := base + "damaged"
		st := openSink(t, url)
		sinktest.PutAll(t, ctx, st, bs[:1])
		good, err := sink.EncodeSegment(&bs[0], 1)
		if err != nil {
			t.Fatal(err)
		}
		cases := []struct {
			name, key, data, want string
		}{
			{"garbage", sink.SegmentName(id, 2), "not json\n", "line 1"},
			{"truncated", sink.SegmentName(id, 2), string(good[:len(good)-40]), "newline"},
			{"another checkpoint's segment", sink.SegmentName(id, 2), string(good), "checkpoint 1 in the object of log " + id + " checkpoint 2"},
			{"checkpoint not last", sink.SegmentName(id, 1), strings.Join(rotateLines(string(good)), "\n") + "\n", "want receipts, then rotation statements"},
			{"not a checkpoint's name", id + "/notes.txt", "x\n", "notes.txt"},
		}
		for _, c := range cases {
			t.Run(c.name, func(t *testing.T) {
				prefix := fmt.Sprintf("damaged-%d/", len(c.name))
				sc := openSink(t, url[:len(url)-len("damaged")]+prefix)
				put(prefix+c.key, c.data)
				err := sc.Batches(ctx, id, 0, func(receipts.SealedBatch) error { return nil })
				if !errors.Is(err, sink.ErrDamaged) || !strings.Contains(err.Error(), prefix+c.key) || !strings.Contains(err.Error(), c.want) {
					t.Fatalf("Batches over %s: %v", c.name, err)
				}
			})
		}
		put("damaged/not-a-log/00000000000000000001.jsonl", string(good))
		if logs, err := st.Logs(ctx); !errors.Is(err, sink.ErrDamaged) || !strings.Contains(err.Error(), "damaged/not-a-log/") {
			t.Fatalf("Logs over a foreign directory = %v, %v", logs, err)
		}
	})
}

// rotateLines moves the last line (the checkpoint) first.
func rotateLines(s string) []string {
	ls := strings.Split(strings.TrimSuffix(s, "\n"), "\n")
	return append([]string{ls[len(ls)-1]}, ls[:len(ls)-1]...)
}

// TestSegmentLines: the line schema the docs promise BigQuery.
func TestSegmentLines(t *testing.T) {
	id, bs := sealedLog(t, t.Name(), 15, 10, true)
	for i, b := range bs {
		data, err := sink.EncodeSegment(&b, uint64(i+1))
		if err != nil {
			t.Fatal(err)
		}
		lines := strings.Split(strings.TrimSuffix(string(data), "\n"), "\n")
		if len(lines) != len(b.Receipts)+len(b.Rotations)+1 {
			t.Fatalf("checkpoint %d: %d lines for %d receipts, %d statements and the checkpoint", i+1, len(lines), len(b.Receipts), len(b.Rotations))
		}
		cp, _ := receipts.ParseCheckpoint(b.Checkpoint)
		for j, l := range lines {
			var m map[string]json.RawMessage
			if err := json.Unmarshal([]byte(l), &m); err != nil {
				t.Fatal(err)
			}
			kind := "receipt"
			body := []byte(nil)
			switch {
			case j < len(b.Receipts):
				body = b.Receipts[j]
				if string(m["seq"]) != fmt.Sprint(cp.Body.BatchStartSeq+uint64(j)) {
					t.Fatalf("receipt line %d seq %s", j+1, m["seq"])
				}
			case j < len(b.Receipts)+len(b.Rotations):
				kind, body = "rotation", b.Rotations[j-len(b.Receipts)]
			default:
				kind, body = "checkpoint", b.Checkpoint
			}
			if string(m["kind"]) != `"`+kind+`"` || string(m["log_id"]) != `"`+id+`"` || string(m["kernel_key"]) != `"`+b.KernelKey+`"` ||
				string(m["checkpoint_seq"]) != fmt.Sprint(i+1) || !bytes.Equal(m["body"], body) || (kind != "receipt") != (m["seq"] == nil) {
				t.Fatalf("checkpoint %d line %d: %s", i+1, j+1, l)
			}
		}
		back, err := sink.DecodeSegment(data, id, uint64(i+1))
		if err != nil {
			t.Fatal(err)
		}
		if !sinktest.Same(back, b) {
			t.Fatalf("checkpoint %d decoded differs from the batch encoded", i+1)
		}
	}
}

// TestSegmentURLs: what a segment sink URL may be, and bigquery://.
func TestSegmentURLs(t *testing.T) {
	for _, u := range []string{"s3://bucket", "s3://bucket/", "s3://bucket/a/b", "gs://b/p/", "azblob://acct/container", "azblob://acct/container/p/q"} {
		if err := sink.Check(u); err != nil {
			t.Errorf("Check(%q) = %v", u, err)
		}
	}
	for u, want := range map[string]string{
		"s3://":                     "no bucket",
		"s3://user:secret@bucket/p": "credentials",
		"gs://bucket:9000/p":        "port",
		"gs://bucket/p?x=1":         "query",
		"gs://bucket/a/../b":        "not a clean relative path",
		"gs://bucket/a//b":          "not a clean relative path",
		"s3://bucket/p#sha256:00":   "fragment",
		"azblob://acct":             "no container",
		"bigquery://project.chio.r": "gs://BUCKET/PREFIX",
		"nats://localhost:4222":     "not an s3://",
	} {
		err := sink.Check(u)
		if err == nil || !strings.Contains(err.Error(), want) || strings.Contains(err.Error(), "secret") {
			t.Errorf("Check(%q) = %v, want an error saying %q", u, err, want)
		}
	}
	if !errors.Is(sink.Check("bigquery://p.d.t"), sink.ErrBigQuery) {
		t.Error("bigquery:// is not ErrBigQuery")
	}
}
