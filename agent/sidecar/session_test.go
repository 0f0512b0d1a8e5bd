package sidecar

import (
	"context"
	"crypto/ed25519"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/backbay-labs/chio-agent/kernel"
	"github.com/backbay-labs/chio-agent/kernel/config"
	"github.com/backbay-labs/chio-agent/kernel/jcs"
	"github.com/backbay-labs/chio-agent/kernel/session"
)

const hdrSession = config.DefaultSessionHeader

func withLimits(l session.Limits) func(*config.SidecarSettings) {
	return func(s *config.SidecarSettings) { s.Sessions.Limits = l }
}

// sessionMetaOf is a stored receipt's metadata.session.
func sessionMetaOf(t testing.TB, r kernel.Receipt) map[string]any {
	t.Helper()
	var m struct {
		Session map[string]any `json:"session"`
	}
	if err := json.Unmarshal(r.Metadata, &m); err != nil {
		t.Fatal(err)
	}
	return m.Session
}

// TestSessionLimitOverHTTP: many concurrent requests of one session
// against max_calls admit exactly that many; the rest are refused with a
// receipt naming the session guard and the figures; another session and
// requests without a session are unaffected.
func TestSessionLimitOverHTTP(t *testing.T) {
	const n, k = 120, 7
	f := startFixture(t, withLimits(session.Limits{MaxCalls: k}))
	var ok, refused atomic.Int64
	var wg sync.WaitGroup
	var mu sync.Mutex
	var denials []string
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, body := f.do("GET", "/pets/1", nil, map[string]string{hdrSession: "agent-run-1"})
			switch resp.StatusCode {
			case 200:
				ok.Add(1)
			case 403:
				refused.Add(1)
				if e := decodeError(t, body); e.Error != codeDenied || !contains(e.Message, "session agent-run-1 has made 7 calls (sessions.max_calls 7)") {
					t.Errorf("refusal %+v", e)
				}
				mu.Lock()
				denials = append(denials, resp.Header.Get(HeaderReceiptID))
				mu.Unlock()
			default:
				t.Errorf("status %d: %s", resp.StatusCode, body)
			}
		}()
	}
	wg.Wait()
	if ok.Load() != k || refused.Load() != n-k {
		t.Fatalf("%d allowed, %d refused of %d; max_calls %d", ok.Load(), refused.Load(), n, k)
	}
	if len(f.upstream.Hits()) != k {
		t.Fatalf("upstream saw %d requests", len(f.upstream.Hits()))
	}
	r := f.stored(denials[0])
	m := sessionMetaOf(t, r)
	if r.Decision.Guard != kernel.GuardSession || m["limit"] != session.RuleMaxCalls || m["max"] != float64(k) || m["used"] != float64(k) || m["id"] != "agent-run-1" {
		t.Fatalf("denial receipt %+v metadata %v", r.Decision, m)
	}
	if resp, _ := f.do("GET", "/pets/1", nil, map[string]string{hdrSession: "agent-run-2"}); resp.StatusCode != 200 {
		t.Fatalf("another session: %d", resp.StatusCode)
	}
	resp, _ := f.do("GET", "/pets/1", nil, nil)
	if resp.StatusCode != 200 || sessionMetaOf(t, f.stored(resp.Header.Get(HeaderReceiptID))) != nil {
		t.Fatalf("a request without a session: %d", resp.StatusCode)
	}
}

// TestSessionResponseBytes: the call that crosses max_response_bytes
// completes; the next is refused.
func TestSessionResponseBytes(t *testing.T) {
	f := startFixture(t, withLimits(session.Limits{MaxResponseBytes: 30}))
	hdr := map[string]string{hdrSession: "s"}
	for i, want := range []int{200, 200, 403} { // "upstream: GET /pets/1" is 21 bytes
		resp, body := f.do("GET", "/pets/1", nil, hdr)
		if resp.StatusCode != want {
			t.Fatalf("call %d: %d %s", i, resp.StatusCode, body)
		}
		if want == 403 && !contains(string(body), "has received 42 response bytes") {
			t.Fatalf("refusal %s", body)
		}
	}
}

// TestSessionRequestBytes: a declared body past what the session has left
// is refused before it is read; a chunked body is cut at what is left.
func TestSessionRequestBytes(t *testing.T) {
	f := startFixture(t, withLimits(session.Limits{MaxRequestBytes: 500}))
	hdr := map[string]string{hdrSession: "s"}
	if resp, body := f.do("POST", "/pets", strings.NewReader(strings.Repeat("a", 300)), hdr); resp.StatusCode != 200 {
		t.Fatalf("300 bytes: %d %s", resp.StatusCode, body)
	}
	resp, body := f.do("POST", "/pets", strings.NewReader(strings.Repeat("a", 201)), hdr)
	if resp.StatusCode != 403 || !contains(string(body), "sessions.max_request_bytes 500") {
		t.Fatalf("201 bytes over 200 left: %d %s", resp.StatusCode, body)
	}
	// A body of unknown length may read the 200 bytes left, not more.
	chunked := func(n int) *http.Response {
		req, _ := http.NewRequest("POST", f.base+"/pets", io.MultiReader(strings.NewReader(strings.Repeat("b", n))))
		req.ContentLength = -1
		req.Header.Set(hdrSession, "s")
		resp, err := f.client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp
	}
	if resp := chunked(250); resp.StatusCode != http.StatusRequestEntityTooLarge {
		t.Fatalf("chunked 250 bytes with 200 left: %d", resp.StatusCode)
	}
	for _, h := range f.upstream.Hits() {
		if h.BodyLen > 300 {
			t.Fatalf("upstream read %d body bytes", h.BodyLen)
		}
	}
}

// mintSession signs a capability like mint, with an issuer-signed
// session_id member (the token's session claim).
func mintSession(t *testing.T, issuer ed25519.PrivateKey, id, sessionID, server, tool string) string {
	t.Helper()
	now := time.Now()
	var m map[string]any
	if err := json.Unmarshal([]byte(mint(t, issuer, id, server, tool, now.Add(-time.Minute), now.Add(time.Hour))), &m); err != nil {
		t.Fatal(err)
	}
	delete(m, "signature")
	m["session_id"] = sessionID
	m["schema"] = kernel.CapabilitySchema
	canon, err := jcs.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	m["signature"] = hex.EncodeToString(ed25519.Sign(issuer, canon))
	b, _ := json.Marshal(m)
	return string(b)
}

// TestSessionIdentityAttack: with capability tokens in use the token names
// the session. A caller naming another principal's session in the header
// is refused, spends nothing of it and adds nothing to its journal; the
// victim keeps its whole budget.
func TestSessionIdentityAttack(t *testing.T) {
	issuer := newKey(t)
	f := startFixture(t, func(s *config.SidecarSettings) {
		s.TrustedIssuerKeys = []ed25519.PublicKey{issuer.Public().(ed25519.PublicKey)}
		s.Sessions.Limits = session.Limits{MaxCalls: 2}
	})
	server := f.upstream.URL
	victim := mintSession(t, issuer, "cap-victim", "victim-session", server, "getPet")
	attacker := mintSession(t, issuer, "cap-attacker", "attacker-session", server, "getPet")
	now := time.Now()
	bySubject := mint(t, issuer, "cap-subject", server, "getPet", now.Add(-time.Minute), now.Add(time.Hour))

	for range 5 {
		resp, body := f.do("GET", "/pets/1", nil, map[string]string{HeaderCapability: attacker, hdrSession: "victim-session"})
		e := decodeError(t, body)
		if resp.StatusCode != 403 || !contains(e.Message, `its capability "cap-attacker" is for session "attacker-session"`) {
			t.Fatalf("attacker naming the victim's session: %d %+v", resp.StatusCode, e)
		}
		r := f.stored(e.ReceiptID)
		if r.Decision.Guard != kernel.GuardSession || sessionMetaOf(t, r) != nil {
			t.Fatalf("refusal receipt %+v", r.Decision)
		}
	}
	// A token without a session claim names its subject: the victim's
	// session id in the header is refused for it too.
	if resp, _ := f.do("GET", "/pets/1", nil, map[string]string{HeaderCapability: bySubject, hdrSession: "victim-session"}); resp.StatusCode != 403 {
		t.Fatalf("subject token naming the victim's session: %d", resp.StatusCode)
	}
	if h, ok, _ := f.s.Sessions().Head("victim-session"); ok {
		t.Fatalf("the victim's journal was written: %+v", h)
	}
	// The victim has its whole budget, with or without the header.
	for i, hdr := range []map[string]string{
		{HeaderCapability: victim},
		{HeaderCapability: victim, hdrSession: "victim-session"},
	} {
		resp, body := f.do("GET", "/pets/1", nil, hdr)
		if resp.StatusCode != 200 {
			t.Fatalf("victim call %d: %d %s", i, resp.StatusCode, body)
		}
		if m := sessionMetaOf(t, f.stored(resp.Header.Get(HeaderReceiptID))); m["id"] != "victim-session" || m["seq"] != float64(2*i+1) { // each call is followed by its settle entry
			t.Fatalf("victim receipt session %v", m)
		}
	}
	if resp, _ := f.do("GET", "/pets/1", nil, map[string]string{HeaderCapability: victim}); resp.StatusCode != 403 {
		t.Fatalf("victim's third call: %d", resp.StatusCode)
	}
	// The subject's own session is its key.
	resp, _ := f.do("GET", "/pets/1", nil, map[string]string{HeaderCapability: bySubject})
	var c struct{ Subject string }
	json.Unmarshal([]byte(bySubject), &c)
	if m := sessionMetaOf(t, f.stored(resp.Header.Get(HeaderReceiptID))); resp.StatusCode != 200 || m["id"] != c.Subject {
		t.Fatalf("subject session: %d %v", resp.StatusCode, m)
	}
}

// TestSessionHeaderRefusals: a repeated or malformed session header is
// refused (400) rather than guessed at, with a receipt.
func TestSessionHeaderRefusals(t *testing.T) {
	f := startFixture(t, nil)
	req, _ := http.NewRequest("GET", f.base+"/pets/1", nil)
	req.Header.Add(hdrSession, "a")
	req.Header.Add(hdrSession, "b")
	resp, err := f.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 400 || f.stored(resp.Header.Get(HeaderReceiptID)).Decision.Guard != kernel.GuardSession {
		t.Fatalf("repeated header: %d", resp.StatusCode)
	}
	for _, v := range []string{strings.Repeat("x", 129), "a b", "\u00e9t\u00e9"} {
		if resp, body := f.do("GET", "/pets/1", nil, map[string]string{hdrSession: v}); resp.StatusCode != 400 {
			t.Fatalf("header %q: %d %s", v, resp.StatusCode, body)
		}
	}
	if n := len(f.upstream.Hits()); n != 0 {
		t.Fatalf("%d refused requests reached the upstream", n)
	}
}

// TestSessionSurvivesRestart: a restarted sidecar continues each session's
// chain, and its limit holds across the restart.
func TestSessionSurvivesRestart(t *testing.T) {
	f := startFixture(t, withLimits(session.Limits{MaxCalls: 3}))
	hdr := map[string]string{hdrSession: "long-run"}
	for range 2 {
		if resp, _ := f.do("GET", "/pets/1", nil, hdr); resp.StatusCode != 200 {
			t.Fatal(resp.Status)
		}
	}
	f.client.CloseIdleConnections()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := f.s.Close(ctx); err != nil {
		t.Fatal(err)
	}
	s, err := Start(context.Background(), Options{Settings: f.set})
	if err != nil {
		t.Fatal(err)
	}
	f.s, f.base = s, "http://"+s.Addr().String()
	resp, _ := f.do("GET", "/pets/1", nil, hdr)
	if resp.StatusCode != 200 || sessionMetaOf(t, f.stored(resp.Header.Get(HeaderReceiptID)))["seq"] != 5.0 {
		t.Fatalf("after restart: %d", resp.StatusCode)
	}
	if resp, _ := f.do("GET", "/pets/1", nil, hdr); resp.StatusCode != 403 {
		t.Fatalf("fourth call across a restart: %d", resp.StatusCode)
	}
}

func FuzzSessionHeader(f *testing.F) {
	for _, s := range []string{"abc", "", "a b", strings.Repeat("z", 129), "\xff"} {
		f.Add(s, false)
	}
	f.Fuzz(func(t *testing.T, v string, twice bool) {
		values := []string{v}
		if twice {
			values = append(values, v)
		}
		id, problem := sessionFromHeader(hdrSession, values)
		switch {
		case problem != "" && id != "":
			t.Fatalf("%q: both an id and a problem", values)
		case problem == "" && (twice || id != v || !session.ValidID(id)):
			t.Fatalf("%q: accepted as %q", values, id)
		}
	})
}

// TestSessionAdminStatus: the admin status shows the journal and limits.
func TestSessionAdminStatus(t *testing.T) {
	token := strings.Repeat("t", 24)
	f := startFixture(t, func(s *config.SidecarSettings) {
		s.ControlToken = token
		s.Sessions.Limits = session.Limits{MaxCalls: 9, IdleExpiry: time.Hour}
	})
	f.do("GET", "/pets/1", nil, map[string]string{hdrSession: "s"})
	resp, body := f.do("GET", PathAdminStatus, nil, map[string]string{"Authorization": "Bearer " + token})
	var st AdminStatus
	if err := json.Unmarshal(body, &st); err != nil || resp.StatusCode != 200 {
		t.Fatalf("status: %d %s", resp.StatusCode, body)
	}
	if s := st.Sessions; s.Journal != f.set.Sessions.JournalPath || s.Header != hdrSession || s.MaxCalls != 9 || s.IdleExpiry != "1h0m0s" || s.InMemory != 1 || s.Error != "" {
		t.Fatalf("sessions status %+v", s)
	}
}
