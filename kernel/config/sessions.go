package config

import (
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/net/http/httpguts"

	"github.com/backbay-labs/chio-agent/kernel/session"
)

// The sessions part of the CHIO_* contract (docs/sessions.md).
const (
	EnvSessionHeader           = "CHIO_SESSION_HEADER"
	EnvSessionJournal          = "CHIO_SESSION_JOURNAL"
	EnvSessionMaxCalls         = "CHIO_SESSION_MAX_CALLS"
	EnvSessionMaxCallsPerTool  = "CHIO_SESSION_MAX_CALLS_PER_TOOL"
	EnvSessionMaxRequestBytes  = "CHIO_SESSION_MAX_REQUEST_BYTES"
	EnvSessionMaxResponseBytes = "CHIO_SESSION_MAX_RESPONSE_BYTES"
	EnvSessionIdleExpiry       = "CHIO_SESSION_IDLE_EXPIRY"
	EnvSessionPeers            = "CHIO_SESSION_PEERS"
	EnvSessionSelf             = "CHIO_SESSION_SELF"
	EnvSessionPeerToken        = "CHIO_SESSION_PEER_TOKEN"
	EnvSessionRedirect         = "CHIO_SESSION_REDIRECT"
	EnvSessionPeersDNS         = "CHIO_SESSION_PEERS_DNS"
	EnvSessionPeersRefresh     = "CHIO_SESSION_PEERS_REFRESH"
	EnvSessionPeersResolver    = "CHIO_SESSION_PEERS_RESOLVER"
	EnvSessionPeerProbe        = "CHIO_SESSION_PEER_PROBE"
	EnvSessionTakeover         = "CHIO_SESSION_TAKEOVER"
	EnvSessionDrainTimeout     = "CHIO_SESSION_DRAIN_TIMEOUT"
)

// DefaultPeerProbe is how often a replica probes each peer's liveness.
const DefaultPeerProbe = time.Second

// Takeover policies: what a replica does with a session whose previous
// holder cannot be reached (docs/sessions.md).
const (
	TakeoverRefuse   = "refuse"
	TakeoverUnlinked = "unlinked"
)

// DefaultDrainTimeout bounds a stopping replica's handing its sessions to
// the replicas that remain: with the 10s the sidecar then gives requests
// in flight, it stays under Kubernetes' default 30s grace period.
const DefaultDrainTimeout = 15 * time.Second

// DefaultPeersRefresh is how often a peers_dns name is re-resolved.
const DefaultPeersRefresh = 10 * time.Second

// SessionEnv lists the sessions variables; SidecarEnv ends with them.
var SessionEnv = []string{
	EnvSessionHeader, EnvSessionJournal, EnvSessionMaxCalls, EnvSessionMaxCallsPerTool,
	EnvSessionMaxRequestBytes, EnvSessionMaxResponseBytes, EnvSessionIdleExpiry,
	EnvSessionPeers, EnvSessionSelf, EnvSessionPeerToken, EnvSessionRedirect,
	EnvSessionPeersDNS, EnvSessionPeersRefresh, EnvSessionPeersResolver, EnvSessionPeerProbe, EnvSessionTakeover,
	EnvSessionDrainTimeout,
}

// DefaultSessionHeader names a request's session when no capability token
// does.
const DefaultSessionHeader = "Chio-Session-Id"

// Sessions configures session journals and their limits (kernel.yaml
// `sessions:`). Every limit is per session and 0 means unlimited.
type Sessions struct {
	// Header is the request header naming a request's session when no
	// capability token is in use. Default Chio-Session-Id. Env:
	// CHIO_SESSION_HEADER.
	Header string `yaml:"header"`
	// Journal is the session journal's bbolt file (a path or file://).
	// Default: beside the receipt log (chio-receipts.db →
	// chio-receipts.sessions.db). Env: CHIO_SESSION_JOURNAL.
	Journal string `yaml:"journal"`
	// MaxCalls bounds a session's allowed calls. Env:
	// CHIO_SESSION_MAX_CALLS.
	MaxCalls int64 `yaml:"max_calls"`
	// MaxCallsPerTool bounds a session's allowed calls of one tool. Env:
	// CHIO_SESSION_MAX_CALLS_PER_TOOL.
	MaxCallsPerTool int64 `yaml:"max_calls_per_tool"`
	// MaxRequestBytes bounds a session's request body bytes. Env:
	// CHIO_SESSION_MAX_REQUEST_BYTES.
	MaxRequestBytes int64 `yaml:"max_request_bytes"`
	// MaxResponseBytes bounds a session's response body bytes; the call
	// that crosses it completes, the next is denied. Env:
	// CHIO_SESSION_MAX_RESPONSE_BYTES.
	MaxResponseBytes int64 `yaml:"max_response_bytes"`
	// IdleExpiry ends a session after this long without a call (at least
	// 1s); the next call naming it starts afresh. Default: never. Env:
	// CHIO_SESSION_IDLE_EXPIRY.
	IdleExpiry Duration `yaml:"idle_expiry"`
	// Peers are the sidecar replicas (host:port each, this one included)
	// among which each session is owned by one, by rendezvous hashing of
	// its id; a replica forwards a session's requests to its owner. Empty:
	// one replica. Env: CHIO_SESSION_PEERS (comma-separated).
	Peers []string `yaml:"peers"`
	// PeersDNS is a name:port whose A/AAAA addresses (each with port)
	// are the replicas, re-resolved every PeersRefresh: a Kubernetes
	// headless Service. Exclusive with Peers. Env: CHIO_SESSION_PEERS_DNS.
	PeersDNS string `yaml:"peers_dns"`
	// PeersRefresh is how often PeersDNS is re-resolved (at least 1s).
	// Default 10s. Env: CHIO_SESSION_PEERS_REFRESH.
	PeersRefresh Duration `yaml:"peers_refresh"`
	// PeersResolver is the DNS server (ip:port) PeersDNS is resolved
	// through; default the system's resolver. Env:
	// CHIO_SESSION_PEERS_RESOLVER.
	PeersResolver string `yaml:"peers_resolver"`
	// PeerProbe is how often each peer's liveness is probed (at least
	// 100ms); a peer that fails a probe or a forward is down until a
	// probe answers. Default 1s. Env: CHIO_SESSION_PEER_PROBE.
	PeerProbe Duration `yaml:"peer_probe"`
	// Takeover is what a replica does with a session whose previous
	// holder cannot be reached: "refuse" (default) or "unlinked". Env:
	// CHIO_SESSION_TAKEOVER.
	Takeover string `yaml:"takeover"`
	// DrainTimeout bounds how long a replica stopping (SIGTERM) hands the
	// sessions it holds to their next owners before it exits; what is
	// left stays in its journal. 0: no hand-over on stop. Default 15s.
	// Env: CHIO_SESSION_DRAIN_TIMEOUT.
	DrainTimeout *Duration `yaml:"drain_timeout"`
	// Self is this replica's entry in Peers (with PeersDNS: its own
	// address:port as the name resolves to it). Env: CHIO_SESSION_SELF.
	Self string `yaml:"self"`
	// Redirect answers a request for a session another replica owns with
	// a 307 to that replica (peers must then be addresses clients reach)
	// instead of forwarding it. Default false. Env: CHIO_SESSION_REDIRECT.
	Redirect bool `yaml:"redirect"`
}

func (s *Sessions) validate() error {
	if s.Header != "" {
		if err := checkSessionHeader(s.Header); err != nil {
			return fmt.Errorf("sessions.header: %w", err)
		}
	}
	for _, f := range []struct {
		key string
		v   int64
	}{{"max_calls", s.MaxCalls}, {"max_calls_per_tool", s.MaxCallsPerTool}, {"max_request_bytes", s.MaxRequestBytes}, {"max_response_bytes", s.MaxResponseBytes}} {
		if f.v < 0 {
			return fmt.Errorf("sessions.%s: must not be negative", f.key)
		}
	}
	for i, p := range s.Peers {
		if _, _, err := net.SplitHostPort(p); err != nil {
			return fmt.Errorf("sessions.peers[%d]: %q is not host:port", i, p)
		}
	}
	if s.PeersDNS != "" {
		if len(s.Peers) > 0 {
			return fmt.Errorf("sessions.peers_dns: set with sessions.peers; give one of them")
		}
		if err := checkPeersDNS(s.PeersDNS); err != nil {
			return fmt.Errorf("sessions.peers_dns: %w", err)
		}
	}
	if s.PeersRefresh != 0 && time.Duration(s.PeersRefresh) < time.Second {
		return fmt.Errorf("sessions.peers_refresh: %s is below 1s", time.Duration(s.PeersRefresh))
	}
	if s.PeerProbe != 0 && time.Duration(s.PeerProbe) < 100*time.Millisecond {
		return fmt.Errorf("sessions.peer_probe: %s is below 100ms", time.Duration(s.PeerProbe))
	}
	if s.Takeover != "" && s.Takeover != TakeoverRefuse && s.Takeover != TakeoverUnlinked {
		return fmt.Errorf("sessions.takeover: %q is neither %q nor %q", s.Takeover, TakeoverRefuse, TakeoverUnlinked)
	}
	if s.DrainTimeout != nil && *s.DrainTimeout < 0 {
		return fmt.Errorf("sessions.drain_timeout: %s is negative", time.Duration(*s.DrainTimeout))
	}
	if s.PeersResolver != "" {
		if ap, err := netip.ParseAddrPort(s.PeersResolver); err != nil || ap.Port() == 0 {
			return fmt.Errorf("sessions.peers_resolver: %q is not ip:port", s.PeersResolver)
		}
	}
	if s.IdleExpiry != 0 && time.Duration(s.IdleExpiry) < time.Second {
		return fmt.Errorf("sessions.idle_expiry: %s is below 1s", time.Duration(s.IdleExpiry))
	}
	return nil
}

// checkPeersDNS refuses a peers_dns that is not name:port.
func checkPeersDNS(v string) error {
	host, port, err := net.SplitHostPort(v)
	if err != nil || host == "" {
		return fmt.Errorf("%q is not name:port", v)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return fmt.Errorf("%q: port %q is not 1-65535", v, port)
	}
	return nil
}

// checkSessionHeader refuses a header name that is not a token, or one the
// sidecar reads or writes for another purpose.
func checkSessionHeader(h string) error {
	if !httpguts.ValidHeaderFieldName(h) {
		return fmt.Errorf("%q is not an HTTP header name", h)
	}
	switch http.CanonicalHeaderKey(h) {
	case "X-Chio-Capability", "X-Chio-Receipt-Id", "Authorization", "Host", "Content-Length", "Transfer-Encoding":
		return fmt.Errorf("%q is a header with another meaning", h)
	}
	return nil
}

// ResolvedSessions are the sessions settings merged from the environment
// and kernel.yaml, checked.
type ResolvedSessions struct {
	// Header names a request's session (canonical form).
	Header string
	// JournalPath is the journal's bbolt file.
	JournalPath string
	// Limits bound every session.
	Limits session.Limits
	// Peers are the replicas sessions are spread over (host:port); nil
	// for one replica (or with PeersDNS). Self is this one.
	Peers []string
	Self  string
	// PeersDNS (name:port) resolves to the replicas every PeersRefresh;
	// exclusive with Peers.
	PeersDNS     string
	PeersRefresh time.Duration
	// PeersResolver (ip:port) resolves PeersDNS; "" the system's.
	PeersResolver string
	// PeerProbe is the liveness probe interval; Takeover the policy for
	// a session whose previous holder cannot be reached.
	PeerProbe time.Duration
	Takeover  string
	// DrainTimeout bounds the hand-over of this replica's sessions when
	// it stops; 0: none.
	DrainTimeout time.Duration
	// PeerToken authenticates forwarded requests between replicas
	// (secret; at least MinControlTokenBytes).
	PeerToken string
	// Redirect answers with a redirect to the owner instead of forwarding.
	Redirect bool
}

// ResolveSessions merges the CHIO_SESSION_* variables over kernel.yaml's
// sessions: section; receiptPath places the journal by default.
func ResolveSessions(lookup func(string) (string, bool), s Sessions, receiptPath string) (ResolvedSessions, error) {
	var r ResolvedSessions
	r.Header = http.CanonicalHeaderKey(Pick(lookup, "", EnvSessionHeader, s.Header, DefaultSessionHeader))
	if err := checkSessionHeader(r.Header); err != nil {
		return r, fmt.Errorf("%s: %w", EnvSessionHeader, err)
	}
	journal := Pick(lookup, "", EnvSessionJournal, s.Journal, "")
	if journal == "" {
		r.JournalPath = session.DefaultPath(receiptPath)
	} else {
		p, err := localPath("session journal", journal)
		if err != nil {
			return r, err
		}
		r.JournalPath = p
	}
	if r.JournalPath == receiptPath {
		return r, fmt.Errorf("session journal %s is the receipt log: give it a file of its own", r.JournalPath)
	}
	var err error
	num := func(env string, file int64) int64 {
		v := Env(lookup, env)
		if v == "" || err != nil {
			return file
		}
		n, perr := strconv.ParseInt(v, 10, 64)
		if perr != nil || n < 0 {
			err = fmt.Errorf("%s: %q is not a non-negative integer", env, v)
		}
		return n
	}
	r.Limits = session.Limits{
		MaxCalls:         num(EnvSessionMaxCalls, s.MaxCalls),
		MaxCallsPerTool:  num(EnvSessionMaxCallsPerTool, s.MaxCallsPerTool),
		MaxRequestBytes:  num(EnvSessionMaxRequestBytes, s.MaxRequestBytes),
		MaxResponseBytes: num(EnvSessionMaxResponseBytes, s.MaxResponseBytes),
		IdleExpiry:       time.Duration(s.IdleExpiry),
	}
	if err != nil {
		return r, err
	}
	r.Peers = s.Peers
	if v := Env(lookup, EnvSessionPeers); v != "" {
		r.Peers = nil
		for _, p := range strings.Split(v, ",") {
			if p = strings.TrimSpace(p); p != "" {
				r.Peers = append(r.Peers, p)
			}
		}
	}
	r.Self = Pick(lookup, "", EnvSessionSelf, s.Self, "")
	r.Redirect = s.Redirect
	if v := Env(lookup, EnvSessionRedirect); v != "" {
		b, err := strconv.ParseBool(v)
		if err != nil {
			return r, fmt.Errorf("%s: %q is neither true nor false", EnvSessionRedirect, v)
		}
		r.Redirect = b
	}
	r.PeersDNS = Pick(lookup, "", EnvSessionPeersDNS, s.PeersDNS, "")
	r.PeersRefresh = time.Duration(s.PeersRefresh)
	if v := Env(lookup, EnvSessionPeersRefresh); v != "" {
		d, perr := time.ParseDuration(v)
		if perr != nil || d < time.Second {
			return r, fmt.Errorf("%s: %q is not a duration of at least 1s", EnvSessionPeersRefresh, v)
		}
		r.PeersRefresh = d
	}
	if r.PeersRefresh == 0 {
		r.PeersRefresh = DefaultPeersRefresh
	}
	r.PeersResolver = Pick(lookup, "", EnvSessionPeersResolver, s.PeersResolver, "")
	if r.PeersResolver != "" {
		if ap, perr := netip.ParseAddrPort(r.PeersResolver); perr != nil || ap.Port() == 0 {
			return r, fmt.Errorf("%s: %q is not ip:port (the DNS server resolving %s)", EnvSessionPeersResolver, r.PeersResolver, EnvSessionPeersDNS)
		}
	}
	r.PeerProbe = time.Duration(s.PeerProbe)
	if v := Env(lookup, EnvSessionPeerProbe); v != "" {
		d, perr := time.ParseDuration(v)
		if perr != nil || d < 100*time.Millisecond {
			return r, fmt.Errorf("%s: %q is not a duration of at least 100ms", EnvSessionPeerProbe, v)
		}
		r.PeerProbe = d
	}
	if r.PeerProbe == 0 {
		r.PeerProbe = DefaultPeerProbe
	}
	r.Takeover = Pick(lookup, "", EnvSessionTakeover, s.Takeover, TakeoverRefuse)
	if r.Takeover != TakeoverRefuse && r.Takeover != TakeoverUnlinked {
		return r, fmt.Errorf("%s: %q is neither %q nor %q", EnvSessionTakeover, r.Takeover, TakeoverRefuse, TakeoverUnlinked)
	}
	r.DrainTimeout = DefaultDrainTimeout
	if s.DrainTimeout != nil {
		r.DrainTimeout = time.Duration(*s.DrainTimeout)
	}
	if v := Env(lookup, EnvSessionDrainTimeout); v != "" {
		d, perr := time.ParseDuration(v)
		if perr != nil || d < 0 {
			return r, fmt.Errorf("%s: %q is not a duration (0 or more; 0: no hand-over on stop)", EnvSessionDrainTimeout, v)
		}
		r.DrainTimeout = d
	}
	if r.PeersDNS != "" {
		if len(r.Peers) > 0 {
			return r, fmt.Errorf("%s and %s are both set: give the replicas one way", EnvSessionPeers, EnvSessionPeersDNS)
		}
		if err := checkPeersDNS(r.PeersDNS); err != nil {
			return r, fmt.Errorf("%s: %w", EnvSessionPeersDNS, err)
		}
		if _, _, err := net.SplitHostPort(r.Self); err != nil {
			return r, fmt.Errorf("%s %q is not host:port: with %s it names this replica's own address (a pod's IP and port)", EnvSessionSelf, r.Self, EnvSessionPeersDNS)
		}
	}
	if len(r.Peers) > 0 || r.PeersDNS != "" {
		for _, p := range r.Peers {
			if _, _, err := net.SplitHostPort(p); err != nil {
				return r, fmt.Errorf("%s: %q is not host:port", EnvSessionPeers, p)
			}
		}
		if r.PeersDNS == "" && !slices.Contains(r.Peers, r.Self) {
			return r, fmt.Errorf("%s %q is not one of the peers %v", EnvSessionSelf, r.Self, r.Peers)
		}
		// The token is a secret, from the environment only, taken as set.
		r.PeerToken, _ = lookup(EnvSessionPeerToken)
		if len(r.PeerToken) < MinControlTokenBytes {
			return r, fmt.Errorf("%s must hold at least %d bytes when peers are set: replicas accept forwarded requests only with it", EnvSessionPeerToken, MinControlTokenBytes)
		}
	}
	if v := Env(lookup, EnvSessionIdleExpiry); v != "" {
		d, perr := time.ParseDuration(v)
		if perr != nil || (d != 0 && d < time.Second) || d < 0 {
			return r, fmt.Errorf("%s: %q is not a duration of at least 1s (or 0)", EnvSessionIdleExpiry, v)
		}
		r.Limits.IdleExpiry = d
	}
	return r, nil
}
