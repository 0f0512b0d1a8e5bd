package kernel

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strconv"
	"unicode/utf8"

	"github.com/backbay-labs/chio-agent/kernel/jcs"
)

// ReceiptSchema names the receipt format this file reads and writes. The
// receipt JSON itself carries no schema member (Chio's does not either).
const ReceiptSchema = "chio.receipt.v1"

// Receipt kinds: what the kernel could do about the action.
const (
	KindMediatedDecision   = "mediated_decision"   // the kernel decided before the action ran
	KindTraceObservation   = "trace_observation"   // the action was seen, not gated
	KindAdvisoryEvaluation = "advisory_evaluation" // evaluated for advice only
)

// Boundary classes: where the kernel sat relative to the action.
const (
	BoundaryPrevent      = "prevent"
	BoundaryDetectOnly   = "detect_only"
	BoundaryAdvisoryOnly = "advisory_only"
	// BoundaryCannotSee is a planning label: a receipt with it is never a
	// valid signed runtime receipt.
	BoundaryCannotSee = "cannot_see"
)

// Trust levels.
const (
	TrustMediated = "mediated"
	TrustVerified = "verified"
	TrustAdvisory = "advisory"
)

// Observation outcomes, carried only by non-mediated receipts.
const (
	OutcomeObserved  = "observed"
	OutcomeEvaluated = "evaluated"
)

// Verdicts of a decision.
const (
	VerdictAllow = "allow"
	VerdictDeny  = "deny"
)

// Receipt is a chio.receipt.v1 receipt. Field names and omission rules are
// the wire format: fields tagged omitempty are left out of the JSON (and so
// out of the hashed body) when empty; the others are always written.
//
// Parameters and Metadata are raw JSON so a receipt read from disk hashes to
// the same bytes it was signed over, whatever numbers or nesting they hold.
type Receipt struct {
	ID                 string          `json:"id"`
	Timestamp          uint64          `json:"timestamp"` // unix seconds
	CapabilityID       string          `json:"capability_id,omitempty"`
	ToolServer         string          `json:"tool_server"`
	ToolName           string          `json:"tool_name"`
	ToolOrigin         string          `json:"tool_origin,omitempty"`
	Action             Action          `json:"action"`
	Decision           *Decision       `json:"decision,omitempty"`
	ReceiptKind        string          `json:"receipt_kind"`
	BoundaryClass      string          `json:"boundary_class"`
	TrustLevel         string          `json:"trust_level"`
	ObservationOutcome string          `json:"observation_outcome,omitempty"`
	RedactionMode      string          `json:"redaction_mode,omitempty"`
	ContentHash        string          `json:"content_hash,omitempty"`
	PolicyHash         string          `json:"policy_hash,omitempty"`
	Evidence           []Evidence      `json:"evidence,omitempty"`
	Metadata           json.RawMessage `json:"metadata,omitempty"`
	KernelKey          string          `json:"kernel_key"`
	Signature          string          `json:"signature"`
}

// Action is what was attempted: its parameters and their hash.
type Action struct {
	// Parameters is a JSON value (an object in practice); Sign stores its
	// canonical form and treats nil as {}.
	Parameters json.RawMessage `json:"parameters"`
	// ParameterHash is the SHA-256 hex of canonical(Parameters); Sign fills it.
	ParameterHash string `json:"parameter_hash"`
}

// Decision is the kernel's verdict on a mediated action.
type Decision struct {
	Verdict string `json:"verdict"` // VerdictAllow or VerdictDeny
	Reason  string `json:"reason,omitempty"`
	Guard   string `json:"guard,omitempty"`
}

// Evidence records one guard's contribution to the decision.
type Evidence struct {
	GuardName string `json:"guard_name"`
	Verdict   bool   `json:"verdict"` // true: the guard passed the action
	Details   string `json:"details,omitempty"`
}

// Sign completes body into a signed receipt: it sets kernel_key from key,
// stores the canonical form of parameters and metadata, computes
// parameter_hash, id = SHA-256 hex of canonical(body without id and
// signature), and signature = Ed25519 over canonical({"body": body, "id": id}).
// Any id, signature, kernel_key or parameter_hash already in body is
// replaced. A body whose kind, boundary and trust level disagree is refused
// (ErrInconsistentReceipt), as is a malformed one (ErrInvalidReceipt).
func Sign(body Receipt, key ed25519.PrivateKey) (Receipt, error) {
	if len(key) != ed25519.PrivateKeySize {
		return Receipt{}, fmt.Errorf("sign receipt: %w: private key is %d bytes, want %d", ErrInvalidKey, len(key), ed25519.PrivateKeySize)
	}
	p, err := Prepare(body, ed25519.PublicKey(key[32:]))
	if err != nil {
		return Receipt{}, err
	}
	return p.Sign(key)
}

// Prepared is a receipt whose body and id are fixed and whose signature is
// still to be made: Prepare does everything Sign does but the Ed25519
// signature, so a caller can hand the id out at once and sign later, off
// its critical path (the receipt log's async mode, Log.AppendPrepared).
type Prepared struct {
	r   Receipt
	pub ed25519.PublicKey
	msg []byte // canonical {"body":…,"id":…}, what the signature covers
	// index, when indexed, is what the receipt is about, known typed by
	// the producer (PrepareEgressReceipt), so a log need not read it back
	// out of the JSON.
	index   Index
	indexed bool
}

// Index is what a receipt log indexes a receipt under besides its id,
// time and verdict: the workload (metadata.workload, or its name) and the
// destination (action.parameters.target).
type Index struct {
	Workload string
	Host     string
}

// Prepare checks and canonicalizes body as Sign does, for the kernel key
// pub, and fixes its id. Errors are Sign's.
func Prepare(body Receipt, pub ed25519.PublicKey) (*Prepared, error) {
	return prepare(body, pub, false)
}

// prepare is Prepare; with canonical, body's parameters and metadata are
// already canonical (this package wrote them with jcs.Marshal) and are
// used as they are instead of being scanned again.
func prepare(body Receipt, pub ed25519.PublicKey, canonical bool) (*Prepared, error) {
	if len(pub) != ed25519.PublicKeySize {
		return nil, fmt.Errorf("sign receipt: %w: public key is %d bytes, want %d", ErrInvalidKey, len(pub), ed25519.PublicKeySize)
	}
	r := body
	r.ID, r.Signature = "", ""
	r.KernelKey = hex.EncodeToString(pub)
	if r.Decision != nil {
		d := *r.Decision // never write through the caller's pointer
		r.Decision = &d
	}
	params := r.Action.Parameters
	if len(params) == 0 {
		params = json.RawMessage("{}")
	}
	var buf []byte
	if canonical {
		r.Action.Parameters = params
		buf = make([]byte, 0, 512+len(params)+len(r.Metadata))
	} else {
		// One buffer holds canonical parameters, metadata and the signed
		// message.
		buf = make([]byte, 0, 512+2*len(params)+len(r.Metadata))
		var err error
		if buf, err = jcs.Append(buf, params); err != nil {
			return nil, fmt.Errorf("sign receipt: %w: action.parameters: %w", ErrInvalidReceipt, err)
		}
		r.Action.Parameters = buf[:len(buf):len(buf)]
		if r.Metadata != nil {
			start := len(buf)
			if buf, err = jcs.Append(buf, r.Metadata); err != nil {
				return nil, fmt.Errorf("sign receipt: %w: metadata: %w", ErrInvalidReceipt, err)
			}
			r.Metadata = buf[start:len(buf):len(buf)]
		}
	}
	sum := sha256.Sum256(r.Action.Parameters)
	r.Action.ParameterHash = hex.EncodeToString(sum[:])
	if err := checkFields(&r); err != nil {
		return nil, fmt.Errorf("sign receipt: %w", err)
	}
	if err := CheckConsistency(&r); err != nil {
		return nil, fmt.Errorf("sign receipt: %w", err)
	}
	// Lay out {"body":<body>,"id":"<id>"} in one buffer; the body bytes in
	// the middle are the ones the id hashes.
	msg := append(buf[len(buf):], `{"body":`...)
	msg = appendBody(msg, &r, r.Action.Parameters, r.Metadata)
	sum = sha256.Sum256(msg[len(`{"body":`):])
	r.ID = hex.EncodeToString(sum[:])
	msg = append(msg, `,"id":"`...)
	msg = append(msg, r.ID...)
	msg = append(msg, `"}`...)
	return &Prepared{r: r, pub: pub, msg: msg}, nil
}

// ID is the receipt's id, final before it is signed.
func (p *Prepared) ID() string { return p.r.ID }

// KernelKey is the hex public key the receipt names as kernel_key.
func (p *Prepared) KernelKey() string { return p.r.KernelKey }

// Index returns the workload and destination the receipt is about when its
// producer gave them typed (egress receipts do); ok is false otherwise,
// and a reader then finds them in the JSON.
func (p *Prepared) Index() (ix Index, ok bool) { return p.index, p.indexed }

// SignCanonical is Sign that also returns the canonical JSON of the whole
// signed receipt (what Receipt.CanonicalJSON returns), written from the
// parts Prepare already made canonical rather than by canonicalizing the
// receipt again: the bytes a receipt log stores and hashes.
func (p *Prepared) SignCanonical(key ed25519.PrivateKey) (Receipt, []byte, error) {
	r, err := p.Sign(key)
	if err != nil {
		return Receipt{}, nil, err
	}
	out := make([]byte, 0, len(p.msg)+len(r.Signature)+32)
	out = appendMembers(out, &r, r.Action.Parameters, r.Metadata, true)
	return r, out, nil
}

// Sign signs the prepared receipt with key, which must be the private half
// of the key it was prepared for.
func (p *Prepared) Sign(key ed25519.PrivateKey) (Receipt, error) {
	if len(key) != ed25519.PrivateKeySize {
		return Receipt{}, fmt.Errorf("sign receipt: %w: private key is %d bytes, want %d", ErrInvalidKey, len(key), ed25519.PrivateKeySize)
	}
	if !bytes.Equal(key[32:], p.pub) {
		return Receipt{}, fmt.Errorf("sign receipt %s: %w: prepared for kernel key %s, signing with %s", p.r.ID, ErrInvalidKey, p.r.KernelKey, hex.EncodeToString(key[32:]))
	}
	r := p.r
	r.Signature = hex.EncodeToString(ed25519.Sign(key, p.msg))
	return r, nil
}

// checkFields refuses bodies Sign must not sign: missing required members,
// unknown verdicts, and strings that are not UTF-8 (they would not
// canonicalize to what a verifier reads back).
func checkFields(r *Receipt) error {
	if r.ToolServer == "" || r.ToolName == "" {
		return fmt.Errorf("%w: tool_server and tool_name are required", ErrInvalidReceipt)
	}
	if r.ReceiptKind == "" || r.BoundaryClass == "" || r.TrustLevel == "" {
		return fmt.Errorf("%w: receipt_kind, boundary_class and trust_level are required", ErrInvalidReceipt)
	}
	if d := r.Decision; d != nil && d.Verdict != VerdictAllow && d.Verdict != VerdictDeny {
		return fmt.Errorf("%w: decision verdict %q is neither allow nor deny", ErrInvalidReceipt, d.Verdict)
	}
	for _, e := range r.Evidence {
		if e.GuardName == "" {
			return fmt.Errorf("%w: evidence entry without guard_name", ErrInvalidReceipt)
		}
	}
	// Checked in the order a list of all of them would be, without building
	// the list: Sign runs this for every receipt.
	for _, s := range [...]string{r.CapabilityID, r.ToolServer, r.ToolName, r.ToolOrigin, r.ReceiptKind, r.BoundaryClass,
		r.TrustLevel, r.ObservationOutcome, r.RedactionMode, r.ContentHash, r.PolicyHash} {
		if !utf8.ValidString(s) {
			return invalidUTF8(s)
		}
	}
	if d := r.Decision; d != nil {
		for _, s := range [...]string{d.Reason, d.Guard} {
			if !utf8.ValidString(s) {
				return invalidUTF8(s)
			}
		}
	}
	for _, e := range r.Evidence {
		for _, s := range [...]string{e.GuardName, e.Details} {
			if !utf8.ValidString(s) {
				return invalidUTF8(s)
			}
		}
	}
	return nil
}

func invalidUTF8(s string) error {
	return fmt.Errorf("%w: string %q is not valid utf-8", ErrInvalidReceipt, s)
}

// CheckConsistency reports whether the receipt's kind, boundary class, trust
// level, decision and observation outcome agree, which Chio requires of a
// signable receipt:
//
//	mediated_decision:   prevent,       mediated, a decision, no observation_outcome
//	trace_observation:   detect_only,   verified, no decision, an observation_outcome
//	advisory_evaluation: advisory_only, advisory, no decision, an observation_outcome
//
// The error wraps ErrInconsistentReceipt and names the first disagreement.
func CheckConsistency(r *Receipt) error {
	var boundary, trust string
	wantDecision := false
	switch r.ReceiptKind {
	case KindMediatedDecision:
		boundary, trust, wantDecision = BoundaryPrevent, TrustMediated, true
	case KindTraceObservation:
		boundary, trust = BoundaryDetectOnly, TrustVerified
	case KindAdvisoryEvaluation:
		boundary, trust = BoundaryAdvisoryOnly, TrustAdvisory
	default:
		return fmt.Errorf("%w: unknown receipt_kind %q", ErrInconsistentReceipt, r.ReceiptKind)
	}
	switch {
	case r.BoundaryClass != boundary:
		return fmt.Errorf("%w: %s needs boundary_class %s, not %q", ErrInconsistentReceipt, r.ReceiptKind, boundary, r.BoundaryClass)
	case r.TrustLevel != trust:
		return fmt.Errorf("%w: %s needs trust_level %s, not %q", ErrInconsistentReceipt, r.ReceiptKind, trust, r.TrustLevel)
	case wantDecision && r.Decision == nil:
		return fmt.Errorf("%w: %s needs a decision", ErrInconsistentReceipt, r.ReceiptKind)
	case !wantDecision && r.Decision != nil:
		return fmt.Errorf("%w: %s must not carry a decision", ErrInconsistentReceipt, r.ReceiptKind)
	case wantDecision && r.ObservationOutcome != "":
		return fmt.Errorf("%w: %s must not carry an observation_outcome", ErrInconsistentReceipt, r.ReceiptKind)
	case !wantDecision && r.ObservationOutcome != OutcomeObserved && r.ObservationOutcome != OutcomeEvaluated:
		return fmt.Errorf("%w: %s needs observation_outcome observed or evaluated, not %q", ErrInconsistentReceipt, r.ReceiptKind, r.ObservationOutcome)
	}
	return nil
}

// appendBody appends canonical(receipt without id and signature). Members
// are written in RFC 8785 order by hand, which is several times faster than
// a generic canonicalizer on the per-connection path; TestAppendBodyMatchesJCS
// holds it to jcs.Marshal. params and meta must already be canonical.
func appendBody(dst []byte, r *Receipt, params, meta []byte) []byte {
	return appendMembers(dst, r, params, meta, false)
}

// appendMembers writes the receipt's members in RFC 8785 order; with full
// it also writes id and signature where they sort, which gives the
// canonical form of the whole signed receipt.
func appendMembers(dst []byte, r *Receipt, params, meta []byte, full bool) []byte {
	dst = append(dst, `{"action":{"parameter_hash":`...)
	dst = jcs.AppendString(dst, r.Action.ParameterHash)
	dst = append(dst, `,"parameters":`...)
	dst = append(dst, params...)
	dst = append(dst, `},"boundary_class":`...)
	dst = jcs.AppendString(dst, r.BoundaryClass)
	dst = optString(dst, `,"capability_id":`, r.CapabilityID)
	dst = optString(dst, `,"content_hash":`, r.ContentHash)
	if d := r.Decision; d != nil {
		dst = append(dst, `,"decision":{`...)
		if d.Guard != "" {
			dst = append(dst, `"guard":`...)
			dst = jcs.AppendString(dst, d.Guard)
			dst = append(dst, ',')
		}
		if d.Reason != "" {
			dst = append(dst, `"reason":`...)
			dst = jcs.AppendString(dst, d.Reason)
			dst = append(dst, ',')
		}
		dst = append(dst, `"verdict":`...)
		dst = jcs.AppendString(dst, d.Verdict)
		dst = append(dst, '}')
	}
	if len(r.Evidence) > 0 {
		dst = append(dst, `,"evidence":[`...)
		for i, e := range r.Evidence {
			if i > 0 {
				dst = append(dst, ',')
			}
			dst = append(dst, '{')
			if e.Details != "" {
				dst = append(dst, `"details":`...)
				dst = jcs.AppendString(dst, e.Details)
				dst = append(dst, ',')
			}
			dst = append(dst, `"guard_name":`...)
			dst = jcs.AppendString(dst, e.GuardName)
			dst = append(dst, `,"verdict":`...)
			dst = strconv.AppendBool(dst, e.Verdict)
			dst = append(dst, '}')
		}
		dst = append(dst, ']')
	}
	if full {
		dst = append(dst, `,"id":`...)
		dst = jcs.AppendString(dst, r.ID)
	}
	dst = append(dst, `,"kernel_key":`...)
	dst = jcs.AppendString(dst, r.KernelKey)
	if len(meta) > 0 {
		dst = append(dst, `,"metadata":`...)
		dst = append(dst, meta...)
	}
	dst = optString(dst, `,"observation_outcome":`, r.ObservationOutcome)
	dst = optString(dst, `,"policy_hash":`, r.PolicyHash)
	dst = append(dst, `,"receipt_kind":`...)
	dst = jcs.AppendString(dst, r.ReceiptKind)
	dst = optString(dst, `,"redaction_mode":`, r.RedactionMode)
	if full {
		dst = append(dst, `,"signature":`...)
		dst = jcs.AppendString(dst, r.Signature)
	}
	dst = append(dst, `,"timestamp":`...)
	dst = strconv.AppendUint(dst, r.Timestamp, 10)
	dst = append(dst, `,"tool_name":`...)
	dst = jcs.AppendString(dst, r.ToolName)
	dst = optString(dst, `,"tool_origin":`, r.ToolOrigin)
	dst = append(dst, `,"tool_server":`...)
	dst = jcs.AppendString(dst, r.ToolServer)
	dst = append(dst, `,"trust_level":`...)
	dst = jcs.AppendString(dst, r.TrustLevel)
	return append(dst, '}')
}

func optString(dst []byte, prefix, s string) []byte {
	if s == "" {
		return dst
	}
	return jcs.AppendString(append(dst, prefix...), s)
}

// CanonicalJSON returns the canonical JSON of the whole receipt (id and
// signature included): the bytes a receipt log stores and a Merkle leaf
// hashes.
func (r *Receipt) CanonicalJSON() ([]byte, error) {
	if out, ok := r.appendCanonical(); ok {
		return out, nil
	}
	// Invalid UTF-8 or JSON somewhere: the generic path gives the same
	// result or error it always has.
	b, err := json.Marshal(r)
	if err != nil {
		return nil, fmt.Errorf("encode receipt: %w", err)
	}
	out, err := jcs.Canonicalize(b)
	if err != nil {
		return nil, fmt.Errorf("encode receipt: %w", err)
	}
	return out, nil
}

// appendCanonical is CanonicalJSON written by hand: the same bytes as
// canonicalizing encoding/json's output (TestCanonicalJSONFastPath holds it
// to that), without the encode-then-reparse round trip. It reports false,
// leaving the case to the generic path, when a string is not valid UTF-8
// (encoding/json would substitute U+FFFD) or parameters or metadata fail to
// canonicalize (so the error stays the generic one).
func (r *Receipt) appendCanonical() ([]byte, bool) {
	if !stringsValid(r) {
		return nil, false
	}
	buf := make([]byte, 0, 640+2*(len(r.Action.Parameters)+len(r.Metadata)))
	var err error
	var params, meta []byte
	switch {
	case r.Action.Parameters == nil:
		buf = append(buf, "null"...) // as encoding/json writes a nil RawMessage
	case len(r.Action.Parameters) == 0:
		return nil, false // encoding/json refuses an empty, non-nil RawMessage
	default:
		if buf, err = jcs.Append(buf, r.Action.Parameters); err != nil {
			return nil, false
		}
	}
	params = buf[:len(buf):len(buf)]
	if len(r.Metadata) > 0 {
		if buf, err = jcs.Append(buf, r.Metadata); err != nil {
			return nil, false
		}
		meta = buf[len(params):len(buf):len(buf)]
	}
	out := buf[len(buf):]
	out = appendMembers(out, r, params, meta, true)
	// out shares buf's array after the scratch parameters and metadata;
	// hand back a slice that owns only the receipt.
	return out[:len(out):len(out)], true
}

// stringsValid reports whether every string member of r is valid UTF-8.
func stringsValid(r *Receipt) bool {
	for _, s := range [...]string{r.ID, r.CapabilityID, r.ToolServer, r.ToolName, r.ToolOrigin, r.ReceiptKind,
		r.BoundaryClass, r.TrustLevel, r.ObservationOutcome, r.RedactionMode, r.ContentHash, r.PolicyHash,
		r.KernelKey, r.Signature, r.Action.ParameterHash} {
		if !utf8.ValidString(s) {
			return false
		}
	}
	if d := r.Decision; d != nil && !(utf8.ValidString(d.Verdict) && utf8.ValidString(d.Reason) && utf8.ValidString(d.Guard)) {
		return false
	}
	for i := range r.Evidence {
		if !utf8.ValidString(r.Evidence[i].GuardName) || !utf8.ValidString(r.Evidence[i].Details) {
			return false
		}
	}
	return true
}

// Result is what a receipt claims happened. It is read from the receipt's
// kind and decision whether or not the receipt verifies: only
// VerifyResult.Authorized says an action may be treated as authorized.
type Result string

// Results, spelled as Chio's verifiers report them.
const (
	ResultAuthorized Result = "Authorized" // mediated_decision with verdict allow
	ResultDenied     Result = "Denied"     // mediated_decision with verdict deny
	ResultObserved   Result = "Observed"   // trace_observation
	ResultAdvisory   Result = "Advisory"   // advisory_evaluation
	ResultInvalid    Result = "Invalid"    // unknown kind, or a mediated receipt without a usable decision
)

// VerifyResult reports each check separately, in the shape of the Chio
// receipt vectors' "expected" object.
type VerifyResult struct {
	// SignatureValid: the Ed25519 signature by kernel_key verifies over
	// canonical({"body", "id"}), the id matches the body, and the receipt is
	// signable (kind, boundary, trust, decision, outcome agree).
	SignatureValid bool `json:"signature_valid"`
	// ReceiptIDValid: id is the SHA-256 hex of canonical(body).
	ReceiptIDValid bool `json:"receipt_id_valid"`
	// ParameterHashValid: parameter_hash is the SHA-256 hex of
	// canonical(parameters).
	ParameterHashValid bool `json:"parameter_hash_valid"`
	// SignerKeyHex echoes kernel_key.
	SignerKeyHex string `json:"signer_key_hex"`
	// SignerTrusted: kernel_key is one of the verifier's trusted keys.
	SignerTrusted bool `json:"signer_trusted"`
	// Decision is the verdict, or "none" when the receipt has no decision.
	Decision string `json:"decision"`
	// Result is what the receipt claims (see Result).
	Result        Result `json:"result"`
	ReceiptKind   string `json:"receipt_kind"`
	BoundaryClass string `json:"boundary_class"`
	TrustLevel    string `json:"trust_level"`
	// OK: every check passed and the signer is trusted.
	OK bool `json:"ok"`
	// Authorized: OK and Result is Authorized. The only field to act on.
	Authorized bool `json:"authorized"`
	// Problems says in words why each failed check failed.
	Problems []string `json:"problems,omitempty"`
}

// Verifier checks receipts against a set of trusted kernel keys.
type Verifier struct {
	// TrustedKeys are the kernel public keys whose receipts may be OK.
	// Empty: nothing is trusted, so OK and Authorized are always false,
	// though every other check still runs.
	TrustedKeys []ed25519.PublicKey
}

// Verify checks r with no trusted keys (see Verifier.Verify).
func Verify(r Receipt) VerifyResult { return Verifier{}.Verify(r) }

// VerifyJSON checks a receipt given as JSON bytes with no trusted keys (see
// Verifier.VerifyJSON).
func VerifyJSON(raw []byte) (VerifyResult, error) { return Verifier{}.VerifyJSON(raw) }

// Verify checks a receipt held as a struct. Its body is rebuilt from the
// fields, so a receipt decoded from JSON that held members this struct does
// not know fails the id check; use VerifyJSON for bytes read from storage.
func (v Verifier) Verify(r Receipt) VerifyResult {
	var problems []string
	params, err := jcs.Canonicalize(orEmptyObject(r.Action.Parameters))
	if err != nil {
		problems = append(problems, fmt.Sprintf("action.parameters: %v", err))
	}
	var meta []byte
	if r.Metadata != nil {
		if meta, err = jcs.Canonicalize(r.Metadata); err != nil {
			problems = append(problems, fmt.Sprintf("metadata: %v", err))
		}
	}
	var body []byte
	if len(problems) == 0 {
		if err := checkStrings(&r); err != nil {
			problems = append(problems, err.Error())
		} else {
			body = appendBody(make([]byte, 0, 512+len(params)+len(meta)), &r, params, meta)
		}
	}
	return v.verify(&r, body, params, problems)
}

// VerifyJSON checks a receipt given as its JSON bytes, hashing the members
// exactly as they appear (unknown members included), so a receipt read from
// disk verifies without a lossy trip through the struct. The error is for
// input that is not a JSON receipt object at all; a receipt that merely
// fails its checks returns a VerifyResult with Problems.
func (v Verifier) VerifyJSON(raw []byte) (VerifyResult, error) {
	canon, err := jcs.Canonicalize(raw)
	if err != nil {
		return VerifyResult{}, fmt.Errorf("verify receipt: %w", err)
	}
	var members map[string]json.RawMessage
	if err := json.Unmarshal(canon, &members); err != nil {
		return VerifyResult{}, fmt.Errorf("verify receipt: %w: not a json object", ErrInvalidReceipt)
	}
	var r Receipt
	if err := json.Unmarshal(canon, &r); err != nil {
		return VerifyResult{}, fmt.Errorf("verify receipt: %w: %w", ErrInvalidReceipt, err)
	}
	var problems []string
	for _, name := range []string{"id", "timestamp", "tool_server", "tool_name", "action", "receipt_kind", "boundary_class", "trust_level", "kernel_key", "signature"} {
		if _, ok := members[name]; !ok {
			problems = append(problems, fmt.Sprintf("missing member %q", name))
		}
	}
	bodyMembers := make(map[string]any, len(members))
	for k, m := range members {
		if k != "id" && k != "signature" {
			bodyMembers[k] = m
		}
	}
	body, err := jcs.Marshal(bodyMembers)
	if err != nil { // cannot happen: every member came out of a canonical text
		return VerifyResult{}, fmt.Errorf("verify receipt: %w", err)
	}
	params := []byte(r.Action.Parameters) // canonical already: it came from canon
	return v.verify(&r, body, params, problems), nil
}

func orEmptyObject(b json.RawMessage) json.RawMessage {
	if len(b) == 0 {
		return json.RawMessage("{}")
	}
	return b
}

func checkStrings(r *Receipt) error {
	strs := []string{r.ID, r.CapabilityID, r.ToolServer, r.ToolName, r.ToolOrigin, r.ReceiptKind, r.BoundaryClass,
		r.TrustLevel, r.ObservationOutcome, r.RedactionMode, r.ContentHash, r.PolicyHash, r.KernelKey, r.Action.ParameterHash}
	if d := r.Decision; d != nil {
		strs = append(strs, d.Verdict, d.Reason, d.Guard)
	}
	for _, e := range r.Evidence {
		strs = append(strs, e.GuardName, e.Details)
	}
	for _, s := range strs {
		if !utf8.ValidString(s) {
			return fmt.Errorf("string %q is not valid utf-8", s)
		}
	}
	return nil
}

// verify runs the checks shared by Verify and VerifyJSON. body is
// canonical(receipt without id and signature), nil when it could not be
// built; params is canonical(parameters), nil when invalid.
func (v Verifier) verify(r *Receipt, body, params []byte, problems []string) VerifyResult {
	res := VerifyResult{
		SignerKeyHex:  r.KernelKey,
		Decision:      "none",
		ReceiptKind:   r.ReceiptKind,
		BoundaryClass: r.BoundaryClass,
		TrustLevel:    r.TrustLevel,
	}
	if r.Decision != nil {
		res.Decision = r.Decision.Verdict
	}
	switch r.ReceiptKind {
	case KindMediatedDecision:
		switch res.Decision {
		case VerdictAllow:
			res.Result = ResultAuthorized
		case VerdictDeny:
			res.Result = ResultDenied
		default:
			res.Result = ResultInvalid
		}
	case KindTraceObservation:
		res.Result = ResultObserved
	case KindAdvisoryEvaluation:
		res.Result = ResultAdvisory
	default:
		res.Result = ResultInvalid
	}

	if params != nil {
		sum := sha256.Sum256(params)
		res.ParameterHashValid = hexEqual(r.Action.ParameterHash, sum[:])
		if !res.ParameterHashValid {
			problems = append(problems, "parameter_hash does not match canonical(parameters)")
		}
	}
	if body != nil {
		sum := sha256.Sum256(body)
		res.ReceiptIDValid = hexEqual(r.ID, sum[:])
		if !res.ReceiptIDValid {
			problems = append(problems, "id does not match canonical(body)")
		}
	}

	sigOK := false
	pub, err := ParsePublicKeyHex(r.KernelKey)
	if err != nil {
		problems = append(problems, fmt.Sprintf("kernel_key: %v", err))
	}
	sig, sigErr := decodeHexLen(r.Signature, ed25519.SignatureSize)
	if sigErr != nil {
		problems = append(problems, fmt.Sprintf("signature: %v", sigErr))
	}
	if err == nil && sigErr == nil && body != nil {
		msg := make([]byte, 0, len(body)+len(r.ID)+24)
		msg = append(msg, `{"body":`...)
		msg = append(msg, body...)
		msg = append(msg, `,"id":`...)
		msg = jcs.AppendString(msg, r.ID)
		msg = append(msg, '}')
		sigOK = ed25519.Verify(pub, msg, sig)
		if !sigOK {
			problems = append(problems, "ed25519 signature does not verify")
		}
		for _, k := range v.TrustedKeys {
			if bytes.Equal(k, pub) {
				res.SignerTrusted = true
			}
		}
	}
	consistency := CheckConsistency(r)
	if consistency != nil {
		problems = append(problems, consistency.Error())
	}
	res.SignatureValid = sigOK && res.ReceiptIDValid && consistency == nil
	res.OK = res.SignatureValid && res.ParameterHashValid && res.SignerTrusted && len(problems) == 0
	res.Authorized = res.OK && res.Result == ResultAuthorized
	if !res.SignerTrusted && err == nil {
		problems = append(problems, "kernel_key is not a trusted signer")
	}
	res.Problems = problems
	return res
}

// hexEqual reports whether s is exactly the lowercase hex of want (Chio
// writes lowercase; an uppercase id is a different string, hence a
// different signed message).
func hexEqual(s string, want []byte) bool {
	return len(s) == 2*len(want) && s == hex.EncodeToString(want)
}
