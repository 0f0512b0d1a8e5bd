package receipts

import (
	"crypto/ed25519"
	"encoding/hex"
	"encoding/json"
	"fmt"

	"github.com/backbay-labs/chio-agent/kernel/jcs"
)

// A key rotation statement is the evidence that travels with a rotated
// log: the key that signed the log so far (previous_key) endorses the key
// that signs it from first_seq on (new_key), naming the log and the last
// checkpoint the log held when the key changed (the anchor). Both keys
// sign the same canonical body: the old one hands the log over, the new
// one accepts it. A witness that knows the log's chain up to the anchor,
// signed by previous_key, then accepts batches signed by new_key; without
// the statement a new key is any trusted node's key and could continue any
// log (its head is no secret), so it is refused.
//
// The log signs its unsealed tail with the old key before it records the
// statement, so the anchor seals every receipt before first_seq and the
// first batch signed by the new key starts at first_seq.

// RotationSchema names the statement format.
const RotationSchema = "chio-agent.key_rotation.v1"

// Defects of a rotation statement a witness tells apart (beside
// DefectUntrustedKey for a new key that is not trusted, or a batch key no
// statement reaches).
const (
	// DefectForgedRotation: a statement that is not one: not canonical,
	// unknown fields, a bad field, or a signature by either key that does
	// not verify.
	DefectForgedRotation BatchDefect = "forged_rotation"
	// DefectRotationMismatch: a valid statement that does not apply to this
	// log: another log's id, or a previous key that does not sign the log.
	DefectRotationMismatch BatchDefect = "rotation_mismatch"
	// DefectRotationAnchor: a statement anchored to a checkpoint the
	// witness does not hold as the log's head (not stored, another body,
	// or older than the head), or whose first_seq does not follow it.
	DefectRotationAnchor BatchDefect = "rotation_anchor"
)

// RotationBody is the signed part of a key rotation statement.
type RotationBody struct {
	// Schema is always RotationSchema.
	Schema string `json:"schema"`
	// LogID is the rotated log's id (LogIDOf its first key).
	LogID string `json:"log_id"`
	// PreviousKey signed the log until FirstSeq; NewKey signs it from
	// FirstSeq on (hex Ed25519 public keys).
	PreviousKey string `json:"previous_key"`
	NewKey      string `json:"new_key"`
	// FirstSeq is the first receipt sequence number NewKey signs: the
	// anchor's batch_end_seq + 1.
	FirstSeq uint64 `json:"first_seq"`
	// AnchorCheckpointSeq and AnchorCheckpointSHA256 name the log's last
	// checkpoint when the key changed (checkpoint_seq, SHA-256 of its
	// canonical body), the point a witness's chain must be at.
	AnchorCheckpointSeq    uint64 `json:"anchor_checkpoint_seq"`
	AnchorCheckpointSHA256 string `json:"anchor_checkpoint_sha256"`
	// IssuedAt is when the statement was made, unix seconds.
	IssuedAt int64 `json:"issued_at"`
}

// Rotation is a signed key rotation statement: Ed25519 over the canonical
// JSON of Body by PreviousKey and by NewKey.
type Rotation struct {
	Body                 RotationBody `json:"body"`
	PreviousKeySignature string       `json:"previous_key_signature"`
	NewKeySignature      string       `json:"new_key_signature"`
}

// SignRotation signs body with the previous key and the new key, which
// must be the keys it names, and returns the statement's canonical JSON.
func SignRotation(body RotationBody, previous, next ed25519.PrivateKey) ([]byte, error) {
	body.Schema = RotationSchema
	if hex.EncodeToString(previous.Public().(ed25519.PublicKey)) != body.PreviousKey ||
		hex.EncodeToString(next.Public().(ed25519.PublicKey)) != body.NewKey {
		return nil, fmt.Errorf("sign key rotation: the keys given are not the ones the statement names")
	}
	data, err := jcs.Marshal(&body)
	if err != nil {
		return nil, fmt.Errorf("sign key rotation: %w", err)
	}
	r := Rotation{Body: body, PreviousKeySignature: hex.EncodeToString(ed25519.Sign(previous, data)),
		NewKeySignature: hex.EncodeToString(ed25519.Sign(next, data))}
	out, err := jcs.Marshal(&r)
	if err != nil {
		return nil, fmt.Errorf("sign key rotation: %w", err)
	}
	return out, nil
}

// ParseRotation decodes a statement strictly (canonical bytes, no unknown
// fields) and checks what it says about itself: the schema, the fields'
// form, and both signatures. Whether it applies to a log is
// FollowRotations' question.
func ParseRotation(data []byte) (Rotation, error) {
	var r Rotation
	if err := decodeCanonical(data, &r, "key rotation"); err != nil {
		return r, err
	}
	b := &r.Body
	switch {
	case b.Schema != RotationSchema:
		return r, fmt.Errorf("key rotation schema %q, want %q", b.Schema, RotationSchema)
	case b.PreviousKey == b.NewKey:
		return r, fmt.Errorf("key rotation from key %s to itself", b.NewKey)
	case b.FirstSeq < 2 || b.AnchorCheckpointSeq == 0:
		return r, fmt.Errorf("key rotation from seq %d anchored to checkpoint %d: a rotation follows a sealed checkpoint", b.FirstSeq, b.AnchorCheckpointSeq)
	case !isHex(b.AnchorCheckpointSHA256, 64):
		return r, fmt.Errorf("key rotation anchor_checkpoint_sha256 is not 64 lowercase hex digits")
	}
	data, err := jcs.Marshal(b)
	if err != nil {
		return r, fmt.Errorf("encode key rotation: %w", err)
	}
	for _, s := range []struct{ key, sig, who string }{
		{b.PreviousKey, r.PreviousKeySignature, "previous_key"},
		{b.NewKey, r.NewKeySignature, "new_key"},
	} {
		pub, err := parseKey(s.key)
		if err != nil {
			return r, fmt.Errorf("key rotation %s: %w", s.who, err)
		}
		sig, err := hex.DecodeString(s.sig)
		if err != nil || !isHex(s.sig, 2*ed25519.SignatureSize) || !ed25519.Verify(pub, data, sig) {
			return r, fmt.Errorf("key rotation %s signature does not verify with %s", s.who, s.key)
		}
	}
	return r, nil
}

// FollowRotations checks the statements b.Rotations, in order, that hand
// log b.LogID from signer, the key that signs it at head (the chain a
// witness holds), to another key, and returns the key they end at (signer
// itself when there are none) with the statements decoded. Each must be a
// valid statement (ParseRotation) for this log, from the key the chain is
// at, anchored to head (checkpoint and body SHA-256) with first_seq right
// after it. Errors are *BatchError naming checkpoint cpSeq. Trust in the
// new keys, and whether the batch's key is the one returned, are the
// caller's questions.
func FollowRotations(head ChainHead, signer string, b *SealedBatch, cpSeq uint64) (string, []Rotation, error) {
	bad := func(d BatchDefect, i int, format string, a ...any) error {
		return &BatchError{Defect: d, LogID: b.LogID, CheckpointSeq: cpSeq,
			Reason: fmt.Sprintf("key rotation %d of %d: ", i+1, len(b.Rotations)) + fmt.Sprintf(format, a...)}
	}
	out := make([]Rotation, 0, len(b.Rotations))
	for i, raw := range b.Rotations {
		r, err := ParseRotation(raw)
		if err != nil {
			return signer, nil, bad(DefectForgedRotation, i, "%v", err)
		}
		rb := &r.Body
		switch {
		case rb.LogID != b.LogID:
			return signer, nil, bad(DefectRotationMismatch, i, "statement is for log %s", rb.LogID)
		case rb.PreviousKey != signer:
			return signer, nil, bad(DefectRotationMismatch, i, "previous_key %s does not sign this log (its key is %s)", rb.PreviousKey, signer)
		case rb.AnchorCheckpointSeq > head.CheckpointSeq:
			return signer, nil, bad(DefectRotationAnchor, i, "anchored to checkpoint %d, which is not held (the log's head is checkpoint %d)", rb.AnchorCheckpointSeq, head.CheckpointSeq)
		case rb.AnchorCheckpointSeq < head.CheckpointSeq:
			return signer, nil, bad(DefectRotationAnchor, i, "anchored to checkpoint %d, but checkpoints up to %d follow it (the key it hands over has signed on)", rb.AnchorCheckpointSeq, head.CheckpointSeq)
		case rb.AnchorCheckpointSHA256 != head.BodySHA256:
			return signer, nil, bad(DefectRotationAnchor, i, "anchored to a checkpoint %d whose body sha256 is %s; the one held is %s", rb.AnchorCheckpointSeq, rb.AnchorCheckpointSHA256, head.BodySHA256)
		case rb.FirstSeq != head.LastSeq+1:
			return signer, nil, bad(DefectRotationAnchor, i, "first_seq %d does not follow checkpoint %d, which ends at seq %d", rb.FirstSeq, head.CheckpointSeq, head.LastSeq)
		}
		signer = rb.NewKey
		out = append(out, r)
	}
	return signer, out, nil
}

// RotationsAt returns the statements among stmts whose first_seq is seq,
// in order: the ones a batch starting at seq carries. Statements that do
// not decode are left out (the witness that stored them checked them).
func RotationsAt(stmts []json.RawMessage, seq uint64) []json.RawMessage {
	var out []json.RawMessage
	for _, s := range stmts {
		var r struct {
			Body struct {
				FirstSeq uint64 `json:"first_seq"`
			} `json:"body"`
		}
		if json.Unmarshal(s, &r) == nil && r.Body.FirstSeq == seq {
			out = append(out, s)
		}
	}
	return out
}
