package receipts

import "encoding/json"

// SealedBatch is one checkpoint's evidence: its receipts, in sequence order,
// as the log stores them (the signed receipt's canonical bytes), and the
// signed checkpoint that seals them. It is what the NATS shipper publishes
// (one message, JSON) and what a central store ingests.
//
// The first batch signed by a rotated key carries the key rotation
// statements (rotation.go) that hand the log to that key; every other batch
// omits the field, so batches of logs never rotated are byte for byte what
// they were before statements existed.
type SealedBatch struct {
	LogID      string            `json:"log_id"`              // "local-log-" + hex sha256(kernel key), as the log names itself
	KernelKey  string            `json:"kernel_key"`          // hex Ed25519 public key that signed receipts and checkpoint
	Receipts   []json.RawMessage `json:"receipts"`            // batch_start_seq..batch_end_seq, in order
	Checkpoint json.RawMessage   `json:"checkpoint"`          // the signed checkpoint (receipts.Checkpoint JSON)
	Rotations  []json.RawMessage `json:"rotations,omitempty"` // key rotation statements, oldest first (receipts.Rotation JSON)
}
