package kernel

import (
	"bytes"
	"crypto/ed25519"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"slices"
	"strings"

	"github.com/backbay-labs/chio-agent/kernel/jcs"
)

// CapabilitySchema is signed into every capability token: the issuer signs
// canonical(body with "schema":"chio.capability.v1"), even though the token
// JSON usually leaves the member out. Binding the schema stops a signature
// over some other document shape from passing as a token.
const CapabilitySchema = "chio.capability.v1"

// Variables naming the capability issuers a kernel trusts.
const (
	// EnvTrustedIssuerKey holds one hex Ed25519 public key.
	EnvTrustedIssuerKey = "CHIO_TRUSTED_ISSUER_KEY"
	// EnvTrustedIssuerKeys holds comma-separated hex Ed25519 public keys.
	EnvTrustedIssuerKeys = "CHIO_TRUSTED_ISSUER_KEYS"
)

// Time statuses of a capability at the moment of verification.
const (
	TimeValid       = "valid"
	TimeExpired     = "expired"
	TimeNotYetValid = "not_yet_valid"
)

// Capability is a chio.capability.v1 token: the issuer grants the subject
// the scope between IssuedAt (inclusive) and ExpiresAt (exclusive).
type Capability struct {
	ID              string           `json:"id"`
	Issuer          string           `json:"issuer"`  // hex Ed25519 public key
	Subject         string           `json:"subject"` // hex Ed25519 public key
	IssuedAt        uint64           `json:"issued_at"`
	ExpiresAt       uint64           `json:"expires_at"`
	Scope           Scope            `json:"scope"`
	DelegationChain []DelegationLink `json:"delegation_chain,omitempty"`
	Signature       string           `json:"signature"` // hex Ed25519 by Issuer

	// raw holds the members as parsed, so the signature is checked over the
	// issuer's bytes, members this struct does not model included.
	raw map[string]json.RawMessage
}

// Scope lists what the capability grants.
type Scope struct {
	Grants         []ToolGrant     `json:"grants,omitempty"`
	ResourceGrants []ResourceGrant `json:"resource_grants,omitempty"`
	PromptGrants   []PromptGrant   `json:"prompt_grants,omitempty"`
}

// ToolGrant allows operations on one tool of one tool server.
type ToolGrant struct {
	ServerID             string          `json:"server_id"`
	ToolName             string          `json:"tool_name"`
	Operations           []string        `json:"operations"`
	Constraints          []Constraint    `json:"constraints,omitempty"`
	MaxInvocations       *uint64         `json:"max_invocations,omitempty"`
	DPoPRequired         bool            `json:"dpop_required,omitempty"`
	MaxCostPerInvocation *MonetaryAmount `json:"max_cost_per_invocation,omitempty"`
	MaxTotalCost         *MonetaryAmount `json:"max_total_cost,omitempty"`
}

// Constraint narrows a grant; Value's shape depends on Type (a string for
// path_prefix, a number for max_length, a list for custom, absent for
// governed_intent_required).
type Constraint struct {
	Type  string          `json:"type"`
	Value json.RawMessage `json:"value,omitempty"`
}

// MonetaryAmount is a cost cap in the smallest units of a currency.
type MonetaryAmount struct {
	Currency string `json:"currency"`
	Units    uint64 `json:"units"`
}

// ResourceGrant allows operations on resources matching a URI pattern.
type ResourceGrant struct {
	URIPattern string   `json:"uri_pattern"`
	Operations []string `json:"operations"`
}

// PromptGrant allows operations on prompts matching a name (may end in *).
type PromptGrant struct {
	PromptName string   `json:"prompt_name"`
	Operations []string `json:"operations"`
}

// DelegationLink records that Delegator passed the capability to Delegatee,
// signed by Delegator over canonical(link without signature).
type DelegationLink struct {
	CapabilityID string `json:"capability_id"`
	Delegator    string `json:"delegator"` // hex Ed25519 public key
	Delegatee    string `json:"delegatee"` // hex Ed25519 public key
	Timestamp    uint64 `json:"timestamp"` // unix seconds
	Signature    string `json:"signature"`

	raw map[string]json.RawMessage
}

// ParseCapability parses a token from JSON. It fails (ErrInvalidCapability)
// only when the text is not a structurally sound token: strict JSON, an
// object with every required member of the right type. Signature, time and
// chain are judged by Verify.
func ParseCapability(data []byte) (*Capability, error) {
	canon, err := jcs.Canonicalize(data)
	if err != nil {
		return nil, fmt.Errorf("parse capability: %w: %w", ErrInvalidCapability, err)
	}
	c := new(Capability)
	if err := json.Unmarshal(canon, &c.raw); err != nil {
		return nil, fmt.Errorf("parse capability: %w: not a json object", ErrInvalidCapability)
	}
	for _, name := range []string{"id", "issuer", "subject", "issued_at", "expires_at", "scope", "signature"} {
		if _, ok := c.raw[name]; !ok {
			return nil, fmt.Errorf("parse capability: %w: missing member %q", ErrInvalidCapability, name)
		}
	}
	if err := json.Unmarshal(canon, c); err != nil {
		return nil, fmt.Errorf("parse capability: %w: %w", ErrInvalidCapability, err)
	}
	if chain, ok := c.raw["delegation_chain"]; ok {
		var links []map[string]json.RawMessage
		if err := json.Unmarshal(chain, &links); err != nil || len(links) != len(c.DelegationChain) {
			return nil, fmt.Errorf("parse capability: %w: delegation_chain is not a list of objects", ErrInvalidCapability)
		}
		for i := range links {
			c.DelegationChain[i].raw = links[i]
		}
	}
	return c, nil
}

// CapabilityVerifyOptions configures Capability.Verify.
type CapabilityVerifyOptions struct {
	// Now is the unix time in seconds at which the time bounds are judged.
	Now uint64
	// MaxDelegationDepth caps the number of delegation links; 0 means no
	// cap. Chio verifiers commonly use 4.
	MaxDelegationDepth int
	// TrustedIssuers are the issuer keys whose tokens may be OK. Empty
	// trusts nobody (OK is then always false), which is the safe default.
	TrustedIssuers []ed25519.PublicKey
}

// CapabilityResult reports each check separately, in the shape of the Chio
// capability vectors' "expected" object, plus issuer trust.
type CapabilityResult struct {
	// SignatureValid: the issuer's Ed25519 signature verifies over
	// canonical(body without signature, with the schema member).
	SignatureValid bool `json:"signature_valid"`
	// TimeValid: IssuedAt <= Now < ExpiresAt.
	TimeValid bool `json:"time_valid"`
	// TimeStatus is TimeValid, TimeExpired or TimeNotYetValid.
	TimeStatus string `json:"time_status"`
	// DelegationChainShapeValid: every link is signed by its delegator, each
	// link's delegatee is the next link's delegator, timestamps never go
	// back, and the chain is within MaxDelegationDepth.
	DelegationChainShapeValid bool `json:"delegation_chain_shape_valid"`
	// IssuerTrusted: the issuer is one of the trusted issuer keys.
	IssuerTrusted bool `json:"issuer_trusted"`
	// OK: every check above passed. The only field to act on.
	OK bool `json:"ok"`
	// Problems says in words why each failed check failed.
	Problems []string `json:"problems,omitempty"`
}

// VerifyCapabilityJSON parses and verifies a token in one step.
func VerifyCapabilityJSON(data []byte, opts CapabilityVerifyOptions) (CapabilityResult, error) {
	c, err := ParseCapability(data)
	if err != nil {
		return CapabilityResult{}, err
	}
	return c.Verify(opts), nil
}

// Verify checks the token's signature, time bounds, delegation chain and
// issuer trust. The signatures of a parsed token are checked over the bytes
// it was parsed from, so editing its fields afterwards changes nothing that
// matters; a Capability built in Go is checked over its struct fields.
func (c *Capability) Verify(opts CapabilityVerifyOptions) CapabilityResult {
	var res CapabilityResult
	var problems []string

	issuer, err := ParsePublicKeyHex(c.Issuer)
	if err != nil {
		problems = append(problems, fmt.Sprintf("issuer: %v", err))
	} else {
		msg, err := c.signedBytes()
		if err != nil {
			problems = append(problems, err.Error())
		} else if verifyHexSig(issuer, msg, c.Signature) {
			res.SignatureValid = true
		} else {
			problems = append(problems, "issuer signature does not verify")
		}
		res.IssuerTrusted = slices.ContainsFunc(opts.TrustedIssuers, func(k ed25519.PublicKey) bool { return bytes.Equal(k, issuer) })
		if !res.IssuerTrusted {
			problems = append(problems, "issuer is not a trusted issuer key")
		}
	}
	// A subject that is no key names nobody: the token cannot be OK.
	_, subjectErr := ParsePublicKeyHex(c.Subject)
	if subjectErr != nil {
		problems = append(problems, fmt.Sprintf("subject: %v", subjectErr))
	}

	switch {
	case opts.Now < c.IssuedAt:
		res.TimeStatus = TimeNotYetValid
		problems = append(problems, fmt.Sprintf("not valid before %d (now %d)", c.IssuedAt, opts.Now))
	case opts.Now >= c.ExpiresAt:
		res.TimeStatus = TimeExpired
		problems = append(problems, fmt.Sprintf("expired at %d (now %d)", c.ExpiresAt, opts.Now))
	default:
		res.TimeStatus = TimeValid
		res.TimeValid = true
	}

	chainProblems := c.checkChain(opts.MaxDelegationDepth)
	res.DelegationChainShapeValid = len(chainProblems) == 0
	problems = append(problems, chainProblems...)

	res.OK = res.SignatureValid && res.TimeValid && res.DelegationChainShapeValid && res.IssuerTrusted && subjectErr == nil
	res.Problems = problems
	return res
}

func (c *Capability) checkChain(maxDepth int) []string {
	var problems []string
	if maxDepth > 0 && len(c.DelegationChain) > maxDepth {
		problems = append(problems, fmt.Sprintf("delegation chain has %d links, more than the maximum %d", len(c.DelegationChain), maxDepth))
	}
	for i := range c.DelegationChain {
		l := &c.DelegationChain[i]
		if l.CapabilityID == "" {
			problems = append(problems, fmt.Sprintf("delegation link %d: empty capability_id", i))
		}
		if _, err := ParsePublicKeyHex(l.Delegatee); err != nil {
			problems = append(problems, fmt.Sprintf("delegation link %d: delegatee: %v", i, err))
		}
		delegator, err := ParsePublicKeyHex(l.Delegator)
		if err != nil {
			problems = append(problems, fmt.Sprintf("delegation link %d: delegator: %v", i, err))
		} else if msg, err := l.signedBytes(); err != nil {
			problems = append(problems, fmt.Sprintf("delegation link %d: %v", i, err))
		} else if !verifyHexSig(delegator, msg, l.Signature) {
			problems = append(problems, fmt.Sprintf("delegation link %d: delegator signature does not verify", i))
		}
		if i > 0 {
			prev := &c.DelegationChain[i-1]
			if !strings.EqualFold(prev.Delegatee, l.Delegator) {
				problems = append(problems, fmt.Sprintf("delegation link %d: delegator is not link %d's delegatee", i, i-1))
			}
			if l.Timestamp < prev.Timestamp {
				problems = append(problems, fmt.Sprintf("delegation link %d: timestamp %d before link %d's %d", i, l.Timestamp, i-1, prev.Timestamp))
			}
		}
	}
	return problems
}

// signedBytes returns canonical(body without signature, plus schema).
func (c *Capability) signedBytes() ([]byte, error) {
	return signedBody(c.raw, c, "capability", func(body map[string]any) error {
		if s, ok := body["schema"]; ok {
			// A token may spell the schema out; then it must be this one.
			if string(s.(json.RawMessage)) != `"`+CapabilitySchema+`"` {
				return fmt.Errorf("schema member is %s, want %q", s, CapabilitySchema)
			}
		} else {
			body["schema"] = CapabilitySchema
		}
		return nil
	})
}

// signedBytes returns canonical(link without signature).
func (l *DelegationLink) signedBytes() ([]byte, error) {
	return signedBody(l.raw, l, "delegation link", nil)
}

// signedBody is what a capability or a delegation link signs: the
// canonical JSON of its members without "signature". The members are raw,
// as parsed, or else v's own JSON encoding (built in Go); edit, when set,
// adjusts them first. what names the part in errors.
func signedBody(raw map[string]json.RawMessage, v any, what string, edit func(body map[string]any) error) ([]byte, error) {
	members := raw
	if members == nil { // built in Go: take the struct's own encoding
		b, err := json.Marshal(v)
		if err != nil {
			return nil, fmt.Errorf("encode %s: %w", what, err)
		}
		if err := json.Unmarshal(b, &members); err != nil {
			return nil, fmt.Errorf("encode %s: %w", what, err)
		}
	}
	body := make(map[string]any, len(members)+1)
	for k, v := range members {
		if k != "signature" {
			body[k] = v
		}
	}
	if edit != nil {
		if err := edit(body); err != nil {
			return nil, err
		}
	}
	out, err := jcs.Marshal(body)
	if err != nil {
		return nil, fmt.Errorf("encode %s: %w", what, err)
	}
	return out, nil
}

// SignCapability returns c signed by key, which becomes its issuer. It
// signs the struct's fields (any parsed raw form is dropped), so it is for
// minting tokens, not for re-signing foreign ones.
func SignCapability(c Capability, key ed25519.PrivateKey) (Capability, error) {
	c.raw, c.Signature = nil, ""
	sig, err := signPart(key, "sign capability", func(pub string) { c.Issuer = pub }, c.signedBytes)
	if err != nil {
		return Capability{}, err
	}
	c.Signature = sig
	return c, nil
}

// SignDelegationLink returns l signed by key, which becomes its delegator.
func SignDelegationLink(l DelegationLink, key ed25519.PrivateKey) (DelegationLink, error) {
	l.raw, l.Signature = nil, ""
	sig, err := signPart(key, "sign delegation link", func(pub string) { l.Delegator = pub }, l.signedBytes)
	if err != nil {
		return DelegationLink{}, err
	}
	l.Signature = sig
	return l, nil
}

// signPart signs a capability or a delegation link with key, which becomes
// its signer: setSigner is given key's public half in hex, then body the
// bytes to sign (which name the signer). It returns the hex signature.
func signPart(key ed25519.PrivateKey, what string, setSigner func(pub string), body func() ([]byte, error)) (string, error) {
	if len(key) != ed25519.PrivateKeySize {
		return "", fmt.Errorf("%s: %w: private key is %d bytes", what, ErrInvalidKey, len(key))
	}
	setSigner(hex.EncodeToString(key[32:]))
	msg, err := body()
	if err != nil {
		return "", fmt.Errorf("%s: %w", what, err)
	}
	return hex.EncodeToString(ed25519.Sign(key, msg)), nil
}

func verifyHexSig(pub ed25519.PublicKey, msg []byte, sigHex string) bool {
	sig, err := decodeHexLen(sigHex, ed25519.SignatureSize)
	return err == nil && ed25519.Verify(pub, msg, sig)
}

// TrustedIssuerKeys reads the trusted capability issuers from
// CHIO_TRUSTED_ISSUER_KEY (one hex key) and CHIO_TRUSTED_ISSUER_KEYS
// (comma-separated; blanks around commas ignored), both optional and
// combined without duplicates. A malformed key fails the whole read with an
// error naming the variable and position: trusting fewer issuers than the
// operator meant would fail open or closed by accident.
func TrustedIssuerKeys(lookup LookupEnv) ([]ed25519.PublicKey, error) {
	var keys []ed25519.PublicKey
	add := func(k ed25519.PublicKey) {
		if !slices.ContainsFunc(keys, func(x ed25519.PublicKey) bool { return bytes.Equal(x, k) }) {
			keys = append(keys, k)
		}
	}
	if lookup == nil {
		return nil, nil
	}
	if v, ok := lookup(EnvTrustedIssuerKey); ok && strings.TrimSpace(v) != "" {
		k, err := ParsePublicKeyHex(strings.TrimSpace(v))
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", EnvTrustedIssuerKey, err)
		}
		add(k)
	}
	if v, ok := lookup(EnvTrustedIssuerKeys); ok && strings.TrimSpace(v) != "" {
		for i, part := range strings.Split(v, ",") {
			part = strings.TrimSpace(part)
			if part == "" {
				continue // tolerate "a,b," from templated manifests
			}
			k, err := ParsePublicKeyHex(part)
			if err != nil {
				return nil, fmt.Errorf("read %s: entry %d: %w", EnvTrustedIssuerKeys, i+1, err)
			}
			add(k)
		}
	}
	return keys, nil
}
