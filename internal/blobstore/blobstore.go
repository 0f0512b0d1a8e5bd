// Package blobstore reads and writes the objects of one bucket (container)
// of Amazon S3, Google Cloud Storage or Azure Blob Storage, each through its
// cloud's own SDK and that SDK's default credentials (the AWS default chain
// with ECS task roles and IRSA, Google's Application Default Credentials
// with workload identity, Azure's DefaultAzureCredential with managed
// identity). Policy sources (internal/policysource) read through it, and
// the receipt segment sinks (receipts/sink) write and list through it.
//
// Emulators: the SDKs' own overrides point them at S3-compatible stores
// (AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL, which also switch to path-style
// addressing), fake-gcs-server (STORAGE_EMULATOR_HOST) and Azurite
// (AZURE_STORAGE_CONNECTION_STRING, whose AccountName must be the store's
// account).
package blobstore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"strings"
)

var (
	// ErrNotFound is an object the store does not hold.
	ErrNotFound = errors.New("object not found")
	// ErrTooLarge is an object larger than the reader allows.
	ErrTooLarge = errors.New("object too large")
	// ErrExists is a Create of an object the store holds already.
	ErrExists = errors.New("object exists already")
	// ErrNoContainer is an azblob:// URL without a container.
	ErrNoContainer = errors.New("no container")
)

// Schemes are the URL schemes of the stores: s3, gs and azblob.
var Schemes = []string{"s3", "gs", "azblob"}

// Store is one bucket (container) of one store.
type Store interface {
	// Get reads object key (at most max bytes, else ErrTooLarge) and the
	// version of exactly those bytes (S3 and Azure ETag, GCS generation).
	// A missing object is ErrNotFound.
	Get(ctx context.Context, key string, max int64) (data []byte, version string, err error)
	// Version reads the version of object key without its content.
	Version(ctx context.Context, key string) (string, error)
	// Create writes object key with data only when the store does not
	// hold it (a conditional write: If-None-Match: * on S3 and Azure, a
	// does-not-exist precondition on GCS); when it does, the object is
	// left as it is and the error is ErrExists.
	Create(ctx context.Context, key string, data []byte) error
	// List calls fn with the name of each object whose name starts with
	// prefix and sorts after startAfter (byte order), in the store's
	// listing order, which is byte order on all three; fn's error stops
	// it and is returned.
	List(ctx context.Context, prefix, startAfter string, fn func(key string) error) error
	// Dirs lists the names the objects under prefix have between prefix
	// and their next "/" (the "directories" below prefix), each once.
	Dirs(ctx context.Context, prefix string) ([]string, error)
	// Close releases the client.
	Close() error
}

// Open makes the client of bucket (for azblob the storage account, with
// container) with its SDK's default credentials (and the SDK's own
// endpoint overrides). It does not reach the store.
func Open(ctx context.Context, scheme, bucket, container string) (Store, error) {
	switch scheme {
	case "s3":
		return newS3(ctx, bucket)
	case "gs":
		return newGCS(ctx, bucket)
	case "azblob":
		return newAzblob(bucket, container)
	}
	return nil, fmt.Errorf("object store scheme %q is none of s3, gs, azblob", scheme)
}

// IsURL says whether u names an object store scheme.
func IsURL(u string) bool {
	scheme, _, ok := strings.Cut(u, "://")
	if !ok {
		return false
	}
	for _, s := range Schemes {
		if scheme == s {
			return true
		}
	}
	return false
}

// URL is an object store URL in parts.
type URL struct {
	// Scheme is s3, gs or azblob.
	Scheme string
	// Bucket is the S3 or GCS bucket; for azblob the storage account.
	Bucket string
	// Container is azblob's container; "" for the others.
	Container string
	// Path is what follows the bucket (the container), without its
	// leading "/", percent-decoded; it may be empty.
	Path string
	// Fragment is the URL's fragment, "" for none.
	Fragment string
}

// Base is the store's root as a URL prefix (ending in "/"): the part of
// every object URL before its name.
func (u *URL) Base() string {
	if u.Container != "" {
		return u.Scheme + "://" + u.Bucket + "/" + u.Container + "/"
	}
	return u.Scheme + "://" + u.Bucket + "/"
}

// ParseURL splits raw, an s3://, gs:// or azblob:// URL, refusing what no
// such URL has: credentials, a port, a query, no bucket, and for azblob no
// container (azblob://ACCOUNT/CONTAINER/...). Its errors say what is wrong
// and leave naming the URL (which may hold credentials by mistake: Redact)
// to the caller.
func ParseURL(raw string) (*URL, error) {
	if !IsURL(raw) {
		return nil, fmt.Errorf("not an s3://, gs:// or azblob:// URL")
	}
	u, err := url.Parse(raw)
	if err != nil {
		return nil, err
	}
	if u.User != nil {
		return nil, errors.New("credentials do not belong in the URL (each cloud's SDK finds its own)")
	}
	if u.Port() != "" {
		return nil, errors.New("a bucket name has no port (point the SDK at another endpoint with its environment variable)")
	}
	if u.RawQuery != "" || u.ForceQuery {
		return nil, errors.New("a query is not part of an object name (percent-encode '?' as %3F)")
	}
	p := &URL{Scheme: u.Scheme, Bucket: u.Host, Path: strings.TrimPrefix(u.Path, "/"), Fragment: u.Fragment}
	if p.Bucket == "" {
		return nil, errors.New("no bucket")
	}
	if p.Scheme == "azblob" {
		container, rest, _ := strings.Cut(p.Path, "/")
		if container == "" {
			return nil, ErrNoContainer
		}
		p.Container, p.Path = container, rest
	}
	return p, nil
}

// Redact drops anything after the scheme's authority that could be a
// secret by mistake (user info); object names are no secret.
func Redact(raw string) string {
	u, err := url.Parse(raw)
	if err != nil || u.User == nil {
		return raw
	}
	return u.Redacted()
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

// contentType is what Create labels objects: JSON lines.
const contentType = "application/x-ndjson"

// dirName is the "directory" name of a listed common prefix under prefix:
// p without prefix and its trailing "/".
func dirName(prefix, p string) string {
	return strings.TrimSuffix(strings.TrimPrefix(p, prefix), "/")
}
