package policysource

import (
	"context"
	"errors"
	"fmt"
	"strconv"

	"cloud.google.com/go/storage"
)

// gcsStore reads one Cloud Storage bucket with Application Default
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

func (s *gcsStore) get(ctx context.Context, key string, max int64) ([]byte, string, error) {
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

func (s *gcsStore) version(ctx context.Context, key string) (string, error) {
	a, err := s.bucket.Object(key).Attrs(ctx)
	if err != nil {
		return "", gcsErr(err)
	}
	return strconv.FormatInt(a.Generation, 10), nil
}

func (s *gcsStore) close() error { return s.client.Close() }

func gcsErr(err error) error {
	if errors.Is(err, storage.ErrObjectNotExist) {
		return fmt.Errorf("%w: %w", ErrNotFound, err)
	}
	return err
}
