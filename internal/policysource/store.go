package policysource

import (
	"context"
	"fmt"
	"io"
)

// store reads objects of one bucket (container) through a cloud SDK.
type store interface {
	// get reads object key (at most max bytes, else ErrTooLarge) and the
	// version of exactly those bytes. A missing object is ErrNotFound.
	get(ctx context.Context, key string, max int64) (data []byte, version string, err error)
	// version reads the version of object key without its content.
	version(ctx context.Context, key string) (string, error)
	// close releases the client.
	close() error
}

// newStore makes the client of l's store with its SDK's default
// credentials (and the SDK's own endpoint overrides).
func newStore(ctx context.Context, l *Location) (store, error) {
	switch l.Scheme {
	case "s3":
		return newS3(ctx, l.Bucket)
	case "gs":
		return newGCS(ctx, l.Bucket)
	case "azblob":
		return newAzblob(l.Bucket, l.Container)
	}
	return nil, fmt.Errorf("%w: scheme %q", ErrNotStore, l.Scheme)
}

// readBounded reads r to its end, refusing more than max bytes.
func readBounded(r io.Reader, max int64) ([]byte, error) {
	data, err := io.ReadAll(io.LimitReader(r, max+1))
	if err != nil {
		return nil, err
	}
	if int64(len(data)) > max {
		return nil, fmt.Errorf("%w: more than %d bytes", ErrTooLarge, max)
	}
	return data, nil
}
