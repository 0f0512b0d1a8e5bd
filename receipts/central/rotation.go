package central

import (
	"encoding/json"
	"fmt"

	"github.com/backbay-labs/chio-agent/kernel/jcs"
	"github.com/backbay-labs/chio-agent/receipts"
)

// Which key may sign a log's next batch. The first batch of a log belongs
// to it only if the log id derives from the batch's key. After that, one
// key signs the log at a time (the head's signer): the first key, until a
// batch carries key rotation statements (receipts.Rotation) that hand the
// log from the signer to the batch's key, each anchored to the head the
// store holds and each new key trusted. Without them, another trusted
// node's key is refused: it could otherwise continue this log's chain
// (whose head is no secret) with receipts of its own. A key rotated out
// no longer signs the log.

// signer is the key that signs the log now.
func (h *head) signer() string {
	if h.SigningKey != "" {
		return h.SigningKey
	}
	return h.KernelKey
}

// acceptKey decides whether batch b, checkpoint cpSeq, already verified
// against h.ChainHead (which it has not replaced yet), may be signed by
// b.KernelKey, and records in h what it accepted: the first key of a new
// log, and the statements of a rotation with the key they hand the log
// to. A refusal is a *receipts.BatchError: untrusted_key, or one of the
// rotation defects (forged_rotation, rotation_mismatch, rotation_anchor).
// Trust in b.KernelKey itself is checked before (Store.ingest).
func (s *Store) acceptKey(h *head, b *receipts.SealedBatch, cpSeq uint64) error {
	bad := func(format string, a ...any) error {
		return &receipts.BatchError{Defect: receipts.DefectUntrustedKey, LogID: b.LogID, CheckpointSeq: cpSeq, Reason: fmt.Sprintf(format, a...)}
	}
	if h.CheckpointSeq == 0 {
		id, err := receipts.LogIDOf(b.KernelKey)
		if err != nil || id != b.LogID {
			return bad("log id %s does not belong to key %s (its log id is %s)", b.LogID, b.KernelKey, id)
		}
		h.KernelKey = b.KernelKey
	}
	// Statements are checked (and stored) in canonical form, as signed.
	cb := *b
	cb.Rotations = make([]json.RawMessage, len(b.Rotations))
	for i, r := range b.Rotations {
		cb.Rotations[i] = r
		if c, err := jcs.Canonicalize(r); err == nil {
			cb.Rotations[i] = c
		}
	}
	signer := h.signer()
	to, rots, err := receipts.FollowRotations(h.ChainHead, signer, &cb, cpSeq)
	if err != nil {
		return err
	}
	for i, r := range rots {
		if len(s.trusted) > 0 && !s.trusted[r.Body.NewKey] {
			return bad("key rotation %d of %d hands the log to key %s, which is not a trusted node key", i+1, len(rots), r.Body.NewKey)
		}
	}
	switch {
	case to == b.KernelKey:
	case len(rots) == 0:
		return bad("log %s is signed by %s; key %s does not sign it and the batch carries no key rotation statement to it",
			b.LogID, signer, b.KernelKey)
	default:
		return bad("the batch's key rotation statements hand log %s to key %s, not to the batch's key %s", b.LogID, to, b.KernelKey)
	}
	if len(rots) > 0 {
		h.SigningKey = to
		h.Rotations = append(h.Rotations, cb.Rotations...)
	}
	return nil
}
