package kernel

import (
	"encoding/json"
	"testing"
	"time"
)

// FuzzVerifyJSON: never panics; anything that verifies as signed re-verifies
// the same after a trip through the struct (VerifyJSON and Verify agree).
func FuzzVerifyJSON(f *testing.F) {
	r, err := BuildEgressReceipt(docExampleEvent(), docExampleOutcome(), docExamplePolicyHash, docExampleKey(), time.Unix(1767225600, 0))
	if err != nil {
		f.Fatal(err)
	}
	raw, _ := json.Marshal(r)
	f.Add(raw)
	f.Add([]byte(`{"id":"x","action":{"parameters":{}},"decision":null}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		res, err := VerifyJSON(data)
		if err != nil {
			return
		}
		if res.OK || res.Authorized {
			t.Fatalf("OK with no trusted keys: %+v", res)
		}
		if !res.SignatureValid {
			return
		}
		var r Receipt
		if err := json.Unmarshal(data, &r); err != nil {
			t.Fatalf("verified receipt does not decode: %v", err)
		}
		if again := Verify(r); again.SignatureValid != res.SignatureValid && hasOnlyKnownMembers(t, data) {
			t.Fatalf("struct verify disagrees: %+v vs %+v", again, res)
		}
	})
}

func hasOnlyKnownMembers(t *testing.T, data []byte) bool {
	var m map[string]json.RawMessage
	if json.Unmarshal(data, &m) != nil {
		return false
	}
	b, _ := json.Marshal(Receipt{})
	var known map[string]json.RawMessage
	_ = json.Unmarshal(b, &known)
	for _, k := range []string{"capability_id", "tool_origin", "decision", "observation_outcome", "redaction_mode", "content_hash", "policy_hash", "evidence", "metadata"} {
		known[k] = nil
	}
	for k := range m {
		if _, ok := known[k]; !ok {
			return false
		}
	}
	return true
}

// FuzzParseCapability: never panics; a parsed token verifies without panic.
func FuzzParseCapability(f *testing.F) {
	f.Add([]byte(`{"id":"c","issuer":"00","subject":"00","issued_at":1,"expires_at":2,"scope":{},"signature":"","delegation_chain":[{"capability_id":"c","delegator":"x","delegatee":"y","timestamp":1,"signature":""}]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := ParseCapability(data)
		if err != nil {
			return
		}
		if res := c.Verify(CapabilityVerifyOptions{Now: 1, MaxDelegationDepth: 4}); res.OK {
			t.Fatalf("OK with no trusted issuers: %+v", res)
		}
	})
}
