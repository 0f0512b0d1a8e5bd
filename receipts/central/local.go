package central

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"

	"github.com/backbay-labs/chio-agent/receipts"
)

// LocalBatches reads the sealed batches of a local log after checkpoint
// afterCP, in order, from the log's export (the stored bytes, unchanged);
// receipts not sealed yet are left out. The log id derives from the log's
// first key.
//
// MERGE NOTE: branch i14-ship adds (*receipts.Log).SealedBatches, which
// reads the same batches straight from the log; once both are in, this
// function's body becomes `return l.SealedBatches(ctx, afterCP, fn)`.
func LocalBatches(ctx context.Context, l *receipts.Log, afterCP uint64, fn func(receipts.SealedBatch) error) error {
	st, err := l.Stats()
	if err != nil {
		return err
	}
	if len(st.Keys) == 0 {
		return fmt.Errorf("read local batches: log has no key history: %w", receipts.ErrCorrupt)
	}
	logID, err := receipts.LogIDOf(st.Keys[0].KernelKey)
	if err != nil {
		return err
	}
	pr, pw := io.Pipe()
	go func() { pw.CloseWithError(l.Export(ctx, pw)) }()
	defer pr.Close()
	sc := bufio.NewScanner(pr)
	sc.Buffer(nil, 16<<20)
	var cur []json.RawMessage
	for sc.Scan() {
		var line struct {
			Kind       string          `json:"kind"`
			Receipt    json.RawMessage `json:"receipt"`
			Checkpoint json.RawMessage `json:"checkpoint"`
		}
		if err := json.Unmarshal(sc.Bytes(), &line); err != nil {
			return fmt.Errorf("read local batches: %w", err)
		}
		if line.Kind == "receipt" {
			cur = append(cur, line.Receipt)
			continue
		}
		cp, err := receipts.ParseCheckpoint(line.Checkpoint)
		if err != nil {
			return fmt.Errorf("read local batches: %w", err)
		}
		b := receipts.SealedBatch{LogID: logID, KernelKey: cp.Body.KernelKey, Receipts: cur, Checkpoint: line.Checkpoint}
		cur = nil
		if cp.Body.CheckpointSeq <= afterCP {
			continue
		}
		if err := fn(b); err != nil {
			return err
		}
	}
	return sc.Err()
}
