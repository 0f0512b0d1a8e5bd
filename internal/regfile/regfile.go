// Package regfile opens the files the agent reads as its configuration
// (kernel.yaml, policies and the files they extend, keys, OpenAPI specs,
// resolv.conf), refusing anything but a regular file.
//
// A FIFO named as a policy or config blocks open(2) until a writer appears,
// forever if none does, and a character device (/dev/zero, a terminal) never
// ends; either hangs a start or a reload past SIGTERM. Open opens with
// O_NONBLOCK, so that open returns at once whatever the path names, then
// checks the open descriptor (fstat, not a stat of the path that the path's
// owner could swap before the open) and refuses what is not a regular file.
// ReadFile also gives up when its context is done, so that a file system
// that stalls a read (a hung network mount) cannot hold a start or a reload
// past SIGTERM either.
package regfile

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"syscall"
)

// ErrNotRegular: the path names a FIFO, device, socket or directory.
var ErrNotRegular = errors.New("not a regular file")

// Open opens path read-only without blocking and returns it if it is a
// regular file. Reads of a regular file are unaffected by O_NONBLOCK.
func Open(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	if !st.Mode().IsRegular() {
		f.Close()
		return nil, &os.PathError{Op: "open", Path: path, Err: fmt.Errorf("%w (%s)", ErrNotRegular, kind(st.Mode()))}
	}
	return f, nil
}

func kind(m os.FileMode) string {
	switch {
	case m&os.ModeNamedPipe != 0:
		return "a named pipe"
	case m&os.ModeCharDevice != 0:
		return "a character device"
	case m&os.ModeDevice != 0:
		return "a device"
	case m&os.ModeSocket != 0:
		return "a socket"
	case m.IsDir():
		return "a directory"
	}
	return "mode " + m.String()
}

// ReadFile reads at most max+1 bytes of the regular file at path (so that
// the caller can tell a file over its bound without reading all of it). It
// returns ctx's error as soon as ctx is done, even while a read is stalled.
func ReadFile(ctx context.Context, path string, max int64) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	type result struct {
		data []byte
		err  error
	}
	done := make(chan result, 1)
	go func() {
		f, err := Open(path)
		if err != nil {
			done <- result{err: err}
			return
		}
		defer f.Close()
		data, err := io.ReadAll(io.LimitReader(f, max+1))
		done <- result{data, err}
	}()
	select {
	case r := <-done:
		return r.data, r.err
	case <-ctx.Done():
		return nil, fmt.Errorf("read %s: %w", path, ctx.Err())
	}
}
