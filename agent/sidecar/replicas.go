package sidecar

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strings"
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
)

// replicas routes session-aware requests to the replica owning their
// session (session.Ring over sessions.peers). Nil with one replica.
type replicas struct {
	ring      *session.Ring
	self      string
	tokenHash [sha256.Size]byte
	proxy     *httputil.ReverseProxy
}

type ownerKey struct{}

func (s *Server) newReplicas() (*replicas, error) {
	set := s.set.Sessions
	if len(set.Peers) == 0 {
		return nil, nil
	}
	ring, err := session.NewRing(set.Peers)
	if err != nil {
		return nil, err
	}
	rp := &replicas{ring: ring, self: set.Self, tokenHash: sha256.Sum256([]byte(set.PeerToken))}
	token := set.PeerToken
	t := s.set.Timeouts
	dialer := &net.Dialer{Timeout: t.Dial, KeepAlive: 30 * time.Second}
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
			writeJSON(w, http.StatusBadGateway, errorBody{Error: codeOwnerUnavailable,
				Message: fmt.Sprintf("the replica owning this session (%s) did not answer; the request is refused rather than decided here, where the session's journal is not", owner)})
		},
		ErrorLog:   newStdLogger(s.log),
		BufferPool: &copyBuffers,
	}
	return rp, nil
}

// route forwards a request whose session another replica owns, and
// checks a request another replica forwarded. It returns true when it
// answered the request.
func (s *Server) route(w http.ResponseWriter, r *http.Request) bool {
	rp := s.replicas
	if by := r.Header.Values(HeaderForwardedBy); len(by) > 0 {
		tokens := r.Header.Values(HeaderPeerToken)
		got := sha256.Sum256([]byte(strings.Join(tokens, ",")))
		if len(by) != 1 || len(tokens) != 1 || subtle.ConstantTimeCompare(got[:], rp.tokenHash[:]) != 1 {
			s.log.WithField(logFieldReason, "forwarded request without a valid peer token").Warn("request refused")
			writeJSON(w, http.StatusForbidden, errorBody{Error: codePeerUnauthorized, Message: "a request marked as forwarded by a replica must carry the replicas' peer token"})
			return true
		}
		// Decided here, whoever owns it: forwarding again could loop
		// while replicas disagree on the peers.
		r.Header.Del(HeaderForwardedBy)
		r.Header.Del(HeaderPeerToken)
		return false
	}
	id := s.routingSession(r)
	if id == "" {
		return false
	}
	owner := rp.ring.Owner(id)
	if owner == rp.self {
		return false
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
