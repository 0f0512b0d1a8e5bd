package agent

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/backbay-labs/chio-agent/bpf"
	"github.com/backbay-labs/chio-agent/internal/dnsproxy"
)

// The agent's DNS listeners. With Options.DNS set, every network namespace
// that has protected workloads gets, beside the proxy's TCP listeners, a DNS
// listener on the same addresses (127.0.0.1 and ::1) and one port per
// family for UDP and TCP together; the programs (bpf/dns.c) send every DNS
// message of those workloads there, whatever address it was for. A query is
// attributed by what the kernel recorded when it was sent, never by its
// source address alone: for UDP, sock_diag names the sending socket of each
// datagram and the socket's DNS original names its workload; for TCP, the
// connection's original is taken on accept as the proxy takes its own. A
// datagram or connection the kernel has no record of (something unprotected
// that addressed the listener itself) is dropped unanswered.

// Bounds of what DNS clients can make the agent hold.
const (
	// dnsInFlightPerWorkload is how many UDP queries of one workload may
	// wait for the handler at once; further datagrams are dropped (the
	// client retries, as it would after a lost datagram).
	dnsInFlightPerWorkload = 64
	// dnsConnsPerWorkload is how many DNS-over-TCP connections of one
	// workload may be open at once; more are closed on accept.
	dnsConnsPerWorkload = 16
	// dnsMaxMessage is the largest DNS message read (UDP datagram or TCP
	// message: the 2-byte length allows no more).
	dnsMaxMessage = 65535
	// dnsTCPIdle closes a DNS-over-TCP connection with no complete query
	// for this long (RFC 7766 suggests seconds).
	dnsTCPIdle = 10 * time.Second
	// dnsAnswerTimeout bounds the handler's work on one query.
	dnsAnswerTimeout = 10 * time.Second
	// dnsPortTries is how many kernel-picked ports are tried for a port
	// free for both TCP and UDP.
	dnsPortTries = 16
)

// dnsListeners are one namespace's DNS listeners.
type dnsListeners struct {
	netns        string
	udp4, udp6   *net.UDPConn
	tcp4, tcp6   *net.TCPListener
	port4, port6 uint16 // 0: none for that family
	diag         *diagSock
	ctx          context.Context
	cancel       context.CancelFunc

	mu    sync.Mutex
	conns map[*net.TCPConn]struct{} // open DNS-over-TCP connections, closed with the listeners
}

// dnsServer answers every namespace's DNS listeners through the handler.
type dnsServer struct {
	handler dnsproxy.Handler
	objs    *bpf.Objects
	reg     *registry
	p       *proxy // for its error ring and logger

	mu       sync.Mutex
	inflight map[uint32]int // UDP queries at the handler, by workload id
	conns    map[uint32]int // DNS-over-TCP connections, by workload id

	// overBound counts the datagrams and connections turned away by a
	// workload's bound; unattributed those the kernel had no record of.
	overBound, unattributed atomic.Uint64
}

func newDNSServer(h dnsproxy.Handler, objs *bpf.Objects, reg *registry, p *proxy) *dnsServer {
	return &dnsServer{handler: h, objs: objs, reg: reg, p: p, inflight: map[uint32]int{}, conns: map[uint32]int{}}
}

// acquire takes one of a workload's slots in m under its bound.
func (s *dnsServer) acquire(m map[uint32]int, id uint32, bound int) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if m[id] >= bound {
		return false
	}
	m[id]++
	return true
}

func (s *dnsServer) release(m map[uint32]int, id uint32) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if m[id]--; m[id] <= 0 {
		delete(m, id)
	}
}

// openDNS opens the DNS listeners of lp's namespace, in it (called inside
// inNetns), on the pinned ports when the datapath already points there.
func openDNS(lp *listenerPair, pinned bpf.Workload) (*dnsListeners, error) {
	d := &dnsListeners{netns: lp.netns, conns: map[*net.TCPConn]struct{}{}}
	var err error
	if d.diag, err = openDiag(); err != nil {
		return nil, err
	}
	if lp.ln4 != nil {
		d.tcp4, d.udp4, err = openDNSPort("4", lp.addr4.Addr(), pinned.DNSPort4)
		if err != nil && pinned.DNSPort4 != 0 {
			// The pinned port is taken: a new one, which Protect then
			// writes into the workload's entry.
			d.tcp4, d.udp4, err = openDNSPort("4", lp.addr4.Addr(), 0)
		}
		if err != nil {
			d.close()
			return nil, err
		}
		d.port4 = uint16(d.udp4.LocalAddr().(*net.UDPAddr).Port)
	}
	if lp.ln6 != nil {
		d.tcp6, d.udp6, err = openDNSPort("6", lp.addr6.Addr(), pinned.DNSPort6)
		if err != nil && pinned.DNSPort6 != 0 {
			d.tcp6, d.udp6, err = openDNSPort("6", lp.addr6.Addr(), 0)
		}
		if err != nil {
			// As for the proxy: IPv6 DNS is then refused, never passed.
			d.tcp6, d.udp6 = nil, nil
		} else {
			d.port6 = uint16(d.udp6.LocalAddr().(*net.UDPAddr).Port)
		}
	}
	return d, nil
}

// openDNSPort opens a TCP and a UDP listener on one port of addr: port, or
// one the kernel picks that is free for both.
func openDNSPort(family string, addr netip.Addr, port uint16) (*net.TCPListener, *net.UDPConn, error) {
	tries := dnsPortTries
	if port != 0 {
		tries = 1
	}
	var err error
	for range tries {
		var tl *net.TCPListener
		tl, err = listenTCP("tcp"+family, net.TCPAddrFromAddrPort(netip.AddrPortFrom(addr, port)))
		if err != nil {
			return nil, nil, fmt.Errorf("listen for DNS on %s: %w", netip.AddrPortFrom(addr, port), err)
		}
		at := tl.Addr().(*net.TCPAddr).AddrPort()
		var ul *net.UDPConn
		ul, err = net.ListenUDP("udp"+family, net.UDPAddrFromAddrPort(at))
		if err == nil {
			return tl, ul, nil
		}
		tl.Close()
		err = fmt.Errorf("listen for DNS on %s/udp: %w", at, err)
		if !errors.Is(err, syscall.EADDRINUSE) {
			break
		}
	}
	return nil, nil, err
}

// close closes the listeners and every open connection, and stops the
// queries at the handler (their answers go nowhere).
func (d *dnsListeners) close() {
	if d.cancel != nil {
		d.cancel()
	}
	for _, u := range []*net.UDPConn{d.udp4, d.udp6} {
		if u != nil {
			u.Close()
		}
	}
	for _, l := range []*net.TCPListener{d.tcp4, d.tcp6} {
		if l != nil {
			l.Close()
		}
	}
	if d.diag != nil {
		d.diag.close()
	}
	d.mu.Lock()
	for c := range d.conns {
		c.Close()
	}
	d.mu.Unlock()
}

// serveDNS starts the goroutines that serve d's listeners, counted in wg.
func (s *dnsServer) serveDNS(ctx context.Context, d *dnsListeners, wg *sync.WaitGroup) {
	d.ctx, d.cancel = context.WithCancel(ctx)
	for _, u := range []*net.UDPConn{d.udp4, d.udp6} {
		if u != nil {
			wg.Add(1)
			go func() { defer wg.Done(); s.serveUDP(d, u, wg) }()
		}
	}
	for _, l := range []*net.TCPListener{d.tcp4, d.tcp6} {
		if l != nil {
			wg.Add(1)
			go func() { defer wg.Done(); s.serveTCP(d, l, wg) }()
		}
	}
}

// serveUDP reads datagrams until u is closed; each attributed one goes to
// the handler in its own goroutine, within its workload's bound.
func (s *dnsServer) serveUDP(d *dnsListeners, u *net.UDPConn, wg *sync.WaitGroup) {
	local := u.LocalAddr().(*net.UDPAddr).AddrPort()
	family := uint8(unix.AF_INET)
	if !local.Addr().Is4() {
		family = unix.AF_INET6
	}
	buf := make([]byte, dnsMaxMessage)
	for {
		n, client, err := u.ReadFromUDPAddrPort(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			s.p.errs.add(fmt.Errorf("read DNS on %s: %w", local, err))
			continue
		}
		q, ok := s.attributeUDP(d, family, local, client)
		if !ok {
			s.unattributed.Add(1)
			continue
		}
		if !s.acquire(s.inflight, q.Workload, dnsInFlightPerWorkload) {
			s.overBound.Add(1)
			s.p.logger.WithField("workload_id", q.Workload).Debug("DNS query dropped: too many in flight")
			continue
		}
		q.Msg = append([]byte(nil), buf[:n]...)
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer s.release(s.inflight, q.Workload)
			ctx, cancel := context.WithTimeout(d.ctx, dnsAnswerTimeout)
			ans := s.handler.Answer(ctx, q)
			cancel()
			if ans == nil || d.ctx.Err() != nil {
				return
			}
			// The kernel's recvmsg hook gives the client this datagram
			// with the resolver it addressed as its source.
			if _, err := u.WriteToUDPAddrPort(ans, client); err != nil && !errors.Is(err, net.ErrClosed) {
				s.p.logger.WithField("client", client).WithError(err).Debug("DNS answer not sent")
			}
		}()
	}
}

// attributeUDP finds who sent a datagram: the sending socket by sock_diag,
// its DNS original in the kernel, the workload that names. A datagram the
// kernel did not redirect has no original and is dropped.
func (s *dnsServer) attributeUDP(d *dnsListeners, family uint8, local, client netip.AddrPort) (dnsproxy.Query, bool) {
	cookie, err := d.diag.udpCookie(family, local, client)
	if err != nil {
		s.p.logger.WithField("client", client).WithError(err).Debug("DNS datagram from no socket")
		return dnsproxy.Query{}, false
	}
	orig, err := s.objs.DNSOriginal(cookie)
	if err != nil || orig.Listener != local {
		// Not redirected DNS: something addressed the listener itself.
		s.p.logger.WithField("client", client).WithError(err).Debug("DNS datagram without an original destination")
		return dnsproxy.Query{}, false
	}
	if s.reg.byID(orig.WorkloadID) == nil {
		s.p.errs.add(fmt.Errorf("DNS from unknown workload id %d", orig.WorkloadID))
		return dnsproxy.Query{}, false
	}
	return dnsproxy.Query{Workload: orig.WorkloadID, Transport: "udp", Client: client, Resolver: orig.Dst,
		PID: orig.PID, Comm: orig.Comm}, true
}

// serveTCP accepts DNS-over-TCP connections until l is closed.
func (s *dnsServer) serveTCP(d *dnsListeners, l *net.TCPListener, wg *sync.WaitGroup) {
	cookie, err := bpf.NetnsCookie(l)
	if err != nil {
		s.p.errs.add(fmt.Errorf("DNS listener %s: %w", l.Addr(), err))
		return
	}
	for {
		c, err := l.AcceptTCP()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			s.p.errs.add(fmt.Errorf("accept DNS on %s: %w", l.Addr(), err))
			time.Sleep(10 * time.Millisecond) // e.g. EMFILE: don't spin
			continue
		}
		peer := c.RemoteAddr().(*net.TCPAddr).AddrPort()
		orig, err := s.objs.TakeOriginal(cookie, peer)
		if err != nil || s.reg.byID(orig.WorkloadID) == nil {
			// Not redirected DNS: nothing to answer.
			s.unattributed.Add(1)
			resetClose(c)
			continue
		}
		if !s.acquire(s.conns, orig.WorkloadID, dnsConnsPerWorkload) {
			s.overBound.Add(1)
			resetClose(c)
			continue
		}
		d.mu.Lock()
		if d.ctx.Err() != nil {
			d.mu.Unlock()
			s.release(s.conns, orig.WorkloadID)
			c.Close()
			return
		}
		d.conns[c] = struct{}{}
		d.mu.Unlock()
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer s.release(s.conns, orig.WorkloadID)
			defer func() {
				d.mu.Lock()
				delete(d.conns, c)
				d.mu.Unlock()
				c.Close()
			}()
			s.serveConn(d.ctx, c, dnsproxy.Query{Workload: orig.WorkloadID, Transport: "tcp", Client: peer,
				Resolver: orig.Dst, PID: orig.PID, Comm: orig.Comm})
		}()
	}
}

// serveConn answers the length-prefixed messages of one connection in turn
// until the client closes it, stays idle, or sends what the handler will
// not answer.
func (s *dnsServer) serveConn(ctx context.Context, c *net.TCPConn, q dnsproxy.Query) {
	var hdr [2]byte
	for {
		c.SetReadDeadline(time.Now().Add(dnsTCPIdle))
		if _, err := io.ReadFull(c, hdr[:]); err != nil {
			return
		}
		n := binary.BigEndian.Uint16(hdr[:])
		if n == 0 {
			return
		}
		msg := make([]byte, n)
		if _, err := io.ReadFull(c, msg); err != nil {
			return
		}
		q.Msg = msg
		actx, cancel := context.WithTimeout(ctx, dnsAnswerTimeout)
		ans := s.handler.Answer(actx, q)
		cancel()
		if ans == nil || len(ans) > dnsMaxMessage {
			return
		}
		out := make([]byte, 2+len(ans))
		binary.BigEndian.PutUint16(out, uint16(len(ans)))
		copy(out[2:], ans)
		c.SetWriteDeadline(time.Now().Add(dnsTCPIdle))
		if _, err := c.Write(out); err != nil {
			return
		}
	}
}
