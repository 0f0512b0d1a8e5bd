package sidecar

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync/atomic"
	"time"

	"github.com/backbay-labs/chio-agent/kernel"
	"github.com/backbay-labs/chio-agent/kernel/session"
)

// Headers between replicas. A replica that forwards a request to the
// session's owner names itself and proves it is a peer; the owner decides
// the request itself and never forwards it again (one hop, no loop).
const (
	HeaderForwardedBy = "Chio-Forwarded-By"
	HeaderPeerToken   = "Chio-Peer-Token"
)

const (
	codeOwnerUnavailable = "chio_session_owner_unavailable"
	codePeerUnauthorized = "chio_peer_unauthorized"
	codeSessionElsewhere = "chio_session_elsewhere"
	codeNoPeers          = "chio_session_peers_unknown"
)

// replicas routes session-aware requests to the replica owning their
// session (session.Ring over sessions.peers, or over what
// sessions.peers_dns resolves to). Nil with one replica.
type replicas struct {
	// ring is swapped whole when peers_dns resolves to other peers; nil
	// until its first good resolution.
	ring      atomic.Pointer[session.Ring]
	dns       *dnsPeers // nil for a static list
	self      string
	token     string
	tokenHash [sha256.Size]byte
	proxy     *httputil.ReverseProxy
	// client asks peers for sessions and probes them.
	client *http.Client
	health *peerHealth
	locks  sessionLocks
}

type ownerKey struct{}

func (s *Server) newReplicas() (*replicas, error) {
	set := s.set.Sessions
	if len(set.Peers) == 0 && set.PeersDNS == "" {
		return nil, nil
	}
	rp := &replicas{self: set.Self, token: set.PeerToken, tokenHash: sha256.Sum256([]byte(set.PeerToken)), health: &peerHealth{log: s.log}}
	if set.PeersDNS != "" {
		host, port, err := net.SplitHostPort(set.PeersDNS)
		if err != nil {
			return nil, fmt.Errorf("session peers: %q is not name:port", set.PeersDNS)
		}
		res := s.opts.Resolver
		if res == nil && set.PeersResolver != "" {
			res = dnsServerResolver(set.PeersResolver)
		}
		if res == nil {
			res = net.DefaultResolver
		}
		rp.dns = &dnsPeers{host: host, port: port, self: set.Self, resolver: res, log: s.log, ring: &rp.ring}
		// A first failure is not fatal: the name may not list this pod
		// yet. Session requests are refused until a ring forms.
		rp.dns.refresh(context.Background())
	} else {
		ring, err := session.NewRing(set.Peers)
		if err != nil {
			return nil, err
		}
		rp.ring.Store(ring)
	}
	token := set.PeerToken
	t := s.set.Timeouts
	dialer := &net.Dialer{Timeout: t.Dial, KeepAlive: 30 * time.Second}
	rp.client = &http.Client{Transport: &http.Transport{Proxy: nil, DialContext: dialer.DialContext, MaxIdleConnsPerHost: 16, IdleConnTimeout: 90 * time.Second}}
	rp.proxy = &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			owner, _ := pr.In.Context().Value(ownerKey{}).(string)
			pr.SetURL(&url.URL{Scheme: "http", Host: owner})
			pr.Out.Host = pr.In.Host
			pr.SetXForwarded()
			pr.Out.Header.Set(HeaderForwardedBy, rp.self)
			pr.Out.Header.Set(HeaderPeerToken, token)
		},
		Transport: &http.Transport{DialContext: dialer.DialContext, MaxIdleConnsPerHost: 64, IdleConnTimeout: 90 * time.Second,
			ResponseHeaderTimeout: t.UpstreamHeader},
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			owner, _ := r.Context().Value(ownerKey{}).(string)
			s.log.WithError(err).WithField("owner", owner).Warn("session owner did not answer")
			if r.Context().Err() == nil {
				rp.health.markDown(owner, err)
			}
			writeJSON(w, http.StatusBadGateway, errorBody{Error: codeOwnerUnavailable,
				Message: fmt.Sprintf("the replica owning this session (%s) did not answer; the request is refused rather than decided here, where the session's journal is not", owner)})
		},
		ErrorLog:   newStdLogger(s.log),
		BufferPool: &copyBuffers,
	}
	return rp, nil
}

// status reports the ring in force and, with peers_dns, its failed
// refreshes. Nothing with one replica.
func (rp *replicas) status(st *SessionsStatus) {
	if rp == nil {
		return
	}
	if r := rp.ring.Load(); r != nil {
		st.Peers = r.Peers()
		for _, p := range st.Peers {
			if p != rp.self && !rp.health.up(p) {
				st.PeersDown = append(st.PeersDown, p)
			}
		}
	}
	if rp.dns != nil {
		st.PeersDNS = net.JoinHostPort(rp.dns.host, rp.dns.port)
		st.PeerRefreshFailures = rp.dns.failures.Load()
	}
}

// route forwards a request whose session another replica owns, and
// checks a request another replica forwarded. It returns true when it
// answered the request.
func (s *Server) route(w http.ResponseWriter, r *http.Request) bool {
	rp := s.replicas
	if by := r.Header.Values(HeaderForwardedBy); len(by) > 0 {
		if len(by) != 1 || !rp.peerAuthorized(r) {
			s.log.WithField(logFieldReason, "forwarded request without a valid peer token").Warn("request refused")
			writeJSON(w, http.StatusForbidden, errorBody{Error: codePeerUnauthorized, Message: "a request marked as forwarded by a replica must carry the replicas' peer token"})
			return true
		}
		// Decided here, whoever owns it: forwarding again could loop
		// while replicas disagree on the peers.
		r.Header.Del(HeaderForwardedBy)
		r.Header.Del(HeaderPeerToken)
		if id := s.routingSession(r); id != "" {
			return s.takeSession(w, r, id)
		}
		return false
	}
	id := s.routingSession(r)
	if id == "" {
		return false
	}
	ring := rp.ring.Load()
	if ring == nil {
		writeJSON(w, http.StatusServiceUnavailable, errorBody{Error: codeNoPeers,
			Message: "this replica does not know its peers yet (" + s.set.Sessions.PeersDNS + " has not resolved to a set including it); the request is refused rather than decided where its session's journal may not be"})
		return true
	}
	owner := ring.OwnerAmong(id, func(p string) bool { return p == rp.self || rp.health.up(p) })
	if owner == rp.self {
		return s.takeSession(w, r, id)
	}
	if s.set.Sessions.Redirect {
		// The client goes to the owner itself; nothing is decided here.
		loc := (&url.URL{Scheme: "http", Host: owner, Path: r.URL.Path, RawPath: r.URL.RawPath, RawQuery: r.URL.RawQuery}).String()
		w.Header().Set("Location", loc)
		writeJSON(w, http.StatusTemporaryRedirect, errorBody{Error: codeSessionElsewhere, Message: "session " + id + " is decided by the replica at " + owner})
		return true
	}
	rp.proxy.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), ownerKey{}, owner)))
	return true
}

// routingSession is the session a request names, for routing only: the
// owner verifies the token and decides. "" when none is named (or the
// name is malformed: the local decision refuses it).
func (s *Server) routingSession(r *http.Request) string {
	if len(s.set.TrustedIssuerKeys) > 0 {
		if c, err := parseCapabilityHeader(strings.Join(r.Header.Values(HeaderCapability), ",")); err == nil {
			if id, ok := c.SessionClaim(); ok && session.ValidID(id) {
				return id
			}
		}
		return ""
	}
	id, problem := sessionFromHeader(s.set.Sessions.Header, r.Header.Values(s.set.Sessions.Header))
	if problem != "" {
		return ""
	}
	return id
}

// parseCapabilityHeader parses a capability header (JSON, or base64 of
// it) without verifying it; the error is a problem in words.
func parseCapabilityHeader(header string) (*kernel.Capability, error) {
	header = strings.TrimSpace(header)
	if header == "" {
		return nil, errors.New("no capability token: send one in the " + HeaderCapability + " header")
	}
	if len(header) > maxCapabilityBytes {
		return nil, fmt.Errorf("capability token larger than %d bytes", maxCapabilityBytes)
	}
	data := []byte(header)
	if !strings.HasPrefix(header, "{") {
		var err error
		if data, err = decodeBase64(header); err != nil {
			return nil, errors.New("capability token is neither JSON nor base64 of JSON")
		}
	}
	c, err := kernel.ParseCapability(data)
	if err != nil {
		return nil, errors.New("malformed capability token: " + err.Error())
	}
	return c, nil
}
