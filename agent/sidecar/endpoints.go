package sidecar

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/backbay-labs/chio-agent/kernel"
	"github.com/backbay-labs/chio-agent/kernel/config"
	"github.com/backbay-labs/chio-agent/kernel/hushspec"
	"github.com/backbay-labs/chio-agent/kernel/jcs"
	"github.com/backbay-labs/chio-agent/receipts/ship"
)

// Bounds on what the sidecar's own endpoints read.
const (
	// maxEvaluateBody bounds a POST /chio/evaluate body.
	maxEvaluateBody = 64 << 10
	// maxVerifyBody bounds a POST /chio/verify body (a receipt).
	maxVerifyBody = 1 << 20
	// maxAuthorizationBytes bounds an Authorization header that is
	// compared: longer ones are refused without hashing them.
	maxAuthorizationBytes = 1024
)

func policyToolCall(name string) hushspec.Action {
	return hushspec.Action{Type: "tool_call", Target: name}
}

// Health is the body of the readiness endpoint.
type Health struct {
	// Status is "ok" (200) or "unavailable" (503).
	Status string `json:"status"`
	// Version is the binary's version.
	Version string `json:"version"`
	// ReceiptBackend is the receipt log's storage ("bbolt").
	ReceiptBackend string `json:"receipt_backend"`
	// ReceiptMode is sync or async.
	ReceiptMode string `json:"receipt_mode"`
	// PolicyHash is the hash of the policy in force, "" when none.
	PolicyHash string `json:"policy_hash"`
	// Problems says why the sidecar is unavailable.
	Problems []string `json:"problems,omitempty"`
}

// serveHealth answers readiness: a policy is loaded and the receipt log can
// write (it has not failed, and its volume takes a synced write). Anything
// else is 503, so an orchestrator stops sending requests that would only be
// refused.
func (s *Server) serveHealth(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		methodNotAllowed(w, "GET")
		return
	}
	h := s.Health()
	status := http.StatusOK
	if h.Status != "ok" {
		status = http.StatusServiceUnavailable
	}
	writeJSON(w, status, h)
}

// Health reports readiness, as the health endpoint does.
func (s *Server) Health() Health {
	h := Health{Status: "ok", Version: s.opts.Version, ReceiptBackend: ReceiptBackend, ReceiptMode: s.set.ReceiptMode}
	if eng := s.engine.Load(); eng != nil {
		h.PolicyHash = eng.k.PolicyHash()
	} else {
		h.Problems = append(h.Problems, "no policy loaded")
	}
	if p := s.logFailed.Load(); p != nil {
		h.Problems = append(h.Problems, "receipt log failed and refuses writes until the sidecar restarts: "+(*p).Error())
	}
	if err := s.sessions.Err(); err != nil {
		h.Problems = append(h.Problems, "session journal failed and refuses session-aware requests until the sidecar restarts: "+err.Error())
	}
	if s.drain.leaving.Load() {
		h.Problems = append(h.Problems, "replica stopping: handing its sessions to the other replicas")
	}
	if err := s.probe.check(); err != nil {
		h.Problems = append(h.Problems, "receipt log cannot write: "+err.Error())
	}
	if len(h.Problems) > 0 {
		h.Status = "unavailable"
	}
	return h
}

// serveLive answers liveness: the process serves HTTP. It checks nothing
// else, so an orchestrator restarts only a sidecar that is stuck, not one
// whose disk is full.
func (s *Server) serveLive(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		methodNotAllowed(w, "GET")
		return
	}
	if s.drain.leaving.Load() {
		// Its peers see it down and stop sending it sessions (drain.go).
		w.Header().Set(HeaderReplicaState, replicaLeaving)
		writeJSON(w, http.StatusServiceUnavailable, map[string]string{"status": replicaLeaving})
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
}

// EvaluateRequest is the body of POST /chio/evaluate: a request described
// rather than sent.
type EvaluateRequest struct {
	// Method is the HTTP method. Required.
	Method string `json:"method"`
	// Path is the request path as it would be sent (percent-encoded); a
	// query string is ignored. Required.
	Path string `json:"path"`
	// Capability is the token the request would carry: a JSON object, or a
	// string holding JSON or base64 of it. Optional.
	Capability json.RawMessage `json:"capability,omitempty"`
	// ContentLength is the body size the request would have. Optional.
	ContentLength int64 `json:"content_length,omitempty"`
}

// EvaluateResponse is the answer of POST /chio/evaluate.
type EvaluateResponse struct {
	// Verdict is allow or deny.
	Verdict string `json:"verdict"`
	// ToolName is the operationId matched, or chio_unmatched_route.
	ToolName string `json:"tool_name"`
	// Route is the matched route pattern, "" when none matched.
	Route string `json:"route,omitempty"`
	// Error and Message say why a request would be refused, as the proxy
	// would say it.
	Error   string `json:"error,omitempty"`
	Message string `json:"message,omitempty"`
	// Receipt is the signed receipt, written to the log like any other.
	Receipt kernel.Receipt `json:"receipt"`
}

func (s *Server) serveEvaluate(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		methodNotAllowed(w, "POST")
		return
	}
	var req EvaluateRequest
	if err := decodeStrict(w, r, maxEvaluateBody, &req); err != nil {
		writeJSON(w, http.StatusBadRequest, errorBody{Error: codeBadRequest, Message: err.Error()})
		return
	}
	if req.Method == "" || !validMethod(req.Method) {
		writeJSON(w, http.StatusBadRequest, errorBody{Error: codeBadRequest, Message: fmt.Sprintf("method %q is not an HTTP method token", req.Method)})
		return
	}
	u, err := url.Parse(req.Path)
	if err != nil || u.Scheme != "" || u.Host != "" || !strings.HasPrefix(req.Path, "/") {
		writeJSON(w, http.StatusBadRequest, errorBody{Error: codeBadRequest, Message: fmt.Sprintf("path %q is not an absolute request path", req.Path)})
		return
	}
	capability := ""
	if len(req.Capability) > 0 && string(req.Capability) != "null" {
		capability = string(req.Capability)
		var str string
		if json.Unmarshal(req.Capability, &str) == nil {
			capability = str
		}
	}
	v := s.decide(r.Context(), described{method: req.Method, escapedPath: u.EscapedPath(), capability: capability, contentLength: req.ContentLength, evaluateOnly: true})
	if v.receiptID == "" {
		writeJSON(w, v.status, errorBody{Error: v.code, Message: v.message})
		return
	}
	w.Header().Set(HeaderReceiptID, v.receiptID)
	resp := EvaluateResponse{Verdict: kernel.VerdictDeny, ToolName: v.signed.ToolName, Receipt: v.signed}
	if v.allow {
		resp.Verdict = kernel.VerdictAllow
	} else {
		resp.Error, resp.Message = v.code, v.message
	}
	if v.op != nil {
		resp.Route = v.op.Route
	}
	writeJSON(w, http.StatusOK, resp)
}

// VerifyResponse is the answer of POST /chio/verify.
type VerifyResponse struct {
	kernel.VerifyResult
	// InLog says whether this sidecar's receipt log holds a receipt with
	// this id.
	InLog bool `json:"in_log"`
}

// serveVerify checks a receipt: signature, id, parameter hash and
// consistency, with this sidecar's kernel key as the one trusted signer,
// and whether the log holds it.
func (s *Server) serveVerify(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		methodNotAllowed(w, "POST")
		return
	}
	body, err := readBody(w, r, maxVerifyBody)
	if err != nil {
		writeJSON(w, http.StatusBadRequest, errorBody{Error: codeBadRequest, Message: err.Error()})
		return
	}
	pub, _ := kernel.ParsePublicKeyHex(s.KernelKey())
	res, err := kernel.Verifier{TrustedKeys: []ed25519.PublicKey{pub}}.VerifyJSON(body)
	if err != nil {
		writeJSON(w, http.StatusBadRequest, errorBody{Error: codeBadRequest, Message: err.Error()})
		return
	}
	out := VerifyResponse{VerifyResult: res}
	var idOnly struct {
		ID string `json:"id"`
	}
	if json.Unmarshal(body, &idOnly) == nil && idOnly.ID != "" {
		if e, err := s.rlog.Lookup(idOnly.ID); err == nil {
			// The stored bytes must be the ones presented, not just the id.
			canon, cerr := jcs.Canonicalize(body)
			out.InLog = cerr == nil && bytes.Equal(e.Receipt, canon)
		}
	}
	writeJSON(w, http.StatusOK, out)
}

// AdminStatus is the body of GET /chio/admin/status.
type AdminStatus struct {
	Version    string    `json:"version"`
	StartedAt  time.Time `json:"started_at"`
	Upstream   string    `json:"upstream"`
	ToolServer string    `json:"tool_server"`
	Spec       struct {
		Title      string `json:"title,omitempty"`
		Version    string `json:"version,omitempty"`
		Operations int    `json:"operations"`
	} `json:"spec"`
	Policy struct {
		Name     string    `json:"name,omitempty"`
		Hash     string    `json:"hash"`
		Source   string    `json:"source"`
		LoadedAt time.Time `json:"loaded_at"`
	} `json:"policy"`
	Receipts struct {
		Path      string `json:"path"`
		Mode      string `json:"mode"`
		KernelKey string `json:"kernel_key"`
		LastSeq   uint64 `json:"last_seq"`
	} `json:"receipts"`
	CapabilitiesRequired   bool   `json:"capabilities_required"`
	CapabilityAuthorityURL string `json:"capability_authority_url,omitempty"`
	Allowed                uint64 `json:"allowed"`
	Denied                 uint64 `json:"denied"`
	Failed                 uint64 `json:"failed"`
	Health                 Health `json:"health"`

	// Shipping is the NATS or store shipper's state (lag, last error); absent when
	// the sink is local.
	Shipping *ship.Status `json:"shipping,omitempty"`

	// Sessions are the session journal and its limits (docs/sessions.md).
	Sessions SessionsStatus `json:"sessions"`
}

// SessionsStatus is the session journal as the admin status shows it.
type SessionsStatus struct {
	Journal  string `json:"journal"`
	Header   string `json:"header"`
	InMemory int    `json:"in_memory"`
	// Limits: 0 is unlimited.
	MaxCalls         int64  `json:"max_calls"`
	MaxCallsPerTool  int64  `json:"max_calls_per_tool"`
	MaxRequestBytes  int64  `json:"max_request_bytes"`
	MaxResponseBytes int64  `json:"max_response_bytes"`
	IdleExpiry       string `json:"idle_expiry,omitempty"`
	Error            string `json:"error,omitempty"`
	// Peers are the replicas' ring in force (none: one replica, or
	// peers_dns not resolved yet); PeersDNS the name they come from, and
	// PeerRefreshFailures its resolutions that kept the last ring.
	Peers               []string `json:"peers,omitempty"`
	PeersDNS            string   `json:"peers_dns,omitempty"`
	PeerRefreshFailures uint64   `json:"peer_refresh_failures,omitempty"`
	// PeersDown are the peers this replica sees down (their sessions go
	// to their next replica until a probe answers).
	PeersDown []string `json:"peers_down,omitempty"`
	// Drain is set once this replica is stopping: the sessions it handed
	// over so far and those it still holds.
	Drain *DrainResult `json:"drain,omitempty"`
}

func (s *Server) serveAdminStatus(w http.ResponseWriter, r *http.Request) {
	if !s.authorize(w, r) {
		return
	}
	if r.Method != http.MethodGet {
		methodNotAllowed(w, "GET")
		return
	}
	var st AdminStatus
	st.Version, st.StartedAt = s.opts.Version, s.started.UTC()
	st.Upstream, st.ToolServer = s.upstream.Redacted(), s.toolServer
	st.Spec.Title, st.Spec.Version, st.Spec.Operations = s.spec.Title, s.spec.Version, len(s.spec.Operations)
	eng := s.engine.Load()
	st.Policy.Name, st.Policy.Hash, st.Policy.Source, st.Policy.LoadedAt = eng.policy.Name(), eng.k.PolicyHash(), redactSource(s.set.PolicySource), eng.loadedAt.UTC()
	st.Receipts.Path, st.Receipts.Mode, st.Receipts.KernelKey, st.Receipts.LastSeq = s.rlog.Path(), s.set.ReceiptMode, s.rlog.KernelKey(), s.rlog.LastSeq()
	st.CapabilitiesRequired = len(s.set.TrustedIssuerKeys) > 0
	st.CapabilityAuthorityURL = s.set.CapabilityAuthorityURL
	st.Allowed, st.Denied, st.Failed = s.allowed.Load(), s.denied.Load(), s.failed.Load()
	st.Health = s.Health()
	if s.ship != nil {
		sh := s.ship.Status()
		st.Shipping = &sh
	}
	l := s.sessions.Limits()
	st.Sessions = SessionsStatus{Journal: s.sessions.Path(), Header: s.set.Sessions.Header, InMemory: s.sessions.InMemory(),
		MaxCalls: l.MaxCalls, MaxCallsPerTool: l.MaxCallsPerTool, MaxRequestBytes: l.MaxRequestBytes, MaxResponseBytes: l.MaxResponseBytes}
	if l.IdleExpiry > 0 {
		st.Sessions.IdleExpiry = l.IdleExpiry.String()
	}
	if err := s.sessions.Err(); err != nil {
		st.Sessions.Error = err.Error()
	}
	s.replicas.status(&st.Sessions)
	if s.drain.leaving.Load() {
		st.Sessions.Drain = &DrainResult{HandedOver: int(s.drain.handedOver.Load()), Kept: int(s.drain.kept.Load())}
	}
	writeJSON(w, http.StatusOK, st)
}

// serveAdminReload loads the policy again from its source. A policy that
// does not load is refused and the one in force stays.
func (s *Server) serveAdminReload(w http.ResponseWriter, r *http.Request) {
	if !s.authorize(w, r) {
		return
	}
	if r.Method != http.MethodPost {
		methodNotAllowed(w, "POST")
		return
	}
	prev, next, err := s.Reload(r.Context())
	if err != nil {
		writeJSON(w, http.StatusUnprocessableEntity, errorBody{Error: codeReloadFailed, Message: err.Error() + " (the previous policy stays in force)"})
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"previous_policy_hash": prev, "policy_hash": next})
}

// Reload loads the policy again from its source and puts it in force for
// every later request. On error the policy in force stays.
func (s *Server) Reload(ctx context.Context) (prev, next string, err error) {
	p, err := s.pol.Load(ctx)
	if err != nil {
		return "", "", fmt.Errorf("reload policy: %w", err)
	}
	eng, err := s.newEngine(p)
	if err != nil {
		return "", "", fmt.Errorf("reload policy: %w", err)
	}
	old := s.engine.Swap(eng)
	s.log.WithField(logFieldPolicy, eng.k.PolicyHash()).Info("policy reloaded")
	return old.k.PolicyHash(), eng.k.PolicyHash(), nil
}

// authorize guards the admin surface: closed (403) while no control token
// is configured, whatever the client's address; otherwise the request must
// carry exactly one `Authorization: Bearer TOKEN`, compared in constant
// time (both sides hashed first, so neither content nor length leaks).
func (s *Server) authorize(w http.ResponseWriter, r *http.Request) bool {
	if s.set.ControlToken == "" {
		writeJSON(w, http.StatusForbidden, errorBody{Error: codeAdminClosed, Message: "the admin surface is closed: " + config.EnvSidecarControlToken + " is not set"})
		return false
	}
	deny := func(msg string) bool {
		w.Header().Set("WWW-Authenticate", `Bearer realm="chio-sidecar"`)
		writeJSON(w, http.StatusUnauthorized, errorBody{Error: codeUnauthorized, Message: msg})
		s.log.WithField(logFieldReason, msg).Warn("admin request refused")
		return false
	}
	vals := r.Header.Values("Authorization")
	switch {
	case len(vals) == 0:
		return deny("missing Authorization: Bearer token")
	case len(vals) > 1:
		return deny("more than one Authorization header")
	case len(vals[0]) > maxAuthorizationBytes:
		return deny("Authorization header too long")
	}
	scheme, token, ok := strings.Cut(vals[0], " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") || token == "" {
		return deny("Authorization is not a Bearer token")
	}
	got, want := sha256.Sum256([]byte(token)), sha256.Sum256([]byte(s.set.ControlToken))
	if subtle.ConstantTimeCompare(got[:], want[:]) != 1 {
		return deny("wrong control token")
	}
	return true
}

func methodNotAllowed(w http.ResponseWriter, allow string) {
	w.Header().Set("Allow", allow)
	writeJSON(w, http.StatusMethodNotAllowed, errorBody{Error: codeMethodNotAllowed, Message: "use " + allow})
}

func readBody(w http.ResponseWriter, r *http.Request, limit int64) ([]byte, error) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, limit))
	if err != nil {
		var tooLarge *http.MaxBytesError
		if errors.As(err, &tooLarge) {
			return nil, fmt.Errorf("body larger than %d bytes", limit)
		}
		return nil, fmt.Errorf("read body: %w", err)
	}
	return body, nil
}

func decodeStrict(w http.ResponseWriter, r *http.Request, limit int64, v any) error {
	body, err := readBody(w, r, limit)
	if err != nil {
		return err
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("malformed JSON body: %w", err)
	}
	if dec.More() {
		return errors.New("malformed JSON body: more than one value")
	}
	return nil
}

// validMethod reports whether m is an RFC 9110 token.
func validMethod(m string) bool {
	if len(m) > 32 {
		return false
	}
	for _, c := range []byte(m) {
		if !(c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0) {
			return false
		}
	}
	return true
}

// redactSource drops credentials and query from an http(s) policy source.
func redactSource(src string) string {
	u, err := url.Parse(src)
	if err != nil || u.Scheme == "" {
		return src
	}
	u.User, u.RawQuery = nil, ""
	return u.String()
}
