package kernel

import "errors"

// Sentinel errors of package kernel. Returned errors wrap one of these with
// the detail of what was wrong, so callers branch with errors.Is and people
// read the message.
var (
	// ErrInvalidKey: a key or signature is not the right length or not
	// lowercase-or-uppercase hex of it.
	ErrInvalidKey = errors.New("invalid key")
	// ErrInvalidReceipt: a receipt body is missing a required field or holds
	// a malformed one (bad JSON in parameters, invalid UTF-8, unknown
	// verdict...).
	ErrInvalidReceipt = errors.New("invalid receipt")
	// ErrInconsistentReceipt: receipt_kind, boundary_class, trust_level,
	// decision and observation_outcome do not agree, so the receipt is not
	// signable (a verifier reports signature_valid false for it).
	ErrInconsistentReceipt = errors.New("inconsistent receipt kind, boundary or trust level")
	// ErrInvalidCapability: a capability token cannot be parsed.
	ErrInvalidCapability = errors.New("invalid capability token")
	// ErrInsecureKeyFile: a signing key file can be read by group or others.
	ErrInsecureKeyFile = errors.New("signing key file readable by group or others")
	// ErrNoSigningKey: neither CHIO_SIGNING_KEY nor a key file was given.
	ErrNoSigningKey = errors.New("no signing key configured")
	// ErrInvalidEvent: an egress event lacks what a receipt needs (a
	// destination, a transport, a verdict).
	ErrInvalidEvent = errors.New("invalid egress event")
	// ErrNoPolicy: the kernel was asked to decide without a policy.
	ErrNoPolicy = errors.New("no policy loaded")
)
