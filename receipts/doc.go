// Package receipts is the durable receipt log: signed receipts appended to a
// bbolt file under a monotonically increasing sequence, group-committed, sealed
// by chio.checkpoint_statement.v2 Merkle checkpoints, and verifiable, exportable
// and provable offline.
package receipts
