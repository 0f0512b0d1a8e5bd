package receipts

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

// TestFileCheckAcceptsWhatBboltWrites: the file check must never refuse a
// healthy file. bbolt writes random databases with everything its format
// has (values spanning overflow pages, deep trees, inline and nested
// buckets, deletions that free and reuse pages, persisted and unpersisted
// free lists), and the check accepts each one. (bbolt's own Tx.Check is no
// oracle here: it reports pages leaked by a persisted map free list as
// "unreachable unfreed", which harms nothing, and which this check ignores.)
func TestFileCheckAcceptsWhatBboltWrites(t *testing.T) {
	seed := rand.Uint64()
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 1))
	for round := 0; round < 6; round++ {
		path := filepath.Join(t.TempDir(), "b.db")
		db, err := bolt.Open(path, 0o600, &bolt.Options{NoFreelistSync: round%2 == 0, FreelistType: bolt.FreelistMapType})
		if err != nil {
			t.Fatal(err)
		}
		for tx := 0; tx < 40; tx++ {
			err := db.Update(func(tx *bolt.Tx) error {
				for op := 0; op < 50; op++ {
					name := []byte(fmt.Sprintf("b%d", rng.IntN(4)))
					b, err := tx.CreateBucketIfNotExists(name)
					if err != nil {
						return err
					}
					if rng.IntN(3) == 0 {
						if b, err = b.CreateBucketIfNotExists([]byte(fmt.Sprintf("n%d", rng.IntN(3)))); err != nil {
							return err
						}
					}
					k := []byte(fmt.Sprintf("k%06d", rng.IntN(2000)))
					switch rng.IntN(5) {
					case 0:
						if err := b.Delete(k); err != nil {
							return err
						}
					case 1:
						if err := b.Put(k, make([]byte, 4096+rng.IntN(20000))); err != nil {
							return err
						}
					default:
						if err := b.Put(k, make([]byte, rng.IntN(300))); err != nil {
							return err
						}
					}
				}
				if rng.IntN(10) == 0 {
					return tx.DeleteBucket([]byte(fmt.Sprintf("b%d", rng.IntN(4))))
				}
				return nil
			})
			if err != nil && !errors.Is(err, berrors.ErrBucketNotFound) {
				t.Fatal(err)
			}
		}
		db.Close()
		f, err := os.Open(path)
		if err != nil {
			t.Fatal(err)
		}
		st, _ := f.Stat()
		err = checkBoltFile(f, st.Size())
		f.Close()
		if err != nil {
			t.Fatalf("round %d: a healthy bbolt file refused: %v", round, err)
		}
	}
}
