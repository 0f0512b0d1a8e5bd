package receipts

import (
	"context"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"testing"
)

// TestModelRandom drives the log with random operations (appends in both
// modes, flushes, seals, clean and crash-like closes, reads by seq, id and
// filter) and checks every read against a plain in-memory model.
func TestModelRandom(t *testing.T) {
	seed := rand.Uint64()
	if s := os.Getenv("RECEIPTS_MODEL_SEED"); s != "" {
		seed, _ = strconv.ParseUint(s, 10, 64)
	}
	t.Logf("seed %d (RECEIPTS_MODEL_SEED to repeat)", seed)
	rng := rand.New(rand.NewPCG(seed, 2))
	ctx := context.Background()
	key := testKey("model")
	path := filepath.Join(t.TempDir(), "model.db")
	var model []Entry // model[i] has seq i+1
	open := func() *Log {
		mode := ModeSync
		if rng.IntN(3) == 0 {
			mode = ModeAsync
		}
		l, err := Open(path, Options{Key: key, Mode: mode, CheckpointEvery: 1 + rng.IntN(20), QueueSize: 1 + rng.IntN(64)})
		if err != nil {
			t.Fatalf("open: %v", err)
		}
		if l.Recovery().LastSeq != uint64(len(model)) {
			t.Fatalf("reopen: last seq %d, model has %d", l.Recovery().LastSeq, len(model))
		}
		return l
	}
	l := open()
	n := 0
	for step := 0; step < 600; step++ {
		switch op := rng.IntN(100); {
		case op < 60:
			b := receipt(t, key, n)
			n++
			if _, err := l.Append(ctx, b); err != nil {
				t.Fatalf("step %d: append: %v", step, err)
			}
			e, _, _ := parseEntry(b)
			e.Seq = uint64(len(model) + 1)
			model = append(model, e)
		case op < 65:
			if err := l.Flush(ctx, rng.IntN(2) == 0); err != nil {
				t.Fatalf("step %d: flush: %v", step, err)
			}
		case op < 70:
			l.crashOnClose = rng.IntN(2) == 0
			if err := l.Close(); err != nil {
				t.Fatalf("step %d: close: %v", step, err)
			}
			verifyFile(t, path)
			l = open()
		case op < 85 && len(model) > 0:
			if err := l.Flush(ctx, false); err != nil {
				t.Fatal(err)
			}
			want := model[rng.IntN(len(model))]
			got, err := l.Get(want.Seq)
			if err != nil || got.ID != want.ID {
				t.Fatalf("step %d: get %d: %v %v", step, want.Seq, got.ID, err)
			}
			got, err = l.Lookup(want.ID)
			if err != nil || got.Seq != want.Seq {
				t.Fatalf("step %d: lookup %s: %v %v", step, want.ID, got.Seq, err)
			}
		case op < 100:
			if err := l.Flush(ctx, false); err != nil {
				t.Fatal(err)
			}
			f := Filter{Limit: rng.IntN(5)}
			if len(model) > 0 {
				pick := model[rng.IntN(len(model))]
				switch rng.IntN(4) {
				case 0:
					f.Host = pick.Host
				case 1:
					f.Workload = pick.Workload
				case 2:
					f.Decision = pick.Decision
				case 3:
					f.Since = pick.Timestamp
				}
				f.AfterSeq = uint64(rng.IntN(len(model)))
			}
			var want []uint64
			for i := range model {
				if f.match(&model[i]) && (f.Limit == 0 || len(want) < f.Limit) {
					want = append(want, model[i].Seq)
				}
			}
			var got []uint64
			if err := l.Scan(ctx, f, func(e Entry) error { got = append(got, e.Seq); return nil }); err != nil {
				t.Fatal(err)
			}
			if len(got) != len(want) {
				t.Fatalf("step %d: scan %+v: got %v, want %v", step, f, got, want)
			}
			for i := range got {
				if got[i] != want[i] {
					t.Fatalf("step %d: scan %+v: got %v, want %v", step, f, got, want)
				}
			}
		}
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if rep := verifyFile(t, path); rep.Receipts != uint64(len(model)) || rep.Unsealed != 0 {
		t.Fatalf("final: %+v, model %d", rep, len(model))
	}
}
