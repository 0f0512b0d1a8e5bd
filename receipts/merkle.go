package receipts

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"math/bits"
	"strings"
)

// Hash is a SHA-256 digest: a Merkle leaf, node or root.
type Hash [32]byte

// String renders h the way Chio writes Merkle roots: "0x" + lowercase hex.
func (h Hash) String() string { return "0x" + hex.EncodeToString(h[:]) }

// parseRoot reads a "0x"-prefixed 64-hex-digit hash.
func parseRoot(s string) (Hash, error) {
	var h Hash
	if !strings.HasPrefix(s, "0x") || len(s) != 66 {
		return h, fmt.Errorf("parse hash %q: want 0x and 64 lowercase hex digits", s)
	}
	if strings.ToLower(s) != s {
		return h, fmt.Errorf("parse hash %q: hex must be lowercase", s)
	}
	if _, err := hex.Decode(h[:], []byte(s[2:])); err != nil {
		return h, fmt.Errorf("parse hash %q: %w", s, err)
	}
	return h, nil
}

// LeafHash is the Merkle leaf of one entry: SHA-256(0x00 || data). For a
// receipt, data is the canonical JSON of the signed receipt.
func LeafHash(data []byte) Hash {
	h := sha256.New()
	h.Write([]byte{0})
	h.Write(data)
	var out Hash
	h.Sum(out[:0])
	return out
}

// nodeHash joins two subtrees: SHA-256(0x01 || left || right).
func nodeHash(l, r Hash) Hash {
	var buf [65]byte
	buf[0] = 1
	copy(buf[1:], l[:])
	copy(buf[33:], r[:])
	return sha256.Sum256(buf[:])
}

// MerkleRoot computes the root over leaves level by level, carrying an odd
// last node up unchanged. This is RFC 6962's tree hash, so proofs built here
// check with any RFC 6962 verifier. The root of no leaves is undefined in
// Chio (a checkpoint never covers an empty batch); it returns the zero Hash.
func MerkleRoot(leaves []Hash) Hash {
	if len(leaves) == 0 {
		return Hash{}
	}
	level := append([]Hash(nil), leaves...)
	for len(level) > 1 {
		level = parentLevel(level)
	}
	return level[0]
}

// parentLevel hashes a level's nodes in pairs, in place; an odd last node is
// carried up unchanged.
func parentLevel(level []Hash) []Hash {
	next := level[:0]
	for i := 0; i < len(level); i += 2 {
		if i+1 < len(level) {
			next = append(next, nodeHash(level[i], level[i+1]))
		} else {
			next = append(next, level[i])
		}
	}
	return next
}

// InclusionPath returns the audit path for leaf index among leaves, bottom
// up: the sibling at each level where one exists (a carried-up node has no
// sibling at that level and contributes nothing).
func InclusionPath(leaves []Hash, index int) ([]Hash, error) {
	if index < 0 || index >= len(leaves) {
		return nil, fmt.Errorf("build inclusion path: leaf %d outside tree of %d", index, len(leaves))
	}
	var path []Hash
	level := append([]Hash(nil), leaves...)
	for len(level) > 1 {
		sib := index ^ 1
		if sib < len(level) {
			path = append(path, level[sib])
		}
		level = parentLevel(level)
		index /= 2
	}
	return path, nil
}

// RootFromPath recomputes the root from a leaf, its index, the tree size and
// its audit path. It fails when the path has the wrong length for the
// position, so a proof cannot be stretched or truncated to fit another tree.
func RootFromPath(leaf Hash, index, size uint64, path []Hash) (Hash, error) {
	if size == 0 || index >= size {
		return Hash{}, fmt.Errorf("check inclusion path: leaf %d outside tree of %d", index, size)
	}
	h := leaf
	used := 0
	for width := size; width > 1; width = (width + 1) / 2 {
		if index^1 < width {
			if used >= len(path) {
				return Hash{}, fmt.Errorf("check inclusion path: path too short (%d hashes)", len(path))
			}
			if index&1 == 0 {
				h = nodeHash(h, path[used])
			} else {
				h = nodeHash(path[used], h)
			}
			used++
		}
		index /= 2
	}
	if used != len(path) {
		return Hash{}, fmt.Errorf("check inclusion path: %d extra hashes", len(path)-used)
	}
	return h, nil
}

// frontier accumulates an append-only Merkle tree in O(log n) space: the
// roots of its perfect subtrees, largest first. The chain root over every
// checkpoint so far is kept this way so a checkpoint never re-reads the
// whole chain.
type frontier struct {
	n     uint64
	peaks []Hash
}

func (f *frontier) push(leaf Hash) {
	h := leaf
	// Merge while the lowest set bits of n say the last peak is a sibling of
	// the same height.
	for n := f.n; n&1 == 1; n >>= 1 {
		h = nodeHash(f.peaks[len(f.peaks)-1], h)
		f.peaks = f.peaks[:len(f.peaks)-1]
	}
	f.peaks = append(f.peaks, h)
	f.n++
}

// root folds the peaks right to left, which is exactly what carrying odd
// nodes up level by level produces.
func (f *frontier) root() Hash {
	if len(f.peaks) == 0 {
		return Hash{}
	}
	h := f.peaks[len(f.peaks)-1]
	for i := len(f.peaks) - 2; i >= 0; i-- {
		h = nodeHash(f.peaks[i], h)
	}
	return h
}

func (f *frontier) clone() frontier {
	return frontier{n: f.n, peaks: append([]Hash(nil), f.peaks...)}
}

// marshal encodes the frontier as n (8 bytes big-endian) then the peaks.
func (f *frontier) marshal() []byte {
	out := make([]byte, 8, 8+32*len(f.peaks))
	putU64(out, f.n)
	for _, p := range f.peaks {
		out = append(out, p[:]...)
	}
	return out
}

func unmarshalFrontier(b []byte) (frontier, error) {
	var f frontier
	if len(b) < 8 || (len(b)-8)%32 != 0 {
		return f, fmt.Errorf("decode chain frontier: %d bytes", len(b))
	}
	f.n = getU64(b)
	if bits.OnesCount64(f.n) != (len(b)-8)/32 {
		return f, fmt.Errorf("decode chain frontier: %d peaks for %d leaves", (len(b)-8)/32, f.n)
	}
	for i := 8; i < len(b); i += 32 {
		var h Hash
		copy(h[:], b[i:i+32])
		f.peaks = append(f.peaks, h)
	}
	return f, nil
}
