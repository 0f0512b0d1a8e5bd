package session

import (
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"slices"
)

// Ring assigns each session to one of a set of replicas by rendezvous
// (highest random weight) hashing: a session belongs to the replica whose
// hash of (replica, session id) is highest. Every replica computes the same
// owner from the same peer list, whatever its order; adding or removing one
// of N replicas moves only the sessions that go to or came from it, about
// 1/N of them. It is the building block of pinning sessions to sidecar
// replicas (issue #15's second half); nothing routes by it yet.
type Ring struct {
	peers []string
}

// NewRing returns the ring of peers (names or addresses, each non-empty
// and listed once).
func NewRing(peers []string) (*Ring, error) {
	if len(peers) == 0 {
		return nil, fmt.Errorf("new session ring: no peers")
	}
	ps := slices.Clone(peers)
	slices.Sort(ps)
	for i, p := range ps {
		if p == "" {
			return nil, fmt.Errorf("new session ring: an empty peer name")
		}
		if i > 0 && ps[i-1] == p {
			return nil, fmt.Errorf("new session ring: peer %q listed twice", p)
		}
	}
	return &Ring{peers: ps}, nil
}

// Peers returns the ring's peers, sorted.
func (r *Ring) Peers() []string { return slices.Clone(r.peers) }

// Owner returns the peer that owns session id.
func (r *Ring) Owner(id string) string {
	best, bestScore := "", uint64(0)
	for _, p := range r.peers {
		if s := score(p, id); best == "" || s > bestScore {
			best, bestScore = p, s
		}
	}
	return best
}

// OwnerAmong returns the peer that owns session id among the peers up
// says are up: the highest-scoring of them, so that taking a peer out
// moves exactly its sessions, each to its next-highest peer. "" when
// none is up.
func (r *Ring) OwnerAmong(id string, up func(string) bool) string {
	best, bestScore := "", uint64(0)
	for _, p := range r.peers {
		if !up(p) {
			continue
		}
		if s := score(p, id); best == "" || s > bestScore {
			best, bestScore = p, s
		}
	}
	return best
}

// score is the first 8 bytes of SHA-256(len(peer) || peer || id): the
// length prefix keeps ("ab","c") and ("a","bc") apart.
func score(peer, id string) uint64 {
	h := sha256.New()
	var n [8]byte
	binary.BigEndian.PutUint64(n[:], uint64(len(peer)))
	h.Write(n[:])
	h.Write([]byte(peer))
	h.Write([]byte(id))
	var sum [sha256.Size]byte
	return binary.BigEndian.Uint64(h.Sum(sum[:0]))
}
