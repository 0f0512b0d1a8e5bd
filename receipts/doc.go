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
// (one commit: an fdatasync for the pages, another for the meta page), and
// issues a checkpoint every Options.CheckpointEvery
// receipts and when the log goes quiet. In ModeAsync, Append returns once
// the receipt is queued; the queue is bounded, and a crash's loss is counted
// on the next Open (Recovery().Lost) and recorded in the log.
//
// Open continues an existing log where it ends: it checks the tail and the
// last checkpoint and keeps the same chain, sealing receipts left unsealed
// by a crash in the next checkpoint. It refuses a key other than the one the
// log names unless Options.RotateKey says the rotation is meant; with
// Options.PreviousKey too, the old key seals the tail and signs, with the
// new one, the statement that hands the log over (rotation.go), which
// witnesses need to accept the new key for this log.
//
// Open never hands bbolt a file it has not checked (filecheck.go): bbolt
// maps its file and trusts it, so a truncated file would fault and a
// garbage page panic. A damaged file fails with ErrCorrupt in a *DefectError
// naming the page. A writable open also checks the evidence before its
// first write (every checkpoint and Merkle root; the last batch and the
// unsealed tail receipt by receipt) and refuses a changed receipt naming its
// seq; a failed open leaves the file as it was.
//
// Read-only opens (Options.ReadOnly) serve Get, Lookup, Scan, Prove, Export
// and Verify; Verify returns the first defect as a *DefectError naming the
// receipt and checkpoint sequence numbers.
//
// A writable log keeps the first 8 bytes of every receipt id in memory (16
// bytes per receipt) to refuse a receipt stored already and to serve Lookup;
// on disk the ids are appended in seq order. A log in the previous format
// (ids keyed by id) is read as it is by a read-only open and migrated by the
// first writable one.
//
// # Caveats
//
// bbolt allows no reader while another process holds the file for writing:
// read-only opens from other processes fail with ErrLocked after
// Options.LockTimeout while the agent runs. In-process readers (the agent's
// own status server) use the open Log, and WaitAfter follows it.
//
// A commit allocates in proportion to the pages it touches (bbolt copies
// each touched page into a node), tens of KB per receipt at small batches.
// With a small live heap the Go GC then runs every few milliseconds and the
// committer pays for it: a process that appends thousands of receipts a
// second should run with GOGC=400 or so (BENCHMARKS.md measures the
// difference). The package leaves that process-wide setting to its caller.
//
// The on-disk layout, durability modes and formats are described in
// docs/receipt-log.md.
package receipts
