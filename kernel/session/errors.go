package session

import "errors"

// Sentinel errors of package session.
var (
	// ErrClosed: the journal was closed.
	ErrClosed = errors.New("session journal closed")
	// ErrFailed: a write to the journal file failed; every later call of a
	// session is refused until the journal is reopened (fail closed: the
	// journal in memory is ahead of the file).
	ErrFailed = errors.New("session journal failed")
	// ErrInvalidID: a session id is empty, too long or not visible ASCII.
	ErrInvalidID = errors.New("invalid session id")
	// ErrCorrupt: the journal file holds something that is not a journal.
	ErrCorrupt = errors.New("session journal corrupt")
	// ErrNotFound: the journal has no such session.
	ErrNotFound = errors.New("session not found")
	// ErrLocked: another process holds the journal file.
	ErrLocked = errors.New("session journal locked by another process")
	// ErrNotHeld: another replica holds the session (its journal went
	// there in a handover), or this replica has not taken it yet.
	ErrNotHeld = errors.New("session not held by this replica")
	// ErrBusy: the session has calls in flight; it is handed over only
	// once they are settled.
	ErrBusy = errors.New("session has calls in flight")
)
