package kernel

import (
	"encoding/json"
	"time"
)

// GuardSession names the session guard (kernel/session) in receipts: a
// session's cumulative limit reached, or a session the request may not use.
const GuardSession = "ChioSessionGuard"

// CallGuard is consulted by PrepareToolCall after the decision (the
// policy's, or one made before it) and before the receipt is prepared.
// kernel/session's journal is one: it serializes the calls of one session,
// denies those past the session's limits and binds its journal entry to the
// receipt.
//
// PrepareToolCall calls Check at most once, and then Bind exactly once,
// whatever happens in between; a guard may hold a lock from Check to Bind.
type CallGuard interface {
	// Check may turn an allowing out into a deny (never the reverse) and
	// returns metadata members for the receipt (the kernel's own members
	// win over them). at is the decision's time, the receipt's timestamp.
	// An error refuses the call: it is denied without a receipt.
	Check(out *Outcome, at time.Time) (map[string]any, error)
	// Bind gives the prepared receipt's id, or the error that stopped the
	// receipt from being prepared ("" id).
	Bind(receiptID string, err error)
}

// SessionClaim is the session a capability token names: its issuer-signed
// session_id member when present (a string), else its subject. The
// session_id member is outside the modelled fields, and covered by the
// signature like every member. ok is false when session_id is present but
// not a string.
func (c *Capability) SessionClaim() (id string, ok bool) {
	raw, present := c.raw["session_id"]
	if !present {
		return c.Subject, true
	}
	if err := json.Unmarshal(raw, &id); err != nil {
		return "", false
	}
	return id, true
}
