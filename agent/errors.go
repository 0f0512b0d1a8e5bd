package agent

import (
	"errors"
	"sync"
	"time"
)

var (
	// ErrNotRunning means no agent answers on the status socket.
	ErrNotRunning = errors.New("no chio-agent is running")
	// ErrNoKey means no signing key was configured: receipts cannot be
	// signed, so nothing can be allowed.
	ErrNoKey = errors.New("no signing key: set CHIO_SIGNING_KEY or give a key file (chio-agent keygen writes one)")
)

// errorRing keeps the last errors for status.
type errorRing struct {
	mu   sync.Mutex
	errs []TimedError
}

// TimedError is an error status shows, with when it happened.
type TimedError struct {
	Time    time.Time `json:"time"`
	Message string    `json:"message"`
}

const errorRingSize = 20

func (r *errorRing) add(err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.errs = append(r.errs, TimedError{Time: time.Now(), Message: err.Error()})
	if len(r.errs) > errorRingSize {
		r.errs = r.errs[len(r.errs)-errorRingSize:]
	}
}

func (r *errorRing) list() []TimedError {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]TimedError(nil), r.errs...)
}
