package receipts

import (
	"bytes"
	"encoding/binary"
	"slices"
	"sync"

	bolt "go.etcd.io/bbolt"
)

// idIndex finds a receipt's seq from its id for a writable log. On disk the
// ids are stored in seq order (bucket seq_ids: seq → id), which a commit
// appends to at its end: keyed by the random id itself, as format 1 did,
// every receipt dirtied its own 4 KB leaf of the index, half of what a
// commit wrote. The lookup side lives here instead, rebuilt from seq_ids
// when the log opens: the first 8 bytes of every id with its seq, 16 bytes
// per receipt (16 MB per million receipts). A prefix names candidates; the
// full id is compared against seq_ids, so prefixes that collide cost a read,
// never a wrong answer.
//
// The committer adds; Lookup (any goroutine) reads.
type idIndex struct {
	mu sync.RWMutex
	// sorted holds the ids known at open and those folded in since, by
	// prefix (ties in any order).
	sorted []idRef
	// recent holds the ids added since the last fold; extra the rare ones
	// whose prefix recent holds already.
	recent map[uint64]uint64
	extra  []idRef
}

type idRef struct{ prefix, seq uint64 }

func idPrefix(id []byte) uint64 { return binary.BigEndian.Uint64(id) }

// minFold is the fewest recent ids folded into sorted at once.
const minFold = 4096

func newIDIndex(refs []idRef) *idIndex {
	slices.SortFunc(refs, cmpRef)
	return &idIndex{sorted: refs, recent: make(map[uint64]uint64)}
}

func cmpRef(a, b idRef) int {
	switch {
	case a.prefix < b.prefix:
		return -1
	case a.prefix > b.prefix:
		return 1
	}
	return 0
}

// loadIDIndex reads every id of a format-2 log of n receipts.
func loadIDIndex(tx *bolt.Tx, n uint64) (*idIndex, error) {
	b := tx.Bucket(bktSeqIDs)
	refs := make([]idRef, 0, n)
	c := b.Cursor()
	for k, v := c.First(); k != nil; k, v = c.Next() {
		if len(k) != 8 || len(v) != 32 {
			return nil, corrupt(0, 0, "id index entry %x: key %d bytes, id %d bytes", k, len(k), len(v))
		}
		refs = append(refs, idRef{idPrefix(v), getU64(k)})
	}
	return newIDIndex(refs), nil
}

// find returns the seq stored in ids under id, reading candidates' full ids
// from ids (the seq_ids bucket of the caller's transaction).
func (x *idIndex) find(ids *bolt.Bucket, id []byte) (uint64, bool) {
	p := idPrefix(id)
	var cand [4]uint64
	seqs := cand[:0]
	x.mu.RLock()
	i, _ := slices.BinarySearchFunc(x.sorted, idRef{prefix: p}, cmpRef)
	for ; i < len(x.sorted) && x.sorted[i].prefix == p; i++ {
		seqs = append(seqs, x.sorted[i].seq)
	}
	if s, ok := x.recent[p]; ok {
		seqs = append(seqs, s)
	}
	for _, r := range x.extra {
		if r.prefix == p {
			seqs = append(seqs, r.seq)
		}
	}
	x.mu.RUnlock()
	var k [8]byte
	for _, s := range seqs {
		putU64(k[:], s)
		if bytes.Equal(ids.Get(k[:]), id) {
			return s, true
		}
	}
	return 0, false
}

// add records id at seq (committer only).
func (x *idIndex) add(id []byte, seq uint64) {
	p := idPrefix(id)
	x.mu.Lock()
	if _, ok := x.recent[p]; ok {
		x.extra = append(x.extra, idRef{p, seq})
	} else {
		x.recent[p] = seq
	}
	x.mu.Unlock()
}

// drop forgets the ids added at seqs after last (a failed commit's; committer
// only, before the next fold).
func (x *idIndex) drop(last uint64) {
	x.mu.Lock()
	for p, s := range x.recent {
		if s > last {
			delete(x.recent, p)
		}
	}
	x.extra = slices.DeleteFunc(x.extra, func(r idRef) bool { return r.seq > last })
	x.mu.Unlock()
}

// fold merges recent into sorted once recent holds a quarter as many ids,
// so that sorted is rewritten O(log n) times as the log grows and each id
// is copied a bounded number of times (committer only, between commits).
func (x *idIndex) fold() {
	x.mu.RLock()
	n := len(x.recent) + len(x.extra)
	due := n >= max(minFold, len(x.sorted)/4)
	x.mu.RUnlock()
	if !due {
		return
	}
	add := make([]idRef, 0, n)
	x.mu.RLock()
	for p, s := range x.recent {
		add = append(add, idRef{p, s})
	}
	add = append(add, x.extra...)
	old := x.sorted
	x.mu.RUnlock()
	slices.SortFunc(add, cmpRef)
	merged := make([]idRef, 0, len(old)+len(add))
	i, j := 0, 0
	for i < len(old) && j < len(add) {
		if old[i].prefix <= add[j].prefix {
			merged = append(merged, old[i])
			i++
		} else {
			merged = append(merged, add[j])
			j++
		}
	}
	merged = append(append(merged, old[i:]...), add[j:]...)
	x.mu.Lock()
	x.sorted = merged
	x.recent = make(map[uint64]uint64)
	x.extra = nil
	x.mu.Unlock()
}
