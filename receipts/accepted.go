package receipts

import (
	"bytes"
	"fmt"
	"os"
	"sync/atomic"
	"syscall"
	"unsafe"
)

// The accepted mark counts, in sequence-number space, every receipt Append
// has accepted: durable ones and ones still queued. It lives in a small
// file beside the database, mapped shared into memory, so bumping it is an
// atomic add with no system call, and after the process dies (even by
// SIGKILL) the kernel still holds the page: on reopen, mark - last durable
// seq is the number of accepted receipts that never reached the disk. It is
// not fsynced on every bump, so after a power cut the mark may be older;
// each commit also records the mark in the database as a lower bound.
//
// Layout (32 bytes): "CHIOACC1", the log id (16 bytes, ties the file to one
// database), the mark (8 bytes, native byte order, updated atomically).
const (
	acceptMagic = "CHIOACC1"
	acceptSize  = 32
)

type acceptMark struct {
	f   *os.File
	mem []byte
	v   *atomic.Uint64
}

// openAcceptMark maps path, creating it for logID when it is missing or
// belongs to another log. It returns the mark it found (0 when none).
func openAcceptMark(path string, logID []byte) (*acceptMark, uint64, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|syscall.O_NONBLOCK, 0o600)
	if err != nil {
		return nil, 0, fmt.Errorf("open accepted mark %s: %w", path, err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, 0, fmt.Errorf("stat accepted mark %s: %w", path, err)
	}
	if !st.Mode().IsRegular() {
		f.Close()
		return nil, 0, fmt.Errorf("open accepted mark %s: not a regular file (mode %s)", path, st.Mode())
	}
	if st.Size() != acceptSize {
		if err := f.Truncate(acceptSize); err != nil {
			f.Close()
			return nil, 0, fmt.Errorf("size accepted mark %s: %w", path, err)
		}
	}
	mem, err := syscall.Mmap(int(f.Fd()), 0, acceptSize, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_SHARED)
	if err != nil {
		f.Close()
		return nil, 0, fmt.Errorf("map accepted mark %s: %w", path, err)
	}
	m := &acceptMark{f: f, mem: mem, v: (*atomic.Uint64)(unsafe.Pointer(&mem[24]))}
	var found uint64
	if string(mem[:8]) == acceptMagic && bytes.Equal(mem[8:24], logID) {
		found = m.v.Load()
	} else {
		copy(mem[:8], acceptMagic)
		copy(mem[8:24], logID)
		m.v.Store(0)
	}
	return m, found, nil
}

func (m *acceptMark) close() error {
	if m == nil {
		return nil
	}
	err := syscall.Munmap(m.mem)
	if cerr := m.f.Close(); err == nil {
		err = cerr
	}
	return err
}
