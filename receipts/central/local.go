package central

import (
	"context"

	"github.com/backbay-labs/chio-agent/receipts"
)

// LocalBatches reads the sealed batches of a local log after checkpoint
// afterCP, in order, straight from the log ((*receipts.Log).SealedBatches);
// receipts not sealed yet are left out. The log id derives from the log's
// first key.
func LocalBatches(ctx context.Context, l *receipts.Log, afterCP uint64, fn func(receipts.SealedBatch) error) error {
	return l.SealedBatches(ctx, afterCP, fn)
}
