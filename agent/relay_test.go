package agent

import (
	"context"
	"errors"
	"net"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/backbay-labs/chio-agent/bpf"
)

// keepAlive reads SO_KEEPALIVE off c's socket.
func keepAlive(t *testing.T, c *net.TCPConn) int {
	t.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var v int
	var serr error
	if err := rc.Control(func(fd uintptr) {
		v, serr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_KEEPALIVE)
	}); err != nil {
		t.Fatal(err)
	}
	if serr != nil {
		t.Fatal(serr)
	}
	return v
}

// The loopback dial reaches a listener and reports a refused connect; the
// socket the listener accepts carries no TCP keep-alive (the idle reaper
// closes quiet relays instead).
func TestLoopbackDialAndAcceptedWithoutKeepAlive(t *testing.T) {
	ln, err := listenTCP("tcp4", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	p := &proxy{timeouts: Timeouts{}.withDefaults()}
	cn := &conn{w: &workload{}, orig: bpf.Original{Dst: ln.Addr().(*net.TCPAddr).AddrPort()}}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	up, err := p.dial(ctx, cn)
	if err != nil {
		t.Fatalf("dial a listening port: %v", err)
	}
	defer up.Close()
	ln.SetDeadline(time.Now().Add(10 * time.Second))
	acc, err := ln.AcceptTCP()
	if err != nil {
		t.Fatal(err)
	}
	defer acc.Close()
	if up.RemoteAddr().String() != acc.LocalAddr().String() || up.LocalAddr().String() != acc.RemoteAddr().String() {
		t.Fatalf("dialed %s -> %s, accepted %s -> %s", up.LocalAddr(), up.RemoteAddr(), acc.RemoteAddr(), acc.LocalAddr())
	}
	if _, err := up.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 1)
	if _, err := acc.Read(b); err != nil || b[0] != 'x' {
		t.Fatalf("read %q, %v", b, err)
	}
	if v := keepAlive(t, acc); v != 0 {
		t.Errorf("accepted socket: SO_KEEPALIVE %d, want 0", v)
	}

	// A port nobody listens on: the listener's own, once closed.
	dst := cn.orig.Dst
	ln.Close()
	cn.orig.Dst = dst
	if c, err := p.dial(ctx, cn); !errors.Is(err, syscall.ECONNREFUSED) {
		if c != nil {
			c.Close()
		}
		t.Fatalf("dial a closed port: %v, want connection refused", err)
	}
}
