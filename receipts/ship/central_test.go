package ship

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/backbay-labs/chio-agent/internal/testutil/natscluster"
	"github.com/backbay-labs/chio-agent/receipts/central"
)

// TestShippedBatchesIngestCentrally is the seam between shipper and
// collector: every batch read back from the stream, in stream order, is
// accepted by a central store trusting the node's key (signatures, roots
// and chain continuity checked as a witness); the same batches a second
// time change nothing.
func TestShippedBatchesIngestCentrally(t *testing.T) {
	c := natscluster.Shared(t)
	l, key := logFor(t, 25)
	o := clusterOptions(c)
	s := startShipper(t, l, o)
	appendN(t, l, key, 0, 500)
	sealAll(t, l)
	waitShipped(t, l, s, time.Minute)

	store, err := central.Open(filepath.Join(t.TempDir(), "central.db"), central.Options{TrustedKeys: []string{l.KernelKey()}})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	batches, _ := streamBatches(t, c, o.Stream)
	if len(batches) != 20 {
		t.Fatalf("stream holds %d batches, want 20", len(batches))
	}
	ctx := context.Background()
	total := 0
	for pass := 0; pass < 2; pass++ {
		for i, b := range batches {
			res, err := store.Ingest(ctx, b)
			if err != nil {
				t.Fatalf("pass %d: central store refused batch %d: %v", pass, i+1, err)
			}
			if res.Duplicate != (pass == 1) || res.CheckpointSeq != uint64(i+1) {
				t.Fatalf("pass %d batch %d: %+v", pass, i+1, res)
			}
			if pass == 0 {
				total += res.Receipts
			}
		}
	}
	if total != 500 {
		t.Fatalf("central store took %d receipts, want 500", total)
	}
}
