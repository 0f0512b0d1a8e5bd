package kernel

import (
	"bytes"
	"crypto/ed25519"
	"encoding/json"
	"net/netip"
	"testing"
	"time"
)

// SignCanonical writes the whole signed receipt's canonical JSON once, from
// the parts Prepare made canonical. It must be byte for byte what
// CanonicalJSON gives by canonicalizing the signed receipt again, for
// generic bodies (parameters and metadata canonicalized by Prepare) and for
// egress receipts (written canonical by jcs.Marshal and not scanned again).
func TestSignCanonicalMatchesCanonicalJSON(t *testing.T) {
	key := testKey(t)
	pub := key.Public().(ed25519.PublicKey)
	var bodies []Receipt
	b := sampleBody()
	bodies = append(bodies, b)
	b.Metadata = json.RawMessage(` { "z" : 1, "a" : [ "\u00e9", 1.50 ] } `) // not canonical as given
	b.Action.Parameters = nil
	bodies = append(bodies, b)
	b.Metadata = json.RawMessage(`null`)
	bodies = append(bodies, b)
	b.Metadata = nil
	b.Evidence = nil
	b.Decision = &Decision{Verdict: VerdictAllow}
	bodies = append(bodies, b)
	var preps []*Prepared
	for _, body := range bodies {
		p, err := Prepare(body, pub)
		if err != nil {
			t.Fatal(err)
		}
		preps = append(preps, p)
	}
	for _, ev := range egressEvents() {
		p, err := PrepareEgressReceipt(ev, docExampleOutcome(), docExamplePolicyHash, pub, time.Unix(1767225600, 0))
		if err != nil {
			t.Fatal(err)
		}
		preps = append(preps, p)
		// The egress path skips Prepare's canonicalization: same receipt.
		body, err := EgressReceiptBody(ev, docExampleOutcome(), docExamplePolicyHash, time.Unix(1767225600, 0))
		if err != nil {
			t.Fatal(err)
		}
		q, err := Prepare(body, pub)
		if err != nil {
			t.Fatal(err)
		}
		if p.ID() != q.ID() {
			t.Errorf("egress receipt id %s, Prepare of the same body %s", p.ID(), q.ID())
		}
	}
	for i, p := range preps {
		r, canon, err := p.SignCanonical(key)
		if err != nil {
			t.Fatal(err)
		}
		want, err := r.CanonicalJSON()
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(canon, want) {
			t.Errorf("receipt %d: SignCanonical\n%s\nCanonicalJSON\n%s", i, canon, want)
		}
		if res, err := (Verifier{TrustedKeys: []ed25519.PublicKey{pub}}).VerifyJSON(canon); err != nil || !res.OK {
			t.Errorf("receipt %d does not verify: %+v %v", i, res, err)
		}
	}
}

// egressEvents are egress events of every shape the agent receipts.
func egressEvents() []EgressEvent {
	ex := docExampleEvent()
	http := ex
	http.SNI, http.ALPN, http.HTTPHost, http.HTTPMethod, http.HTTPPath = "", nil, "api.example.com:8080", "POST", "/v1/x?q=1"
	bare := ex
	bare.SNI, bare.ALPN, bare.Workload.Labels, bare.Workload.CgroupPath, bare.Process = "", nil, nil, "", ProcessIdentity{}
	named := bare
	named.Host = "db.internal"
	sock := bare
	sock.IP, sock.Port, sock.Transport = netip.Addr{}, 0, "ip-255"
	sock.Socket = &SocketCall{Family: "inet6", Type: "raw", Protocol: 255}
	odd := ex
	odd.SNI = "caf\u00e9.example\u2028"
	odd.Workload.Name = "w\"\\\u007f"
	return []EgressEvent{ex, http, bare, named, sock, odd}
}

// FuzzSignCanonical holds SignCanonical's one-pass bytes to CanonicalJSON
// for any body Prepare accepts.
func FuzzSignCanonical(f *testing.F) {
	f.Add(`{"host":"a"}`, `{"workload":"w"}`, "egress", "reason", uint64(1))
	f.Add(` {"b":1.0,"a":[1e400]}`, `null`, "\xff", "", uint64(1<<63))
	f.Add(``, ``, "t", "\u2028\u007f", uint64(0))
	f.Add(`[1,"\ud800"]`, `{"a":{"b":[true,false,null]}}`, "x\"y", "r\\", uint64(42))
	key := testKey(f)
	pub := key.Public().(ed25519.PublicKey)
	f.Fuzz(func(t *testing.T, params, meta, name, reason string, ts uint64) {
		body := sampleBody()
		body.Action.Parameters = json.RawMessage(params)
		if params == "" {
			body.Action.Parameters = nil
		}
		body.Metadata = json.RawMessage(meta)
		if meta == "" {
			body.Metadata = nil
		}
		body.ToolName, body.Timestamp = name, ts
		body.Decision = &Decision{Verdict: VerdictDeny, Reason: reason}
		p, err := Prepare(body, pub)
		if err != nil {
			return
		}
		r, canon, err := p.SignCanonical(key)
		if err != nil {
			t.Fatal(err)
		}
		want, err := r.CanonicalJSON()
		if err != nil || !bytes.Equal(canon, want) {
			t.Fatalf("SignCanonical\n%s\nCanonicalJSON\n%s (%v)", canon, want, err)
		}
	})
}
