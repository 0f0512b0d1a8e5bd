package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/backbay-labs/chio-agent/kernel"
	"github.com/backbay-labs/chio-agent/kernel/config"
	"github.com/backbay-labs/chio-agent/kernel/hushspec"
	"github.com/backbay-labs/chio-agent/kernel/session"
	"github.com/backbay-labs/chio-agent/receipts"
)

// sessionsLog writes a receipt log and its session journal beside it, as a
// sidecar would: two sessions with allowed, settled and denied calls.
func sessionsLog(t *testing.T) (receiptPath, journalPath string) {
	t.Helper()
	for _, n := range config.SessionEnv {
		t.Setenv(n, "")
	}
	t.Setenv(config.EnvKernelConfigPath, "")
	t.Setenv(config.EnvReceiptSink, "")
	receiptPath = filepath.Join(t.TempDir(), "chio-receipts.db")
	journalPath = session.DefaultPath(receiptPath)
	p, err := hushspec.Parse([]byte("hushspec: \"0.1.0\"\nrules:\n  tool_access:\n    allow: [getPet]\n    default: block\n"))
	if err != nil {
		t.Fatal(err)
	}
	k, err := kernel.New(kernel.Options{Policy: p, SigningKey: cliKey()})
	if err != nil {
		t.Fatal(err)
	}
	l, err := receipts.Open(receiptPath, receipts.Options{Key: cliKey()})
	if err != nil {
		t.Fatal(err)
	}
	j, err := session.Open(journalPath, session.Options{Limits: session.Limits{MaxCalls: 2}})
	if err != nil {
		t.Fatal(err)
	}
	for i, c := range []struct{ sid, tool string }{
		{"run-a", "getPet"}, {"run-a", "deletePet"}, {"run-b", "getPet"}, {"run-a", "getPet"}, {"run-a", "getPet"},
	} {
		logCall(t, k, l, j, c.sid, c.tool, fmt.Sprint(i))
	}
	if err := j.Close(); err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	return receiptPath, journalPath
}

// logCall decides a call of session sid through kernel k with journal j,
// appends its receipt to l and settles it, as a sidecar does.
func logCall(t *testing.T, k *kernel.Kernel, l *receipts.Log, j *session.Journal, sid, tool, requestID string) {
	t.Helper()
	ctx := context.Background()
	call := j.Call(session.Request{SessionID: sid, ToolServer: "petstore", ToolName: tool})
	_, prep, err := k.PrepareToolCall(ctx, kernel.ToolCall{ToolServer: "petstore", ToolName: tool, RequestID: requestID, Guard: call})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := l.AppendPrepared(ctx, prep); err != nil {
		t.Fatal(err)
	}
	call.Settle(0, 100)
}

func TestSessionsListShowVerify(t *testing.T) {
	db, journal := sessionsLog(t)
	out, err := runCLI(t, "sessions", "list", "--receipts", db)
	if err != nil || !strings.Contains(out, "run-a    1      6        2      2") || !strings.Contains(out, "run-b") {
		t.Fatalf("list: %v\n%s", err, out)
	}
	out, err = runCLI(t, "sessions", "show", "run-a", "--journal", journal, "--json")
	if err != nil {
		t.Fatalf("show: %v\n%s", err, out)
	}
	var shown struct {
		Head    session.Head    `json:"head"`
		Entries []session.Entry `json:"entries"`
	}
	if err := json.Unmarshal([]byte(out), &shown); err != nil || len(shown.Entries) != 6 || shown.Head.Totals.ResponseBytes != 200 ||
		shown.Entries[5].Guard != kernel.GuardSession || shown.Entries[2].Guard != kernel.GuardToolAccess {
		t.Fatalf("show: %v %+v", err, shown)
	}
	if out, err := runCLI(t, "sessions", "show", "run-a", "--receipts", db); err != nil || !strings.Contains(out, "deny (ChioSessionGuard)") {
		t.Fatalf("show text: %v\n%s", err, out)
	}
	if _, err := runCLI(t, "sessions", "show", "nobody", "--receipts", db); err == nil {
		t.Fatal("show of an unknown session succeeded")
	}
	out, err = runCLI(t, "sessions", "verify", "--receipts", db)
	if err != nil || !strings.Contains(out, "2 sessions, 8 entries") || !strings.Contains(out, "5 receipts name their entries") {
		t.Fatalf("verify: %v\n%s", err, out)
	}
	if out, err := runCLI(t, "sessions", "verify", "run-b", "--receipts", db); err != nil || !strings.Contains(out, "1 sessions, 2 entries") {
		t.Fatalf("verify run-b: %v\n%s", err, out)
	}
}

// TestSessionsVerifyDetectsTampering: a changed, removed or reordered entry
// fails verify with exit status 2, naming the session and the entry.
func TestSessionsVerifyDetectsTampering(t *testing.T) {
	for _, tc := range []struct {
		name string
		edit func(b *bolt.Bucket) error
		want string
	}{
		{"changed", func(b *bolt.Bucket) error {
			k := append([]byte("run-a\x00"), 0, 0, 0, 0, 0, 0, 0, 2)
			v := strings.Replace(string(b.Get(k)), `"response_bytes":100`, `"response_bytes":1`, 1)
			return b.Put(k, []byte(v))
		}, "session run-a entry 2: entry_hash"},
		{"removed", func(b *bolt.Bucket) error {
			return b.Delete(append([]byte("run-a\x00"), 0, 0, 0, 0, 0, 0, 0, 3))
		}, "session run-a entry 3: entry 3 is missing"},
		{"reordered", func(b *bolt.Bucket) error {
			k4, k5 := append([]byte("run-a\x00"), 0, 0, 0, 0, 0, 0, 0, 4), append([]byte("run-a\x00"), 0, 0, 0, 0, 0, 0, 0, 5)
			v4, v5 := append([]byte(nil), b.Get(k4)...), append([]byte(nil), b.Get(k5)...)
			b.Put(k4, v5)
			return b.Put(k5, v4)
		}, "session run-a entry 4: entry stored as session run-a seq 4 says session run-a seq 5"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			db, journal := sessionsLog(t)
			bdb, err := bolt.Open(journal, 0o600, nil)
			if err != nil {
				t.Fatal(err)
			}
			if err := bdb.Update(func(tx *bolt.Tx) error { return tc.edit(tx.Bucket([]byte("entries"))) }); err != nil {
				t.Fatal(err)
			}
			bdb.Close()
			out, err := runCLI(t, "sessions", "verify", "--receipts", db)
			if exitCode(err) != exitVerifyFailed || !strings.Contains(out, tc.want) || strings.Contains(out, "run-b") {
				t.Fatalf("verify: %v\n%s", err, out)
			}
			if out, err := runCLI(t, "sessions", "verify", "run-b", "--receipts", db); err != nil {
				t.Fatalf("an untouched session: %v\n%s", err, out)
			}
		})
	}
}

// TestAPIProtectSessionsEndToEnd: the real binary, its session settings
// from the CHIO_SESSION_* variables through the one resolver, a loopback
// API: the limit holds over HTTP, and once the sidecar has stopped the
// sessions commands read and verify what it wrote.
func TestAPIProtectSessionsEndToEnd(t *testing.T) {
	bin := binary(t)
	dir, api := petsAPI(t)
	db := filepath.Join(dir, "receipts.db")
	journal := filepath.Join(dir, "journal.db")
	p := startProtect(t, bin, []string{config.EnvPolicySource + "=" + filepath.Join(dir, "policy.yaml"), config.EnvReceiptSink + "=" + db,
		config.EnvSigningKey + "=" + strings.Repeat("07", 32), config.EnvKernelConfigPath + "=",
		config.EnvTrustedIssuerKey + "=", config.EnvTrustedIssuerKeys + "=",
		config.EnvSessionHeader + "=X-Run", config.EnvSessionJournal + "=file://" + journal, config.EnvSessionMaxCalls + "=2",
		config.EnvSessionMaxCallsPerTool + "=", config.EnvSessionMaxRequestBytes + "=", config.EnvSessionMaxResponseBytes + "=", config.EnvSessionIdleExpiry + "=1h"},
		"--upstream", api.URL, "--spec", filepath.Join(dir, "openapi.yaml"))
	client := &http.Client{Transport: &http.Transport{Proxy: nil}}
	for i, want := range []int{200, 200, 403} {
		req, _ := http.NewRequest("GET", "http://"+p.addr+"/pets/1", nil)
		req.Header.Set("X-Run", "nightly-7")
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != want || (want == 403 && !strings.Contains(string(b), "session nightly-7 has made 2 calls (sessions.max_calls 2)")) {
			t.Fatalf("call %d: %d %s", i, resp.StatusCode, b)
		}
	}
	client.CloseIdleConnections()
	p.stop(t)
	t.Setenv(config.EnvSessionJournal, journal)
	out, err := runCLI(t, "sessions", "list", "--receipts", db)
	if err != nil || !strings.Contains(out, "nightly-7  1      5        2      1") {
		t.Fatalf("list: %v\n%s", err, out)
	}
	if out, err := runCLI(t, "sessions", "verify", "--receipts", db); err != nil || !strings.Contains(out, "3 receipts name their entries") {
		t.Fatalf("verify: %v\n%s", err, out)
	}
}

// TestAPIProtectSessionsSurviveKill: a sidecar killed (SIGKILL) in the
// middle of a session's concurrent calls, then restarted on the same files:
// the upstream never sees more calls of the session than max_calls, and the
// journal still verifies against the receipt log (an entry reaches the file
// only after its receipt).
func TestAPIProtectSessionsSurviveKill(t *testing.T) {
	const limit = 40
	bin := binary(t)
	var hits atomic.Int64
	api := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		io.WriteString(w, "ok")
	}))
	defer api.Close()
	dir, _ := petsAPI(t)
	db := filepath.Join(dir, "receipts.db")
	env := []string{config.EnvPolicySource + "=" + filepath.Join(dir, "policy.yaml"), config.EnvReceiptSink + "=" + db,
		config.EnvSigningKey + "=" + strings.Repeat("07", 32), config.EnvKernelConfigPath + "=",
		config.EnvTrustedIssuerKey + "=", config.EnvTrustedIssuerKeys + "=", config.EnvSessionHeader + "=", config.EnvSessionJournal + "=",
		config.EnvSessionMaxCalls + "=" + fmt.Sprint(limit), config.EnvSessionMaxCallsPerTool + "=", config.EnvSessionMaxRequestBytes + "=",
		config.EnvSessionMaxResponseBytes + "=", config.EnvSessionIdleExpiry + "="}
	args := []string{"--upstream", api.URL, "--spec", filepath.Join(dir, "openapi.yaml")}
	// hammer sends the session's calls from 8 clients until stop says so,
	// and counts the answers.
	hammer := func(addr string, stop func(ok, refused int64) bool) (ok, refused int64) {
		var okN, refusedN atomic.Int64
		var wg sync.WaitGroup
		for range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				client := &http.Client{Transport: &http.Transport{Proxy: nil}}
				defer client.CloseIdleConnections()
				for !stop(okN.Load(), refusedN.Load()) {
					req, _ := http.NewRequest("GET", "http://"+addr+"/pets/1", nil)
					req.Header.Set(config.DefaultSessionHeader, "crash-run")
					resp, err := client.Do(req)
					if err != nil {
						return // the sidecar is gone
					}
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					switch resp.StatusCode {
					case 200:
						okN.Add(1)
					case 403:
						refusedN.Add(1)
					default:
						t.Errorf("status %d", resp.StatusCode)
						return
					}
				}
			}()
		}
		wg.Wait()
		return okN.Load(), refusedN.Load()
	}

	p := startProtect(t, bin, env, args...)
	var killOnce sync.Once
	ok1, _ := hammer(p.addr, func(ok, _ int64) bool {
		if ok >= limit/2 {
			killOnce.Do(func() { p.cmd.Process.Kill() })
			return true
		}
		return false
	})
	<-p.exited

	p = startProtect(t, bin, env, args...)
	ok2, refused2 := hammer(p.addr, func(_, refused int64) bool { return refused >= 8 })
	p.stop(t)
	if n := hits.Load(); n > limit || ok1+ok2 > limit || refused2 == 0 {
		t.Fatalf("upstream saw %d calls, clients %d+%d allowed, %d refused after the restart; max_calls %d", n, ok1, ok2, refused2, limit)
	}
	t.Logf("before the kill %d allowed; after %d allowed, %d refused; upstream saw %d", ok1, ok2, refused2, hits.Load())
	if out, err := runCLI(t, "sessions", "verify", "--receipts", db); err != nil {
		t.Fatalf("sessions verify after a kill: %v\n%s", err, out)
	}
	if out, err := runCLI(t, "receipts", "verify", "--receipts", db); err != nil {
		t.Fatalf("receipts verify after a kill: %v\n%s", err, out)
	}
}

// TestAPIProtectReplicasEndToEnd: three api protect processes configured
// as replicas through CHIO_SESSION_PEERS, CHIO_SESSION_SELF and
// CHIO_SESSION_PEER_TOKEN, and 1,000 sessions whose concurrent requests
// hit every replica: no session reaches the API more than max_calls times.
// Then one replica restarts on its files: its sessions keep their journals
// and their limits, and every replica's journal verifies.
func TestAPIProtectReplicasEndToEnd(t *testing.T) {
	const replicas, sessions, limit = 3, 1000, 2
	bin := binary(t)
	dir, _ := petsAPI(t)
	api := startSessionAPI(t)
	mu, hits := &api.mu, api.hits
	addrs := freeLoopbackAddrs(t, replicas)
	procs := make([]*protectProcess, replicas)
	dbs := make([]string, replicas)
	start := func(i int) {
		env := replicaEnv(dir, dbs[i], i, limit, addrs[i], config.EnvSessionPeers+"="+strings.Join(addrs, ","))
		// This --listen comes after startProtect's own, and wins.
		procs[i] = startProtect(t, bin, env, "--upstream", api.URL, "--spec", filepath.Join(dir, "openapi.yaml"), "--listen", addrs[i])
	}
	for i := range replicas {
		dbs[i] = filepath.Join(t.TempDir(), "r.db")
		start(i)
	}
	// round sends n requests per session, spread over every replica, 32
	// at a time, and checks that the API saw each session max_calls times.
	round := func(n int) {
		t.Helper()
		client := &http.Client{Transport: &http.Transport{Proxy: nil, MaxIdleConnsPerHost: 32}}
		defer client.CloseIdleConnections()
		work := make(chan int)
		var wg sync.WaitGroup
		for range 32 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range work {
					// A session moving between replicas (their views of
					// each other differ for a moment after the restart) is
					// refused with 503 chio_session_moving: retry, as told.
					for try := 0; ; try++ {
						req, _ := http.NewRequest("GET", "http://"+addrs[i%replicas]+"/pets/1", nil)
						req.Header.Set(config.DefaultSessionHeader, fmt.Sprintf("fleet-%d", (i/replicas)%sessions))
						resp, err := client.Do(req)
						if err != nil {
							t.Error(err)
							break
						}
						body, _ := io.ReadAll(resp.Body)
						resp.Body.Close()
						if resp.StatusCode == 503 && strings.Contains(string(body), "chio_session_moving") && try < 50 {
							time.Sleep(20 * time.Millisecond)
							continue
						}
						if resp.StatusCode != 200 && resp.StatusCode != 403 {
							t.Errorf("status %d: %s", resp.StatusCode, body)
						}
						break
					}
				}
			}()
		}
		for i := range n * sessions {
			work <- i
		}
		close(work)
		wg.Wait()
		mu.Lock()
		defer mu.Unlock()
		for i := range sessions {
			if sid := fmt.Sprintf("fleet-%d", i); hits[sid] != limit {
				t.Fatalf("%s reached the API %d times; max_calls %d", sid, hits[sid], limit)
			}
		}
	}
	round(replicas) // every session's requests hit all three replicas
	procs[1].stop(t)
	start(1)
	round(1)
	for i := range replicas {
		procs[i].stop(t)
		if out, err := runCLI(t, "sessions", "verify", "--receipts", dbs[i]); err != nil {
			t.Fatalf("replica %d: sessions verify: %v\n%s", i, err, out)
		}
	}
}

// sessionAPI is an upstream answering "ok" and counting each session's
// requests (by the session header).
type sessionAPI struct {
	*httptest.Server
	mu   sync.Mutex
	hits map[string]int
}

func startSessionAPI(t *testing.T) *sessionAPI {
	a := &sessionAPI{hits: map[string]int{}}
	a.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		a.mu.Lock()
		a.hits[r.Header.Get(config.DefaultSessionHeader)]++
		a.mu.Unlock()
		io.WriteString(w, "ok")
	}))
	t.Cleanup(a.Close)
	return a
}

// freeLoopbackAddrs returns n free loopback addresses (host:port) for
// replicas to listen on.
// sessionRequest makes one GET /pets/1 of session sid at addr and returns
// "STATUS ERROR-CODE" ("200 " when allowed), or "conn-error" when no answer
// came.
func sessionRequest(client *http.Client, addr, sid string) (string, *http.Response) {
	req, _ := http.NewRequest("GET", "http://"+addr+"/pets/1", nil)
	req.Header.Set(config.DefaultSessionHeader, sid)
	resp, err := client.Do(req)
	if err != nil {
		return "conn-error", nil
	}
	var body struct{ Error string }
	json.NewDecoder(resp.Body).Decode(&body)
	resp.Body.Close()
	return fmt.Sprintf("%d %s", resp.StatusCode, body.Error), resp
}

// inParallel calls fn(i) for every i in [0, n), from workers goroutines,
// and returns when every call has.
func inParallel(n, workers int, fn func(i int)) {
	work := make(chan int)
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range work {
				fn(i)
			}
		}()
	}
	for i := range n {
		work <- i
	}
	close(work)
	wg.Wait()
}

func freeLoopbackAddrs(t *testing.T, n int) []string {
	t.Helper()
	var addrs []string
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addrs = append(addrs, ln.Addr().String())
		ln.Close()
	}
	return addrs
}

// replicaEnv is the environment of replica i of a test's sidecar replicas:
// the pets policy in dir, its own receipt log db and key, max_calls limit,
// self, the replicas' peer token, every other session variable unset, and
// peers: the peer settings (NAME=VALUE) that say how replicas find each
// other.
func replicaEnv(dir, db string, i, limit int, self string, peers ...string) []string {
	env := []string{config.EnvPolicySource + "=" + filepath.Join(dir, "policy.yaml"), config.EnvReceiptSink + "=" + db,
		config.EnvSigningKey + "=" + strings.Repeat(fmt.Sprintf("0%d", i+1), 32), config.EnvKernelConfigPath + "=",
		config.EnvTrustedIssuerKey + "=", config.EnvTrustedIssuerKeys + "=", config.EnvSessionHeader + "=", config.EnvSessionJournal + "=",
		config.EnvSessionMaxCalls + "=" + fmt.Sprint(limit), config.EnvSessionMaxCallsPerTool + "=", config.EnvSessionMaxRequestBytes + "=",
		config.EnvSessionMaxResponseBytes + "=", config.EnvSessionIdleExpiry + "=", config.EnvSessionRedirect + "=",
		config.EnvSessionPeers + "=", config.EnvSessionPeersDNS + "=", config.EnvSessionPeersResolver + "=", config.EnvSessionPeersRefresh + "=",
		config.EnvSessionPeerProbe + "=", config.EnvSessionTakeover + "=", config.EnvSessionDrainTimeout + "=",
		config.EnvSessionSelf + "=" + self, config.EnvSessionPeerToken + "=" + strings.Repeat("s", 20)}
	// Later entries win (os/exec keeps the last value of a name).
	return append(env, peers...)
}
