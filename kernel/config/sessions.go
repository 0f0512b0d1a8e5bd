package config

import (
	"fmt"
	"net/http"
	"strconv"
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
)

// SessionEnv lists the sessions variables; SidecarEnv ends with them.
var SessionEnv = []string{
	EnvSessionHeader, EnvSessionJournal, EnvSessionMaxCalls, EnvSessionMaxCallsPerTool,
	EnvSessionMaxRequestBytes, EnvSessionMaxResponseBytes, EnvSessionIdleExpiry,
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
	if s.IdleExpiry != 0 && time.Duration(s.IdleExpiry) < time.Second {
		return fmt.Errorf("sessions.idle_expiry: %s is below 1s", time.Duration(s.IdleExpiry))
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
	if v := Env(lookup, EnvSessionIdleExpiry); v != "" {
		d, perr := time.ParseDuration(v)
		if perr != nil || (d != 0 && d < time.Second) || d < 0 {
			return r, fmt.Errorf("%s: %q is not a duration of at least 1s (or 0)", EnvSessionIdleExpiry, v)
		}
		r.Limits.IdleExpiry = d
	}
	return r, nil
}
