package config

import (
	"strings"
	"testing"
	"time"
)

func TestParseSessionsRejects(t *testing.T) {
	parseRejects(t, []parseReject{
		{"unknown key", "sessions: {max_call: 3}\n", `unknown key "max_call"`},
		{"negative", "sessions: {max_calls: -1}\n", "sessions.max_calls: must not be negative"},
		{"short expiry", "sessions: {idle_expiry: 10ms}\n", "sessions.idle_expiry"},
		{"bad header", "sessions: {header: 'a b'}\n", "sessions.header"},
		{"capability header", "sessions: {header: x-chio-capability}\n", "another meaning"},
	})
}

// TestResolveSessions: the variables override kernel.yaml, the journal sits
// beside the receipt log by default, and bad values stop the start.
func TestResolveSessions(t *testing.T) {
	c, err := Parse([]byte("sessions: {header: X-Agent-Session, max_calls: 5, max_calls_per_tool: 2, max_response_bytes: 100, idle_expiry: 30m}\n"), env(nil))
	if err != nil {
		t.Fatal(err)
	}
	r, err := ResolveSessions(env(map[string]string{EnvSessionMaxCalls: "7", EnvSessionMaxRequestBytes: "4096"}), c.Sessions, "/var/lib/chio/receipts.db")
	if err != nil {
		t.Fatal(err)
	}
	l := r.Limits
	if r.Header != "X-Agent-Session" || r.JournalPath != "/var/lib/chio/receipts.sessions.db" ||
		l.MaxCalls != 7 || l.MaxCallsPerTool != 2 || l.MaxRequestBytes != 4096 || l.MaxResponseBytes != 100 || l.IdleExpiry != 30*time.Minute {
		t.Fatalf("resolved %+v", r)
	}
	r, err = ResolveSessions(env(map[string]string{EnvSessionHeader: "x-my-session", EnvSessionJournal: "file:///tmp/j.db", EnvSessionIdleExpiry: "1h"}), Sessions{}, "r.db")
	if err != nil || r.Header != "X-My-Session" || r.JournalPath != "/tmp/j.db" || r.Limits.IdleExpiry != time.Hour {
		t.Fatalf("resolved %+v, %v", r, err)
	}
	if r, _ := ResolveSessions(env(nil), Sessions{}, "r.db"); r.Header != DefaultSessionHeader || r.JournalPath != "r.sessions.db" || r.Limits.MaxCalls != 0 {
		t.Fatalf("defaults %+v", r)
	}
	for _, tc := range []struct {
		env  map[string]string
		want string
	}{
		{map[string]string{EnvSessionMaxCalls: "-3"}, EnvSessionMaxCalls},
		{map[string]string{EnvSessionMaxResponseBytes: "lots"}, EnvSessionMaxResponseBytes},
		{map[string]string{EnvSessionIdleExpiry: "5ms"}, EnvSessionIdleExpiry},
		{map[string]string{EnvSessionHeader: "X-Chio-Receipt-Id"}, "another meaning"},
		{map[string]string{EnvSessionJournal: "s3://b/j"}, "unsupported scheme"},
		{map[string]string{EnvSessionJournal: "r.db"}, "is the receipt log"},
	} {
		if _, err := ResolveSessions(env(tc.env), Sessions{}, "r.db"); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: err %v, want %q", tc.env, err, tc.want)
		}
	}
}

// TestResolveSessionPeersDNS: a DNS name for the replicas, exclusive
// with the static list; self is this replica's own address.
func TestResolveSessionPeersDNS(t *testing.T) {
	tok := strings.Repeat("p", 16)
	r, err := ResolveSessions(env(map[string]string{EnvSessionPeersDNS: "chio-peers.ns.svc.cluster.local:8080", EnvSessionSelf: "10.1.2.3:8080", EnvSessionPeerToken: tok}), Sessions{}, "r.db")
	if err != nil || r.PeersDNS != "chio-peers.ns.svc.cluster.local:8080" || r.Peers != nil || r.PeersRefresh != DefaultPeersRefresh || r.PeerToken != tok {
		t.Fatalf("resolved %+v, %v", r, err)
	}
	r, err = ResolveSessions(env(map[string]string{EnvSessionPeersRefresh: "3s", EnvSessionSelf: "10.1.2.3:8080", EnvSessionPeerToken: tok}), Sessions{PeersDNS: "p:1"}, "r.db")
	if err != nil || r.PeersDNS != "p:1" || r.PeersRefresh != 3*time.Second {
		t.Fatalf("resolved %+v, %v", r, err)
	}
	for _, s := range []Sessions{{PeersDNS: "p:1", Peers: []string{"a:1"}}, {PeersDNS: "p"}, {PeersDNS: "p:1", PeersRefresh: Duration(time.Millisecond)}} {
		if err := s.validate(); err == nil {
			t.Errorf("%+v accepted", s)
		}
	}
}

func TestResolveSessionPeers(t *testing.T) {
	tok := strings.Repeat("p", 16)
	r, err := ResolveSessions(env(map[string]string{EnvSessionPeers: "a:1, b:2,c:3", EnvSessionSelf: "b:2", EnvSessionPeerToken: tok, EnvSessionRedirect: "true"}), Sessions{}, "r.db")
	if err != nil || len(r.Peers) != 3 || r.Peers[1] != "b:2" || r.Self != "b:2" || r.PeerToken != tok || !r.Redirect {
		t.Fatalf("resolved %+v, %v", r, err)
	}
	for _, e := range []map[string]string{
		{EnvSessionPeers: "a:1,b:2", EnvSessionSelf: "c:3", EnvSessionPeerToken: tok},
		{EnvSessionPeers: "a:1,b:2", EnvSessionSelf: "a:1", EnvSessionPeerToken: "short"},
		{EnvSessionPeers: "a:1,nope", EnvSessionSelf: "a:1", EnvSessionPeerToken: tok},
		{EnvSessionPeers: "a:1", EnvSessionSelf: "a:1", EnvSessionPeerToken: tok, EnvSessionRedirect: "sometimes"},
		{EnvSessionPeers: "a:1", EnvSessionPeersDNS: "peers.svc:8080", EnvSessionSelf: "a:1", EnvSessionPeerToken: tok},
		{EnvSessionPeersDNS: "peers.svc", EnvSessionSelf: "10.0.0.1:8080", EnvSessionPeerToken: tok},
		{EnvSessionPeersDNS: "peers.svc:0", EnvSessionSelf: "10.0.0.1:8080", EnvSessionPeerToken: tok},
		{EnvSessionPeersDNS: "peers.svc:8080", EnvSessionPeerToken: tok},
		{EnvSessionPeersDNS: "peers.svc:8080", EnvSessionSelf: "fd00::1:8080", EnvSessionPeerToken: tok},
		{EnvSessionPeersDNS: "peers.svc:8080", EnvSessionSelf: "10.0.0.1:8080", EnvSessionPeerToken: "short"},
		{EnvSessionPeersDNS: "peers.svc:8080", EnvSessionSelf: "10.0.0.1:8080", EnvSessionPeerToken: tok, EnvSessionPeersRefresh: "10ms"},
	} {
		if _, err := ResolveSessions(env(e), Sessions{}, "r.db"); err == nil {
			t.Errorf("%v accepted", e)
		}
	}
}

// TestResolveSessionDrainTimeout: 15s by default, kernel.yaml's
// drain_timeout under the variable, 0 turns the hand-over on stop off,
// and a negative or malformed value stops the start.
func TestResolveSessionDrainTimeout(t *testing.T) {
	c, err := Parse([]byte("sessions: {drain_timeout: 25s}\n"), env(nil))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		yaml Sessions
		env  map[string]string
		want time.Duration
	}{
		{Sessions{}, nil, DefaultDrainTimeout},
		{c.Sessions, nil, 25 * time.Second},
		{c.Sessions, map[string]string{EnvSessionDrainTimeout: "5s"}, 5 * time.Second},
		{Sessions{}, map[string]string{EnvSessionDrainTimeout: "0"}, 0},
	} {
		r, err := ResolveSessions(env(tc.env), tc.yaml, "r.db")
		if err != nil || r.DrainTimeout != tc.want {
			t.Errorf("%v %v: drain timeout %s, %v; want %s", tc.yaml, tc.env, r.DrainTimeout, err, tc.want)
		}
	}
	for _, v := range []string{"-1s", "soon"} {
		if _, err := ResolveSessions(env(map[string]string{EnvSessionDrainTimeout: v}), Sessions{}, "r.db"); err == nil || !strings.Contains(err.Error(), EnvSessionDrainTimeout) {
			t.Errorf("%s: err %v", v, err)
		}
	}
	if _, err := Parse([]byte("sessions: {drain_timeout: -2s}\n"), env(nil)); err == nil || !strings.Contains(err.Error(), "sessions.drain_timeout") {
		t.Errorf("a negative drain_timeout: err %v", err)
	}
}
