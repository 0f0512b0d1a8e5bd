package kernel

import (
	"crypto/ed25519"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"

	"github.com/backbay-labs/chio-agent/internal/testutil"
	"github.com/backbay-labs/chio-agent/kernel/jcs"
)

type receiptVectors struct {
	SigningKeySeedHex string `json:"signing_key_seed_hex"`
	Cases             []struct {
		ID                       string          `json:"id"`
		Description              string          `json:"description"`
		Receipt                  json.RawMessage `json:"receipt"`
		ReceiptBodyCanonicalJSON string          `json:"receipt_body_canonical_json"`
		Expected                 map[string]any  `json:"expected"`
	} `json:"cases"`
}

// compareExpected checks every member of want against the JSON form of got.
func compareExpected(t *testing.T, what string, got any, want map[string]any) {
	t.Helper()
	b, err := json.Marshal(got)
	if err != nil {
		t.Fatal(err)
	}
	var gm map[string]any
	if err := json.Unmarshal(b, &gm); err != nil {
		t.Fatal(err)
	}
	for k, w := range want {
		g, ok := gm[k]
		if !ok {
			t.Errorf("%s: result lacks expected field %q", what, k)
			continue
		}
		if !reflect.DeepEqual(g, w) {
			t.Errorf("%s: %s = %v, want %v (problems: %v)", what, k, g, w, gm["problems"])
		}
	}
}

func TestConformanceReceipts(t *testing.T) {
	var vec receiptVectors
	testutil.ChioVectors(t, "receipt", 14, &vec)
	key, err := ParseSeedHex(vec.SigningKeySeedHex)
	if err != nil {
		t.Fatal(err)
	}
	signable := 0
	for _, c := range vec.Cases {
		t.Run(c.ID, func(t *testing.T) {
			// From the raw bytes, as a receipt read from disk.
			res, err := VerifyJSON(c.Receipt)
			if err != nil {
				t.Fatalf("VerifyJSON: %v", err)
			}
			compareExpected(t, "VerifyJSON", res, c.Expected)

			// Through the struct: the round trip must be lossless.
			var r Receipt
			if err := json.Unmarshal(c.Receipt, &r); err != nil {
				t.Fatal(err)
			}
			compareExpected(t, "Verify", Verify(r), c.Expected)
			canonRaw, err := jcs.Canonicalize(c.Receipt)
			if err != nil {
				t.Fatal(err)
			}
			canonStruct, err := r.CanonicalJSON()
			if err != nil {
				t.Fatal(err)
			}
			if string(canonStruct) != string(canonRaw) {
				t.Fatalf("struct round trip changed the receipt:\n got %s\nwant %s", canonStruct, canonRaw)
			}

			// receipt_body_canonical_json is the receipt without signature.
			var m map[string]any
			dec := json.NewDecoder(strings.NewReader(string(c.Receipt)))
			dec.UseNumber()
			if err := dec.Decode(&m); err != nil {
				t.Fatal(err)
			}
			delete(m, "signature")
			body, err := jcs.Marshal(m)
			if err != nil {
				t.Fatal(err)
			}
			if string(body) != c.ReceiptBodyCanonicalJSON {
				t.Fatalf("body canonical json\n got %s\nwant %s", body, c.ReceiptBodyCanonicalJSON)
			}

			// Signable, untampered cases: Sign reproduces id and signature
			// byte for byte (Ed25519 is deterministic).
			if c.Expected["signature_valid"] == true && c.Expected["parameter_hash_valid"] == true {
				signable++
				signed, err := Sign(r, key)
				if err != nil {
					t.Fatalf("Sign: %v", err)
				}
				if signed.ID != r.ID || signed.Signature != r.Signature || signed.KernelKey != r.KernelKey {
					t.Fatalf("Sign gave id %s sig %s, vector has id %s sig %s", signed.ID, signed.Signature, r.ID, r.Signature)
				}
			} else if c.Expected["receipt_id_valid"] == true && c.Expected["signature_valid"] == false {
				// Not signable: Sign must refuse rather than mint it.
				if _, err := Sign(r, key); !errors.Is(err, ErrInconsistentReceipt) {
					t.Fatalf("Sign of an unsignable receipt: want ErrInconsistentReceipt, got %v", err)
				}
			}
		})
	}
	if signable != 4 {
		t.Errorf("re-signed %d vector receipts, want 4", signable)
	}
}

func testKey(t testing.TB) ed25519.PrivateKey {
	t.Helper()
	return ed25519.NewKeyFromSeed([]byte(strings.Repeat("k", 32)))
}

func sampleBody() Receipt {
	return Receipt{
		Timestamp:     1710000200,
		CapabilityID:  "cap-1",
		ToolServer:    "srv-files",
		ToolName:      "file_read",
		ToolOrigin:    "caller_executed",
		Action:        Action{Parameters: json.RawMessage(`{ "path": "/etc/shadow", "mode": "read", "n": 9007199254740993 }`)},
		Decision:      &Decision{Verdict: VerdictDeny, Reason: "path is \"forbidden\"\n", Guard: "ForbiddenPathGuard"},
		ReceiptKind:   KindMediatedDecision,
		BoundaryClass: BoundaryPrevent,
		TrustLevel:    TrustMediated,
		RedactionMode: "none",
		ContentHash:   strings.Repeat("ab", 32),
		PolicyHash:    strings.Repeat("cd", 32),
		Evidence: []Evidence{
			{GuardName: "ForbiddenPathGuard", Verdict: false, Details: "matched /etc/shadow"},
			{GuardName: "SecretLeakGuard", Verdict: true},
		},
		Metadata: json.RawMessage(`{"z":[1,2.50],"a":"é\u0001"}`),
	}
}

func TestSignVerifyRoundTrip(t *testing.T) {
	key := testKey(t)
	r, err := Sign(sampleBody(), key)
	if err != nil {
		t.Fatal(err)
	}
	if len(r.ID) != 64 || len(r.Signature) != 128 || r.KernelKey != PublicKeyHex(key.Public().(ed25519.PublicKey)) {
		t.Fatalf("bad shapes: id %q sig %q key %q", r.ID, r.Signature, r.KernelKey)
	}
	if string(r.Action.Parameters) != `{"mode":"read","n":9007199254740993,"path":"/etc/shadow"}` {
		t.Fatalf("parameters not stored canonically: %s", r.Action.Parameters)
	}
	res := Verify(r)
	if !res.SignatureValid || !res.ReceiptIDValid || !res.ParameterHashValid || res.OK || res.Authorized || res.Result != ResultDenied {
		t.Fatalf("untrusted verify: %+v", res)
	}
	trusted := Verifier{TrustedKeys: []ed25519.PublicKey{key.Public().(ed25519.PublicKey)}}
	res = trusted.Verify(r)
	if !res.OK || res.Authorized || res.Result != ResultDenied || len(res.Problems) != 0 {
		t.Fatalf("trusted verify of deny: %+v", res)
	}
	// An allow from a trusted key authorizes, from JSON bytes as well.
	body := sampleBody()
	body.Decision = &Decision{Verdict: VerdictAllow}
	r, err = Sign(body, key)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := r.CanonicalJSON()
	if err != nil {
		t.Fatal(err)
	}
	for name, res := range map[string]VerifyResult{"struct": trusted.Verify(r), "json": mustVerifyJSON(t, trusted, raw)} {
		if !res.OK || !res.Authorized || res.Result != ResultAuthorized {
			t.Fatalf("%s: trusted verify of allow: %+v", name, res)
		}
	}
	// Another trusted key does not make this signer trusted.
	other := Verifier{TrustedKeys: []ed25519.PublicKey{ed25519.NewKeyFromSeed(make([]byte, 32)).Public().(ed25519.PublicKey)}}
	if res := other.Verify(r); res.SignerTrusted || res.OK || res.Authorized {
		t.Fatalf("verify with another key trusted: %+v", res)
	}
	// Sign does not write through the caller's decision pointer.
	if body.Decision.Verdict != VerdictAllow || body.ID != "" {
		t.Fatal("Sign modified its argument")
	}
}

func mustVerifyJSON(t *testing.T, v Verifier, raw []byte) VerifyResult {
	t.Helper()
	res, err := v.VerifyJSON(raw)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

func TestVerifyDetectsTampering(t *testing.T) {
	key := testKey(t)
	signed, err := Sign(sampleBody(), key)
	if err != nil {
		t.Fatal(err)
	}
	trusted := Verifier{TrustedKeys: []ed25519.PublicKey{key.Public().(ed25519.PublicKey)}}
	tamper := map[string]func(r *Receipt){
		"timestamp": func(r *Receipt) { r.Timestamp++ },
		"tool_name": func(r *Receipt) { r.ToolName = "file_write" },
		"verdict": func(r *Receipt) {
			r.Decision = &Decision{Verdict: VerdictAllow, Reason: r.Decision.Reason, Guard: r.Decision.Guard}
		},
		"reason":   func(r *Receipt) { r.Decision = &Decision{Verdict: r.Decision.Verdict, Guard: r.Decision.Guard} },
		"evidence": func(r *Receipt) { r.Evidence = r.Evidence[:1] },
		"evidence bit": func(r *Receipt) {
			r.Evidence = []Evidence{{GuardName: "ForbiddenPathGuard", Verdict: true, Details: "matched /etc/shadow"}, r.Evidence[1]}
		},
		"metadata":    func(r *Receipt) { r.Metadata = json.RawMessage(`{"a":"x"}`) },
		"policy_hash": func(r *Receipt) { r.PolicyHash = strings.Repeat("00", 32) },
		"id":          func(r *Receipt) { r.ID = strings.Repeat("0", 64) },
		"id case":     func(r *Receipt) { r.ID = strings.ToUpper(r.ID) },
		"signature":   func(r *Receipt) { r.Signature = strings.Repeat("0", 128) },
		"short sig":   func(r *Receipt) { r.Signature = r.Signature[:126] },
		"kernel_key":  func(r *Receipt) { r.KernelKey = hex.EncodeToString(make([]byte, 32)) },
		"bad key":     func(r *Receipt) { r.KernelKey = "zz" },
		"parameters": func(r *Receipt) {
			r.Action.Parameters = json.RawMessage(`{"mode":"read","n":9007199254740992,"path":"/etc/shadow"}`)
		},
		"bad parameters": func(r *Receipt) { r.Action.Parameters = json.RawMessage(`{"a":`) },
		"kind":           func(r *Receipt) { r.ReceiptKind = KindTraceObservation },
	}
	for name, f := range tamper {
		r := signed
		r.Decision = &Decision{Verdict: signed.Decision.Verdict, Reason: signed.Decision.Reason, Guard: signed.Decision.Guard}
		f(&r)
		res := trusted.Verify(r)
		if res.OK || res.Authorized {
			t.Errorf("%s: tampered receipt verified OK: %+v", name, res)
		}
		if len(res.Problems) == 0 {
			t.Errorf("%s: no problem reported", name)
		}
		if name != "parameters" && name != "bad parameters" && res.SignatureValid {
			t.Errorf("%s: signature still valid", name)
		}
	}
	if res := trusted.Verify(signed); !res.OK {
		t.Fatalf("untampered receipt: %+v", res)
	}
}

func TestVerifyJSON(t *testing.T) {
	key := testKey(t)
	signed, err := Sign(sampleBody(), key)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := json.MarshalIndent(signed, "", "  ") // not canonical on purpose
	if err != nil {
		t.Fatal(err)
	}
	res, err := VerifyJSON(raw)
	if err != nil || !res.SignatureValid || !res.ReceiptIDValid || !res.ParameterHashValid {
		t.Fatalf("VerifyJSON of indented receipt: %+v, %v", res, err)
	}
	// An unknown member is part of the signed body: adding one breaks the id.
	withExtra := strings.Replace(string(raw), "{", `{"extra": 1,`, 1)
	res, err = VerifyJSON([]byte(withExtra))
	if err != nil || res.ReceiptIDValid || res.SignatureValid {
		t.Fatalf("VerifyJSON with an extra member: %+v, %v", res, err)
	}
	// A missing member is reported by name.
	var m map[string]json.RawMessage
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatal(err)
	}
	delete(m, "tool_server")
	noServer, _ := json.Marshal(m)
	res, err = VerifyJSON(noServer)
	if err != nil || res.SignatureValid || !strings.Contains(fmt.Sprint(res.Problems), `"tool_server"`) {
		t.Fatalf("VerifyJSON without tool_server: %+v, %v", res, err)
	}
	for _, bad := range []string{``, `[]`, `{"id":1}`, `{"a":1,"a":2}`, `{"timestamp":"now"}`, "{\"tool_name\":\"\xff\"}"} {
		if _, err := VerifyJSON([]byte(bad)); err == nil {
			t.Errorf("VerifyJSON(%q) succeeded", bad)
		} else if !strings.HasPrefix(err.Error(), "verify receipt: ") {
			t.Errorf("VerifyJSON(%q): error %q lacks its prefix", bad, err)
		}
	}
}

func TestSignRefuses(t *testing.T) {
	key := testKey(t)
	cases := map[string]struct {
		edit func(r *Receipt)
		want error
	}{
		"no tool_server":      {func(r *Receipt) { r.ToolServer = "" }, ErrInvalidReceipt},
		"no kind":             {func(r *Receipt) { r.ReceiptKind = "" }, ErrInvalidReceipt},
		"warn verdict":        {func(r *Receipt) { r.Decision = &Decision{Verdict: "warn"} }, ErrInvalidReceipt},
		"bad parameters":      {func(r *Receipt) { r.Action.Parameters = json.RawMessage(`{"a":1,"a":2}`) }, ErrInvalidReceipt},
		"bad metadata":        {func(r *Receipt) { r.Metadata = json.RawMessage(`nope`) }, ErrInvalidReceipt},
		"invalid utf-8":       {func(r *Receipt) { r.ToolName = "read\xff" }, ErrInvalidReceipt},
		"unnamed evidence":    {func(r *Receipt) { r.Evidence = []Evidence{{Verdict: true}} }, ErrInvalidReceipt},
		"no decision":         {func(r *Receipt) { r.Decision = nil }, ErrInconsistentReceipt},
		"wrong boundary":      {func(r *Receipt) { r.BoundaryClass = BoundaryDetectOnly }, ErrInconsistentReceipt},
		"cannot_see":          {func(r *Receipt) { r.BoundaryClass = BoundaryCannotSee }, ErrInconsistentReceipt},
		"wrong trust":         {func(r *Receipt) { r.TrustLevel = TrustVerified }, ErrInconsistentReceipt},
		"outcome on mediated": {func(r *Receipt) { r.ObservationOutcome = OutcomeObserved }, ErrInconsistentReceipt},
		"unknown kind":        {func(r *Receipt) { r.ReceiptKind = "guess" }, ErrInconsistentReceipt},
		"trace with decision": {func(r *Receipt) {
			r.ReceiptKind, r.BoundaryClass, r.TrustLevel, r.ObservationOutcome = KindTraceObservation, BoundaryDetectOnly, TrustVerified, OutcomeObserved
		}, ErrInconsistentReceipt},
		"trace without outcome": {func(r *Receipt) {
			r.ReceiptKind, r.BoundaryClass, r.TrustLevel, r.Decision = KindTraceObservation, BoundaryDetectOnly, TrustVerified, nil
		}, ErrInconsistentReceipt},
	}
	for name, c := range cases {
		body := sampleBody()
		c.edit(&body)
		if _, err := Sign(body, key); !errors.Is(err, c.want) {
			t.Errorf("%s: want %v, got %v", name, c.want, err)
		} else if !strings.HasPrefix(err.Error(), "sign receipt: ") {
			t.Errorf("%s: error %q lacks its prefix", name, err)
		}
	}
	if _, err := Sign(sampleBody(), key[:32]); !errors.Is(err, ErrInvalidKey) {
		t.Errorf("short key: want ErrInvalidKey, got %v", err)
	}
	// Observation and advisory receipts sign when consistent.
	for _, k := range [][4]string{
		{KindTraceObservation, BoundaryDetectOnly, TrustVerified, OutcomeObserved},
		{KindAdvisoryEvaluation, BoundaryAdvisoryOnly, TrustAdvisory, OutcomeEvaluated},
	} {
		body := sampleBody()
		body.ReceiptKind, body.BoundaryClass, body.TrustLevel, body.ObservationOutcome, body.Decision = k[0], k[1], k[2], k[3], nil
		r, err := Sign(body, key)
		if err != nil {
			t.Fatalf("%s: %v", k[0], err)
		}
		if res := Verify(r); !res.SignatureValid || res.Decision != "none" || res.Authorized {
			t.Fatalf("%s: %+v", k[0], res)
		}
	}
}

// TestAppendBodyMatchesJCS holds the hand-ordered body writer to the generic
// canonicalizer over receipts with every optional field present or absent.
func TestAppendBodyMatchesJCS(t *testing.T) {
	key := testKey(t)
	edits := []func(r *Receipt){
		func(r *Receipt) {},
		func(r *Receipt) {
			r.CapabilityID, r.ToolOrigin, r.RedactionMode, r.ContentHash, r.PolicyHash = "", "", "", "", ""
		},
		func(r *Receipt) { r.Evidence, r.Metadata = nil, nil },
		func(r *Receipt) { r.Decision = &Decision{Verdict: VerdictAllow} },
		func(r *Receipt) { r.Decision = &Decision{Verdict: VerdictAllow, Guard: "g"} },
		func(r *Receipt) { r.Decision = &Decision{Verdict: VerdictAllow, Reason: "r"} },
		func(r *Receipt) { r.Action.Parameters = nil; r.Metadata = json.RawMessage(`null`) },
		func(r *Receipt) {
			r.ReceiptKind, r.BoundaryClass, r.TrustLevel, r.ObservationOutcome, r.Decision = KindTraceObservation, BoundaryDetectOnly, TrustVerified, OutcomeObserved, nil
		},
		func(r *Receipt) { r.ToolName = "\U0001F600\ue000\u007f\u2028<>&\\\"\t" },
	}
	for i, edit := range edits {
		body := sampleBody()
		edit(&body)
		r, err := Sign(body, key)
		if err != nil {
			t.Fatalf("edit %d: %v", i, err)
		}
		b, _ := json.Marshal(r)
		var m map[string]json.RawMessage
		if err := json.Unmarshal(b, &m); err != nil {
			t.Fatal(err)
		}
		delete(m, "id")
		delete(m, "signature")
		generic := make(map[string]any, len(m))
		for k, v := range m {
			generic[k] = v
		}
		want, err := jcs.Marshal(generic)
		if err != nil {
			t.Fatal(err)
		}
		got := appendBody(nil, &r, r.Action.Parameters, r.Metadata)
		if string(got) != string(want) {
			t.Fatalf("edit %d:\n got %s\nwant %s", i, got, want)
		}
		if res := Verify(r); !res.SignatureValid || !res.ParameterHashValid {
			t.Fatalf("edit %d: %+v", i, res)
		}
	}
}

func BenchmarkSign(b *testing.B) {
	key := testKey(b)
	body := sampleBody()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Sign(body, key); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkVerifyJSON(b *testing.B) {
	key := testKey(b)
	r, err := Sign(sampleBody(), key)
	if err != nil {
		b.Fatal(err)
	}
	raw, err := r.CanonicalJSON()
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if res, err := VerifyJSON(raw); err != nil || !res.SignatureValid {
			b.Fatal(res, err)
		}
	}
}

// A prepared receipt's id is final before it is signed: signing later gives
// exactly what Sign gives, and only with the key it was prepared for.
func TestPrepareThenSign(t *testing.T) {
	key := testKey(t)
	pub := key.Public().(ed25519.PublicKey)
	want, err := Sign(sampleBody(), key)
	if err != nil {
		t.Fatal(err)
	}
	p, err := Prepare(sampleBody(), pub)
	if err != nil {
		t.Fatal(err)
	}
	if p.ID() != want.ID || p.KernelKey() != want.KernelKey {
		t.Fatalf("prepared id %s key %s, want %s %s", p.ID(), p.KernelKey(), want.ID, want.KernelKey)
	}
	got, err := p.Sign(key)
	if err != nil {
		t.Fatal(err)
	}
	a, _ := got.CanonicalJSON()
	b, _ := want.CanonicalJSON()
	if string(a) != string(b) {
		t.Fatalf("prepared then signed:\n%s\nwant\n%s", a, b)
	}
	other := ed25519.NewKeyFromSeed(make([]byte, 32))
	if _, err := p.Sign(other); !errors.Is(err, ErrInvalidKey) {
		t.Fatalf("signing with another key: %v, want ErrInvalidKey", err)
	}
	if _, err := Prepare(sampleBody(), pub[:31]); !errors.Is(err, ErrInvalidKey) {
		t.Fatalf("short public key: %v, want ErrInvalidKey", err)
	}
	bad := sampleBody()
	bad.ToolName = ""
	if _, err := Prepare(bad, pub); !errors.Is(err, ErrInvalidReceipt) {
		t.Fatalf("body without tool name: %v, want ErrInvalidReceipt", err)
	}
}
