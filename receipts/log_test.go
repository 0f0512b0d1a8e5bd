package receipts

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

func TestAppendCheckpointVerify(t *testing.T) {
	key := testKey("a")
	l, path := openTest(t, Options{Key: key, CheckpointEvery: 10})
	ctx := context.Background()
	for i := 0; i < 25; i++ {
		seq, err := l.Append(ctx, receipt(t, key, i))
		if err != nil {
			t.Fatal(err)
		}
		if seq != uint64(i+1) {
			t.Fatalf("append %d: seq %d", i, seq)
		}
	}
	st, err := l.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if st.Receipts != 25 || st.Checkpoints != 2 || st.Unsealed != 5 {
		t.Fatalf("stats %+v", st)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	rep := verifyFile(t, path)
	if rep.Checkpoints != 3 || rep.Unsealed != 0 || rep.Verified != 25 {
		t.Fatalf("after close: %+v", rep)
	}
}

func TestProveEveryReceipt(t *testing.T) {
	key := testKey("p")
	l, _ := openTest(t, Options{Key: key, CheckpointEvery: 7})
	ctx := context.Background()
	for i := 0; i < 30; i++ {
		if _, err := l.Append(ctx, receipt(t, key, i)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := l.Prove(30); !errors.Is(err, ErrNotFound) {
		t.Fatalf("prove unsealed: %v", err)
	}
	if err := l.Flush(ctx, true); err != nil {
		t.Fatal(err)
	}
	pub := l.KernelKey()
	for seq := uint64(1); seq <= 30; seq++ {
		p, err := l.Prove(seq)
		if err != nil {
			t.Fatal(err)
		}
		if err := p.Check(pub, VerifyReceipt); err != nil {
			t.Fatalf("seq %d: %v", seq, err)
		}
		// A proof moved to another leaf must fail.
		p.LeafIndex ^= 1
		if p.LeafIndex < p.TreeSize {
			if err := p.Check(pub, nil); err == nil {
				t.Fatalf("seq %d: proof with wrong index checks", seq)
			}
		}
	}
}

func TestMerkleRootMatchesFrontierAndPaths(t *testing.T) {
	var leaves []Hash
	var f frontier
	for n := 1; n <= 70; n++ {
		leaves = append(leaves, LeafHash([]byte{byte(n)}))
		f.push(leaves[n-1])
		root := MerkleRoot(leaves)
		if f.root() != root {
			t.Fatalf("n=%d: frontier root differs", n)
		}
		g, err := unmarshalFrontier(f.marshal())
		if err != nil || g.root() != root {
			t.Fatalf("n=%d: frontier round trip: %v", n, err)
		}
		for i := range leaves {
			path, err := InclusionPath(leaves, i)
			if err != nil {
				t.Fatal(err)
			}
			got, err := RootFromPath(leaves[i], uint64(i), uint64(n), path)
			if err != nil || got != root {
				t.Fatalf("n=%d i=%d: %v", n, i, err)
			}
			if len(path) > 0 {
				if _, err := RootFromPath(leaves[i], uint64(i), uint64(n), path[:len(path)-1]); err == nil {
					t.Fatalf("n=%d i=%d: short path accepted", n, i)
				}
			}
		}
	}
}

// RFC 6962 tree of 3: root = H(1 || H(1||a||b) || c).
func TestMerkleOddNodeCarriedUp(t *testing.T) {
	a, b, c := LeafHash([]byte("a")), LeafHash([]byte("b")), LeafHash([]byte("c"))
	if MerkleRoot([]Hash{a, b, c}) != nodeHash(nodeHash(a, b), c) {
		t.Fatal("odd node not carried up")
	}
}

func TestConcurrentAppendSyncAndAsync(t *testing.T) {
	for _, mode := range []Mode{ModeSync, ModeAsync} {
		t.Run(mode.String(), func(t *testing.T) {
			key := testKey("c")
			l, path := openTest(t, Options{Key: key, Mode: mode, QueueSize: 16, CheckpointEvery: 50})
			ctx := context.Background()
			var wg sync.WaitGroup
			const writers, each = 8, 60
			seqs := make(chan uint64, writers*each)
			for w := 0; w < writers; w++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for i := 0; i < each; i++ {
						seq, err := l.Append(ctx, receipt(t, key, w*each+i))
						if err != nil {
							t.Error(err)
							return
						}
						seqs <- seq
					}
				}()
			}
			wg.Wait()
			close(seqs)
			if err := l.Flush(ctx, false); err != nil {
				t.Fatal(err)
			}
			if mode == ModeSync {
				seen := map[uint64]bool{}
				for s := range seqs {
					if s == 0 || s > writers*each || seen[s] {
						t.Fatalf("bad or repeated seq %d", s)
					}
					seen[s] = true
				}
			}
			if got := l.LastSeq(); got != writers*each {
				t.Fatalf("last seq %d", got)
			}
			if err := l.Close(); err != nil {
				t.Fatal(err)
			}
			if rep := verifyFile(t, path); rep.Receipts != writers*each {
				t.Fatalf("verified %d", rep.Receipts)
			}
		})
	}
}

func TestReopenContinuesChain(t *testing.T) {
	key := testKey("r")
	path := filepath.Join(t.TempDir(), "r.db")
	ctx := context.Background()
	n := 0
	for round := 0; round < 3; round++ {
		l, err := Open(path, Options{Key: key, CheckpointEvery: 4})
		if err != nil {
			t.Fatal(err)
		}
		for i := 0; i < 6; i++ {
			if _, err := l.Append(ctx, receipt(t, key, n)); err != nil {
				t.Fatal(err)
			}
			n++
		}
		if err := l.Close(); err != nil {
			t.Fatal(err)
		}
	}
	rep := verifyFile(t, path)
	if rep.Receipts != 18 || rep.Unsealed != 0 {
		t.Fatalf("%+v", rep)
	}
}

func TestKeyMismatchRefusedUnlessRotated(t *testing.T) {
	path := filepath.Join(t.TempDir(), "k.db")
	ctx := context.Background()
	k1, k2 := testKey("k1"), testKey("k2")
	l, err := Open(path, Options{Key: k1})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := l.Append(ctx, receipt(t, k1, 1)); err != nil {
		t.Fatal(err)
	}
	if _, err := l.Append(ctx, receipt(t, k2, 2)); !errors.Is(err, ErrKeyMismatch) {
		t.Fatalf("receipt by another key: %v", err)
	}
	l.Close()
	if _, err := Open(path, Options{Key: k2}); !errors.Is(err, ErrKeyMismatch) {
		t.Fatalf("open with another key: %v", err)
	}
	l, err = Open(path, Options{Key: k2, RotateKey: true})
	if err != nil {
		t.Fatal(err)
	}
	if !l.Recovery().Rotated {
		t.Fatal("rotation not reported")
	}
	if _, err := l.Append(ctx, receipt(t, k2, 3)); err != nil {
		t.Fatal(err)
	}
	l.Close()
	rep := verifyFile(t, path)
	if len(rep.Keys) != 2 || rep.Keys[1].SinceSeq != 2 || rep.Receipts != 2 {
		t.Fatalf("%+v", rep)
	}
}

func TestReadOnlyTimesOutWhileHeld(t *testing.T) {
	l, path := openTest(t, Options{})
	_ = l
	start := time.Now()
	_, err := Open(path, Options{ReadOnly: true, LockTimeout: 100 * time.Millisecond})
	if !errors.Is(err, ErrLocked) {
		t.Fatalf("open held log: %v", err)
	}
	_ = start
}

func TestBadFiles(t *testing.T) {
	dir := t.TempDir()
	empty := filepath.Join(dir, "empty.db")
	os.WriteFile(empty, nil, 0o600)
	if _, err := Open(empty, Options{Key: testKey("x")}); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("empty: %v", err)
	}
	if st, _ := os.Stat(empty); st.Size() != 0 {
		t.Fatal("empty file was written")
	}
	junk := filepath.Join(dir, "junk.db")
	os.WriteFile(junk, []byte("this is not a database, but it is evidence of something"), 0o600)
	if _, err := Open(junk, Options{Key: testKey("x")}); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("junk: %v", err)
	}
	if _, err := Open(filepath.Join(dir, "missing.db"), Options{ReadOnly: true}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("missing: %v", err)
	}
}

func TestSnapshotWhileAppendingIsAVerifiableLog(t *testing.T) {
	key := testKey("snap")
	l, path := openTest(t, Options{Key: key, CheckpointEvery: 5})
	ctx := context.Background()
	for i := 0; i < 12; i++ {
		if _, err := l.Append(ctx, receipt(t, key, i)); err != nil {
			t.Fatal(err)
		}
	}
	var buf bytes.Buffer
	if _, err := l.Snapshot(&buf); err != nil {
		t.Fatalf("snapshot: %v", err)
	}
	// The original is still open for writing; the copy opens read-only.
	cp := filepath.Join(filepath.Dir(path), "copy.db")
	if err := os.WriteFile(cp, buf.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := Open(cp, Options{ReadOnly: true})
	if err != nil {
		t.Fatalf("open snapshot: %v", err)
	}
	defer c.Close()
	rep, err := c.Verify(ctx, VerifyOptions{})
	if err != nil {
		t.Fatalf("verify snapshot: %v", err)
	}
	if rep.LastSeq != 12 {
		t.Fatalf("snapshot holds %d receipts, want 12", rep.LastSeq)
	}
}
