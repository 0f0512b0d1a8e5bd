package sidecar

import (
	"bufio"
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/backbay-labs/chio-agent/kernel"
	"github.com/backbay-labs/chio-agent/kernel/config"
)

func TestAllowedRequestIsForwardedAndReceipted(t *testing.T) {
	f := startFixture(t, nil)
	resp, body := f.do("GET", "/pets/42?api_key=s3cret", nil, map[string]string{HeaderCapability: `{"ignored":"no issuers trusted"}`})
	if resp.StatusCode != 200 || string(body) != "upstream: GET /pets/42" {
		t.Fatalf("status %d body %q; want the upstream's answer", resp.StatusCode, body)
	}
	id := resp.Header.Get(HeaderReceiptID)
	if len(id) != 64 || len(resp.Header.Values(HeaderReceiptID)) != 1 {
		t.Fatalf("%s = %v; want exactly the sidecar's receipt id", HeaderReceiptID, resp.Header.Values(HeaderReceiptID))
	}
	hits := f.upstream.Hits()
	if len(hits) != 1 {
		t.Fatalf("upstream saw %d requests; want 1", len(hits))
	}
	h := hits[0]
	if h.Path != "/pets/42" || h.RawQuery != "api_key=s3cret" || h.Header.Get(HeaderReceiptID) != id || h.Header.Get(HeaderCapability) != "" {
		t.Fatalf("upstream saw %+v; want the path and query as sent, the receipt id, no capability header", h)
	}
	r := f.stored(id)
	if r.ToolName != "getPet" || r.ToolServer != f.upstream.URL || r.Decision.Verdict != kernel.VerdictAllow || r.PolicyHash == "" {
		t.Fatalf("receipt %+v; want getPet on %s, allowed", r, f.upstream.URL)
	}
	p := params(t, r)
	if p["method"] != "GET" || p["route"] != "/pets/{petId}" || p["path_params"].(map[string]any)["petId"] != "42" || p["request_id"] != nil {
		t.Fatalf("parameters %v; want method, route pattern and path params (the request id is metadata)", p)
	}
	var meta map[string]any
	if err := json.Unmarshal(r.Metadata, &meta); err != nil || len(meta["request_id"].(string)) != 32 {
		t.Fatalf("metadata %s; want a 128-bit request id", r.Metadata)
	}
	raw, _ := json.Marshal(r)
	if strings.Contains(string(raw), "s3cret") || strings.Contains(string(raw), "api_key") {
		t.Fatalf("receipt holds the query string: %s", raw)
	}
}

func TestIdenticalRequestsGetDistinctReceipts(t *testing.T) {
	f := startFixture(t, nil)
	seen := map[string]bool{}
	for i := 0; i < 5; i++ {
		resp, _ := f.do("GET", "/pets", nil, nil)
		id := resp.Header.Get(HeaderReceiptID)
		if resp.StatusCode != 200 || id == "" || seen[id] {
			t.Fatalf("request %d: status %d, receipt %q (seen before: %v)", i, resp.StatusCode, id, seen[id])
		}
		seen[id] = true
	}
}

func TestDeniedRequestIsRefusedWithReceipt(t *testing.T) {
	f := startFixture(t, nil)
	resp, body := f.do("DELETE", "/pets/42", nil, nil)
	if resp.StatusCode != http.StatusForbidden {
		t.Fatalf("status %d; want 403", resp.StatusCode)
	}
	e := decodeError(t, body)
	if e.Error != "chio_access_denied" || e.ReceiptID == "" || e.ReceiptID != resp.Header.Get(HeaderReceiptID) || !contains(e.Message, "deletePet") {
		t.Fatalf("body %+v header %q; want chio_access_denied naming deletePet and the receipt", e, resp.Header.Get(HeaderReceiptID))
	}
	if n := len(f.upstream.Hits()); n != 0 {
		t.Fatalf("upstream saw %d requests; want none", n)
	}
	r := f.stored(e.ReceiptID)
	if r.ToolName != "deletePet" || r.Decision.Verdict != kernel.VerdictDeny || r.Decision.Guard != kernel.GuardToolAccess {
		t.Fatalf("receipt %+v; want deletePet denied by the tool_access guard", r)
	}
}

// In async mode the receipt is signed after the answer leaves (by the
// log's signer), under the id the answer already named: allowed, denied and
// unrouted requests each find their signed receipt once the log flushes.
func TestAsyncReceiptsLandUnderTheirIDs(t *testing.T) {
	f := startFixture(t, func(s *config.SidecarSettings) { s.ReceiptMode = "async" })
	want := map[string]string{}
	for _, c := range []struct{ method, path, tool string }{
		{"GET", "/pets/1", "getPet"}, {"DELETE", "/pets/1", "deletePet"}, {"GET", "/nowhere", UnmatchedToolName},
	} {
		for range 20 {
			resp, _ := f.do(c.method, c.path, nil, nil)
			id := resp.Header.Get(HeaderReceiptID)
			if len(id) != 64 {
				t.Fatalf("%s %s: status %d, receipt id %q", c.method, c.path, resp.StatusCode, id)
			}
			want[id] = c.tool
		}
	}
	if err := f.s.ReceiptLog().Flush(context.Background(), false); err != nil {
		t.Fatal(err)
	}
	for id, tool := range want {
		if r := f.stored(id); r.ID != id || r.ToolName != tool {
			t.Fatalf("receipt %s: %s, want %s", id, r.ToolName, tool)
		}
	}
}

func TestLiteralSegmentsWinOverTemplates(t *testing.T) {
	f := startFixture(t, nil)
	for path, tool := range map[string]string{"/pets/mine": "listMyPets", "/pets/mind": "getPet", "/files/a.b.json": "getFileJSON"} {
		resp, _ := f.do("GET", path, nil, nil)
		if resp.StatusCode != 200 {
			t.Fatalf("GET %s: status %d", path, resp.StatusCode)
		}
		if got := f.stored(resp.Header.Get(HeaderReceiptID)).ToolName; got != tool {
			t.Errorf("GET %s decided as %s; want %s", path, got, tool)
		}
	}
}

func TestUnknownRouteFailsClosed(t *testing.T) {
	// A default of allow does not open routes outside the spec.
	f := startFixture(t, func(s *config.SidecarSettings) {
		s.PolicySource = writeFile(t, t.TempDir(), "p.yaml", "hushspec: \"0.1.0\"\nrules:\n  tool_access:\n    default: allow\n")
	})
	for _, req := range [][2]string{{"GET", "/admin"}, {"PUT", "/pets"}, {"GET", "/pets/"}, {"GET", "/files/x.txt"}} {
		resp, body := f.do(req[0], req[1], nil, nil)
		e := decodeError(t, body)
		if resp.StatusCode != http.StatusForbidden || e.Error != "chio_access_denied" || !contains(e.Message, "no operation") {
			t.Fatalf("%v: status %d body %s; want 403 naming the missing operation", req, resp.StatusCode, body)
		}
		r := f.stored(e.ReceiptID)
		if r.ToolName != UnmatchedToolName || r.Decision.Guard != GuardRoute || params(t, r)["path"] != req[1] {
			t.Fatalf("%v: receipt %+v; want the unmatched tool, the route guard and the path", req, r)
		}
	}
	if n := len(f.upstream.Hits()); n != 0 {
		t.Fatalf("upstream saw %d requests; want none", n)
	}
}

func TestUnknownRouteForwardedWhenPolicyListsIt(t *testing.T) {
	f := startFixture(t, func(s *config.SidecarSettings) {
		s.PolicySource = writeFile(t, t.TempDir(), "p.yaml", "hushspec: \"0.1.0\"\nrules:\n  tool_access:\n    allow: [listPets, "+UnmatchedToolName+"]\n")
	})
	resp, body := f.do("GET", "/metrics", nil, nil)
	if resp.StatusCode != 200 || string(body) != "upstream: GET /metrics" {
		t.Fatalf("status %d body %q; want it forwarded", resp.StatusCode, body)
	}
	if r := f.stored(resp.Header.Get(HeaderReceiptID)); r.ToolName != UnmatchedToolName || r.Decision.Verdict != kernel.VerdictAllow {
		t.Fatalf("receipt %+v", r)
	}
}

// mint signs a capability granting invoke of tool on server.
func mint(t *testing.T, issuer ed25519.PrivateKey, id, server, tool string, from, until time.Time) string {
	t.Helper()
	subject := newKey(t)
	c, err := kernel.SignCapability(kernel.Capability{
		ID: id, Subject: kernel.PublicKeyHex(subject.Public().(ed25519.PublicKey)),
		IssuedAt: uint64(from.Unix()), ExpiresAt: uint64(until.Unix()),
		Scope: kernel.Scope{Grants: []kernel.ToolGrant{{ServerID: server, ToolName: tool, Operations: []string{"invoke"}}}},
	}, issuer)
	if err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestCapabilities(t *testing.T) {
	issuer, stranger := newKey(t), newKey(t)
	f := startFixture(t, func(s *config.SidecarSettings) {
		s.TrustedIssuerKeys = []ed25519.PublicKey{issuer.Public().(ed25519.PublicKey)}
		s.CapabilityAuthorityURL = "https://authority.example.test/tokens"
	})
	now := time.Now()
	server := f.upstream.URL
	good := mint(t, issuer, "cap-good", server, "getPet", now.Add(-time.Minute), now.Add(time.Hour))
	for _, tc := range []struct {
		name, token string
		wantStatus  int
		wantMsg     string
	}{
		{"valid", good, 200, ""},
		{"valid base64", base64.RawURLEncoding.EncodeToString([]byte(good)), 200, ""},
		{"wildcard tool", mint(t, issuer, "cap-any", server, "*", now.Add(-time.Minute), now.Add(time.Hour)), 200, ""},
		{"missing", "", 403, "authority.example.test"},
		{"garbage", "not a token", 403, "neither JSON nor base64"},
		{"malformed JSON", `{"id":`, 403, "malformed capability"},
		{"untrusted issuer", mint(t, stranger, "cap-stranger", server, "getPet", now.Add(-time.Minute), now.Add(time.Hour)), 403, "not a trusted issuer"},
		{"tampered", strings.Replace(good, `"getPet"`, `"deletePet"`, 1), 403, "signature"},
		{"expired", mint(t, issuer, "cap-old", server, "getPet", now.Add(-2*time.Hour), now.Add(-time.Hour)), 403, "expired"},
		{"not yet valid", mint(t, issuer, "cap-new", server, "getPet", now.Add(time.Hour), now.Add(2*time.Hour)), 403, "not valid before"},
		{"other tool", mint(t, issuer, "cap-list", server, "listPets", now.Add(-time.Minute), now.Add(time.Hour)), 403, "does not grant invoke of getPet"},
		{"other server", mint(t, issuer, "cap-else", "http://elsewhere.test", "getPet", now.Add(-time.Minute), now.Add(time.Hour)), 403, "does not grant"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			hdr := map[string]string{}
			if tc.token != "" {
				hdr[HeaderCapability] = tc.token
			}
			resp, body := f.do("GET", "/pets/7", nil, hdr)
			if resp.StatusCode != tc.wantStatus {
				t.Fatalf("status %d body %s; want %d", resp.StatusCode, body, tc.wantStatus)
			}
			r := f.stored(resp.Header.Get(HeaderReceiptID))
			if tc.wantStatus == 200 {
				if r.CapabilityID == "" {
					t.Fatalf("allowed receipt records no capability_id: %+v", r)
				}
				return
			}
			e := decodeError(t, body)
			if e.Error != "chio_access_denied" || !contains(e.Message, tc.wantMsg) {
				t.Fatalf("body %+v; want chio_access_denied mentioning %q", e, tc.wantMsg)
			}
			if r.Decision.Guard != GuardCapability || r.Decision.Verdict != kernel.VerdictDeny || r.CapabilityID != "" {
				t.Fatalf("receipt %+v; want a capability-guard deny without an unverified capability_id", r)
			}
		})
	}
	for _, h := range f.upstream.Hits() {
		if h.Header.Get(HeaderCapability) != "" {
			t.Fatalf("the capability token reached the upstream")
		}
	}
}

func TestHealthAndLive(t *testing.T) {
	f := startFixture(t, func(s *config.SidecarSettings) { s.HealthPath = "/ready" })
	resp, body := f.do("GET", "/ready", nil, nil)
	var h Health
	if err := json.Unmarshal(body, &h); err != nil || resp.StatusCode != 200 {
		t.Fatalf("health: %d %s %v", resp.StatusCode, body, err)
	}
	if h.Status != "ok" || h.Version != "v-test" || h.ReceiptBackend != "bbolt" || h.PolicyHash != f.s.engine.Load().k.PolicyHash() || h.ReceiptMode != "sync" {
		t.Fatalf("health %+v", h)
	}
	if resp, _ := f.do("GET", PathLive, nil, nil); resp.StatusCode != 200 {
		t.Fatalf("live: %d", resp.StatusCode)
	}
	if resp, _ := f.do("POST", "/ready", nil, nil); resp.StatusCode != http.StatusMethodNotAllowed {
		t.Fatalf("POST health: %d; want 405", resp.StatusCode)
	}
	// Unknown paths under /chio/ are the sidecar's, never the upstream's.
	if resp, _ := f.do("GET", "/chio/nothing", nil, nil); resp.StatusCode != 404 || len(f.upstream.Hits()) != 0 {
		t.Fatalf("/chio/nothing: %d, upstream hits %d", resp.StatusCode, len(f.upstream.Hits()))
	}
}

func TestEvaluateAndVerify(t *testing.T) {
	f := startFixture(t, nil)
	eval := func(body string) (*http.Response, EvaluateResponse, []byte) {
		resp, b := f.do("POST", PathEvaluate, strings.NewReader(body), map[string]string{"Content-Type": "application/json"})
		var er EvaluateResponse
		json.Unmarshal(b, &er)
		return resp, er, b
	}
	resp, er, _ := eval(`{"method":"GET","path":"/pets/9?q=1"}`)
	if resp.StatusCode != 200 || er.Verdict != "allow" || er.ToolName != "getPet" || er.Route != "/pets/{petId}" || er.Receipt.ID != resp.Header.Get(HeaderReceiptID) {
		t.Fatalf("evaluate allow: %d %+v", resp.StatusCode, er)
	}
	if p := params(t, er.Receipt); p["evaluate_only"] != true {
		t.Fatalf("evaluate receipt parameters %v; want evaluate_only", p)
	}
	f.stored(er.Receipt.ID)
	_, deny, _ := eval(`{"method":"DELETE","path":"/pets/9"}`)
	if deny.Verdict != "deny" || deny.Error != "chio_access_denied" || deny.Receipt.Decision.Verdict != "deny" {
		t.Fatalf("evaluate deny: %+v", deny)
	}
	if n := len(f.upstream.Hits()); n != 0 {
		t.Fatalf("evaluate forwarded %d requests", n)
	}
	for _, bad := range []string{`{"method":"GET"`, `{"method":"GET","path":"/x","extra":1}`, `{"method":"G T","path":"/x"}`, `{"method":"GET","path":"http://h/x"}`, `{"method":"GET","path":"/x"} {}`, `{"method":"GET","path":"/` + strings.Repeat("a", maxEvaluateBody) + `"}`} {
		if resp, _, b := eval(bad); resp.StatusCode != 400 || decodeError(t, b).Error != "chio_bad_request" {
			t.Errorf("evaluate %.60q: %d %s; want 400", bad, resp.StatusCode, b)
		}
	}

	raw, _ := json.Marshal(er.Receipt)
	verify := func(body []byte) (int, VerifyResponse) {
		resp, b := f.do("POST", PathVerify, strings.NewReader(string(body)), nil)
		var vr VerifyResponse
		json.Unmarshal(b, &vr)
		return resp.StatusCode, vr
	}
	if code, vr := verify(raw); code != 200 || !vr.OK || !vr.Authorized || !vr.InLog {
		t.Fatalf("verify good receipt: %d %+v", code, vr)
	}
	tampered := strings.Replace(string(raw), `"getPet"`, `"deletePet"`, 1)
	if code, vr := verify([]byte(tampered)); code != 200 || vr.OK || vr.InLog {
		t.Fatalf("verify tampered receipt: %d %+v; want not OK and not in the log", code, vr)
	}
	if code, _ := verify([]byte("[1,2")); code != 400 {
		t.Fatalf("verify garbage: %d; want 400", code)
	}
}

func TestAdminSurface(t *testing.T) {
	t.Run("closed without a token, on loopback too", func(t *testing.T) {
		f := startFixture(t, nil)
		for _, req := range [][2]string{{"GET", PathAdminStatus}, {"POST", PathAdminReload}} {
			resp, body := f.do(req[0], req[1], nil, map[string]string{"Authorization": "Bearer anything-at-all-here"})
			if resp.StatusCode != http.StatusForbidden || decodeError(t, body).Error != "chio_admin_closed" {
				t.Fatalf("%v: %d %s; want 403 chio_admin_closed", req, resp.StatusCode, body)
			}
		}
	})
	token := "0123456789abcdef-control-token"
	policyDir := t.TempDir()
	policyPath := writeFile(t, policyDir, "policy.yaml", testPolicy)
	f := startFixture(t, func(s *config.SidecarSettings) { s.ControlToken = token; s.PolicySource = policyPath })
	for name, auth := range map[string]string{
		"missing":   "",
		"wrong":     "Bearer " + strings.Repeat("x", len(token)),
		"prefix":    "Bearer " + token[:len(token)-1],
		"scheme":    "Basic " + token,
		"oversized": "Bearer " + token + strings.Repeat("A", 4096),
	} {
		hdr := map[string]string{}
		if auth != "" {
			hdr["Authorization"] = auth
		}
		resp, body := f.do("GET", PathAdminStatus, nil, hdr)
		if resp.StatusCode != http.StatusUnauthorized || decodeError(t, body).Error != "chio_unauthorized" {
			t.Errorf("%s token: %d %s; want 401", name, resp.StatusCode, body)
		}
	}
	ok := map[string]string{"Authorization": "Bearer " + token}
	resp, body := f.do("GET", PathAdminStatus, nil, ok)
	var st AdminStatus
	if err := json.Unmarshal(body, &st); err != nil || resp.StatusCode != 200 || st.Spec.Operations != 6 || st.ToolServer != f.upstream.URL || st.Health.Status != "ok" {
		t.Fatalf("status: %d %s", resp.StatusCode, body)
	}
	oldHash := st.Policy.Hash

	// Reload: deletePet becomes allowed.
	writeFile(t, policyDir, "policy.yaml", strings.Replace(testPolicy, "block: [deletePet]", "block: []", 1)+"\n")
	writeFile(t, policyDir, "policy.yaml", "hushspec: \"0.1.0\"\nrules:\n  tool_access:\n    allow: [deletePet]\n")
	resp, body = f.do("POST", PathAdminReload, nil, ok)
	var rl map[string]string
	json.Unmarshal(body, &rl)
	if resp.StatusCode != 200 || rl["previous_policy_hash"] != oldHash || rl["policy_hash"] == oldHash {
		t.Fatalf("reload: %d %s", resp.StatusCode, body)
	}
	if resp, _ := f.do("DELETE", "/pets/1", nil, nil); resp.StatusCode != 200 {
		t.Fatalf("after reload DELETE: %d; want the new policy's allow", resp.StatusCode)
	}
	// A broken policy is refused; the one in force stays.
	writeFile(t, policyDir, "policy.yaml", "hushspec: \"0.1.0\"\nrules: {tool_access: {alow: []}}\n")
	resp, body = f.do("POST", PathAdminReload, nil, ok)
	if resp.StatusCode != http.StatusUnprocessableEntity || !contains(decodeError(t, body).Message, "previous policy stays") {
		t.Fatalf("bad reload: %d %s", resp.StatusCode, body)
	}
	if resp, _ := f.do("DELETE", "/pets/1", nil, nil); resp.StatusCode != 200 {
		t.Fatalf("after a refused reload DELETE: %d; want the policy in force to stay", resp.StatusCode)
	}
}

func TestOversizedRequests(t *testing.T) {
	f := startFixture(t, nil) // max body 1 KiB
	resp, body := f.do("POST", "/pets", strings.NewReader(strings.Repeat("x", 2048)), nil)
	e := decodeError(t, body)
	if resp.StatusCode != http.StatusRequestEntityTooLarge || e.Error != "chio_request_too_large" || e.ReceiptID == "" {
		t.Fatalf("declared oversized body: %d %s; want 413 with a receipt", resp.StatusCode, body)
	}
	if r := f.stored(e.ReceiptID); r.Decision.Guard != GuardRequest {
		t.Fatalf("receipt %+v; want the request guard", r)
	}
	if n := len(f.upstream.Hits()); n != 0 {
		t.Fatalf("upstream saw %d requests; want none", n)
	}
	// A chunked body declares no length: it is cut off at the bound.
	pr, pw := io.Pipe()
	go func() { pw.Write([]byte(strings.Repeat("y", 4096))); pw.Close() }()
	resp, body = f.do("POST", "/pets", pr, nil)
	if resp.StatusCode != http.StatusRequestEntityTooLarge {
		t.Fatalf("chunked oversized body: %d %s; want 413", resp.StatusCode, body)
	}
	// Within the bound, bodies pass.
	resp, _ = f.do("POST", "/pets", strings.NewReader("small"), nil)
	if resp.StatusCode != 200 {
		t.Fatalf("small body: %d", resp.StatusCode)
	}
	// Oversized heads are refused by the server before any decision.
	resp, _ = f.do("GET", "/pets", nil, map[string]string{"X-Big": strings.Repeat("h", maxHeaderBytes+8192)})
	if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
		t.Fatalf("oversized head: %d; want 431", resp.StatusCode)
	}
}

func TestMalformedRequests(t *testing.T) {
	f := startFixture(t, nil)
	for _, path := range []string{"/pets/..%2Fadmin", "/pets/%2e%2e", "/pets//1", "/pets/%ff", "/pets/a%5Cb", "/pets/%00"} {
		resp, body := f.do("GET", path, nil, nil)
		e := decodeError(t, body)
		if resp.StatusCode != http.StatusBadRequest || e.Error != "chio_bad_request" || e.ReceiptID == "" {
			t.Errorf("GET %s: %d %s; want 400 with a receipt", path, resp.StatusCode, body)
		}
	}
	// Requests Go's server cannot parse never reach a decision.
	for _, raw := range []string{"GARBAGE\r\n\r\n", "GET /pets HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n", "GET /pets%zz HTTP/1.1\r\nHost: x\r\n\r\n"} {
		c, err := net.Dial("tcp", f.s.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprint(c, raw)
		c.SetDeadline(time.Now().Add(10 * time.Second))
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		c.Close()
		if err != nil || resp.StatusCode != http.StatusBadRequest {
			t.Errorf("raw %q: %v %v; want 400", raw, resp, err)
		}
	}
	if n := len(f.upstream.Hits()); n != 0 {
		t.Fatalf("upstream saw %d malformed requests", n)
	}
}

func TestUpstreamDownIs502WithReceipt(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := "http://" + ln.Addr().String()
	ln.Close()
	f := startFixture(t, func(s *config.SidecarSettings) { s.Upstream = dead })
	resp, body := f.do("GET", "/pets", nil, nil)
	e := decodeError(t, body)
	if resp.StatusCode != http.StatusBadGateway || e.Error != "chio_upstream_unavailable" || e.ReceiptID == "" {
		t.Fatalf("%d %s; want 502 naming the allow receipt", resp.StatusCode, body)
	}
}

func TestStartRefuses(t *testing.T) {
	dir := t.TempDir()
	key := newKey(t)
	for _, tc := range []struct {
		name   string
		mutate func(*config.SidecarSettings)
		want   string
	}{
		{"missing policy", func(s *config.SidecarSettings) { s.PolicySource = dir + "/nope.yaml" }, "nope.yaml"},
		{"invalid policy", func(s *config.SidecarSettings) {
			s.PolicySource = writeFile(t, dir, "bad.yaml", "hushspec: \"0.1.0\"\nrulez: {}\n")
		}, "rulez"},
		{"unsupported policy scheme", func(s *config.SidecarSettings) { s.PolicySource = "ftp://host/policy.yaml" }, "unsupported scheme"},
		{"missing spec", func(s *config.SidecarSettings) { s.Spec = dir + "/none.yaml" }, "none.yaml"},
		{"spec without operationId", func(s *config.SidecarSettings) {
			s.Spec = writeFile(t, dir, "s1.yaml", "openapi: 3.1.0\npaths:\n  /x:\n    get: {summary: x}\n")
		}, "operationId is required"},
		{"spec under /chio/", func(s *config.SidecarSettings) {
			s.Spec = writeFile(t, dir, "s2.yaml", "openapi: 3.1.0\npaths:\n  /chio/x:\n    get: {operationId: x}\n")
		}, "reserves"},
		{"health path collides", func(s *config.SidecarSettings) { s.HealthPath = "/pets" }, "collides"},
		{"no key", func(s *config.SidecarSettings) { s.KeySeed = "" }, "no signing key"},
		{"bad key file", func(s *config.SidecarSettings) {
			s.KeySeed, s.KeyFile = "", writeFile(t, dir, "k", "zz\n")
		}, "k"},
		{"receipt dir missing", func(s *config.SidecarSettings) { s.ReceiptPath = dir + "/no/such/dir/r.db" }, "receipt log"},
		{"listen in use", func(s *config.SidecarSettings) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { ln.Close() })
			s.Listen = ln.Addr().String()
		}, "listen"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			set := baseSettings(t, t.TempDir(), "http://127.0.0.1:1", key)
			tc.mutate(set)
			s, err := Start(context.Background(), Options{Settings: set})
			if err == nil {
				s.Close(context.Background())
				t.Fatal("started; want a refusal")
			}
			if !contains(err.Error(), tc.want) {
				t.Fatalf("err = %v; want it to mention %q", err, tc.want)
			}
		})
	}
	// After a refused start the receipt log is not left locked.
	set := baseSettings(t, dir, "http://127.0.0.1:1", key)
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	set.Listen = ln.Addr().String()
	if _, err := Start(context.Background(), Options{Settings: set}); err == nil {
		t.Fatal("started on a used port")
	}
	ln.Close()
	set.Listen = "127.0.0.1:0"
	s, err := Start(context.Background(), Options{Settings: set})
	if err != nil {
		t.Fatalf("start after a refused start: %v", err)
	}
	s.Close(context.Background())
	if _, err := os.Stat(set.ReceiptPath); err != nil {
		t.Fatal(err)
	}
}
