package receipts

import "encoding/json"

// SealedBatch is one checkpoint's evidence: its receipts, in sequence order,
// as the log stores them (the signed receipt's canonical bytes), and the
// signed checkpoint that seals them. It is what the NATS shipper publishes
// (one message, JSON) and what a central store ingests.
type SealedBatch struct {
	LogID      string            `json:"log_id"`     // "local-log-" + hex sha256(kernel key), as the log names itself
	KernelKey  string            `json:"kernel_key"` // hex Ed25519 public key that signed receipts and checkpoint
	Receipts   []json.RawMessage `json:"receipts"`   // batch_start_seq..batch_end_seq, in order
	Checkpoint json.RawMessage   `json:"checkpoint"` // the signed checkpoint (receipts.Checkpoint JSON)
}
