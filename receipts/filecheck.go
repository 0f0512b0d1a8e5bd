package receipts

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"hash/fnv"
	"io"
)

// The structural check of a receipt log file, run before bbolt ever maps it.
//
// bbolt trusts its file: it maps it and follows page ids and element offsets
// without bounds checks. A file truncated below its high-water mark faults
// (SIGBUS) on the first page past the end; a garbage page makes bbolt panic,
// in a writable open inside a goroutine of its own (its free-page scan), where
// no recover can reach. So Open reads the file itself with pread, no mapping,
// and checks what bbolt would otherwise assume: both meta pages (magic,
// version, checksum), that the file holds every page below the high-water
// mark, and the whole B+tree: every reachable page within bounds and
// referenced once, of the right type, its elements inside the page, its keys
// in order and within its parent's range (what bbolt's own Tx.Check and its
// free-page scan check, which they report by panicking), and inline buckets
// likewise. Only a file that passes is handed to bbolt.
//
// The layout read here is bbolt's file format version 2 (go.etcd.io/bbolt,
// internal/common: page.go, meta.go, bucket.go).

const (
	boltMagic       = 0xED0CDAED
	boltVersion     = 2
	pageHeaderSize  = 16 // id u64, flags u16, count u16, overflow u32
	metaSize        = 64 // magic, version, page size, flags, root {pgid, seq}, freelist, pgid, txid, checksum
	metaSumLen      = 56 // the checksum covers the meta up to itself
	elementSize     = 16 // branch: pos u32, ksize u32, pgid u64; leaf: flags, pos, ksize, vsize u32
	bucketHeader    = 16 // root pgid u64, sequence u64
	pageBranch      = 0x01
	pageLeaf        = 0x02
	pageMeta        = 0x04
	pageFreelist    = 0x10
	leafBucketFlag  = 0x01
	noFreelist      = ^uint64(0)
	minPageSize     = 1024
	maxPageSize     = 1 << 16
	maxTreeDepth    = 64 // a B+tree of 2^64 keys is far shallower
	maxBucketNested = 8  // the log nests one level; anything deeper is not ours
)

// boltMeta is one decoded meta page.
type boltMeta struct {
	page     uint64 // 0 or 1: where it was read
	pageSize uint32
	root     uint64
	freelist uint64
	pgid     uint64 // high-water mark: pages [0, pgid) are in use or free
	txid     uint64
	err      string // why it is invalid; "" when valid
}

func le16(b []byte) uint16 { return binary.LittleEndian.Uint16(b) }
func le32(b []byte) uint32 { return binary.LittleEndian.Uint32(b) }
func le64(b []byte) uint64 { return binary.LittleEndian.Uint64(b) }

// decodeMeta reads the meta page at page index idx from buf (one page).
func decodeMeta(buf []byte, idx uint64) boltMeta {
	m := boltMeta{page: idx}
	if len(buf) < pageHeaderSize+metaSize {
		m.err = "shorter than a meta page"
		return m
	}
	h, b := buf[:pageHeaderSize], buf[pageHeaderSize:pageHeaderSize+metaSize]
	m.pageSize = le32(b[8:])
	m.root = le64(b[16:])
	m.freelist = le64(b[32:])
	m.pgid = le64(b[40:])
	m.txid = le64(b[48:])
	sum := fnv.New64a()
	sum.Write(b[:metaSumLen])
	switch {
	case le32(b[0:]) != boltMagic:
		m.err = "not a bbolt meta page (bad magic)"
	case le32(b[4:]) != boltVersion:
		m.err = fmt.Sprintf("bbolt format version %d, want %d", le32(b[4:]), boltVersion)
	case le64(b[56:]) != sum.Sum64():
		m.err = "checksum mismatch"
	case le16(h[8:]) != pageMeta:
		m.err = fmt.Sprintf("page flags %#x, want meta", le16(h[8:]))
	case le64(h[0:]) != idx:
		m.err = fmt.Sprintf("page header names page %d", le64(h[0:]))
	case m.pageSize < minPageSize || m.pageSize > maxPageSize || m.pageSize&(m.pageSize-1) != 0:
		m.err = fmt.Sprintf("page size %d is not a power of two in [%d, %d]", m.pageSize, minPageSize, maxPageSize)
	case m.pgid < 3:
		m.err = fmt.Sprintf("high-water mark %d leaves no room for a root page", m.pgid)
	case m.root < 2 || m.root >= m.pgid:
		m.err = fmt.Sprintf("root page %d outside [2, %d)", m.root, m.pgid)
	case m.freelist != noFreelist && (m.freelist < 2 || m.freelist >= m.pgid):
		m.err = fmt.Sprintf("freelist page %d outside [2, %d)", m.freelist, m.pgid)
	}
	return m
}

// fileChecker walks one file's page tree.
type fileChecker struct {
	f       io.ReaderAt
	ps      uint64 // page size
	hwm     uint64 // high-water mark (pages)
	visited []uint64
	// bufs are page buffers reused across the walk, one per slot: the walk
	// is depth first, so one page per depth of each nested tree is live at
	// a time (its keys bound its children's), and the page after it at
	// that depth replaces it only once its subtree is done.
	bufs [][]byte
}

// short prints a key for an error, cut to 32 bytes.
func short(k []byte) string {
	if len(k) > 32 {
		return fmt.Sprintf("%x…", k[:32])
	}
	return fmt.Sprintf("%x", k)
}

// slot is the buffer slot of a page at depth in a tree nested nest deep.
func slot(nest, depth int) int { return nest*(maxTreeDepth+2) + depth }

// checkBoltFile checks the file f of size bytes (see the comment at the top
// of this file). It returns a *DefectError naming the page at fault, wrapping
// ErrCorrupt, or an I/O error.
func checkBoltFile(f io.ReaderAt, size int64) error {
	if size < 2*minPageSize {
		return corruptPage(0, "file is %d bytes, smaller than two meta pages (truncated?)", size)
	}
	// Page 0 names the page size; if page 0 is damaged, page 1 is searched
	// for at each possible page size, as bbolt does.
	var metas []boltMeta
	first := make([]byte, minPageSize)
	if _, err := f.ReadAt(first, 0); err != nil {
		return fmt.Errorf("read meta page 0: %w", err)
	}
	m0 := decodeMeta(first, 0)
	ps := uint64(m0.pageSize)
	if m0.err != "" {
		ps = 0
		for s := uint64(minPageSize); s <= maxPageSize && int64(2*s) <= size; s <<= 1 {
			buf := make([]byte, minPageSize)
			if _, err := f.ReadAt(buf, int64(s)); err != nil {
				return fmt.Errorf("read meta page 1: %w", err)
			}
			if m := decodeMeta(buf, 1); m.err == "" && uint64(m.pageSize) == s {
				ps = s
				break
			}
		}
		if ps == 0 {
			return corruptPage(0, "meta page 0: %s, and no valid meta page 1 found", m0.err)
		}
	}
	if int64(2*ps) > size {
		return corruptPage(0, "file is %d bytes, smaller than two %d-byte meta pages (truncated?)", size, ps)
	}
	for i := uint64(0); i < 2; i++ {
		buf := make([]byte, ps)
		if _, err := f.ReadAt(buf, int64(i*ps)); err != nil {
			return fmt.Errorf("read meta page %d: %w", i, err)
		}
		m := decodeMeta(buf, i)
		if m.err == "" && uint64(m.pageSize) != ps {
			m.err = fmt.Sprintf("page size %d, meta page 0 says %d", m.pageSize, ps)
		}
		metas = append(metas, m)
	}
	// Both meta pages are always valid in a log this package wrote: bbolt
	// writes both when it creates a file and rewrites one whole page per
	// commit. An invalid one is damage (or tampering), and falling back to
	// the other, as bbolt would, silently drops the last commit: refuse.
	for _, m := range metas {
		if m.err != "" {
			return corruptPage(m.page, "meta page %d: %s", m.page, m.err)
		}
	}
	m := metas[0]
	if metas[1].txid > m.txid {
		m = metas[1]
	}
	if need := m.pgid * ps; m.pgid > uint64(size)/ps {
		return corruptPage(m.pgid-1, "file is %d bytes but meta page %d (txid %d) says it holds %d pages of %d bytes (%d bytes): truncated",
			size, m.page, m.txid, m.pgid, ps, need)
	}
	c := &fileChecker{f: f, ps: ps, hwm: m.pgid, visited: make([]uint64, (m.pgid+63)/64)}
	c.visited[0] |= 3 // the meta pages
	if m.freelist != noFreelist {
		if err := c.checkFreelist(m.freelist); err != nil {
			return err
		}
	}
	return c.checkTree(m.root, 0)
}

func corruptPage(page uint64, format string, args ...any) error {
	return &DefectError{Page: page, Reason: fmt.Sprintf(format, args...), Err: ErrCorrupt}
}

// mark records pages id..id+overflow as reachable, refusing a page reached
// twice (a cycle, or two parents sharing a child).
func (c *fileChecker) mark(id uint64, overflow uint32) error {
	for p := id; p <= id+uint64(overflow); p++ {
		if c.visited[p/64]&(1<<(p%64)) != 0 {
			return corruptPage(p, "page referenced twice")
		}
		c.visited[p/64] |= 1 << (p % 64)
	}
	return nil
}

// readPage reads page id with its overflow pages, checking its header, into
// the buffer of slot (see bufs), which it returns. from says who names the
// page, for the error.
func (c *fileChecker) readPage(id uint64, slot int, from func() string) ([]byte, error) {
	if id < 2 || id >= c.hwm {
		return nil, corruptPage(id, "%s names page %d, outside [2, %d) (high-water mark)", from(), id, c.hwm)
	}
	for len(c.bufs) <= slot {
		c.bufs = append(c.bufs, make([]byte, c.ps))
	}
	buf := c.bufs[slot][:c.ps]
	if _, err := c.f.ReadAt(buf, int64(id*c.ps)); err != nil {
		return nil, fmt.Errorf("read page %d: %w", id, err)
	}
	if got := le64(buf); got != id {
		return nil, corruptPage(id, "page header names page %d", got)
	}
	overflow := le32(buf[12:])
	if uint64(overflow) >= c.hwm-id {
		return nil, corruptPage(id, "%d overflow pages run past the high-water mark %d", overflow, c.hwm)
	}
	if err := c.mark(id, overflow); err != nil {
		return nil, err
	}
	if overflow > 0 {
		n := (uint64(overflow) + 1) * c.ps
		if uint64(cap(c.bufs[slot])) < n {
			c.bufs[slot] = make([]byte, n)
			copy(c.bufs[slot], buf)
		}
		buf = c.bufs[slot][:n]
		if _, err := c.f.ReadAt(buf[c.ps:], int64((id+1)*c.ps)); err != nil {
			return nil, fmt.Errorf("read page %d: %w", id, err)
		}
	}
	return buf, nil
}

func (c *fileChecker) checkFreelist(id uint64) error {
	buf, err := c.readPage(id, 0, func() string { return "meta page" })
	if err != nil {
		return err
	}
	if fl := le16(buf[8:]); fl != pageFreelist {
		return corruptPage(id, "freelist page has flags %#x", fl)
	}
	n, at := uint64(le16(buf[10:])), uint64(pageHeaderSize)
	if n == 0xFFFF {
		if len(buf) < pageHeaderSize+8 {
			return corruptPage(id, "freelist page too short")
		}
		n, at = le64(buf[pageHeaderSize:]), pageHeaderSize+8
	}
	if n > (uint64(len(buf))-at)/8 {
		return corruptPage(id, "freelist claims %d ids, the page holds at most %d", n, (uint64(len(buf))-at)/8)
	}
	for i := uint64(0); i < n; i++ {
		if p := le64(buf[at+8*i:]); p < 2 || p >= c.hwm {
			return corruptPage(id, "freelist names page %d, outside [2, %d)", p, c.hwm)
		}
	}
	return nil
}

// checkTree checks the bucket tree rooted at page root, and every bucket
// nested in it.
func (c *fileChecker) checkTree(root uint64, nest int) error {
	if nest > maxBucketNested {
		return corruptPage(root, "buckets nested deeper than %d", maxBucketNested)
	}
	buf, err := c.readPage(root, slot(nest, 0), func() string { return "bucket" })
	if err != nil {
		return err
	}
	_, err = c.checkNode(root, buf, nil, nil, 0, nest)
	return err
}

// element returns the bytes [pos, pos+n) relative to the element at offset
// at of page buf, or false when they do not lie inside the page.
func element(buf []byte, at int, pos uint64, n uint32) ([]byte, bool) {
	lo := uint64(at) + pos
	hi := lo + uint64(n)
	if hi > uint64(len(buf)) {
		return nil, false
	}
	return buf[lo:hi], true
}

// checkNode checks one branch or leaf page (buf, whose header is already
// checked) whose keys must lie in [lo, hi) (nil: unbounded), and its
// subtree; it returns the largest key in the subtree. id is the page id, or
// the enclosing page's id for an inline bucket's page.
func (c *fileChecker) checkNode(id uint64, buf, lo, hi []byte, depth, nest int) ([]byte, error) {
	if depth > maxTreeDepth {
		return nil, corruptPage(id, "tree deeper than %d pages", maxTreeDepth)
	}
	flags, count := le16(buf[8:]), int(le16(buf[10:]))
	if flags != pageBranch && flags != pageLeaf {
		return nil, corruptPage(id, "page flags %#x where a branch or leaf page belongs", flags)
	}
	if pageHeaderSize+count*elementSize > len(buf) {
		return nil, corruptPage(id, "%d elements do not fit in the page", count)
	}
	if flags == pageBranch && count == 0 {
		return nil, corruptPage(id, "branch page with no elements")
	}
	min := lo
	var last []byte
	for i := 0; i < count; i++ {
		at := pageHeaderSize + i*elementSize
		e := buf[at : at+elementSize]
		var key []byte
		var ok bool
		if flags == pageBranch {
			key, ok = element(buf, at, uint64(le32(e[0:])), le32(e[4:]))
		} else {
			key, ok = element(buf, at, uint64(le32(e[4:])), le32(e[8:]))
		}
		if !ok {
			return nil, corruptPage(id, "element %d: key lies outside the page", i)
		}
		if len(key) == 0 {
			// bbolt never stores an empty key, and asserts so when it
			// loads a page to write it.
			return nil, corruptPage(id, "element %d: empty key", i)
		}
		switch cmp := bytes.Compare(key, min); {
		case min != nil && i == 0 && cmp < 0:
			return nil, corruptPage(id, "element 0: key %s sorts before its parent's key %s", short(key), short(min))
		case i > 0 && cmp <= 0:
			return nil, corruptPage(id, "element %d: key %s does not sort after the previous key %s", i, short(key), short(min))
		case hi != nil && bytes.Compare(key, hi) >= 0:
			return nil, corruptPage(id, "element %d: key %s does not sort before its parent's next key %s", i, short(key), short(hi))
		}
		if flags == pageBranch {
			child := le64(e[8:])
			next := hi
			if i+1 < count {
				ne := buf[at+elementSize : at+2*elementSize]
				nk, ok := element(buf, at+elementSize, uint64(le32(ne[0:])), le32(ne[4:]))
				if !ok {
					return nil, corruptPage(id, "element %d: key lies outside the page", i+1)
				}
				next = nk
			}
			cbuf, err := c.readPage(child, slot(nest, depth+1), func() string { return fmt.Sprintf("branch page %d element %d", id, i) })
			if err != nil {
				return nil, err
			}
			last, err = c.checkNode(child, cbuf, key, next, depth+1, nest)
			if err != nil {
				return nil, err
			}
			min = last
			continue
		}
		min, last = key, key
		value, ok := element(buf, at, uint64(le32(e[4:]))+uint64(le32(e[8:])), le32(e[12:]))
		if !ok {
			return nil, corruptPage(id, "element %d: value lies outside the page", i)
		}
		if le32(e[0:])&leafBucketFlag == 0 {
			continue
		}
		if len(value) < bucketHeader {
			return nil, corruptPage(id, "element %d: bucket header is %d bytes, want %d", i, len(value), bucketHeader)
		}
		if sub := le64(value); sub != 0 {
			if err := c.checkTree(sub, nest+1); err != nil {
				return nil, err
			}
			continue
		}
		// An inline bucket: a leaf page (without sub-buckets) inside the value.
		inline := value[bucketHeader:]
		if len(inline) < pageHeaderSize {
			return nil, corruptPage(id, "element %d: inline bucket shorter than a page header", i)
		}
		if fl := le16(inline[8:]); fl != pageLeaf {
			return nil, corruptPage(id, "element %d: inline bucket page has flags %#x, want leaf", i, fl)
		}
		n := int(le16(inline[10:]))
		for j := 0; j < n; j++ {
			if pageHeaderSize+(j+1)*elementSize > len(inline) {
				return nil, corruptPage(id, "element %d: inline bucket's %d elements do not fit", i, n)
			}
			ie := inline[pageHeaderSize+j*elementSize:]
			if le32(ie[0:])&leafBucketFlag != 0 {
				return nil, corruptPage(id, "element %d: inline bucket holds a bucket", i)
			}
		}
		if _, err := c.checkNode(id, inline, nil, nil, depth+1, nest+1); err != nil {
			return nil, err
		}
	}
	return last, nil
}
