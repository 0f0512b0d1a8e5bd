package receipts

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"path/filepath"
	"sync"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Ids whose first 8 bytes collide are told apart by their full id, across
// the sorted part, the recent map and its overflow, a fold and a drop.
func TestIDIndexPrefixCollisions(t *testing.T) {
	db, err := bolt.Open(filepath.Join(t.TempDir(), "x.db"), 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	id := func(prefix byte, tail byte) []byte {
		b := make([]byte, 32)
		for i := range 8 {
			b[i] = prefix
		}
		b[31] = tail
		return b
	}
	err = db.Update(func(tx *bolt.Tx) error {
		b, err := tx.CreateBucket(bktSeqIDs)
		if err != nil {
			return err
		}
		put := func(seq uint64, v []byte) {
			if err := b.Put(u64key(seq), v); err != nil {
				t.Fatal(err)
			}
		}
		put(1, id(1, 1))
		put(2, id(1, 2))
		x := newIDIndex([]idRef{{idPrefix(id(1, 1)), 1}, {idPrefix(id(1, 2)), 2}})
		put(3, id(1, 3))
		x.add(id(1, 3), 3)
		put(4, id(1, 4))
		x.add(id(1, 4), 4) // same prefix as seq 3: overflow
		put(5, id(2, 5))
		x.add(id(2, 5), 5)
		check := func(when string, want map[uint64][]byte, absent ...[]byte) {
			for seq, v := range want {
				if got, ok := x.find(b, v); !ok || got != seq {
					t.Errorf("%s: find %x = %d, %v; want %d", when, v[31], got, ok, seq)
				}
			}
			for _, v := range absent {
				if got, ok := x.find(b, v); ok {
					t.Errorf("%s: found absent %x at %d", when, v[31], got)
				}
			}
		}
		all := map[uint64][]byte{1: id(1, 1), 2: id(1, 2), 3: id(1, 3), 4: id(1, 4), 5: id(2, 5)}
		check("before fold", all, id(1, 9), id(3, 1))
		x.drop(3) // a failed commit of seqs 4 and 5
		check("after drop", map[uint64][]byte{1: id(1, 1), 2: id(1, 2), 3: id(1, 3)}, id(1, 4), id(2, 5))
		x.add(id(1, 4), 4)
		x.add(id(2, 5), 5)
		for i := range minFold {
			v := id(9, byte(i))
			v[30] = byte(i >> 8)
			put(uint64(100+i), v)
			x.add(v, uint64(100+i))
		}
		x.fold()
		if len(x.recent) != 0 || len(x.extra) != 0 || len(x.sorted) != 5+minFold {
			t.Fatalf("fold left recent %d, extra %d, sorted %d", len(x.recent), len(x.extra), len(x.sorted))
		}
		check("after fold", all, id(1, 9))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// The id index is appended in seq order: a commit writes its receipts and
// a few pages of index, not one page of id index per receipt, however large
// the log. Format 1 keyed the index by the random id, so a batch of 255
// receipts on a log of 12,000 dirtied most of its leaves (measured: 259
// pages written, 0.84 per receipt beyond the receipts' own; now 104, 0.23).
func TestCommitWritesFewIndexPages(t *testing.T) {
	key := testKey("pages")
	// The committer waits (AsyncLinger) until MaxBatch requests are queued:
	// each count below plus Flush's request fills whole batches.
	const maxBatch = 256
	const batch = maxBatch - 1
	l, _ := openTest(t, Options{Key: key, Mode: ModeAsync, MaxBatch: maxBatch, AsyncLinger: time.Hour,
		CheckpointEvery: 1 << 30, CheckpointIdle: time.Hour, CheckpointMaxDelay: time.Hour})
	ctx := context.Background()
	n := 0
	appendN := func(count int) {
		var wg sync.WaitGroup
		errs := make(chan error, count)
		for range count {
			data := receipt(t, key, n)
			n++
			wg.Add(1)
			go func() {
				defer wg.Done()
				if _, err := l.Append(ctx, data); err != nil {
					errs <- err
				}
			}()
		}
		wg.Wait()
		if err := l.Flush(ctx, false); err != nil {
			t.Fatal(err)
		}
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
	}
	appendN(47*maxBatch - 1)
	before := l.db.Stats().TxStats
	var size int
	for i := range batch {
		size += len(receipt(t, key, n+i))
	}
	appendN(batch)
	after := l.db.Stats().TxStats
	written := after.GetWrite() - before.GetWrite()
	own := int64(size/4096 + 1)
	extra := float64(written-own) / batch
	t.Logf("batch of %d receipts (%d pages of receipt bytes) wrote %d pages: %.2f more per receipt", batch, own, written, extra)
	if extra > 0.5 {
		t.Fatalf("a batch of %d receipts wrote %d pages beyond its receipts' %d: %.2f per receipt (index pages dirtied per receipt)", batch, written-own, own, extra)
	}
}

// An id index that names the wrong id for a seq is found by verify, and a
// writable open's lookup never answers with a receipt whose id differs.
func TestTamperSeqIDs(t *testing.T) {
	path := buildLog(t, 30)
	var id4 []byte
	rawUpdate(t, path, func(tx *bolt.Tx) error {
		b := tx.Bucket(bktSeqIDs)
		id4 = bytes.Clone(b.Get(u64key(4)))
		return b.Put(u64key(3), id4) // seq 3 now claims seq 4's id
	})
	wantDefect(t, path, 3, 0, "id index")
	l, err := Open(path, Options{Key: testKey("tamper"), CheckpointEvery: 10})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	// Seq 3's own id is indexed nowhere now; seq 4's twice.
	for _, id := range []string{hex.EncodeToString(id4), e3(t, l)} {
		e, err := l.Lookup(id)
		if (err != nil || e.ID != id) && !errors.Is(err, ErrCorrupt) && !errors.Is(err, ErrNotFound) {
			t.Fatalf("lookup of %s: %+v %v", id, e, err)
		}
	}
}

// e3 is the real id of seq 3.
func e3(t *testing.T, l *Log) string {
	t.Helper()
	e, err := l.Get(3)
	if err != nil {
		t.Fatal(err)
	}
	return e.ID
}
