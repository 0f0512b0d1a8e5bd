package agent

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"

	"github.com/backbay-labs/chio-agent/kernel"
)

// gateReaders recycles the 16 KiB request-head buffers of gateHTTP: one per
// plain HTTP connection would otherwise be garbage for the collector.
var gateReaders = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, 16<<10) }}

// errLaterHost means a later request on an HTTP/1.x connection named
// another host than the one the connection was decided for.
var errLaterHost = errors.New("later request names another host")

// gateHTTP relays the client's side of a plain HTTP/1.x connection request by
// request, so that every request head is read, not only the first: a client
// could otherwise send a second request with another Host on a connection
// decided for the first (to the same, allowed, address). A later request
// that names another host ends the connection with a deny receipt. An
// Upgrade (WebSocket) or CONNECT request ends the HTTP framing: the rest of
// the stream is copied as is.
func (p *proxy) gateHTTP(ctx context.Context, cn *conn, up *net.TCPConn) error {
	br := gateReaders.Get().(*bufio.Reader)
	br.Reset(io.MultiReader(bytes.NewReader(cn.sniff.Prefix), cn.client))
	defer func() {
		br.Reset(nil) // drop the references to this connection
		gateReaders.Put(br)
	}()
	firstHost := ""
	for n := 0; ; n++ {
		req, err := http.ReadRequest(br)
		if err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) {
				return nil
			}
			if n == 0 {
				// The sniffer parsed this head; net/http cannot. Refuse
				// rather than relay what was never understood.
				return fmt.Errorf("read request: %w", err)
			}
			return p.refuseLater(ctx, cn, "", fmt.Sprintf("a later request on this connection is malformed: %v", err))
		}
		host := hostOnly(req.Host)
		if n == 0 {
			firstHost = host
		} else if host != firstHost {
			req.Body.Close()
			return p.refuseLater(ctx, cn, req.Host, fmt.Sprintf("a later request on this connection names %q; the connection was decided for %q", host, firstHost))
		}
		// Forward the request as parsed. net/http would add its own
		// User-Agent to a request that had none; an empty one is omitted.
		if _, ok := req.Header["User-Agent"]; !ok {
			req.Header["User-Agent"] = []string{""}
		}
		upgrade := req.Method == http.MethodConnect || headerHasToken(req.Header, "Connection", "upgrade")
		if err := req.Write(up); err != nil {
			return fmt.Errorf("forward request: %w", err)
		}
		if upgrade {
			// Past an upgrade the stream is not HTTP: copy the rest.
			_, err := io.Copy(up, br)
			return err
		}
	}
}

// refuseLater ends a connection whose later request is refused, with a deny
// receipt for that request.
func (p *proxy) refuseLater(ctx context.Context, cn *conn, host, reason string) error {
	ev := cn.event
	ev.HTTPHost, ev.HTTPMethod, ev.HTTPPath = host, "", ""
	out := kernel.Outcome{Verdict: kernel.VerdictDeny, Guard: GuardProtocol, Reason: reason}
	d := cn.decision(p.now(), host, out)
	p.record(ctx, ev, out, cn.pol.Hash(), &d, nil)
	p.counts.denied.Add(1)
	p.report(d)
	resetClose(cn.client)
	return errLaterHost
}

// hostOnly lowercases a Host header and drops its port and trailing dot.
func hostOnly(h string) string {
	if host, _, err := net.SplitHostPort(h); err == nil {
		h = host
	}
	return strings.TrimSuffix(strings.ToLower(h), ".")
}

// headerHasToken reports whether a comma-separated header lists token.
func headerHasToken(h http.Header, name, token string) bool {
	for _, v := range h.Values(name) {
		for _, t := range strings.Split(v, ",") {
			if strings.EqualFold(strings.TrimSpace(t), token) {
				return true
			}
		}
	}
	return false
}
