package policysource

import (
	"encoding/hex"
	"errors"
	"fmt"
	"path"
	"path/filepath"
	"strings"

	"github.com/backbay-labs/chio-agent/internal/blobstore"
)

// Schemes are the object store schemes a Source reads.
var Schemes = blobstore.Schemes

// IsStore says whether source names an object store scheme.
func IsStore(source string) bool { return blobstore.IsURL(source) }

// Location is one object in a store, parsed from its URL.
type Location struct {
	// Scheme is s3, gs or azblob.
	Scheme string
	// Bucket is the S3 or GCS bucket; for azblob the storage account.
	Bucket string
	// Container is azblob's container; "" for the others.
	Container string
	// Key is the object's name within the bucket (container), a clean
	// relative path.
	Key string
	// Pin is the SHA-256 the content must have, or nil.
	Pin []byte
}

// Parse checks a store URL without reaching the store: the scheme, a
// bucket, an object name that is a clean relative path (no "." or ".."
// segments, no empty ones: `extends` resolves beside it), no query, and an
// optional #sha256:<64 hex> pin. Percent-encoding in the name is decoded.
func Parse(source string) (*Location, error) {
	if !IsStore(source) {
		return nil, fmt.Errorf("parse policy source %q: %w", Redact(source), ErrNotStore)
	}
	bad := func(format string, args ...any) (*Location, error) {
		return nil, fmt.Errorf("parse policy source %q: %w: %s", Redact(source), ErrBadSource, fmt.Sprintf(format, args...))
	}
	u, err := blobstore.ParseURL(source)
	if errors.Is(err, blobstore.ErrNoContainer) || err == nil && u.Scheme == "azblob" && u.Path == "" {
		return bad("want azblob://ACCOUNT/CONTAINER/BLOB")
	}
	if err != nil {
		return bad("%v", err)
	}
	l := &Location{Scheme: u.Scheme, Bucket: u.Bucket, Container: u.Container}
	name := u.Path
	if name == "" {
		return bad("no object name")
	}
	if path.Clean(name) != name || !filepath.IsLocal(name) || strings.HasSuffix(name, "/") {
		return bad("object name %q is not a clean relative path (no '.', '..' or empty segments)", name)
	}
	l.Key = name
	if l.Pin, err = ParsePin(u.Fragment); err != nil {
		return bad("%v", err)
	}
	return l, nil
}

// Base is the store's root as a URL prefix (ending in "/"): the part of
// every object URL before its key.
func (l *Location) Base() string {
	return (&blobstore.URL{Scheme: l.Scheme, Bucket: l.Bucket, Container: l.Container}).Base()
}

// URL names the object key of l's store.
func (l *Location) URL(key string) string { return l.Base() + key }

// String is l's URL, with its pin.
func (l *Location) String() string {
	s := l.URL(l.Key)
	if l.Pin != nil {
		s += "#sha256:" + hex.EncodeToString(l.Pin)
	}
	return s
}

// Redact drops anything after the scheme's authority that could be a
// secret by mistake (user info); object names are no secret.
func Redact(source string) string { return blobstore.Redact(source) }
