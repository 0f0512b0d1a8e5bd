package receipts

import (
	"errors"
	"fmt"
)

// Sentinel errors. Every error this package returns wraps one of them (often
// inside a *DefectError or with the file name prepended), so callers can tell
// causes apart with errors.Is.
var (
	// ErrClosed: the log was closed; Append and Flush after Close return it.
	ErrClosed = errors.New("receipt log closed")
	// ErrReadOnly: a write was attempted on a log opened with ReadOnly.
	ErrReadOnly = errors.New("receipt log opened read-only")
	// ErrLocked: another process holds the database file (a running agent,
	// usually) and the lock was not released within Options.LockTimeout.
	ErrLocked = errors.New("receipt log held by another process")
	// ErrNotFound: no receipt, checkpoint or log file by that name.
	ErrNotFound = errors.New("not found")
	// ErrCorrupt: the file is not a receipt log this version can read, or its
	// structure is damaged (truncated, unreadable pages, missing buckets).
	ErrCorrupt = errors.New("receipt log corrupt")
	// ErrTampered: the structure is readable but the content fails a
	// cryptographic or continuity check (bad signature, wrong id, Merkle root
	// mismatch, broken checkpoint chain, gap in the sequence).
	ErrTampered = errors.New("receipt log content fails verification")
	// ErrKeyMismatch: the signing key given to Open is not the key the log's
	// header names, and rotation was not requested; or a receipt handed to
	// Append was signed by another key than the log's.
	ErrKeyMismatch = errors.New("signing key does not match the receipt log")
	// ErrNoKey: a writable log was opened without a signing key.
	ErrNoKey = errors.New("no signing key")
	// ErrInvalidReceipt: Append was given bytes that are not a signed
	// chio.receipt.v1 receipt.
	ErrInvalidReceipt = errors.New("invalid receipt")
	// ErrFormat: the header names a format version this build cannot handle.
	ErrFormat = errors.New("unsupported receipt log format")
	// ErrFailed: an earlier commit failed while receipts accepted in async
	// mode were queued, so they are lost; the log refuses further writes
	// until it is reopened (which records the loss).
	ErrFailed = errors.New("receipt log failed")
	// ErrQueueFull is never returned by Append (a full queue blocks, which is
	// the backpressure); TryAppend returns it instead of blocking.
	ErrQueueFull = errors.New("receipt log queue full")
)

// DefectError names the first place where a log fails verification: a
// receipt sequence number, a checkpoint sequence number, or both.
type DefectError struct {
	// Seq is the receipt sequence number at fault, 0 when the defect is not
	// tied to one receipt.
	Seq uint64
	// Checkpoint is the checkpoint sequence number at fault, 0 when none.
	Checkpoint uint64
	// Page is the database page at fault when the file's structure is
	// damaged (Err is ErrCorrupt and Seq and Checkpoint are 0); a meta
	// page is 0 or 1.
	Page uint64
	// Reason says what is wrong, in words.
	Reason string
	// Err is ErrTampered or ErrCorrupt.
	Err error
}

func (e *DefectError) Error() string {
	switch {
	case e.Seq == 0 && e.Checkpoint == 0 && e.Err == ErrCorrupt && e.Page != 0:
		return fmt.Sprintf("page %d: %s: %v", e.Page, e.Reason, e.Err)
	case e.Seq != 0 && e.Checkpoint != 0:
		return fmt.Sprintf("receipt seq %d (checkpoint %d): %s: %v", e.Seq, e.Checkpoint, e.Reason, e.Err)
	case e.Seq != 0:
		return fmt.Sprintf("receipt seq %d: %s: %v", e.Seq, e.Reason, e.Err)
	case e.Checkpoint != 0:
		return fmt.Sprintf("checkpoint %d: %s: %v", e.Checkpoint, e.Reason, e.Err)
	}
	return fmt.Sprintf("%s: %v", e.Reason, e.Err)
}

func (e *DefectError) Unwrap() error { return e.Err }

func tampered(seq, cp uint64, format string, args ...any) error {
	return &DefectError{Seq: seq, Checkpoint: cp, Reason: fmt.Sprintf(format, args...), Err: ErrTampered}
}

func corrupt(seq, cp uint64, format string, args ...any) error {
	return &DefectError{Seq: seq, Checkpoint: cp, Reason: fmt.Sprintf(format, args...), Err: ErrCorrupt}
}
