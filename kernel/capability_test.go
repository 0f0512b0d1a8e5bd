package kernel

import (
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/backbay-labs/chio-agent/internal/testutil"
	"github.com/backbay-labs/chio-agent/kernel/jcs"
)

type capabilityVectors struct {
	IssuerSeedHex    string `json:"issuer_seed_hex"`
	DelegateeSeedHex string `json:"delegatee_seed_hex"`
	Cases            []struct {
		ID                             string          `json:"id"`
		Description                    string          `json:"description"`
		Capability                     json.RawMessage `json:"capability"`
		CapabilityBodyCanonicalJSON    string          `json:"capability_body_canonical_json"`
		VerifyAt                       uint64          `json:"verify_at"`
		VerifyOnly                     bool            `json:"verify_only"`
		MaxDelegationDepth             int             `json:"max_delegation_depth"`
		Expected                       map[string]any  `json:"expected"`
		ExpectedWithMaxDelegationDepth map[string]any  `json:"expected_with_max_delegation_depth"`
	} `json:"cases"`
}

func TestConformanceCapabilities(t *testing.T) {
	var vec capabilityVectors
	testutil.ChioVectors(t, "capability", 20, &vec)
	issuerKey, err := ParseSeedHex(vec.IssuerSeedHex)
	if err != nil {
		t.Fatal(err)
	}
	issuerPub := issuerKey.Public().(ed25519.PublicKey)
	depthCases, resigned := 0, 0
	for _, c := range vec.Cases {
		t.Run(c.ID, func(t *testing.T) {
			res, err := VerifyCapabilityJSON(c.Capability, CapabilityVerifyOptions{Now: c.VerifyAt})
			if err != nil {
				t.Fatalf("%s: %v", c.Description, err)
			}
			compareExpected(t, "Verify", res, c.Expected)
			if res.IssuerTrusted || res.OK {
				t.Fatalf("trusted with no trusted issuers: %+v", res)
			}
			if c.ExpectedWithMaxDelegationDepth != nil {
				depthCases++
				res := mustVerifyCap(t, c.Capability, CapabilityVerifyOptions{Now: c.VerifyAt, MaxDelegationDepth: c.MaxDelegationDepth})
				compareExpected(t, "Verify with max_delegation_depth", res, c.ExpectedWithMaxDelegationDepth)
			}
			// Every expectation also holds under the common limit of 4
			// except where the vector says otherwise (depth_limit: exactly 4
			// links still pass).
			if c.ExpectedWithMaxDelegationDepth == nil {
				res := mustVerifyCap(t, c.Capability, CapabilityVerifyOptions{Now: c.VerifyAt, MaxDelegationDepth: 4})
				compareExpected(t, "Verify with max depth 4", res, c.Expected)
			}
			// With the issuer trusted, OK is exactly "every check passed".
			res = mustVerifyCap(t, c.Capability, CapabilityVerifyOptions{Now: c.VerifyAt, TrustedIssuers: []ed25519.PublicKey{issuerPub}})
			allPass := c.Expected["signature_valid"] == true && c.Expected["time_valid"] == true && c.Expected["delegation_chain_shape_valid"] == true
			if !res.IssuerTrusted || res.OK != allPass {
				t.Fatalf("trusted issuer: OK %v, want %v (%v)", res.OK, allPass, res.Problems)
			}

			// capability_body_canonical_json is JCS(capability without signature).
			var m map[string]json.RawMessage
			if err := json.Unmarshal(c.Capability, &m); err != nil {
				t.Fatal(err)
			}
			delete(m, "signature")
			body, err := jcs.Marshal(toAny(m))
			if err != nil {
				t.Fatal(err)
			}
			if string(body) != c.CapabilityBodyCanonicalJSON {
				t.Fatalf("body\n got %s\nwant %s", body, c.CapabilityBodyCanonicalJSON)
			}

			// The typed model holds every member: re-encoding the struct
			// gives the same canonical token.
			parsed, err := ParseCapability(c.Capability)
			if err != nil {
				t.Fatal(err)
			}
			typed, _ := json.Marshal(parsed)
			a, err1 := jcs.Canonicalize(typed)
			b, err2 := jcs.Canonicalize(c.Capability)
			if err1 != nil || err2 != nil || string(a) != string(b) {
				t.Fatalf("typed round trip\n got %s\nwant %s", a, b)
			}

			// Cases not marked verify_only and signed correctly can be
			// minted again: SignCapability gives the identical signature.
			if !c.VerifyOnly && c.Expected["signature_valid"] == true {
				resigned++
				again, err := SignCapability(*parsed, issuerKey)
				if err != nil {
					t.Fatal(err)
				}
				if again.Signature != parsed.Signature {
					t.Fatalf("re-signed %s, vector has %s", again.Signature, parsed.Signature)
				}
			}
		})
	}
	if depthCases != 1 || resigned != 8 {
		t.Errorf("depth cases %d (want 1), re-signed %d (want 8)", depthCases, resigned)
	}
}

func toAny(m map[string]json.RawMessage) map[string]any {
	out := make(map[string]any, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

func mustVerifyCap(t *testing.T, data []byte, opts CapabilityVerifyOptions) CapabilityResult {
	t.Helper()
	res, err := VerifyCapabilityJSON(data, opts)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

func seedKey(b byte) ed25519.PrivateKey {
	return ed25519.NewKeyFromSeed([]byte(strings.Repeat(string([]byte{b}), 32)))
}

func TestCapabilityMintAndChain(t *testing.T) {
	issuer, a, b, subject := seedKey(1), seedKey(2), seedKey(3), seedKey(4)
	link1, err := SignDelegationLink(DelegationLink{CapabilityID: "cap-x", Delegatee: PublicKeyHex(a.Public().(ed25519.PublicKey)), Timestamp: 110}, issuer)
	if err != nil {
		t.Fatal(err)
	}
	link2, err := SignDelegationLink(DelegationLink{CapabilityID: "cap-x", Delegatee: PublicKeyHex(b.Public().(ed25519.PublicKey)), Timestamp: 120}, a)
	if err != nil {
		t.Fatal(err)
	}
	maxInv := uint64(3)
	tok := Capability{
		ID: "cap-x", Subject: PublicKeyHex(subject.Public().(ed25519.PublicKey)), IssuedAt: 100, ExpiresAt: 200,
		Scope: Scope{Grants: []ToolGrant{{ServerID: "chio-agent/egress", ToolName: "connect", Operations: []string{"invoke"},
			Constraints: []Constraint{{Type: "domain_glob", Value: json.RawMessage(`"*.example.com"`)}}, MaxInvocations: &maxInv}}},
		DelegationChain: []DelegationLink{link1, link2},
	}
	signed, err := SignCapability(tok, issuer)
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := json.Marshal(signed)
	trust := []ed25519.PublicKey{issuer.Public().(ed25519.PublicKey)}
	res := mustVerifyCap(t, raw, CapabilityVerifyOptions{Now: 150, TrustedIssuers: trust})
	if !res.OK {
		t.Fatalf("minted token: %+v", res)
	}
	// The struct verifies the same way without a JSON trip.
	if res := signed.Verify(CapabilityVerifyOptions{Now: 150, TrustedIssuers: trust}); !res.OK {
		t.Fatalf("struct verify: %+v", res)
	}
	for name, tc := range map[string]struct {
		now   uint64
		depth int
		edit  func(c *Capability)
		check func(r CapabilityResult) bool
	}{
		"issued_at inclusive":  {100, 0, nil, func(r CapabilityResult) bool { return r.OK }},
		"expires_at exclusive": {200, 0, nil, func(r CapabilityResult) bool { return !r.OK && r.TimeStatus == TimeExpired }},
		"before issued_at":     {99, 0, nil, func(r CapabilityResult) bool { return !r.OK && r.TimeStatus == TimeNotYetValid }},
		"depth 2 ok":           {150, 2, nil, func(r CapabilityResult) bool { return r.OK }},
		"depth 1 exceeded":     {150, 1, nil, func(r CapabilityResult) bool { return !r.OK && !r.DelegationChainShapeValid && r.SignatureValid }},
		"links swapped": {150, 0, func(c *Capability) {
			c.DelegationChain[0], c.DelegationChain[1] = c.DelegationChain[1], c.DelegationChain[0]
		}, func(r CapabilityResult) bool { return !r.DelegationChainShapeValid }},
		"link timestamp back":    {150, 0, func(c *Capability) { c.DelegationChain[1].Timestamp = 100 }, func(r CapabilityResult) bool { return !r.DelegationChainShapeValid }},
		"link forged":            {150, 0, func(c *Capability) { c.DelegationChain[1].raw["delegatee"] = json.RawMessage(`"` + c.Subject + `"`) }, func(r CapabilityResult) bool { return !r.DelegationChainShapeValid }},
		"bad subject":            {150, 0, func(c *Capability) { c.Subject = "nope" }, func(r CapabilityResult) bool { return !r.OK }},
		"bad issuer hex":         {150, 0, func(c *Capability) { c.Issuer = "zz" }, func(r CapabilityResult) bool { return !r.SignatureValid && !r.OK }},
		"wrong schema spelled":   {150, 0, func(c *Capability) { c.raw["schema"] = json.RawMessage(`"chio.capability.v2"`) }, func(r CapabilityResult) bool { return !r.SignatureValid }},
		"right schema spelled":   {150, 0, func(c *Capability) { c.raw["schema"] = json.RawMessage(`"chio.capability.v1"`) }, func(r CapabilityResult) bool { return r.OK }},
		"unknown member added":   {150, 0, func(c *Capability) { c.raw["extra"] = json.RawMessage(`1`) }, func(r CapabilityResult) bool { return !r.SignatureValid }},
		"signature truncated":    {150, 0, func(c *Capability) { c.Signature = c.Signature[:10] }, func(r CapabilityResult) bool { return !r.SignatureValid }},
		"scope widened (struct)": {150, 0, func(c *Capability) { c.raw = nil; c.Scope.Grants[0].ToolName = "*" }, func(r CapabilityResult) bool { return !r.SignatureValid }},
	} {
		c, err := ParseCapability(raw)
		if err != nil {
			t.Fatal(err)
		}
		if tc.edit != nil {
			tc.edit(c)
		}
		r := c.Verify(CapabilityVerifyOptions{Now: tc.now, MaxDelegationDepth: tc.depth, TrustedIssuers: trust})
		if !tc.check(r) {
			t.Errorf("%s: unexpected result %+v", name, r)
		}
		if !r.OK && len(r.Problems) == 0 {
			t.Errorf("%s: failed without a problem", name)
		}
	}
}

func TestParseCapabilityRejects(t *testing.T) {
	for _, bad := range []string{
		``, `[]`, `{"id":"x"}`, `{"id":"x","id":"y"}`,
		`{"id":"x","issuer":"a","subject":"b","issued_at":"soon","expires_at":2,"scope":{},"signature":""}`,
		`{"id":"x","issuer":"a","subject":"b","issued_at":1,"expires_at":2,"scope":[],"signature":""}`,
		`{"id":"x","issuer":"a","subject":"b","issued_at":1,"expires_at":2,"scope":{},"signature":"","delegation_chain":[1]}`,
		`{"id":"x","issuer":"a","subject":"b","issued_at":-1,"expires_at":2,"scope":{},"signature":""}`,
	} {
		if _, err := ParseCapability([]byte(bad)); !errors.Is(err, ErrInvalidCapability) {
			t.Errorf("ParseCapability(%q): want ErrInvalidCapability, got %v", bad, err)
		}
	}
}

func TestTrustedIssuerKeys(t *testing.T) {
	k1 := PublicKeyHex(seedKey(1).Public().(ed25519.PublicKey))
	k2 := PublicKeyHex(seedKey(2).Public().(ed25519.PublicKey))
	env := func(m map[string]string) LookupEnv {
		return func(name string) (string, bool) { v, ok := m[name]; return v, ok }
	}
	keys, err := TrustedIssuerKeys(env(map[string]string{EnvTrustedIssuerKey: k1, EnvTrustedIssuerKeys: " " + k2 + " , " + strings.ToUpper(k1) + ","}))
	if err != nil || len(keys) != 2 || PublicKeyHex(keys[0]) != k1 || PublicKeyHex(keys[1]) != k2 {
		t.Fatalf("keys %v, err %v", keys, err)
	}
	keys, err = TrustedIssuerKeys(env(nil))
	if err != nil || len(keys) != 0 {
		t.Fatalf("no variables: %v, %v", keys, err)
	}
	for name, m := range map[string]map[string]string{
		EnvTrustedIssuerKey:  {EnvTrustedIssuerKey: k1[:62]},
		EnvTrustedIssuerKeys: {EnvTrustedIssuerKey: k1, EnvTrustedIssuerKeys: k2 + ",xyz"},
	} {
		_, err := TrustedIssuerKeys(env(m))
		if !errors.Is(err, ErrInvalidKey) || !strings.Contains(err.Error(), name+":") {
			t.Errorf("malformed %s: got %v", name, err)
		}
	}
}
