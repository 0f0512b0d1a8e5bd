package main

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/spf13/pflag"

	"github.com/backbay-labs/chio-agent/receipts"
	"github.com/backbay-labs/chio-agent/receipts/central"
	"github.com/backbay-labs/chio-agent/receipts/sink"
)

// addSinkFlag adds --sink, a receipt sink to read back (receipts verify,
// receipts import).
func addSinkFlag(fs *pflag.FlagSet, p *string, usage string) {
	fs.StringVar(p, "sink", "", usage)
}

// openSink opens the receipt sink url names (s3://, gs://, azblob://,
// dynamodb://) for reading, with the cloud SDK's default credentials.
func openSink(ctx context.Context, url string) (sink.Store, error) {
	if !sink.IsStore(url) {
		return nil, usageErrorf("--sink %q: not an s3://, gs://, azblob:// or dynamodb:// URL (a local log or central store is --receipts)", url)
	}
	if err := sink.Check(url); err != nil {
		return nil, usageErrorf("--sink: %v", err)
	}
	return sink.Open(ctx, url)
}

// sinkLogs lists the logs of st; a sink that holds none is an error.
func sinkLogs(ctx context.Context, st sink.Store) ([]string, error) {
	logs, err := st.Logs(ctx)
	if err != nil {
		return nil, sinkErr(err)
	}
	if len(logs) == 0 {
		return nil, fmt.Errorf("receipt sink %s holds no receipt logs", st)
	}
	return logs, nil
}

// sinkSource yields the batches of log id in st from checkpoint 1.
func sinkSource(st sink.Store, id string) central.BatchSource {
	return func(ctx context.Context, fn func(receipts.SealedBatch) error) error {
		return st.Batches(ctx, id, 0, fn)
	}
}

// sinkErr gives err, from reading a sink, exit status 2 when the evidence
// fails verification: a refused batch, or a record of the sink that is
// not one its writer writes.
func sinkErr(err error) error {
	if errors.Is(err, receipts.ErrTampered) || errors.Is(err, receipts.ErrCorrupt) || errors.Is(err, sink.ErrDamaged) {
		return &exitError{code: exitVerifyFailed, err: err}
	}
	return err
}

// printLogReports prints one line per verified log (of a central store or
// a sink).
func printLogReports(w io.Writer, logs []central.LogReport) {
	for _, l := range logs {
		rotated := ""
		if l.SigningKey != "" {
			rotated = ", rotated to " + l.SigningKey
		}
		fmt.Fprintf(w, "  %s  %d receipts (seq 1-%d, every signature and id checked), %d checkpoints, key %s%s\n",
			l.LogID, l.Verified, l.LastSeq, l.Checkpoints, l.KernelKey, rotated)
	}
}
