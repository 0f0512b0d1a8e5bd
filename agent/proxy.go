package agent

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"

	"github.com/backbay-labs/chio-agent/bpf"
	"github.com/backbay-labs/chio-agent/internal/sniff"
	"github.com/backbay-labs/chio-agent/kernel"
	"github.com/backbay-labs/chio-agent/kernel/hushspec"
	"github.com/backbay-labs/chio-agent/receipts"
)

// Guards named in receipts for decisions the agent makes itself rather than
// the policy's egress rules.
const (
	// GuardAntiSpoof refuses a connection whose TLS SNI or HTTP Host names a
	// host the destination address does not belong to.
	GuardAntiSpoof = "ChioAgentAntiSpoofGuard"
	// GuardProtocol refuses a connection whose first bytes could not be
	// read or parsed (nothing sent, malformed, too large).
	GuardProtocol = "ChioAgentProtocolGuard"
	// GuardDatapath covers refusals made in the kernel: the static verdict
	// map, UDP lockdown, a connection the proxy itself would loop on.
	GuardDatapath = "ChioAgentDatapathGuard"
)

// Timeouts bound each proxied connection.
type Timeouts struct {
	// FirstBytes is how long a client has to send its first message
	// (ClientHello, request head). Default 5s.
	FirstBytes time.Duration
	// Idle closes a connection with no data either way for this long.
	// Default 5m.
	Idle time.Duration
	// Total closes a connection this long after it was accepted. Default 1h.
	Total time.Duration
	// Dial bounds the upstream connect. Default 10s.
	Dial time.Duration
}

func (t Timeouts) withDefaults() Timeouts {
	if t.FirstBytes <= 0 {
		t.FirstBytes = 5 * time.Second
	}
	if t.Idle <= 0 {
		t.Idle = 5 * time.Minute
	}
	if t.Total <= 0 {
		t.Total = time.Hour
	}
	if t.Dial <= 0 {
		t.Dial = 10 * time.Second
	}
	return t
}

// Decision is one decided connection (or kernel refusal), as the agent
// reports it to its OnDecision hook and its status.
type Decision struct {
	Time        time.Time      `json:"time"`
	Workload    string         `json:"workload"`
	PID         uint32         `json:"pid,omitempty"`
	Comm        string         `json:"comm,omitempty"`
	Dst         netip.AddrPort `json:"dst"`
	Transport   string         `json:"transport"`
	Name        string         `json:"name,omitempty"`     // SNI or Host, when seen
	Protocol    string         `json:"protocol,omitempty"` // tls, http, opaque …
	Verdict     string         `json:"verdict"`            // allow or deny
	Guard       string         `json:"guard"`
	MatchedRule string         `json:"matched_rule,omitempty"`
	Reason      string         `json:"reason,omitempty"`
	ReceiptID   string         `json:"receipt_id,omitempty"`
	Seq         uint64         `json:"seq,omitempty"`
	Count       uint32         `json:"count,omitempty"` // kernel refusals this stands for
	Err         string         `json:"error,omitempty"` // why the connection failed after the decision
}

// counters are the allowed/denied/failed totals status shows.
type counters struct {
	allowed, denied, failed, receiptErrors atomic.Uint64
}

// proxy decides and relays the connections redirected to its listeners.
type proxy struct {
	objs      *bpf.Objects
	log       *receipts.Log
	key       ed25519.PrivateKey
	policy    *atomic.Pointer[hushspec.Policy]
	workloads *registry
	resolver  *resolver
	timeouts  Timeouts // defaults applied (Start)
	limits    Limits   // defaults applied (Start)
	mark      uint32
	logger    logrus.FieldLogger
	onDecide  func(Decision)
	counts    *counters
	errs      *errorRing
	now       func() time.Time
	// idle closes relays that have gone quiet.
	idle *idleSet
	// metrics are the Prometheus metrics.
	metrics *metrics
	// pending and relays count connections held over all workloads
	// (each workload counts its own too), against limits.
	pending, relays atomic.Int64
	// overflow aggregates the receipts of connections refused at accept.
	overflow *overflow

	wg sync.WaitGroup
}

// serve accepts on ln until it is closed.
func (p *proxy) serve(ctx context.Context, ln *net.TCPListener, netnsPath string) {
	// Accepted sockets live in the listener's namespace: one cookie for all.
	cookie, err := bpf.NetnsCookie(ln)
	if err != nil {
		p.errs.add(fmt.Errorf("listener %s: %w", ln.Addr(), err))
		ln.Close()
		return
	}
	for {
		c, err := ln.AcceptTCP()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			p.errs.add(fmt.Errorf("accept on %s: %w", ln.Addr(), err))
			time.Sleep(10 * time.Millisecond) // e.g. EMFILE: don't spin
			continue
		}
		p.admit(ctx, c, cookie)
	}
}

// admit finds an accepted connection's workload and starts deciding it, or
// refuses it at once when a pending bound is full. This runs in the accept
// loop and costs a map lookup: a flood of connections is turned away without
// a goroutine, a buffer or a receipt write each (their receipts are
// aggregated).
func (p *proxy) admit(ctx context.Context, c *net.TCPConn, cookie uint64) {
	peer := c.RemoteAddr().(*net.TCPAddr).AddrPort()
	orig, err := p.objs.TakeOriginal(cookie, peer)
	if err != nil {
		// Not a redirected connection (something dialled the listener
		// itself), or its entry is gone: nothing to decide, nothing relayed.
		p.logger.WithField("peer", peer).WithError(err).Debug("connection without an original destination")
		resetClose(c)
		return
	}
	w := p.workloads.byID(orig.WorkloadID)
	if w == nil {
		p.errs.add(fmt.Errorf("connection from unknown workload id %d", orig.WorkloadID))
		resetClose(c)
		return
	}
	if bound := p.admitPending(w); bound != "" {
		resetClose(c)
		p.overflow.add(w, orig, bound, p.now())
		return
	}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		p.handle(ctx, c, orig, w)
	}()
}

// conn is the state of one proxied connection.
type conn struct {
	client *net.TCPConn
	orig   bpf.Original
	w      *workload
	// pol is the policy snapshot taken when the connection was accepted:
	// every decision and receipt of this connection uses it, so a reload
	// in between cannot sign one policy's decision with another's hash.
	pol *hushspec.Policy
	// pending says the connection holds a pending slot; relaying says it
	// holds a relay slot instead.
	pending, relaying bool
	sniff             sniff.Sniffed
	event             kernel.EgressEvent
	out               kernel.Outcome
}

// handle decides a connection admitted as pending, and relays it if it is
// allowed (as a relay, no longer pending).
func (p *proxy) handle(ctx context.Context, c *net.TCPConn, orig bpf.Original, w *workload) {
	defer c.Close()
	start := p.now()
	c.SetDeadline(start.Add(p.timeouts.Total))
	cn := p.newConn(c, orig, w)
	cn.pending = true
	defer cn.release(p)

	local := c.LocalAddr().(*net.TCPAddr).AddrPort()
	if orig.Dst.Addr().Unmap() == local.Addr().Unmap() && orig.Dst.Port() == local.Port() {
		cn.out = kernel.Outcome{Verdict: kernel.VerdictDeny, Guard: GuardDatapath,
			Reason: "destination is the agent's own listener"}
		p.finish(ctx, cn, start)
		return
	}

	to := p.timeouts
	sn, err := sniff.Sniff(c, sniff.Options{Deadline: to.FirstBytes, MaxBytes: p.limits.HeadBytes})
	cn.sniff = sn
	if err != nil {
		reason := "reading the first bytes failed: " + err.Error()
		if isClientGone(err) {
			// The client went away: nothing it sent was malformed.
			reason = "the client reset the connection before its first message was complete: " + err.Error()
		}
		cn.out = kernel.Outcome{Verdict: kernel.VerdictDeny, Guard: GuardProtocol, Reason: reason}
		p.finish(ctx, cn, start)
		return
	}
	cn.event.SNI = sn.SNI
	cn.event.ALPN = sn.ALPN
	cn.event.ECH = sn.ECH
	cn.event.HTTPHost = sn.Host
	cn.event.HTTPMethod = sn.Method
	cn.event.HTTPPath = sn.Path
	cn.out = p.decide(ctx, cn)
	p.finish(ctx, cn, start)
}

// release gives back the slot the connection holds.
func (cn *conn) release(p *proxy) {
	if cn.pending {
		p.releasePending(cn.w)
		cn.pending = false
	}
	if cn.relaying {
		p.releaseRelay(cn.w)
		cn.relaying = false
	}
}

// newConn starts the state of a redirected connection: its event as far as
// the datapath told it, and the policy snapshot it will be decided under.
func (p *proxy) newConn(c *net.TCPConn, orig bpf.Original, w *workload) *conn {
	cn := &conn{client: c, orig: orig, w: w, pol: p.policy.Load()}
	cn.event = kernel.EgressEvent{
		IP:           orig.Dst.Addr(),
		Port:         orig.Dst.Port(),
		Transport:    kernel.TransportTCP,
		Workload:     w.identity(),
		Process:      kernel.ProcessIdentity{PID: orig.PID, UID: orig.UID, Comm: orig.Comm},
		ConnectionID: newConnectionID(),
	}
	return cn
}

// decide evaluates the connection: protocol sanity, the policy, then the
// anti-spoofing check for an allowed name.
func (p *proxy) decide(ctx context.Context, cn *conn) kernel.Outcome {
	sn := cn.sniff
	switch {
	case sn.Protocol == sniff.ProtocolNone && sn.Stop == sniff.StopTimeout:
		return kernel.Outcome{Verdict: kernel.VerdictDeny, Guard: GuardProtocol,
			Reason: fmt.Sprintf("client sent nothing within %s", p.timeouts.FirstBytes)}
	case sn.Protocol == sniff.ProtocolNone:
		return kernel.Outcome{Verdict: kernel.VerdictDeny, Guard: GuardProtocol,
			Reason: "client closed before sending anything"}
	case sn.Stop == sniff.StopMalformed:
		return kernel.Outcome{Verdict: kernel.VerdictDeny, Guard: GuardProtocol,
			Reason: fmt.Sprintf("malformed %s: %s", sn.Protocol, sn.Malformed)}
	case sn.Stop == sniff.StopLimit:
		return kernel.Outcome{Verdict: kernel.VerdictDeny, Guard: GuardLimit,
			Reason: fmt.Sprintf("%s first message refused: %s", sn.Protocol, p.boundReason(boundHeadBytes))}
	case sn.Stop != sniff.StopComplete && (sn.Protocol == sniff.ProtocolTLS || sn.Protocol == sniff.ProtocolHTTP):
		// A name may be in the part that never came: do not decide on the IP.
		return kernel.Outcome{Verdict: kernel.VerdictDeny, Guard: GuardProtocol,
			Reason: fmt.Sprintf("incomplete %s first message (%s)", sn.Protocol, sn.Stop)}
	}

	target := cn.event.Target()
	res := cn.pol.Evaluate(hushspec.Action{Type: "egress", Target: target})
	out := kernel.Outcome{
		Verdict:        kernel.VerdictAllow,
		PolicyDecision: res.Decision,
		Guard:          kernel.GuardEgressPolicy,
		Reason:         res.Reason,
		MatchedRule:    res.MatchedRule,
		Pattern:        res.Pattern,
	}
	if res.Decision == hushspec.DecisionDeny {
		out.Verdict = kernel.VerdictDeny
		return out
	}
	if refused, ok := cn.w.refuseEgressPort(cn.orig.Dst.Port(), out); ok {
		return refused
	}
	// The name came from the client. Allowing it is only right if the
	// address it dialled belongs to that name; otherwise a client could send
	// an allowed SNI to a forbidden address.
	name := res.Host
	if name == "" {
		name = target
	}
	if a, err := netip.ParseAddr(name); err == nil {
		// An address was named: it must be the one dialled.
		if a.Unmap() != cn.orig.Dst.Addr().Unmap() {
			return kernel.Outcome{Verdict: kernel.VerdictDeny, PolicyDecision: res.Decision, Guard: GuardAntiSpoof,
				MatchedRule: res.MatchedRule,
				Reason:      fmt.Sprintf("the client named %s but dialled %s", a, cn.orig.Dst.Addr())}
		}
		return out
	}
	ok, err := p.resolver.owns(ctx, name, cn.orig.Dst.Addr())
	switch {
	case err != nil:
		return kernel.Outcome{Verdict: kernel.VerdictDeny, PolicyDecision: res.Decision, Guard: GuardAntiSpoof,
			MatchedRule: res.MatchedRule,
			Reason:      fmt.Sprintf("cannot check that %s belongs to %s: %v", cn.orig.Dst.Addr(), name, err)}
	case !ok:
		return kernel.Outcome{Verdict: kernel.VerdictDeny, PolicyDecision: res.Decision, Guard: GuardAntiSpoof,
			MatchedRule: res.MatchedRule,
			Reason:      fmt.Sprintf("destination %s is not an address of %s", cn.orig.Dst.Addr(), name)}
	}
	return out
}

// finish writes the receipt, then acts on the decision. No receipt, no
// connection: if the receipt cannot be written the connection is refused.
func (p *proxy) finish(ctx context.Context, cn *conn, start time.Time) {
	if cn.out.Verdict == kernel.VerdictAllow {
		// An allowed connection moves from pending to relayed, if a relay
		// slot is free; if not, it is refused, and the receipt says why.
		if bound := p.admitRelay(cn.w); bound != "" {
			cn.out = kernel.Outcome{Verdict: kernel.VerdictDeny, PolicyDecision: cn.out.PolicyDecision, Guard: GuardLimit,
				MatchedRule: cn.out.MatchedRule, Pattern: cn.out.Pattern,
				Reason: "allowed by the policy, refused for now: " + p.boundReason(bound)}
		} else {
			cn.relaying = true
			cn.pending = false
			p.releasePending(cn.w)
		}
	}
	d := cn.decision(start, firstNonEmpty(cn.sniff.SNI, cn.sniff.Host), cn.out)
	if cn.out.Verdict == kernel.VerdictAllow && p.log.Mode() == receipts.ModeAsync {
		// Async receipts do not hold the decision up, so neither does
		// making and signing them: that runs beside the relay, in a place
		// reserved in the log first, so that a crash before the receipt is
		// written is still counted as a loss. The log bounds the places;
		// past the bound (or if the log refuses) the receipt is written in
		// line below. The dial goes first: on two cores, work beside it
		// delays the handshake's wakeup more than it saves.
		if res, err := p.log.Reserve(); err == nil {
			up, err := p.dial(ctx, cn)
			p.wg.Add(1)
			go func() {
				defer p.wg.Done()
				p.finishReceipt(ctx, cn, d, res)
			}()
			p.counts.allowed.Add(1)
			dialed := make(chan dialResult, 1)
			dialed <- dialResult{up, err}
			p.connect(ctx, cn, "", dialed)
			return
		}
	}
	// An allowed connection's upstream dial overlaps the receipt's signing
	// and commit: nothing is sent upstream until the receipt is written
	// (durable in sync mode), and if it cannot be written the upstream
	// connection is closed unused.
	var dialed chan dialResult
	if cn.out.Verdict == kernel.VerdictAllow {
		dialed = p.dialAsync(ctx, cn)
	}
	if err := p.record(ctx, cn.event, cn.out, cn.pol.Hash(), &d, nil); err != nil {
		if dialed != nil {
			if r := <-dialed; r.up != nil {
				r.up.Close()
			}
		}
		d.Verdict = kernel.VerdictDeny
		p.counts.failed.Add(1)
		p.report(d)
		resetClose(cn.client)
		return
	}
	if cn.out.Verdict != kernel.VerdictAllow {
		p.counts.denied.Add(1)
		p.report(d)
		p.refuse(cn, d.ReceiptID)
		return
	}
	p.counts.allowed.Add(1)
	p.report(d) // as decided; the relay may run for hours
	p.connect(ctx, cn, d.ReceiptID, dialed)
}

// finishReceipt writes, in the place res holds, the receipt of an allowed
// connection that is already being relayed (async mode), then reports the
// decision.
func (p *proxy) finishReceipt(ctx context.Context, cn *conn, d Decision, res *receipts.Reservation) {
	p.record(ctx, cn.event, cn.out, cn.pol.Hash(), &d, res)
	p.report(d)
}

// dialAsync starts the upstream dial and returns where its result arrives.
func (p *proxy) dialAsync(ctx context.Context, cn *conn) chan dialResult {
	dialed := make(chan dialResult, 1)
	go func() {
		up, err := p.dial(ctx, cn)
		dialed <- dialResult{up, err}
	}()
	return dialed
}

// connect waits for the upstream dial and relays.
func (p *proxy) connect(ctx context.Context, cn *conn, receiptID string, dialed chan dialResult) {
	r := <-dialed
	if r.err != nil {
		resetClose(cn.client)
		r.err = fmt.Errorf("dial %s: %w", cn.orig.Dst, r.err)
	} else {
		r.err = p.relay(ctx, cn, r.up)
	}
	if err := r.err; err != nil {
		p.counts.failed.Add(1)
		p.errs.add(fmt.Errorf("relay %s (receipt %s): %w", cn.orig.Dst, receiptID, err))
		p.logger.WithFields(logrus.Fields{"dst": cn.orig.Dst.String(), "receipt": receiptID}).WithError(err).Warn("relay failed")
	}
}

func (p *proxy) report(d Decision) {
	if m := p.metrics; m != nil {
		n := float64(max(d.Count, 1))
		m.decisions.WithLabelValues(d.Workload, d.Verdict, d.Guard).Add(n)
		if d.Transport == kernel.TransportTCP && d.Count == 0 && !d.Time.IsZero() {
			m.decisionTime.Observe(p.now().Sub(d.Time).Seconds())
		}
	}
	if p.onDecide != nil {
		p.onDecide(d)
	}
	p.logger.WithFields(logrus.Fields{
		"workload": d.Workload, "pid": d.PID, "comm": d.Comm, "dst": d.Dst.String(),
		"name": d.Name, "verdict": d.Verdict, "rule": d.MatchedRule, "receipt": d.ReceiptID,
	}).Info(d.Reason)
}

// record writes the receipt of a decision made under the policy whose hash
// is polHash, and fills d's receipt fields. A receipt that cannot be written
// is counted, kept among the last errors and noted in d; the caller then
// refuses the connection.
//
// The write is not cut short by ctx's cancellation (the agent shutting
// down): once a receipt is queued the log writes it, and an error here must
// mean that it was not written. Close waits for these writes; a log that is
// closed or failed still answers at once.
func (p *proxy) record(ctx context.Context, ev kernel.EgressEvent, out kernel.Outcome, polHash string, d *Decision, res *receipts.Reservation) error {
	id, seq, err := p.receipt(context.WithoutCancel(ctx), ev, out, polHash, res)
	d.ReceiptID, d.Seq = id, seq
	if err != nil {
		p.counts.receiptErrors.Add(1)
		if p.metrics != nil {
			p.metrics.receiptErrors.Inc()
		}
		p.errs.add(fmt.Errorf("receipt for %s: %w", d.Dst, err))
		d.Err = "receipt not written: " + err.Error()
	}
	return err
}

// decision describes cn, decided as out, for reports.
func (cn *conn) decision(at time.Time, name string, out kernel.Outcome) Decision {
	return Decision{
		Time:        at,
		Workload:    cn.w.name,
		PID:         cn.orig.PID,
		Comm:        cn.orig.Comm,
		Dst:         cn.orig.Dst,
		Transport:   kernel.TransportTCP,
		Protocol:    string(cn.sniff.Protocol),
		Name:        name,
		Verdict:     out.Verdict,
		Guard:       out.Guard,
		MatchedRule: out.MatchedRule,
		Reason:      out.Reason,
	}
}

// receipt makes and appends the receipt of one decision, returning its id
// and sequence number: in the place res holds when it is not nil (async
// mode, beside the relay), else through Log.AppendPrepared, which returns
// once the receipt is durable in sync mode and once it is accepted in async
// mode.
func (p *proxy) receipt(ctx context.Context, ev kernel.EgressEvent, out kernel.Outcome, polHash string, res *receipts.Reservation) (string, uint64, error) {
	prep, err := kernel.PrepareEgressReceipt(ev, out, polHash, ed25519.PublicKey(p.key[32:]), p.now())
	switch {
	case err != nil:
		if res != nil {
			res.Abandon(err)
		}
		return "", 0, err
	case res != nil:
		return prep.ID(), 0, res.AppendPrepared(prep)
	}
	seq, err := p.log.AppendPrepared(ctx, prep)
	return prep.ID(), seq, err
}

// refuse ends a denied connection the way its protocol understands: an
// access_denied alert for TLS, a 403 with the reason and receipt id for HTTP,
// a reset for anything else.
func (p *proxy) refuse(cn *conn, receiptID string) {
	c := cn.client
	c.SetWriteDeadline(p.now().Add(2 * time.Second))
	switch cn.sniff.Protocol {
	case sniff.ProtocolTLS:
		// A fatal access_denied(49) alert in a TLS 1.2-framed record, which
		// every TLS client can read before its handshake.
		c.Write([]byte{0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 49})
		c.CloseWrite()
		drainBriefly(c)
	case sniff.ProtocolHTTP:
		body, _ := json.Marshal(map[string]string{
			"error":      "chio_access_denied",
			"message":    cn.out.Reason,
			"reason":     cn.out.Reason,
			"guard":      cn.out.Guard,
			"receipt_id": receiptID,
		})
		fmt.Fprintf(c, "HTTP/1.1 403 Forbidden\r\nContent-Type: application/json\r\nContent-Length: %d\r\nX-Chio-Receipt-Id: %s\r\nConnection: close\r\n\r\n%s",
			len(body), receiptID, body)
		c.CloseWrite()
		drainBriefly(c)
	default:
		resetClose(c)
	}
}

type dialResult struct {
	up  *net.TCPConn
	err error
}

// dial connects to the original destination from the workload's network
// namespace, with the agent's mark so the programs leave the socket alone.
func (p *proxy) dial(ctx context.Context, cn *conn) (*net.TCPConn, error) {
	var up *net.TCPConn
	err := inNetns(cn.w.netns, func() error {
		if cn.orig.Dst.Addr().IsLoopback() {
			select {
			case blockingDials <- struct{}{}:
				c, err := p.dialLoopback(cn.orig.Dst)
				<-blockingDials
				up = c
				return err
			default: // enough threads blocked already: use the poller
			}
		}
		d := net.Dialer{Timeout: p.timeouts.Dial, Control: p.markSocket}
		c, err := d.DialContext(ctx, "tcp", cn.orig.Dst.String())
		if err != nil {
			return err
		}
		up = c.(*net.TCPConn)
		return nil
	})
	return up, err
}

// blockingDials bounds the OS threads blocked in dialLoopback: a loopback
// listener with a full backlog drops SYNs, and each such connect would hold
// a thread until the dial timeout.
var blockingDials = make(chan struct{}, 32)

// dialLoopback connects with a blocking connect(2). On loopback the whole
// handshake runs inside the system call, so this returns a connected socket
// without the round trip through the poller that a non-blocking connect
// costs (tens of microseconds a connection on a busy machine). Remote
// destinations keep the non-blocking dial: a blocking one would hold an OS
// thread for a network round trip.
func (p *proxy) dialLoopback(dst netip.AddrPort) (*net.TCPConn, error) {
	family, sa := unix.AF_INET6, unix.Sockaddr(&unix.SockaddrInet6{Port: int(dst.Port()), Addr: dst.Addr().As16()})
	if dst.Addr().Is4() {
		family, sa = unix.AF_INET, &unix.SockaddrInet4{Port: int(dst.Port()), Addr: dst.Addr().As4()}
	}
	fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, unix.IPPROTO_TCP)
	if err != nil {
		return nil, os.NewSyscallError("socket", err)
	}
	f := os.NewFile(uintptr(fd), "upstream")
	defer f.Close()
	if p.mark != 0 {
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_MARK, int(p.mark)); err != nil {
			return nil, os.NewSyscallError("setsockopt SO_MARK", err)
		}
	}
	// Bound the connect as the dialer would (SYN retries to a black hole).
	tv := unix.NsecToTimeval(p.timeouts.Dial.Nanoseconds())
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_SNDTIMEO, &tv); err != nil {
		return nil, os.NewSyscallError("setsockopt SO_SNDTIMEO", err)
	}
	for {
		err = unix.Connect(fd, sa)
		if err != unix.EINTR {
			break
		}
	}
	if err != nil {
		return nil, os.NewSyscallError("connect", err)
	}
	c, err := net.FileConn(f) // dups the socket into the poller, non-blocking
	if err != nil {
		return nil, err
	}
	return c.(*net.TCPConn), nil
}

// relay replays the sniffed prefix upstream and copies both ways. Copies
// between two TCP sockets use splice(2) inside the Go runtime, so payload
// bytes do not pass through user space; a plain HTTP/1.x connection goes
// through the HTTP gate instead (relayHTTP), which reads every request and
// response head.
func (p *proxy) relay(ctx context.Context, cn *conn, up *net.TCPConn) error {
	to := p.timeouts
	defer up.Close()
	up.SetDeadline(p.now().Add(to.Total))
	pair := &relayPair{a: cn.client, b: up}
	p.idle.add(pair)
	defer p.idle.remove(pair)
	if p.metrics != nil {
		p.metrics.relays.Inc()
		defer p.metrics.relays.Dec()
	}
	if cn.sniff.Protocol == sniff.ProtocolHTTP {
		if err := p.relayHTTP(ctx, cn, up); err != nil {
			return fmt.Errorf("relay: %w", err)
		}
		return nil
	}
	if len(cn.sniff.Prefix) > 0 {
		if _, err := up.Write(cn.sniff.Prefix); err != nil {
			resetClose(cn.client)
			return fmt.Errorf("replay first bytes: %w", err)
		}
	}
	cn.sniff.Prefix = nil // up to HeadBytes, not needed for the hours a relay may last

	errc := make(chan error, 1)
	go func() {
		_, err := io.Copy(up, cn.client)
		up.CloseWrite()
		errc <- err
	}()
	_, err1 := io.Copy(cn.client, up)
	cn.client.CloseWrite()
	err2 := <-errc
	if err := errors.Join(err1, err2); err != nil && !isBenignCopyErr(err) {
		return fmt.Errorf("relay: %w", err)
	}
	return nil
}

// markSocket puts the agent's mark on its upstream sockets, which the
// programs never redirect.
func (p *proxy) markSocket(_, _ string, rc syscall.RawConn) error {
	if p.mark == 0 {
		return nil
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK, int(p.mark))
	}); err != nil {
		return err
	}
	return serr
}

// relayPair is a relayed connection's two sockets.
type relayPair struct{ a, b *net.TCPConn }

// idleSet closes relayed connections once neither socket has received data
// for the idle timeout. One goroutine checks every relay a few times per
// timeout, reading the kernel's own last-receive times (TCP_INFO), so the
// relay stays on splice(2) with no byte counting and no timer per connection.
type idleSet struct {
	idle  time.Duration
	mu    sync.Mutex
	pairs map[*relayPair]struct{}
}

func newIdleSet(idle time.Duration) *idleSet {
	return &idleSet{idle: idle, pairs: map[*relayPair]struct{}{}}
}

func (s *idleSet) add(p *relayPair) {
	s.mu.Lock()
	s.pairs[p] = struct{}{}
	s.mu.Unlock()
}

func (s *idleSet) remove(p *relayPair) {
	s.mu.Lock()
	delete(s.pairs, p)
	s.mu.Unlock()
}

// run checks the relays until stop is closed.
func (s *idleSet) run(stop <-chan struct{}) {
	tick := s.idle / 4
	if tick < 50*time.Millisecond {
		tick = 50 * time.Millisecond
	}
	t := time.NewTicker(tick)
	defer t.Stop()
	var batch []*relayPair
	for {
		select {
		case <-stop:
			return
		case <-t.C:
		}
		s.mu.Lock()
		batch = batch[:0]
		for p := range s.pairs {
			batch = append(batch, p)
		}
		s.mu.Unlock()
		for _, p := range batch {
			ia, erra := sinceLastRecv(p.a)
			ib, errb := sinceLastRecv(p.b)
			if erra == nil && errb == nil && ia >= s.idle && ib >= s.idle {
				p.a.Close()
				p.b.Close()
			}
		}
		clear(batch)
	}
}

func sinceLastRecv(c *net.TCPConn) (time.Duration, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return 0, err
	}
	var info *unix.TCPInfo
	var serr error
	if err := rc.Control(func(fd uintptr) {
		info, serr = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO)
	}); err != nil {
		return 0, err
	}
	if serr != nil {
		return 0, serr
	}
	return time.Duration(info.Last_data_recv) * time.Millisecond, nil
}

func isBenignCopyErr(err error) bool {
	return errors.Is(err, net.ErrClosed) || errors.Is(err, syscall.ECONNRESET) ||
		errors.Is(err, syscall.EPIPE) || errors.Is(err, io.EOF)
}

// resetClose closes with a TCP reset rather than an orderly FIN.
func resetClose(c *net.TCPConn) {
	c.SetLinger(0)
	c.Close()
}

// drainBriefly lets the client read what was written before the close, so
// the kernel does not turn unread input into a reset that eats our reply.
func drainBriefly(c *net.TCPConn) {
	c.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
	io.Copy(io.Discard, io.LimitReader(c, 1<<20))
}

// newConnectionID is a random 128-bit id for one connection's receipt.
func newConnectionID() string {
	var b [16]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

func firstNonEmpty(s ...string) string {
	for _, v := range s {
		if v != "" {
			return v
		}
	}
	return ""
}
