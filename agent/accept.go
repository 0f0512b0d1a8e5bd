package agent

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/backbay-labs/chio-agent/bpf"
	"github.com/backbay-labs/chio-agent/internal/sniff"
	"github.com/backbay-labs/chio-agent/kernel"
)

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
	// snap is the policy snapshot taken when the connection was accepted:
	// every decision and receipt of this connection is made under it, so a
	// reload in between cannot sign one policy's decision with another's
	// hash.
	snap kernel.Snapshot
	// pending says the connection holds a pending slot; relaying says it
	// holds a relay slot instead.
	pending, relaying bool
	sniff             sniff.Sniffed
	// eg is the connection as decided: the event (as far as the datapath
	// told it, until the decision adds what the first bytes said) and the
	// outcome.
	eg kernel.Egress
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

	seen := p.seen(cn, c.LocalAddr().(*net.TCPAddr).AddrPort())
	if !seen.ToOwnListener() {
		sn, err := sniff.Sniff(c, sniff.Options{Deadline: p.timeouts.FirstBytes, MaxBytes: p.limits.HeadBytes})
		cn.sniff = sn
		seen.Sniffed, seen.SniffErr, seen.ClientGone = &cn.sniff, err, err != nil && isClientGone(err)
	}
	cn.eg = cn.snap.DecideEgress(ctx, seen)
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
	cn := &conn{client: c, orig: orig, w: w, snap: w.decider(p.kern).Snapshot()}
	cn.eg.Event = kernel.EgressEvent{
		IP:           orig.Dst.Addr(),
		Port:         orig.Dst.Port(),
		Transport:    kernel.TransportTCP,
		Workload:     w.identity(orig.CgroupID),
		Process:      kernel.ProcessIdentity{PID: orig.PID, UID: orig.UID, Comm: orig.Comm},
		ConnectionID: newConnectionID(),
	}
	return cn
}

// newConnectionID is a random 128-bit id for one connection's receipt.
func newConnectionID() string {
	var b [16]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
