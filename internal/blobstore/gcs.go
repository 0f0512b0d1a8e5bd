package blobstore

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"

	"cloud.google.com/go/storage"
	"google.golang.org/api/googleapi"
	"google.golang.org/api/iterator"
)

// gcsStore is one Cloud Storage bucket, with Application Default
// Credentials (a service account key named by
// GOOGLE_APPLICATION_CREDENTIALS, gcloud's user credentials, or the metadata
// server: Cloud Run's service account, GKE workload identity). Under
// STORAGE_EMULATOR_HOST the SDK talks to that emulator without credentials.
// An object's version is its generation, which every write changes.
type gcsStore struct {
	client *storage.Client
	bucket *storage.BucketHandle
}

func newGCS(ctx context.Context, bucket string) (*gcsStore, error) {
	client, err := storage.NewClient(ctx)
	if err != nil {
		return nil, fmt.Errorf("make Cloud Storage client: %w", err)
	}
	return &gcsStore{client: client, bucket: client.Bucket(bucket)}, nil
}

func (s *gcsStore) Get(ctx context.Context, key string, max int64) ([]byte, string, error) {
	r, err := s.bucket.Object(key).NewReader(ctx)
	if err != nil {
		return nil, "", gcsErr(err)
	}
	defer r.Close()
	data, err := readBounded(r, max)
	if err != nil {
		return nil, "", err
	}
	return data, strconv.FormatInt(r.Attrs.Generation, 10), nil
}

func (s *gcsStore) Version(ctx context.Context, key string) (string, error) {
	a, err := s.bucket.Object(key).Attrs(ctx)
	if err != nil {
		return "", gcsErr(err)
	}
	return strconv.FormatInt(a.Generation, 10), nil
}

// Create writes with a does-not-exist precondition (ifGenerationMatch=0),
// which Cloud Storage answers 412 when the object exists.
func (s *gcsStore) Create(ctx context.Context, key string, data []byte) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel() // an abandoned write is cancelled, not finished
	w := s.bucket.Object(key).If(storage.Conditions{DoesNotExist: true}).NewWriter(ctx)
	w.ContentType = contentType
	w.ChunkSize = 0 // one request: the object is small and whole
	if _, err := w.Write(data); err != nil {
		return gcsErr(err)
	}
	return gcsErr(w.Close())
}

func (s *gcsStore) List(ctx context.Context, prefix, startAfter string, fn func(string) error) error {
	q := &storage.Query{Prefix: prefix}
	if startAfter != "" {
		// StartOffset is inclusive: the least name after startAfter.
		q.StartOffset = startAfter + "\x00"
	}
	if err := q.SetAttrSelection([]string{"Name"}); err != nil {
		return err
	}
	it := s.bucket.Objects(ctx, q)
	for {
		a, err := it.Next()
		if errors.Is(err, iterator.Done) {
			return nil
		}
		if err != nil {
			return gcsErr(err)
		}
		if err := fn(a.Name); err != nil {
			return err
		}
	}
}

func (s *gcsStore) Dirs(ctx context.Context, prefix string) ([]string, error) {
	it := s.bucket.Objects(ctx, &storage.Query{Prefix: prefix, Delimiter: "/"})
	var out []string
	for {
		a, err := it.Next()
		if errors.Is(err, iterator.Done) {
			return out, nil
		}
		if err != nil {
			return nil, gcsErr(err)
		}
		if a.Prefix != "" {
			out = append(out, dirName(prefix, a.Prefix))
		}
	}
}

func (s *gcsStore) Close() error { return s.client.Close() }

func gcsErr(err error) error {
	if errors.Is(err, storage.ErrObjectNotExist) {
		return fmt.Errorf("%w: %w", ErrNotFound, err)
	}
	var ge *googleapi.Error
	if errors.As(err, &ge) && ge.Code == http.StatusPreconditionFailed {
		return fmt.Errorf("%w: %w", ErrExists, err)
	}
	return err
}
