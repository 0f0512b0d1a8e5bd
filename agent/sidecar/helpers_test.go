package sidecar

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/backbay-labs/chio-agent/kernel"
	"github.com/backbay-labs/chio-agent/kernel/config"
	"github.com/backbay-labs/chio-agent/kernel/session"
	"github.com/backbay-labs/chio-agent/receipts"
)

const testSpec = `openapi: 3.0.3
info: {title: Pets, version: "1.0"}
paths:
  /pets:
    get: {operationId: listPets}
    post: {operationId: createPet}
  /pets/{petId}:
    parameters: [{name: petId, in: path, required: true}]
    get: {operationId: getPet}
    delete: {operationId: deletePet}
  /pets/mine:
    get: {operationId: listMyPets}
  /files/{name}.json:
    get: {operationId: getFileJSON}
`

const testPolicy = `hushspec: "0.1.0"
name: pets
rules:
  tool_access:
    allow: [listPets, getPet, listMyPets, createPet, getFileJSON]
    block: [deletePet]
    default: block
`

// upstreamHit is what the test API saw of one request.
type upstreamHit struct {
	Method, Path, RawQuery string
	Header                 http.Header
	BodyLen                int
}

// testUpstream is a real HTTP API on loopback that records what reaches it.
type testUpstream struct {
	*httptest.Server
	mu   sync.Mutex
	hits []upstreamHit
}

func newUpstream(t testing.TB) *testUpstream {
	u := &testUpstream{}
	u.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n, _ := io.Copy(io.Discard, r.Body)
		u.mu.Lock()
		u.hits = append(u.hits, upstreamHit{Method: r.Method, Path: r.URL.Path, RawQuery: r.URL.RawQuery, Header: r.Header.Clone(), BodyLen: int(n)})
		u.mu.Unlock()
		// An upstream's own receipt header must not reach the client.
		w.Header().Set(HeaderReceiptID, "forged-by-upstream")
		w.Header().Set("Content-Type", "text/plain")
		io.WriteString(w, "upstream: "+r.Method+" "+r.URL.Path)
	}))
	t.Cleanup(u.Close)
	return u
}

func (u *testUpstream) Hits() []upstreamHit {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]upstreamHit(nil), u.hits...)
}

// fixture is a running sidecar in front of a test upstream.
type fixture struct {
	t        testing.TB
	dir      string
	s        *Server
	base     string
	upstream *testUpstream
	key      ed25519.PrivateKey
	set      *config.SidecarSettings
	client   *http.Client
}

func writeFile(t testing.TB, dir, name, content string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func newKey(t testing.TB) ed25519.PrivateKey {
	t.Helper()
	_, k, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// baseSettings are the settings of a sidecar on a free loopback port.
func baseSettings(t testing.TB, dir, upstream string, key ed25519.PrivateKey) *config.SidecarSettings {
	writeFile(t, dir, "policy.yaml", testPolicy)
	writeFile(t, dir, "openapi.yaml", testSpec)
	return settingsIn(dir, upstream, hex.EncodeToString(key.Seed()))
}

// settingsIn are baseSettings for a directory that already holds
// policy.yaml and openapi.yaml (the benchmark's sidecar process uses them
// too), with sync receipts in dir/receipts.db.
func settingsIn(dir, upstream, seed string) *config.SidecarSettings {
	return &config.SidecarSettings{
		Common: config.Common{
			PolicySource: filepath.Join(dir, "policy.yaml"),
			ReceiptPath:  filepath.Join(dir, "receipts.db"),
			ReceiptMode:  "sync",
			KeySeed:      seed,
			LogLevel:     "info",
		},
		Listen:       "127.0.0.1:0",
		HealthPath:   config.DefaultHealthPath,
		Upstream:     upstream,
		Spec:         filepath.Join(dir, "openapi.yaml"),
		MaxBodyBytes: 1 << 10,
		Timeouts: config.ResolvedTimeouts{
			ReadHeader: 10 * time.Second, Read: time.Minute, Write: time.Minute, Idle: time.Minute,
			Dial: 10 * time.Second, UpstreamHeader: time.Minute,
		},
	}
}

// startFixture starts a sidecar; mutate adjusts its settings first. At
// cleanup the sidecar stops and its whole receipt log is verified.
func startFixture(t testing.TB, mutate func(*config.SidecarSettings)) *fixture {
	t.Helper()
	return startFixtureWith(t, mutate, nil)
}

// startFixtureWith is startFixture with the sidecar's options adjusted by
// opts (a logger to read, say) too.
func startFixtureWith(t testing.TB, mutate func(*config.SidecarSettings), opts func(*Options)) *fixture {
	t.Helper()
	f := &fixture{t: t, dir: t.TempDir(), upstream: newUpstream(t), key: newKey(t)}
	f.set = baseSettings(t, f.dir, f.upstream.URL, f.key)
	if mutate != nil {
		mutate(f.set)
	}
	o := Options{Settings: f.set, Version: "v-test"}
	if opts != nil {
		opts(&o)
	}
	s, err := Start(context.Background(), o)
	if err != nil {
		t.Fatalf("start sidecar: %v", err)
	}
	f.s = s
	f.base = "http://" + s.Addr().String()
	f.client = &http.Client{Transport: &http.Transport{Proxy: nil}}
	t.Cleanup(func() {
		f.client.CloseIdleConnections()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := f.s.Close(ctx); err != nil { // f.s: a test may restart it
			t.Errorf("close sidecar: %v", err)
		}
		verifyLog(t, f.set.ReceiptPath, f.key)
		verifyJournal(t, f.set.Sessions.JournalPath, f.set.ReceiptPath)
	})
	return f
}

// verifyJournal re-verifies a closed session journal, every entry bound to
// its receipt in the closed receipt log.
func verifyJournal(t testing.TB, path, receiptPath string) {
	t.Helper()
	j, err := session.Open(path, session.Options{ReadOnly: true})
	if err != nil {
		t.Errorf("reopen session journal: %v", err)
		return
	}
	defer j.Close()
	l, err := receipts.Open(receiptPath, receipts.Options{ReadOnly: true})
	if err != nil {
		t.Errorf("reopen receipt log: %v", err)
		return
	}
	defer l.Close()
	rep, err := j.Verify(context.Background(), "", func(id string) ([]byte, error) {
		e, err := l.Lookup(id)
		return e.Receipt, err
	})
	if err != nil || !rep.OK() {
		t.Errorf("session journal does not verify: %v %+v", err, rep.Problems)
	}
}

// verifyLog re-verifies a closed receipt log from its first receipt.
func verifyLog(t testing.TB, path string, key ed25519.PrivateKey) {
	t.Helper()
	l, err := receipts.Open(path, receipts.Options{ReadOnly: true})
	if err != nil {
		t.Errorf("reopen receipt log: %v", err)
		return
	}
	defer l.Close()
	if _, err := l.Verify(context.Background(), receipts.VerifyOptions{TrustedKey: kernel.PublicKeyHex(key.Public().(ed25519.PublicKey))}); err != nil {
		t.Errorf("receipt log does not verify: %v", err)
	}
}

// do sends a request and returns the response with its body read.
func (f *fixture) do(method, path string, body io.Reader, header map[string]string) (*http.Response, []byte) {
	f.t.Helper()
	req, err := http.NewRequest(method, f.base+path, body)
	if err != nil {
		f.t.Fatal(err)
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := f.client.Do(req)
	if err != nil {
		f.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		f.t.Fatalf("%s %s: read body: %v", method, path, err)
	}
	return resp, b
}

// stored returns the receipt the log holds under id, decoded.
func (f *fixture) stored(id string) kernel.Receipt {
	f.t.Helper()
	e, err := f.s.ReceiptLog().Lookup(id)
	if err != nil {
		f.t.Fatalf("receipt %s not in the log: %v", id, err)
	}
	res, err := kernel.Verifier{TrustedKeys: []ed25519.PublicKey{f.key.Public().(ed25519.PublicKey)}}.VerifyJSON(e.Receipt)
	if err != nil || !res.OK {
		f.t.Fatalf("stored receipt %s does not verify: %+v %v", id, res, err)
	}
	var r kernel.Receipt
	if err := json.Unmarshal(e.Receipt, &r); err != nil {
		f.t.Fatal(err)
	}
	return r
}

func params(t testing.TB, r kernel.Receipt) map[string]any {
	t.Helper()
	var p map[string]any
	if err := json.Unmarshal(r.Action.Parameters, &p); err != nil {
		t.Fatal(err)
	}
	return p
}

func decodeError(t testing.TB, body []byte) errorBody {
	t.Helper()
	var e errorBody
	if err := json.Unmarshal(body, &e); err != nil {
		t.Fatalf("error body %q is not JSON: %v", body, err)
	}
	return e
}

func contains(s, sub string) bool { return strings.Contains(s, sub) }
