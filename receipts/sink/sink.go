// Package sink ships sealed receipt batches to stores that keep records, not
// streams: object storage (s3://, gs://, azblob://: one object per
// checkpoint, a sealed segment) and DynamoDB (dynamodb://: one item per
// receipt and per checkpoint). The shipper (receipts/ship) drives a Store
// as it drives NATS: the local bbolt log is the first write, each batch is
// put idempotently, at least once, in checkpoint order of acknowledgement,
// and a resume asks the store what it holds. `receipts verify` and
// `receipts import` read a Store back through Logs and Batches.
package sink

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/backbay-labs/chio-agent/receipts"
)

// Store is a sink that keeps each sealed batch as records addressed by its
// log id and checkpoint seq.
type Store interface {
	// String names the sink (its URL, never credentials) for status and
	// errors.
	String() string
	// Put stores one sealed batch, whose checkpoint seq is cpSeq,
	// idempotently: putting a batch the sink holds already succeeds and
	// leaves what is stored as it is.
	Put(ctx context.Context, b receipts.SealedBatch, cpSeq uint64) error
	// Stored returns the checkpoint seqs of log logID the sink holds past
	// after, ascending: what a resuming shipper need not put again.
	Stored(ctx context.Context, logID string, after uint64) ([]uint64, error)
	// Logs lists the ids of the logs the sink holds, sorted.
	Logs(ctx context.Context) ([]string, error)
	// Batches calls fn with each batch of log logID the sink holds past
	// checkpoint after, in checkpoint order, and stops at fn's first
	// error, which it returns.
	Batches(ctx context.Context, logID string, after uint64, fn func(receipts.SealedBatch) error) error
	// Close releases the client.
	Close() error
}

// ErrBigQuery refuses bigquery:// sinks: there is no local BigQuery to test
// a writer against, so none is built; the supported route is a gs://
// segment sink that BigQuery loads (docs/receipt-log.md).
var ErrBigQuery = errors.New("receipt sink bigquery:// is not supported: ship to a gs://BUCKET/PREFIX segment sink and load it into BigQuery (docs/receipt-log.md, \"Receipts in BigQuery\")")

// IsStore says url names a Store sink (or the refused bigquery://), as
// opposed to a local path or NATS servers.
func IsStore(url string) bool {
	scheme, _, ok := strings.Cut(url, "://")
	if !ok {
		return false
	}
	switch scheme {
	case "s3", "gs", "azblob", "dynamodb", "bigquery":
		return true
	}
	return false
}

// Check parses url without connecting: a malformed URL, or bigquery://, is
// an error naming what is wrong.
func Check(url string) error {
	scheme, _, _ := strings.Cut(url, "://")
	switch scheme {
	case "s3", "gs", "azblob":
		_, err := parseSegments(url)
		return err
	case "dynamodb":
		_, err := parseDynamo(url)
		return err
	case "bigquery":
		return ErrBigQuery
	}
	return fmt.Errorf("receipt sink %q: not an s3://, gs://, azblob:// or dynamodb:// URL", url)
}

// OpenOptions tune OpenWith.
type OpenOptions struct {
	// CreateTable lets a dynamodb:// sink create its table (and indexes)
	// when missing; without it a missing table is an error naming it.
	CreateTable bool
}

// Open checks url and makes its store's client with the cloud SDK's default
// credential chain (and the SDK's own endpoint overrides). It does not
// require the store to be reachable: an outage is the shipper's to ride
// out.
func Open(ctx context.Context, url string) (Store, error) {
	return OpenWith(ctx, url, OpenOptions{})
}

// OpenWith is Open with options.
func OpenWith(ctx context.Context, url string, o OpenOptions) (Store, error) {
	if err := Check(url); err != nil {
		return nil, err
	}
	if strings.HasPrefix(url, "dynamodb://") {
		return openDynamo(ctx, url, o)
	}
	return openSegments(ctx, url)
}
