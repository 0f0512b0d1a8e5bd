package sidecar

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/backbay-labs/chio-agent/kernel/config"
	"github.com/backbay-labs/chio-agent/kernel/session"
)

// replicaSet is three sidecars on loopback sharing a peer list, in front of
// one upstream that counts the calls of each session it sees.
type replicaSet struct {
	t        *testing.T
	servers  []*Server
	addrs    []string
	mu       sync.Mutex
	upstream map[string]int // session id → calls that reached the API
	token    string
	upURL    string
}

func startReplicas(t *testing.T, limits session.Limits, redirect ...bool) *replicaSet {
	rs := newReplicaSet(t)
	var lns []net.Listener
	for range 3 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		lns = append(lns, ln)
		rs.addrs = append(rs.addrs, ln.Addr().String())
	}
	// These tests are not about finding a peer down by its silence (a
	// stopped replica refuses connections: down at once), and a probe
	// bounded by the default second times out on a loaded machine, moving
	// sessions (503 chio_session_moving) the test does not expect.
	for i, ln := range lns {
		rs.start(ln, config.ResolvedSessions{Header: hdrSession, Limits: limits, Peers: rs.addrs, Self: rs.addrs[i], PeerToken: rs.token,
			Redirect: len(redirect) > 0 && redirect[0], PeerProbe: 10 * time.Second}, nil)
	}
	return rs
}

// newReplicaSet starts the upstream the replicas share.
func newReplicaSet(t *testing.T) *replicaSet {
	rs := &replicaSet{t: t, upstream: map[string]int{}, token: strings.Repeat("k", 24)}
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get(HeaderPeerToken) != "" || r.Header.Get(HeaderForwardedBy) != "" {
			t.Errorf("the replicas' headers reached the API: %v", r.Header)
		}
		rs.mu.Lock()
		rs.upstream[r.Header.Get(hdrSession)]++
		rs.mu.Unlock()
		io.WriteString(w, "ok")
	}))
	t.Cleanup(up.Close)
	rs.upURL = up.URL
	return rs
}

// start serves one replica on ln; its journal and log are verified at
// cleanup.
func (rs *replicaSet) start(ln net.Listener, sessions config.ResolvedSessions, res *net.Resolver) *Server {
	t := rs.t
	dir, key := t.TempDir(), newKey(t)
	set := baseSettings(t, dir, rs.upURL, key)
	set.Sessions = sessions
	s, err := Start(context.Background(), Options{Settings: set, Listener: ln, Resolver: res})
	if err != nil {
		t.Fatal(err)
	}
	rs.servers = append(rs.servers, s)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		s.Close(ctx)
		verifyLog(t, set.ReceiptPath, key)
		verifyJournal(t, set.Sessions.JournalPath, set.ReceiptPath)
	})
	return s
}

func (rs *replicaSet) get(client *http.Client, replica int, hdr map[string]string) (*http.Response, string) {
	req, _ := http.NewRequest("GET", "http://"+rs.addrs[replica]+"/pets/1", nil)
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := client.Do(req)
	if err != nil {
		rs.t.Fatalf("replica %d: %v", replica, err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp, string(b)
}

// TestReplicasPinSessions: 60 sessions whose concurrent requests hit all
// three replicas in turn: each session is decided by its one owner, so no
// session exceeds max_calls although its requests reach every replica.
func TestReplicasPinSessions(t *testing.T) {
	const sessions, perSession, limit = 60, 9, 4
	rs := startReplicas(t, session.Limits{MaxCalls: limit})
	client := &http.Client{Transport: &http.Transport{Proxy: nil, MaxIdleConnsPerHost: 64}}
	defer client.CloseIdleConnections()
	var wg sync.WaitGroup
	var mu sync.Mutex
	allowed := map[string]int{}
	for i := range sessions * perSession {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sid := fmt.Sprintf("pinned-%d", i%sessions)
			resp, body := rs.get(client, i%3, map[string]string{hdrSession: sid})
			switch resp.StatusCode {
			case 200:
				mu.Lock()
				allowed[sid]++
				mu.Unlock()
			case 403:
			default:
				t.Errorf("%s: %d %s", sid, resp.StatusCode, body)
			}
		}()
	}
	wg.Wait()
	for i := range sessions {
		sid := fmt.Sprintf("pinned-%d", i)
		if allowed[sid] != limit || rs.upstream[sid] != limit {
			t.Fatalf("%s: %d allowed, %d reached the API; max_calls %d", sid, allowed[sid], rs.upstream[sid], limit)
		}
	}
	// Each session's journal lives on its owner alone.
	ring, _ := session.NewRing(rs.addrs)
	for i := range sessions {
		sid := fmt.Sprintf("pinned-%d", i)
		for k, s := range rs.servers {
			s.Sessions().Flush(context.Background())
			_, ok, _ := s.Sessions().Head(sid)
			if ok != (rs.addrs[k] == ring.Owner(sid)) {
				t.Fatalf("%s: journaled on replica %d (%v); its owner is %s", sid, k, ok, ring.Owner(sid))
			}
		}
	}
}

// TestReplicaForwardingAttacks: a client marking its request as forwarded
// by a replica, to be decided where its session's journal is not (a fresh
// budget on every replica), is refused without the peer token; with the
// token a request is decided where it lands and never forwarded again. An
// owner that is down fails the session's requests closed.
func TestReplicaForwardingAttacks(t *testing.T) {
	rs := startReplicas(t, session.Limits{MaxCalls: 1})
	client := &http.Client{Transport: &http.Transport{Proxy: nil}}
	defer client.CloseIdleConnections()
	ring, _ := session.NewRing(rs.addrs)
	sid, other := "victim", -1
	owner := ring.Owner(sid)
	for k, a := range rs.addrs {
		if a != owner {
			other = k
			break
		}
	}
	for name, hdr := range map[string]map[string]string{
		"no token":    {hdrSession: sid, HeaderForwardedBy: rs.addrs[other]},
		"wrong token": {hdrSession: sid, HeaderForwardedBy: rs.addrs[other], HeaderPeerToken: strings.Repeat("x", 24)},
	} {
		if resp, body := rs.get(client, other, hdr); resp.StatusCode != 403 || !strings.Contains(body, codePeerUnauthorized) {
			t.Fatalf("%s: %d %s", name, resp.StatusCode, body)
		}
	}
	// Through a non-owner: forwarded, decided by the owner.
	if resp, _ := rs.get(client, other, map[string]string{hdrSession: sid}); resp.StatusCode != 200 || resp.Header.Get(HeaderReceiptID) == "" {
		t.Fatalf("forwarded call: %d", resp.StatusCode)
	}
	if resp, _ := rs.get(client, other, map[string]string{hdrSession: sid}); resp.StatusCode != 403 {
		t.Fatalf("second call through a non-owner: %d; max_calls 1", resp.StatusCode)
	}
	// With the peer token (a replica's own forward), decided where it lands.
	resp, _ := rs.get(client, other, map[string]string{hdrSession: "elsewhere", HeaderForwardedBy: owner, HeaderPeerToken: rs.token})
	if resp.StatusCode != 200 {
		t.Fatalf("peer-forwarded request: %d", resp.StatusCode)
	}
	rs.servers[other].Sessions().Flush(context.Background())
	if _, ok, _ := rs.servers[other].Sessions().Head("elsewhere"); !ok {
		t.Fatal("a peer-forwarded request was not decided where it landed")
	}
	// The owner goes down: its sessions are refused, not decided elsewhere.
	for k, a := range rs.addrs {
		if a == owner {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			rs.servers[k].Close(ctx)
			cancel()
		}
	}
	resp, body := rs.get(client, other, map[string]string{hdrSession: sid})
	if resp.StatusCode != http.StatusBadGateway || !strings.Contains(body, codeOwnerUnavailable) {
		t.Fatalf("owner down: %d %s", resp.StatusCode, body)
	}
}

// TestReplicaRedirect: in redirect mode a replica that does not own a
// session answers 307 to its owner and decides nothing; a client that
// follows it is decided by the owner, and the limit holds.
func TestReplicaRedirect(t *testing.T) {
	rs := startReplicas(t, session.Limits{MaxCalls: 2}, true)
	ring, _ := session.NewRing(rs.addrs)
	sid := "redirected"
	other := 0
	if rs.addrs[0] == ring.Owner(sid) {
		other = 1
	}
	noFollow := &http.Client{Transport: &http.Transport{Proxy: nil}, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	defer noFollow.CloseIdleConnections()
	resp, body := rs.get(noFollow, other, map[string]string{hdrSession: sid})
	if resp.StatusCode != http.StatusTemporaryRedirect || resp.Header.Get("Location") != "http://"+ring.Owner(sid)+"/pets/1" || resp.Header.Get(HeaderReceiptID) != "" || !strings.Contains(body, codeSessionElsewhere) {
		t.Fatalf("redirect: %d %v %s", resp.StatusCode, resp.Header, body)
	}
	follow := &http.Client{Transport: &http.Transport{Proxy: nil}}
	defer follow.CloseIdleConnections()
	allowed := 0
	for range 4 {
		if resp, _ := rs.get(follow, other, map[string]string{hdrSession: sid}); resp.StatusCode == 200 {
			allowed++
		}
	}
	if allowed != 2 || rs.upstream[sid] != 2 {
		t.Fatalf("%d allowed through redirects, %d reached the API; max_calls 2", allowed, rs.upstream[sid])
	}
}
