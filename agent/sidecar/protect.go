package sidecar

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log"
	"net/http"
	"slices"
	"strings"

	"github.com/sirupsen/logrus"

	"github.com/backbay-labs/chio-agent/kernel"
	"github.com/backbay-labs/chio-agent/kernel/jcs"
	"github.com/backbay-labs/chio-agent/kernel/session"
	"github.com/backbay-labs/chio-agent/receipts"
)

// UnmatchedToolName is the tool name of a request that matches no operation
// of the spec. Such requests are refused unless the policy names this tool
// in tool_access.allow: a default of allow is not enough, since an API's
// undocumented routes are exactly what a spec-driven sidecar must not open
// by accident.
const UnmatchedToolName = "chio_unmatched_route"

// Guards and rules of the decisions the sidecar makes before the policy is
// consulted. Their receipts have the kernel's tool-call shape.
const (
	GuardRoute      = "ChioSidecarRouteGuard"
	GuardCapability = "ChioCapabilityGuard"
	GuardRequest    = "ChioSidecarRequestGuard"

	ruleRoute      = "sidecar.route"
	ruleCapability = "sidecar.capability"
	ruleRequest    = "sidecar.request"
)

// Error codes of the JSON bodies the sidecar answers with.
const (
	codeDenied            = "chio_access_denied"
	codeBadRequest        = "chio_bad_request"
	codeTooLarge          = "chio_request_too_large"
	codeReceiptFailed     = "chio_receipt_unavailable"
	codeInternal          = "chio_internal_error"
	codeUpstream          = "chio_upstream_unavailable"
	codeNotFound          = "chio_not_found"
	codeMethodNotAllowed  = "chio_method_not_allowed"
	codeUnauthorized      = "chio_unauthorized"
	codeAdminClosed       = "chio_admin_closed"
	codeReloadFailed      = "chio_reload_failed"
	maxCapabilityBytes    = 16 << 10
	maxDelegationDepth    = 4
	capabilityOpInvoke    = "invoke"
	wildcardGrant         = "*"
	explicitToolAllowRule = "rules.tool_access.allow"
)

// errorBody is every error the sidecar answers with.
type errorBody struct {
	Error     string `json:"error"`
	Message   string `json:"message"`
	ReceiptID string `json:"receipt_id,omitempty"`
}

// described is a request as the sidecar decides on it.
type described struct {
	method        string
	escapedPath   string
	capability    string
	contentLength int64
	evaluateOnly  bool
	// sessionHeader holds the session header's values (nil: none).
	sessionHeader []string
}

// verdict is the sidecar's decision on one request, with its receipt.
type verdict struct {
	allow   bool
	status  int    // the HTTP status of a refusal
	code    string // the error code of a refusal
	message string
	// receiptID is the id of the decision's receipt, "" when none could be
	// made or written. The receipt is prepared by decide and signed by
	// record (in async mode by the log's signer, off the request's path).
	receiptID string
	prepared  *kernel.Prepared
	signed    kernel.Receipt // the signed receipt, for evaluate-only requests
	evaluate  bool           // evaluate-only: sign before answering
	op        *Operation     // nil when no operation matched
	// sess is the call's session journal entry, nil when the request is
	// not session-aware. Settle it once the request is over.
	sess *session.Call
}

type ctxKey struct{}

func withReceiptID(ctx context.Context, id string) context.Context {
	return context.WithValue(ctx, ctxKey{}, id)
}

func receiptIDFrom(ctx context.Context) string {
	id, _ := ctx.Value(ctxKey{}).(string)
	return id
}

// ServeHTTP routes the sidecar's endpoints and protects everything else.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	p := r.URL.Path
	switch {
	case p == s.set.HealthPath:
		s.serveHealth(w, r)
	case p == PathLive:
		s.serveLive(w, r)
	case p == PathEvaluate:
		s.serveEvaluate(w, r)
	case p == PathVerify:
		s.serveVerify(w, r)
	case p == PathAdminStatus:
		s.serveAdminStatus(w, r)
	case p == PathAdminReload:
		s.serveAdminReload(w, r)
	case p == PathPeerHandover:
		s.servePeerHandover(w, r)
	case p == PathPeerTake:
		s.servePeerTake(w, r)
	case p == PathPeerLeaving:
		s.servePeerLeaving(w, r)
	case p == "/chio" || strings.HasPrefix(p, reservedPrefix) || strings.HasPrefix(strings.ToLower(r.URL.EscapedPath()), "/chio%2f"):
		writeJSON(w, http.StatusNotFound, errorBody{Error: codeNotFound, Message: "no sidecar endpoint at " + p + " (paths under /chio/ are the sidecar's and are never forwarded)"})
	default:
		if s.replicas != nil && s.drain.leaving.Load() && s.routeLeaving(w, r) {
			return // a stopping replica's request, forwarded to the session's next owner
		}
		if s.replicas != nil && s.route(w, r) {
			return // forwarded to the session's owner, or refused
		}
		s.protect(w, r)
	}
}

// protect decides one API request and forwards it or refuses it.
func (s *Server) protect(w http.ResponseWriter, r *http.Request) {
	v := s.decide(r.Context(), described{
		method:        r.Method,
		escapedPath:   r.URL.EscapedPath(),
		capability:    strings.Join(r.Header.Values(HeaderCapability), ","),
		contentLength: r.ContentLength,
		sessionHeader: r.Header.Values(s.set.Sessions.Header),
	})
	if v.sess != nil {
		// The receipt is written (durable in sync mode): the journal entry
		// that names it may go to the file.
		v.sess.Release()
	}
	if v.receiptID != "" {
		w.Header().Set(HeaderReceiptID, v.receiptID)
	}
	if !v.allow {
		if v.sess != nil {
			v.sess.Settle(0, 0) // an allowed call refused after all (no receipt written)
		}
		writeJSON(w, v.status, errorBody{Error: v.code, Message: v.message, ReceiptID: v.receiptID})
		return
	}
	limit := s.set.MaxBodyBytes
	var body *countingBody
	orig := w // MaxBytesReader tells the server, through it, to close the connection
	if v.sess != nil {
		// In sync mode the call takes effect once its journal entry is
		// durable, as its receipt is: a restart cannot forget a call that
		// reached the upstream.
		if s.set.ReceiptMode != "async" {
			if err := v.sess.Durable(r.Context()); err != nil {
				v.sess.Settle(0, 0)
				s.failed.Add(1)
				s.log.WithError(err).WithField(logFieldReceipt, v.receiptID).Error("session journal not written: request refused")
				writeJSON(w, http.StatusServiceUnavailable, errorBody{Error: codeSessionFailed, Message: "the session journal could not record the call, so it is refused: " + err.Error(), ReceiptID: v.receiptID})
				return
			}
		}
		if b := v.sess.BodyLimit(); b >= 0 && b < limit {
			limit = b
		}
		cw := &countingWriter{ResponseWriter: w}
		w = cw
		defer func() {
			var read int64
			if body != nil {
				read = body.n
			}
			v.sess.Settle(read, cw.n)
		}()
	}
	if r.Body != nil && r.Body != http.NoBody {
		r.Body = http.MaxBytesReader(orig, r.Body, limit)
		if v.sess != nil {
			body = &countingBody{ReadCloser: r.Body}
			r.Body = body
		}
	}
	r = r.WithContext(withReceiptID(r.Context(), v.receiptID))
	s.proxy.ServeHTTP(w, r)
}

// upstreamError answers a request the kernel allowed but that could not be
// relayed. The allow receipt stands: it records the decision, not the
// upstream's availability.
func (s *Server) upstreamError(w http.ResponseWriter, r *http.Request, err error) {
	id := receiptIDFrom(r.Context())
	var tooLarge *http.MaxBytesError
	if errors.As(err, &tooLarge) {
		writeJSON(w, http.StatusRequestEntityTooLarge, errorBody{Error: codeTooLarge, Message: fmt.Sprintf("request body exceeds %d bytes", tooLarge.Limit), ReceiptID: id})
		return
	}
	if errors.Is(err, context.Canceled) {
		return // the client went away; nobody reads an answer
	}
	s.log.WithError(err).WithField(logFieldReceipt, id).Warn("upstream request failed")
	writeJSON(w, http.StatusBadGateway, errorBody{Error: codeUpstream, Message: "the upstream API did not answer", ReceiptID: id})
}

// decide runs one request through the sidecar's checks and the kernel, and
// writes the receipt. Every outcome that has a receipt has one in the log
// (or, when the log cannot take it, the request is refused with 503 and no
// receipt id: a decision that cannot be recorded cannot be allowed).
func (s *Server) decide(ctx context.Context, d described) verdict {
	eng := s.engine.Load()
	reqID := newRequestID()
	params := map[string]any{"method": d.method}
	if d.evaluateOnly {
		params["evaluate_only"] = true
	}
	call := kernel.ToolCall{ToolServer: s.toolServer, ToolName: UnmatchedToolName, RequestID: reqID}

	if d.contentLength > s.set.MaxBodyBytes {
		return s.refuse(ctx, eng, call, params, d, GuardRequest, ruleRequest, http.StatusRequestEntityTooLarge, codeTooLarge,
			fmt.Sprintf("request body of %d bytes exceeds max_body_bytes %d", d.contentLength, s.set.MaxBodyBytes), nil)
	}
	m, ok, err := s.spec.Match(d.method, d.escapedPath)
	if err != nil {
		return s.refuse(ctx, eng, call, params, d, GuardRequest, ruleRequest, http.StatusBadRequest, codeBadRequest, err.Error(), nil)
	}
	if !ok {
		// The concrete path is recorded (never the query): there is no
		// route pattern to record instead.
		params["path"] = d.escapedPath
		res := eng.policy.Evaluate(policyToolCall(UnmatchedToolName))
		if res.MatchedRule != explicitToolAllowRule {
			return s.refuse(ctx, eng, call, params, d, GuardRoute, ruleRoute, http.StatusForbidden, codeDenied,
				fmt.Sprintf("no operation of the API's OpenAPI spec matches %s %s; requests outside the spec are refused unless the policy lists %s in tool_access.allow", d.method, d.escapedPath, UnmatchedToolName), nil)
		}
	} else {
		call.ToolName = m.Op.ID
		params["route"] = m.Op.Route
		if len(m.Params) > 0 {
			params["path_params"] = m.Params
		}
	}
	var capability *kernel.Capability
	if len(s.set.TrustedIssuerKeys) > 0 {
		c, problem := s.checkCapability(d.capability, call.ToolName)
		if problem != "" {
			return s.refuse(ctx, eng, call, params, d, GuardCapability, ruleCapability, http.StatusForbidden, codeDenied, problem, m.Op)
		}
		call.CapabilityID, capability = c.ID, c
	}
	var sess *session.Call
	if !d.evaluateOnly {
		sid, problem, status := s.sessionOf(d, capability)
		if problem != "" {
			code := codeDenied
			if status == http.StatusBadRequest {
				code = codeBadRequest
			}
			return s.refuse(ctx, eng, call, params, d, kernel.GuardSession, ruleSessionIdentity, status, code, problem, m.Op)
		}
		if sid != "" {
			sess = s.sessions.Call(session.Request{SessionID: sid, ToolServer: call.ToolServer, ToolName: call.ToolName,
				RequestBytes: d.contentLength, MaxBody: s.set.MaxBodyBytes})
			call.Guard = sess
		}
	}
	args, err := jcs.Marshal(params)
	if err != nil {
		return s.internalError(fmt.Errorf("encode tool call arguments: %w", err))
	}
	call.Arguments = args
	out, prep, err := eng.k.PrepareToolCall(ctx, call)
	if errors.Is(err, session.ErrNotHeld) {
		// Handed to another replica after this one took it: decided there.
		return verdict{status: http.StatusServiceUnavailable, code: codeSessionMoving, message: "the session moved to another replica meanwhile; retry: " + err.Error()}
	}
	if err != nil {
		return s.internalError(err)
	}
	v := verdict{allow: out.Verdict == kernel.VerdictAllow, op: m.Op, prepared: prep, evaluate: d.evaluateOnly, sess: sess}
	if !v.allow {
		v.status, v.code = http.StatusForbidden, codeDenied
		v.message = fmt.Sprintf("the policy denies %s", call.ToolName)
		if out.Guard == kernel.GuardSession {
			v.message = fmt.Sprintf("the session guard denies %s", call.ToolName)
		}
		if out.Reason != "" {
			v.message += ": " + out.Reason
		}
	}
	return s.record(ctx, v, call.ToolName)
}

// refuse writes the receipt of a decision the sidecar takes before the
// policy (no route, no capability, a malformed request), prepared by the
// kernel as every other decision's.
func (s *Server) refuse(ctx context.Context, eng *engine, call kernel.ToolCall, params map[string]any, d described, guard, rule string, status int, code, reason string, op *Operation) verdict {
	args, err := jcs.Marshal(params)
	if err != nil {
		return s.internalError(fmt.Errorf("encode tool call arguments: %w", err))
	}
	call.Arguments = args
	call.Decided = &kernel.Outcome{Verdict: kernel.VerdictDeny, Guard: guard, MatchedRule: rule, Reason: reason}
	_, prep, err := eng.k.PrepareToolCall(ctx, call)
	if err != nil {
		return s.internalError(err)
	}
	return s.record(ctx, verdict{status: status, code: code, message: reason, prepared: prep, evaluate: d.evaluateOnly, op: op}, call.ToolName)
}

// record appends the verdict's receipt; a receipt that cannot be written
// turns any verdict into a 503 refusal without a receipt id.
func (s *Server) record(ctx context.Context, v verdict, tool string) verdict {
	var err error
	if v.evaluate {
		// The answer carries the signed receipt: sign it here.
		if v.signed, err = v.prepared.Sign(s.key); err == nil {
			_, err = s.rlog.AppendReceipt(ctx, &v.signed)
		}
	} else {
		_, err = s.rlog.AppendPrepared(ctx, v.prepared)
	}
	if err != nil {
		if errors.Is(err, receipts.ErrFailed) {
			s.logFailed.CompareAndSwap(nil, &err)
		}
		s.failed.Add(1)
		s.log.WithError(err).WithField(logFieldTool, tool).Error("receipt not written: request refused")
		return verdict{status: http.StatusServiceUnavailable, code: codeReceiptFailed, message: "the decision could not be recorded, so the request is refused: " + err.Error(), sess: v.sess}
	}
	v.receiptID = v.prepared.ID()
	if v.allow {
		s.allowed.Add(1)
		if kernel.DebugEnabled(s.log) {
			s.log.WithFields(v.logFields(tool)).Debug("request allowed")
		}
	} else {
		s.denied.Add(1)
		s.log.WithFields(v.logFields(tool)).Warn("request refused")
	}
	return v
}

func (v *verdict) logFields(tool string) logrus.Fields {
	fields := logrus.Fields{logFieldTool: tool, logFieldReceipt: v.receiptID, logFieldVerdict: kernel.VerdictAllow}
	if v.op != nil {
		fields[logFieldMethod], fields[logFieldRoute] = v.op.Method, v.op.Route
	}
	if !v.allow {
		fields[logFieldVerdict] = kernel.VerdictDeny
		fields[logFieldReason] = v.message
	}
	return fields
}

func (s *Server) internalError(err error) verdict {
	s.failed.Add(1)
	s.log.WithError(err).Error("decision failed: request refused")
	return verdict{status: http.StatusInternalServerError, code: codeInternal, message: "the request could not be decided, so it is refused"}
}

// checkCapability verifies the token a request carries and that it grants
// invoking tool on this sidecar's tool server. It returns the token id, or
// a problem in words. Grants with limits the sidecar cannot enforce
// (constraints, invocation or cost caps, DPoP) grant nothing here: honouring
// them partly would fail open.
func (s *Server) checkCapability(header, tool string) (*kernel.Capability, string) {
	hint := ""
	if s.set.CapabilityAuthorityURL != "" {
		hint = " (capability authority: " + s.set.CapabilityAuthorityURL + ")"
	}
	c, err := parseCapabilityHeader(header)
	if err != nil {
		msg := err.Error()
		if strings.HasPrefix(msg, "no capability token") {
			msg += hint
		}
		return nil, msg
	}
	res := c.Verify(kernel.CapabilityVerifyOptions{
		Now:                uint64(max(s.now().Unix(), 0)),
		MaxDelegationDepth: maxDelegationDepth,
		TrustedIssuers:     s.set.TrustedIssuerKeys,
	})
	if !res.OK {
		return nil, fmt.Sprintf("capability %q refused: %s%s", c.ID, strings.Join(res.Problems, "; "), hint)
	}
	limited := false
	for _, g := range c.Scope.Grants {
		if (g.ServerID != s.toolServer && g.ServerID != wildcardGrant) || (g.ToolName != tool && g.ToolName != wildcardGrant) {
			continue
		}
		if !slices.Contains(g.Operations, capabilityOpInvoke) {
			continue
		}
		if len(g.Constraints) > 0 || g.MaxInvocations != nil || g.DPoPRequired || g.MaxCostPerInvocation != nil || g.MaxTotalCost != nil {
			limited = true
			continue
		}
		return c, ""
	}
	if limited {
		return nil, fmt.Sprintf("capability %q grants %s only with constraints, caps or DPoP, which this sidecar cannot enforce", c.ID, tool)
	}
	return nil, fmt.Sprintf("capability %q does not grant invoke of %s on %s", c.ID, tool, s.toolServer)
}

func decodeBase64(s string) ([]byte, error) {
	for _, enc := range []*base64.Encoding{base64.RawURLEncoding, base64.URLEncoding, base64.StdEncoding, base64.RawStdEncoding} {
		if b, err := enc.DecodeString(s); err == nil {
			return b, nil
		}
	}
	return nil, errors.New("not base64")
}

// newRequestID returns 128 random bits in hex. It makes every receipt
// unique (two identical requests in one second would otherwise have the
// same receipt id, and the log refuses duplicates) and correlates a
// receipt with logs.
func newRequestID() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails on Linux ≥ 3.17
	return hex.EncodeToString(b[:])
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	body, err := json.Marshal(v)
	if err != nil {
		status, body = http.StatusInternalServerError, []byte(`{"error":"chio_internal_error","message":"encode response"}`)
	}
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	w.Write(append(body, '\n'))
}

// newStdLogger routes net/http's own log lines (TLS handshake errors,
// panics in handlers) to the logger at warn level.
func newStdLogger(l logrus.FieldLogger) *log.Logger {
	return log.New(logWriter{l}, "", 0)
}

type logWriter struct{ l logrus.FieldLogger }

func (w logWriter) Write(p []byte) (int, error) {
	w.l.Warn(strings.TrimSpace(string(p)))
	return len(p), nil
}
