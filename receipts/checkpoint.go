package receipts

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strings"

	"github.com/backbay-labs/chio-agent/kernel/jcs"
)

// CheckpointSchema is the schema every checkpoint this package issues names.
const CheckpointSchema = "chio.checkpoint_statement.v2"

// CheckpointBody is the signed part of a chio.checkpoint_statement.v2.
type CheckpointBody struct {
	// Schema is always CheckpointSchema.
	Schema string `json:"schema"`
	// CheckpointSeq counts checkpoints from 1 without gaps.
	CheckpointSeq uint64 `json:"checkpoint_seq"`
	// BatchStartSeq and BatchEndSeq are the first and last receipt sequence
	// numbers the batch covers; a batch starts right after the previous one.
	BatchStartSeq uint64 `json:"batch_start_seq"`
	BatchEndSeq   uint64 `json:"batch_end_seq"`
	// TreeSize is BatchEndSeq - BatchStartSeq + 1.
	TreeSize uint64 `json:"tree_size"`
	// MerkleRoot is the root over the batch's receipts, "0x" + hex.
	MerkleRoot string `json:"merkle_root"`
	// IssuedAt is when the checkpoint was made, unix seconds.
	IssuedAt int64 `json:"issued_at"`
	// KernelKey is the Ed25519 public key (hex) that signs this checkpoint.
	KernelKey string `json:"kernel_key"`
	// PreviousCheckpointSHA256 is the SHA-256 (bare hex) of the canonical
	// previous body; omitted on checkpoint 1.
	PreviousCheckpointSHA256 string `json:"previous_checkpoint_sha256,omitempty"`
	// ChainRoot is the root over one leaf per checkpoint 1..CheckpointSeq.
	ChainRoot string `json:"chain_root,omitempty"`
}

// Checkpoint is a signed checkpoint statement: {body, signature}, the
// signature being Ed25519 over the canonical JSON of body.
type Checkpoint struct {
	Body      CheckpointBody `json:"body"`
	Signature string         `json:"signature"`
}

// chainLeaf is what the chain tree commits to for each checkpoint. It leaves
// out issued_at and the key so that two honest builders of the same batches
// agree on the chain.
type chainLeaf struct {
	CheckpointSeq uint64 `json:"checkpoint_seq"`
	BatchStartSeq uint64 `json:"batch_start_seq"`
	BatchEndSeq   uint64 `json:"batch_end_seq"`
	MerkleRoot    string `json:"merkle_root"`
}

func chainLeafHash(b *CheckpointBody) (Hash, error) {
	data, err := jcs.Marshal(chainLeaf{b.CheckpointSeq, b.BatchStartSeq, b.BatchEndSeq, b.MerkleRoot})
	if err != nil {
		return Hash{}, fmt.Errorf("encode chain leaf: %w", err)
	}
	return LeafHash(data), nil
}

// BodySHA256 is the hex SHA-256 of the canonical body, the value the next
// checkpoint names as previous_checkpoint_sha256.
func (b *CheckpointBody) BodySHA256() (string, error) {
	data, err := jcs.Marshal(b)
	if err != nil {
		return "", fmt.Errorf("encode checkpoint body: %w", err)
	}
	sum := sha256.Sum256(data)
	return hex.EncodeToString(sum[:]), nil
}

func signCheckpoint(key ed25519.PrivateKey, body CheckpointBody) (Checkpoint, []byte, error) {
	data, err := jcs.Marshal(&body)
	if err != nil {
		return Checkpoint{}, nil, fmt.Errorf("encode checkpoint body: %w", err)
	}
	cp := Checkpoint{Body: body, Signature: hex.EncodeToString(ed25519.Sign(key, data))}
	stored, err := jcs.Marshal(&cp)
	if err != nil {
		return Checkpoint{}, nil, fmt.Errorf("encode checkpoint: %w", err)
	}
	return cp, stored, nil
}

// parseCheckpoint decodes a stored checkpoint strictly: unknown fields and
// non-canonical bytes are refused, since the stored form is the evidence.
func parseCheckpoint(data []byte) (Checkpoint, error) {
	var cp Checkpoint
	return cp, decodeCanonical(data, &cp, "checkpoint")
}

// decodeCanonical decodes data into v strictly (no unknown fields) and
// refuses bytes that are not v's canonical JSON: signed statements are
// stored and carried in the form that was signed.
func decodeCanonical(data []byte, v any, what string) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("decode %s: %w", what, err)
	}
	again, err := jcs.Marshal(v)
	if err != nil {
		return fmt.Errorf("encode %s: %w", what, err)
	}
	if !bytes.Equal(again, data) {
		return fmt.Errorf("decode %s: stored bytes are not the canonical form", what)
	}
	return nil
}

// VerifySignature checks the checkpoint's signature against its own
// kernel_key; whether that key is trusted is the caller's question.
func (c *Checkpoint) VerifySignature() error {
	pub, err := parseKey(c.Body.KernelKey)
	if err != nil {
		return fmt.Errorf("verify checkpoint signature: %w", err)
	}
	sig, err := hex.DecodeString(c.Signature)
	if err != nil || len(sig) != ed25519.SignatureSize || strings.ToLower(c.Signature) != c.Signature {
		return fmt.Errorf("verify checkpoint signature: signature is not 128 lowercase hex digits")
	}
	data, err := jcs.Marshal(&c.Body)
	if err != nil {
		return fmt.Errorf("verify checkpoint signature: %w", err)
	}
	if !ed25519.Verify(pub, data, sig) {
		return fmt.Errorf("verify checkpoint signature: signature does not match body")
	}
	return nil
}

// parseKey reads a 64-hex-digit lowercase Ed25519 public key.
func parseKey(s string) (ed25519.PublicKey, error) {
	b, err := hex.DecodeString(s)
	if err != nil || len(b) != ed25519.PublicKeySize || strings.ToLower(s) != s {
		return nil, fmt.Errorf("parse key %q: want 64 lowercase hex digits", s)
	}
	return ed25519.PublicKey(b), nil
}

// checkBody checks what a checkpoint body says about itself.
func checkBody(b *CheckpointBody) error {
	if b.Schema != CheckpointSchema {
		return fmt.Errorf("schema %q, want %q", b.Schema, CheckpointSchema)
	}
	if b.BatchStartSeq == 0 || b.BatchEndSeq < b.BatchStartSeq {
		return fmt.Errorf("batch range %d-%d is empty or inverted", b.BatchStartSeq, b.BatchEndSeq)
	}
	if b.TreeSize != b.BatchEndSeq-b.BatchStartSeq+1 {
		return fmt.Errorf("tree_size %d does not match batch range %d-%d", b.TreeSize, b.BatchStartSeq, b.BatchEndSeq)
	}
	if _, err := parseRoot(b.MerkleRoot); err != nil {
		return err
	}
	if _, err := parseRoot(b.ChainRoot); err != nil {
		return fmt.Errorf("chain_root: %w", err)
	}
	return nil
}
