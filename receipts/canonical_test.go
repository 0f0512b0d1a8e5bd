package receipts

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/backbay-labs/chio-agent/kernel"
	"github.com/backbay-labs/chio-agent/kernel/jcs"
)

// genericCanonical is what kernel.Receipt.CanonicalJSON computed before it
// wrote the receipt by hand: encoding/json, then canonicalization.
func genericCanonical(r *kernel.Receipt) ([]byte, error) {
	b, err := json.Marshal(r)
	if err != nil {
		return nil, err
	}
	return jcs.Canonicalize(b)
}

func canonicalCases(t testing.TB) []kernel.Receipt {
	key := testKey("canonical")
	base, err := syntheticReceipt(key, 3, fixedNow)
	if err != nil {
		t.Fatal(err)
	}
	edits := []func(r *kernel.Receipt){
		func(r *kernel.Receipt) {},
		func(r *kernel.Receipt) {
			r.CapabilityID, r.ToolOrigin, r.RedactionMode = "cap-1", "caller_executed", "none"
			r.ContentHash, r.PolicyHash = strings.Repeat("ab", 32), strings.Repeat("cd", 32)
		},
		func(r *kernel.Receipt) {
			r.Evidence = []kernel.Evidence{{GuardName: "g1", Verdict: false, Details: "d\n\"x\""}, {GuardName: "g2", Verdict: true}}
		},
		func(r *kernel.Receipt) { r.Evidence = []kernel.Evidence{} },
		func(r *kernel.Receipt) { r.Decision = nil },
		func(r *kernel.Receipt) { r.Decision = &kernel.Decision{} },
		func(r *kernel.Receipt) {
			r.Decision = &kernel.Decision{Verdict: "allow", Guard: "g", Reason: "<&>\u2028"}
		},
		func(r *kernel.Receipt) { r.Action.Parameters = nil },
		func(r *kernel.Receipt) { r.Action.Parameters = json.RawMessage{} },
		func(r *kernel.Receipt) {
			r.Action.Parameters = json.RawMessage(` { "b" : 1.50, "a":[ true,null,"\u00e9\u0001"] } `)
		},
		func(r *kernel.Receipt) {
			r.Action.Parameters = json.RawMessage(`{"n":9007199254740993,"m":18446744073709551615,"f":1e21}`)
		},
		func(r *kernel.Receipt) { r.Action.Parameters = json.RawMessage(`{"a":1,"a":2}`) },
		func(r *kernel.Receipt) { r.Action.Parameters = json.RawMessage(`{"a":`) },
		func(r *kernel.Receipt) { r.Action.Parameters = json.RawMessage("{\"a\":\"\xff\"}") },
		func(r *kernel.Receipt) { r.Action.Parameters = json.RawMessage(`"just a string"`) },
		func(r *kernel.Receipt) { r.Metadata = nil },
		func(r *kernel.Receipt) { r.Metadata = json.RawMessage{} },
		func(r *kernel.Receipt) { r.Metadata = json.RawMessage(`null`) },
		func(r *kernel.Receipt) {
			r.Metadata = json.RawMessage(`{"z":[1,2.50],"a":"é\u0001","\ud83d\ude00":{},"\ue000":0}`)
		},
		func(r *kernel.Receipt) { r.Metadata = json.RawMessage(`[1,`) },
		func(r *kernel.Receipt) { r.ToolName = "\U0001F600\ue000\u007f\u2028<>&\\\"\t\x01" },
		func(r *kernel.Receipt) { r.ToolServer = "bad\xffutf8" },
		func(r *kernel.Receipt) { r.Decision = &kernel.Decision{Verdict: "allow", Reason: "\xc3"} },
		func(r *kernel.Receipt) { r.Evidence = []kernel.Evidence{{GuardName: "\xed\xa0\x80"}} },
		func(r *kernel.Receipt) { r.ID, r.Signature, r.KernelKey, r.Action.ParameterHash = "", "", "", "" },
		func(r *kernel.Receipt) { r.Timestamp = 1<<64 - 1 },
		func(r *kernel.Receipt) { r.Timestamp = 0 },
		func(r *kernel.Receipt) { r.ObservationOutcome = "observed" },
	}
	out := make([]kernel.Receipt, 0, len(edits))
	for _, edit := range edits {
		r := *base
		if r.Decision != nil {
			d := *r.Decision
			r.Decision = &d
		}
		edit(&r)
		out = append(out, r)
	}
	return out
}

// TestCanonicalJSONFastPath holds kernel.Receipt.CanonicalJSON, which writes
// the receipt by hand, to the generic encode-and-canonicalize result: same
// bytes, or an error in the same cases.
func TestCanonicalJSONFastPath(t *testing.T) {
	for i, r := range canonicalCases(t) {
		want, werr := genericCanonical(&r)
		got, gerr := r.CanonicalJSON()
		if (werr == nil) != (gerr == nil) || string(got) != string(want) {
			t.Fatalf("case %d:\n got %s (%v)\nwant %s (%v)", i, got, gerr, want, werr)
		}
	}
}

func FuzzCanonicalJSON(f *testing.F) {
	f.Add(`{"host":"a"}`, `{"workload":"w"}`, "egress", "reason", uint64(1))
	f.Add(` {"b":1.0,"a":[1e400]}`, `null`, "\xff", "", uint64(1<<63))
	f.Add(``, ``, "", "\u2028", uint64(0))
	key := testKey("canonical")
	base, err := syntheticReceipt(key, 1, fixedNow)
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, params, meta, name, reason string, ts uint64) {
		r := *base
		r.Action.Parameters = json.RawMessage(params)
		if params == "" {
			r.Action.Parameters = nil
		}
		r.Metadata = json.RawMessage(meta)
		r.ToolName, r.Timestamp = name, ts
		r.Decision = &kernel.Decision{Verdict: "deny", Reason: reason}
		want, werr := genericCanonical(&r)
		got, gerr := r.CanonicalJSON()
		if (werr == nil) != (gerr == nil) || string(got) != string(want) {
			t.Fatalf("got %s (%v)\nwant %s (%v)", got, gerr, want, werr)
		}
	})
}
