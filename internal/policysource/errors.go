package policysource

import (
	"errors"

	"github.com/backbay-labs/chio-agent/internal/blobstore"
)

var (
	// ErrNotStore is a source that names no object store scheme (s3, gs,
	// azblob).
	ErrNotStore = errors.New("not an object store source")
	// ErrBadSource is a store URL that does not name one object.
	ErrBadSource = errors.New("invalid policy source")
	// ErrNotFound is an object the store does not hold.
	ErrNotFound = blobstore.ErrNotFound
	// ErrPinMismatch is content whose SHA-256 is not the source's pin.
	ErrPinMismatch = errors.New("content does not match the sha256 pin")
	// ErrTooLarge is an object larger than a policy may be.
	ErrTooLarge = blobstore.ErrTooLarge
)
