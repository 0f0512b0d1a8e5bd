package testutil

import (
	"net"
	"net/netip"
	"testing"
)

// ServeTCP listens on addr (network tcp4 or tcp6; a loopback address, port
// 0 for a free one) and hands every connection it accepts to handle, each
// on its own goroutine, until the listener closes: when the test ends, or
// earlier by stop (a server going away). handle owns the connection and
// closes it. It returns the address listened on.
func ServeTCP(t testing.TB, network, addr string, handle func(net.Conn)) (listening netip.AddrPort, stop func()) {
	t.Helper()
	ln, err := net.Listen(network, addr)
	if err != nil {
		t.Fatalf("listen %s: %v", addr, err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go handle(c)
		}
	}()
	return ln.Addr().(*net.TCPAddr).AddrPort(), func() { ln.Close() }
}
