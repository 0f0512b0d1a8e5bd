package sidecar

import (
	"fmt"
	"io"
	"net/http"

	"github.com/backbay-labs/chio-agent/kernel"
	"github.com/backbay-labs/chio-agent/kernel/session"
)

// Session refusals: the rule a receipt names when a request may not use
// the session it names.
const (
	ruleSessionIdentity = "sessions.identity"
	codeSessionFailed   = "chio_session_unavailable"
)

// sessionFromHeader reads the session header's values: absent (no session),
// one valid id, or a problem (repeated, empty or malformed: refused rather
// than guessed at, so two spellings never name one session).
func sessionFromHeader(name string, values []string) (id string, problem string) {
	switch {
	case len(values) == 0:
		return "", ""
	case len(values) > 1:
		return "", fmt.Sprintf("more than one %s header", name)
	case !session.ValidID(values[0]):
		return "", fmt.Sprintf("%s must be 1 to %d visible ASCII characters", name, session.MaxIDBytes)
	}
	return values[0], ""
}

// sessionOf names the session of a request. With capability tokens in use
// the verified token names it (its session_id, else its subject) and a
// header naming another session is refused: a caller cannot spend or read
// another principal's session by naming it. Without tokens the header
// names it, and whoever can reach the sidecar can name any session.
func (s *Server) sessionOf(d described, c *kernel.Capability) (id, problem string, status int) {
	hid, problem := sessionFromHeader(s.set.Sessions.Header, d.sessionHeader)
	if problem != "" {
		return "", problem, http.StatusBadRequest
	}
	if c == nil {
		return hid, "", 0
	}
	tid, ok := c.SessionClaim()
	if !ok || !session.ValidID(tid) {
		return "", fmt.Sprintf("capability %q names no valid session (session_id must be 1 to %d visible ASCII characters)", c.ID, session.MaxIDBytes), http.StatusForbidden
	}
	if hid != "" && hid != tid {
		return "", fmt.Sprintf("the request names session %q in %s, but its capability %q is for session %q", hid, s.set.Sessions.Header, c.ID, tid), http.StatusForbidden
	}
	return tid, "", 0
}

// countingWriter counts the response body bytes written to the client.
type countingWriter struct {
	http.ResponseWriter
	n int64
}

func (w *countingWriter) Write(b []byte) (int, error) {
	n, err := w.ResponseWriter.Write(b)
	w.n += int64(n)
	return n, err
}

// Unwrap lets http.ResponseController reach the connection (flushes).
func (w *countingWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// countingBody counts the request body bytes read from the client.
type countingBody struct {
	io.ReadCloser
	n int64
}

func (b *countingBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.n += int64(n)
	return n, err
}
