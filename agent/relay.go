package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"syscall"

	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"

	"github.com/backbay-labs/chio-agent/internal/sniff"
)

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

func isBenignCopyErr(err error) bool {
	return errors.Is(err, net.ErrClosed) || errors.Is(err, syscall.ECONNRESET) ||
		errors.Is(err, syscall.EPIPE) || errors.Is(err, io.EOF)
}

// resetClose closes with a TCP reset rather than an orderly FIN.
func resetClose(c *net.TCPConn) {
	c.SetLinger(0)
	c.Close()
}
