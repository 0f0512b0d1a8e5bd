package central

import (
	"bytes"
	"encoding/binary"
	"hash/fnv"
	"io"
	"os"

	bolt "go.etcd.io/bbolt"

	"github.com/backbay-labs/chio-agent/receipts"
)

// ErrHeld: another process (a running collector, `receipts collect`) holds
// the central store, and bbolt lets no reader in meanwhile. errors.Is
// matches receipts.ErrLocked too.
var ErrHeld error = heldError{}

type heldError struct{}

func (heldError) Error() string        { return "central store held by another process" }
func (heldError) Is(target error) bool { return target == receipts.ErrLocked }

// heldHint says what to do about a store a collector holds.
const heldHint = "a running `chio-agent receipts collect` holds it: stop it (it resumes from its durable consumer; nothing is lost), " +
	"or read a snapshot it serves: curl -o central-snapshot.db http://<its --metrics-listen>/snapshot, then --receipts central-snapshot.db"

// Snapshot writes a consistent copy of the store to w (a bbolt file a
// reader opens as a central store), read in one read transaction while
// ingesting goes on.
func (s *Store) Snapshot(w io.Writer) (int64, error) {
	var n int64
	err := s.db.View(func(tx *bolt.Tx) error {
		var err error
		n, err = tx.WriteTo(w)
		return err
	})
	return n, err
}

// heldCentral says whether the bbolt file at path, which another process
// holds, is a central store: its newest valid meta page's root bucket holds
// a meta bucket whose format is Format. It reads the file without bbolt
// (whose read-only open waits for the holder), as receipts.CheckDatabaseFile
// reads any file before bbolt maps it; a page the writer is rewriting
// meanwhile fails a bound or the meta checksum and reads as false.
func heldCentral(path string) bool {
	f, err := os.Open(path)
	if err != nil {
		return false
	}
	defer f.Close()
	const hdr, metaSize = 16, 64
	page := func(id uint64, size int) []byte {
		buf := make([]byte, size)
		if _, err := f.ReadAt(buf, int64(id)*int64(size)); err != nil {
			return nil
		}
		return buf
	}
	first := make([]byte, hdr+metaSize)
	if _, err := f.ReadAt(first, 0); err != nil {
		return false
	}
	size := int(binary.LittleEndian.Uint32(first[hdr+8:]))
	if size < 1024 || size > 1<<16 {
		return false
	}
	var root, txid uint64
	found := false
	for id := range uint64(2) {
		buf := page(id, size)
		if buf == nil {
			continue
		}
		m := buf[hdr : hdr+metaSize]
		sum := fnv.New64a()
		sum.Write(m[:56])
		if binary.LittleEndian.Uint32(m) != 0xED0CDAED || binary.LittleEndian.Uint64(m[56:]) != sum.Sum64() {
			continue
		}
		if t := binary.LittleEndian.Uint64(m[48:]); !found || t > txid {
			root, txid, found = binary.LittleEndian.Uint64(m[16:]), t, true
		}
	}
	if !found {
		return false
	}
	// The root holds four buckets: one leaf page. The meta bucket is
	// inline (its value: a bucket header with root 0, then its page).
	meta, ok := leafValue(page(root, size), []byte("meta"))
	if !ok || len(meta) < hdr || binary.LittleEndian.Uint64(meta) != 0 {
		return false
	}
	format, ok := leafValue(meta[hdr:], []byte("format"))
	return ok && string(format) == Format
}

// leafValue finds key in a bbolt leaf page (p: page header, then elements
// of flags, pos, ksize and vsize, pos counted from the element).
func leafValue(p, key []byte) ([]byte, bool) {
	const hdr, elem = 16, 16
	if len(p) < hdr || binary.LittleEndian.Uint16(p[8:])&0x02 == 0 {
		return nil, false
	}
	n := int(binary.LittleEndian.Uint16(p[10:]))
	for i := range n {
		at := hdr + i*elem
		if at+elem > len(p) {
			return nil, false
		}
		e := p[at : at+elem]
		pos, ks, vs := int(binary.LittleEndian.Uint32(e[4:])), int(binary.LittleEndian.Uint32(e[8:])), int(binary.LittleEndian.Uint32(e[12:]))
		start := at + pos
		if pos < 0 || ks < 0 || vs < 0 || start+ks+vs > len(p) || start+ks+vs < start {
			return nil, false
		}
		if bytes.Equal(p[start:start+ks], key) {
			return p[start+ks : start+ks+vs], true
		}
	}
	return nil, false
}
