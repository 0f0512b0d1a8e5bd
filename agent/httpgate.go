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
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/backbay-labs/chio-agent/internal/sniff"
	"github.com/backbay-labs/chio-agent/kernel"
)

// gateReaders recycles the 16 KiB read buffers of the HTTP gate (two per
// plain HTTP connection), which would otherwise be garbage for the
// collector.
var gateReaders = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, 16<<10) }}

// errRefusedLater means the gate refused a later request on a connection
// (and wrote its receipt): the relay ends without an error of its own.
var errRefusedLater = errors.New("later request refused")

// errHeadTooLarge is what a head reader returns once a head has used up its
// bound.
var errHeadTooLarge = errors.New("head too large")

// maxPipelined bounds the requests forwarded and not yet answered on one
// connection: a client pipelining more waits for answers.
const maxPipelined = 16

// httpGate relays one plain HTTP/1.x connection message by message, so that
// every request head is read and decided, not only the first: a client
// could otherwise send a second request with another Host on a connection
// decided for the first (to the same, allowed, address).
//
// It reads the responses too, in order, pairing each with its request: a
// protocol switch is real only when the server answers an Upgrade request
// with 101 (a CONNECT with 2xx), and only then does the gate stop reading
// HTTP; until the answer is seen it reads no further request. Response bytes
// reach the client as the gate reads them (it only watches), so nothing is
// held back but the next request.
type httpGate struct {
	p  *proxy
	cn *conn
	up *net.TCPConn

	// The client's side: the sniffed first bytes, then the socket, read
	// through a bound on each head.
	src  io.Reader
	req  *headReader
	reqR *bufio.Reader

	// The upstream's side: the socket, each byte copied to the client as
	// it is read, through a bound on each head.
	resp  *headReader
	respR *bufio.Reader

	// queue carries forwarded requests, in order, to the response reader;
	// done is closed when the response reader has stopped.
	queue chan forwarded
	done  chan struct{}
	// lost is set, with lostWhy, once a response could not be followed:
	// the gate can no longer tell where the answers to further requests
	// begin, so it refuses them.
	lost    atomic.Bool
	lostWhy string
}

// forwarded is a request sent upstream and not yet answered.
type forwarded struct {
	method string
	// switching is set for an Upgrade or CONNECT request: the request
	// reader waits on answer for whether the protocol switched.
	switching bool
	answer    chan switchAnswer
}

type switchAnswer struct {
	switched bool
	status   string // the response's status line, for the receipt
}

// headReader counts the bytes a head takes from the reader below and fails
// once they pass the bound; between heads it reads without bound. It keeps
// the first error of the reader below, so that a failed parse can be told
// apart from a client or server that went away. With tee set, every byte
// read is copied there first (the response side's client).
type headReader struct {
	r     io.Reader
	tee   io.Writer
	left  int  // bytes the current head may still take
	head  bool // a head is being read
	bound int
	err   error
}

func (h *headReader) startHead() { h.head, h.left = true, h.bound }
func (h *headReader) endHead()   { h.head = false }

func (h *headReader) Read(b []byte) (int, error) {
	if h.head {
		if h.left <= 0 {
			h.err = errHeadTooLarge
			return 0, errHeadTooLarge
		}
		if len(b) > h.left {
			b = b[:h.left]
		}
	}
	n, err := h.r.Read(b)
	if h.head {
		h.left -= n
	}
	if n > 0 && h.tee != nil {
		if _, werr := h.tee.Write(b[:n]); werr != nil {
			err = fmt.Errorf("write client: %w", werr)
		}
	}
	if err != nil && h.err == nil {
		h.err = err
	}
	return n, err
}

// relayHTTP relays a plain HTTP/1.x connection through the gate.
func (p *proxy) relayHTTP(ctx context.Context, cn *conn, up *net.TCPConn) error {
	g := &httpGate{p: p, cn: cn, up: up,
		queue: make(chan forwarded, maxPipelined), done: make(chan struct{})}
	g.src = io.MultiReader(bytes.NewReader(cn.sniff.Prefix), cn.client)
	cn.sniff.Prefix = nil // the reader lets go of it once it is read
	g.req = &headReader{r: g.src, bound: p.limits.HeadBytes}
	g.resp = &headReader{r: up, tee: cn.client, bound: p.limits.HeadBytes}
	g.reqR = gateReaders.Get().(*bufio.Reader)
	g.reqR.Reset(g.req)
	g.respR = gateReaders.Get().(*bufio.Reader)
	g.respR.Reset(g.resp)
	defer func() {
		for _, br := range []*bufio.Reader{g.reqR, g.respR} {
			br.Reset(nil) // drop the references to this connection
			gateReaders.Put(br)
		}
	}()

	errc := make(chan error, 1)
	go func() {
		err := g.requests(ctx)
		close(g.queue)
		if errors.Is(err, errRefusedLater) {
			up.Close() // nothing more goes either way
		} else {
			up.CloseWrite()
		}
		errc <- err
	}()
	err1 := g.responses()
	close(g.done)
	cn.client.CloseWrite()
	err2 := <-errc
	if errors.Is(err2, errRefusedLater) {
		return nil // refused and receipted by the gate
	}
	if err := errors.Join(err1, err2); err != nil && !isBenignCopyErr(err) {
		return err
	}
	return nil
}

// requests reads, decides and forwards the client's requests until the
// client is done, a request is refused, or the protocol switches.
func (g *httpGate) requests(ctx context.Context) error {
	firstHost := ""
	for n := 0; ; n++ {
		g.req.startHead()
		req, err := http.ReadRequest(g.reqR)
		g.req.endHead()
		if err != nil {
			return g.readFailed(ctx, n, err)
		}
		host := hostOnly(req.Host)
		if n == 0 {
			firstHost = host
		} else if host != firstHost {
			req.Body.Close()
			return g.refuse(ctx, req, GuardProtocol,
				fmt.Sprintf("a later request on this connection names %q; the connection was decided for %q", host, firstHost))
		}
		// Forward the request as parsed. net/http would add its own
		// User-Agent to a request that had none; an empty one is omitted.
		if _, ok := req.Header["User-Agent"]; !ok {
			req.Header["User-Agent"] = []string{""}
		}
		if g.lost.Load() {
			req.Body.Close()
			return g.refuse(ctx, req, GuardProtocol,
				"a later request on this connection was refused: the server's answer to an earlier one could not be followed ("+g.lostWhy+")")
		}
		f := forwarded{method: req.Method}
		if req.Method == http.MethodConnect || headerHasToken(req.Header, "Connection", "upgrade") {
			f.switching, f.answer = true, make(chan switchAnswer, 1)
		}
		// The response reader learns of the request before its answer can
		// arrive.
		select {
		case g.queue <- f:
		case <-g.done:
			return nil // the upstream is gone
		}
		if err := req.Write(g.up); err != nil {
			return fmt.Errorf("forward request: %w", err)
		}
		if !f.switching {
			continue
		}
		// Read nothing more until the server has answered: what follows is
		// HTTP again unless it switches.
		var a switchAnswer
		select {
		case a = <-f.answer:
		case <-g.done:
			return nil
		}
		if !a.switched {
			continue
		}
		return g.switchProtocols(ctx, req, a.status)
	}
}

// readFailed ends the request side after a failed read of request n: a
// client that closed or reset its connection, or ran out of time, made no
// request and gets no receipt; a head past the bound or one that does not
// parse is refused with one.
func (g *httpGate) readFailed(ctx context.Context, n int, err error) error {
	switch rerr := g.req.err; {
	case errors.Is(rerr, errHeadTooLarge):
		return g.refuse(ctx, nil, GuardLimit, "a request on this connection was refused: "+g.p.boundReason(boundHeadBytes))
	case rerr != nil && (errors.Is(rerr, io.EOF) || isClientGone(rerr)):
		return nil // nothing was forwarded for a request that never came whole
	case rerr != nil:
		return fmt.Errorf("read request: %w", rerr)
	case n == 0:
		// The sniffer parsed this head; net/http cannot. Refuse rather
		// than relay what was never understood.
		return g.refuse(ctx, nil, GuardProtocol, fmt.Sprintf("the first request could not be parsed for relaying: %v", err))
	default:
		return g.refuse(ctx, nil, GuardProtocol, fmt.Sprintf("a later request on this connection is malformed: %v", err))
	}
}

// switchProtocols writes the receipt of a protocol switch the server
// accepted, then copies the rest of the client's stream as it is: it is no
// longer HTTP. No byte of the new protocol goes upstream before the receipt.
func (g *httpGate) switchProtocols(ctx context.Context, req *http.Request, status string) error {
	what := "protocol switch to " + strings.Join(req.Header.Values("Upgrade"), ", ")
	if req.Method == http.MethodConnect {
		what = "CONNECT tunnel to " + req.Host
	}
	out := kernel.Outcome{Verdict: kernel.VerdictAllow, Guard: GuardProtocol,
		Reason: fmt.Sprintf("%s: the server answered %q; the rest of the connection is relayed without HTTP inspection", what, status)}
	ev := g.requestEvent(req)
	d := g.cn.decision(g.p.now(), ev.HTTPHost, out)
	if err := g.p.record(ctx, g.decided(ctx, ev, out), &d); err != nil {
		d.Verdict = kernel.VerdictDeny
		g.p.counts.failed.Add(1)
		g.p.report(d)
		resetClose(g.cn.client)
		return errRefusedLater
	}
	g.p.report(d)
	// What the client sent after the request is still in the reader's
	// buffer; the rest comes straight from the socket (spliced).
	if n := g.reqR.Buffered(); n > 0 {
		b, _ := g.reqR.Peek(n)
		if _, err := g.up.Write(b); err != nil {
			return err
		}
	}
	_, err := io.Copy(g.up, g.src)
	return err
}

// responses reads the upstream's responses in the order of the requests
// forwarded, until the upstream is done or the protocol switches. A response
// that cannot be followed (not HTTP, a head past the bound, a switch nobody
// asked for) ends the reading: the rest of the upstream's bytes are copied
// to the client as they are, and the request side refuses any further
// request.
func (g *httpGate) responses() error {
	err := g.readResponses()
	if err == nil || isBenignCopyErr(err) {
		return err
	}
	g.lostWhy = err.Error()
	g.lost.Store(true)
	g.p.logger.WithField("dst", g.cn.orig.Dst.String()).WithError(err).Debug("http gate stops following responses")
	_, err = io.Copy(g.cn.client, g.up)
	return err
}

// readResponses is responses up to the first response it cannot follow.
func (g *httpGate) readResponses() error {
	for {
		// Wait for the upstream's next bytes rather than for the next
		// request: a server that closes (after Connection: close, say) must
		// be seen when no request is outstanding. A request is queued before
		// it is written upstream, so its answer finds it queued.
		g.resp.startHead()
		_, err := g.respR.Peek(1)
		g.resp.endHead()
		if err != nil {
			return err
		}
		var f forwarded
		select {
		case q, ok := <-g.queue:
			if !ok {
				// The client is done: whatever the upstream still sends is
				// copied as it is (what the reader holds reached the
				// client already).
				_, err := io.Copy(g.cn.client, g.up)
				return err
			}
			f = q
		default:
			// Bytes nobody asked for (a 408 before the server closes):
			// read them as the answer to a GET, which cannot switch.
			f = forwarded{method: http.MethodGet}
		}
		for {
			g.resp.startHead()
			resp, err := http.ReadResponse(g.respR, &http.Request{Method: f.method})
			g.resp.endHead()
			if err != nil {
				if f.answer != nil {
					f.answer <- switchAnswer{}
				}
				switch rerr := g.resp.err; {
				case errors.Is(rerr, errHeadTooLarge):
					return fmt.Errorf("read response: %s", g.p.boundReason(boundHeadBytes))
				case rerr != nil:
					return rerr // EOF and resets are benign to the caller
				default:
					return fmt.Errorf("read response: %w", err)
				}
			}
			status := fmt.Sprintf("%d %s", resp.StatusCode, http.StatusText(resp.StatusCode))
			switched := resp.StatusCode == http.StatusSwitchingProtocols ||
				(f.method == http.MethodConnect && resp.StatusCode/100 == 2)
			if switched {
				if !f.switching {
					return fmt.Errorf("read response: the server switched protocols (%s) for a %s request that asked for no switch", status, f.method)
				}
				f.answer <- switchAnswer{switched: true, status: status}
				// The reader's buffer was copied to the client as it was
				// read: the rest comes straight from the socket.
				_, err := io.Copy(g.cn.client, g.up)
				return err
			}
			if resp.StatusCode < 200 {
				continue // 100 Continue, 103 Early Hints: the answer follows
			}
			// The body reaches the client through the tee as it is read.
			_, err = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if f.answer != nil {
				f.answer <- switchAnswer{status: status}
			}
			if err != nil {
				return err
			}
			break
		}
	}
}

// refuse ends a connection whose later request is refused, with a deny
// receipt for that request (req may be nil when none could be read).
func (g *httpGate) refuse(ctx context.Context, req *http.Request, guard, reason string) error {
	ev := g.requestEvent(req)
	out := kernel.Outcome{Verdict: kernel.VerdictDeny, Guard: guard, Reason: reason}
	d := g.cn.decision(g.p.now(), ev.HTTPHost, out)
	g.p.record(ctx, g.decided(ctx, ev, out), &d)
	g.p.counts.denied.Add(1)
	g.p.report(d)
	resetClose(g.cn.client)
	return errRefusedLater
}

// decided is a decision of the gate's on one request of the connection,
// made under the connection's policy snapshot.
func (g *httpGate) decided(ctx context.Context, ev kernel.EgressEvent, out kernel.Outcome) *kernel.Egress {
	eg := g.cn.snap.DecideEgress(ctx, kernel.Seen{Event: ev, Decided: &out})
	return &eg
}

// requestEvent is the connection's event, naming req instead of the first
// request.
func (g *httpGate) requestEvent(req *http.Request) kernel.EgressEvent {
	ev := g.cn.eg.Event
	ev.HTTPHost, ev.HTTPMethod, ev.HTTPPath = "", "", ""
	if req != nil {
		ev.HTTPHost, ev.HTTPMethod, ev.HTTPPath = hostOnly(req.Host), req.Method, req.RequestURI
	}
	return ev
}

// isClientGone says a read failed because the peer went away or time ran
// out, not because of what it sent.
func isClientGone(err error) bool {
	return errors.Is(err, net.ErrClosed) || errors.Is(err, syscall.ECONNRESET) ||
		errors.Is(err, syscall.EPIPE) || errors.Is(err, os.ErrDeadlineExceeded) || sniff.IsTimeout(err)
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
