// Package receipts is the durable receipt log: signed receipts appended to a
// bbolt file under a monotonically increasing sequence, group-committed, sealed
// by chio.checkpoint_statement.v2 Merkle checkpoints, and verifiable, exportable
// and provable offline.
//
// # Use
//
//	key, err := kernel.LoadSigningKey(os.LookupEnv, keyFile)
//	log, err := receipts.Open(path, receipts.Options{Key: key})
//	defer log.Close()
//	signed, err := kernel.Sign(body, key)       // in the caller's goroutine
//	seq, err := log.AppendReceipt(ctx, &signed) // durable when it returns
//
// Append (JSON bytes) and AppendReceipt (a kernel.Receipt) are safe for
// concurrent use and are where the per-receipt CPU work happens; a single
// committer goroutine batches everything queued into one bbolt transaction
// and one fsync, and issues a checkpoint every Options.CheckpointEvery
// receipts and when the log goes quiet. In ModeAsync, Append returns once
// the receipt is queued; the queue is bounded, and a crash's loss is counted
// on the next Open (Recovery().Lost) and recorded in the log.
//
// Open continues an existing log where it ends: it checks the tail and the
// last checkpoint and keeps the same chain, sealing receipts left unsealed
// by a crash in the next checkpoint. It refuses a key other than the one the
// log names unless Options.RotateKey says the rotation is meant.
//
// Read-only opens (Options.ReadOnly) serve Get, Lookup, Scan, Prove, Export
// and Verify; Verify returns the first defect as a *DefectError naming the
// receipt and checkpoint sequence numbers.
//
// # Caveats
//
// bbolt allows no reader while another process holds the file for writing:
// read-only opens from other processes fail with ErrLocked after
// Options.LockTimeout while the agent runs. In-process readers (the agent's
// own status server) use the open Log, and WaitAfter follows it.
//
// The on-disk layout, durability modes and formats are described in
// docs/receipt-log.md.
package receipts
