package agent

import (
	"context"
	"fmt"
	"net"
	"net/netip"

	"github.com/backbay-labs/chio-agent/bpf"
)

// listenerPair is the agent's listeners in one network namespace, IPv4 and
// IPv6, which connect4/connect6 redirect every workload there to; refcnt
// counts the workloads that use them.
type listenerPair struct {
	netns  string
	ln4    *net.TCPListener
	ln6    *net.TCPListener
	addr4  netip.AddrPort
	addr6  netip.AddrPort
	refcnt int
}

// listenerFor returns the listener pair of a network namespace, opening it
// when it is the first workload there. A pinned workload's address is
// reused, so a restarted agent listens where the datapath already points.
func (a *Agent) listenerFor(netnsPath string, pinned bpf.Workload) (*listenerPair, error) {
	if lp, ok := a.listeners[netnsPath]; ok {
		lp.refcnt++
		return lp, nil
	}
	port4, port6 := a.opts.ListenPort, a.opts.ListenPort
	if pinned.Listen4.IsValid() {
		port4 = pinned.Listen4.Port()
	}
	if pinned.Listen6.IsValid() {
		port6 = pinned.Listen6.Port()
	}
	lp := &listenerPair{netns: netnsPath, refcnt: 1}
	err := inNetns(netnsPath, func() error {
		ln, err := listenTCP("tcp4", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: int(port4)})
		if err != nil {
			return fmt.Errorf("listen on 127.0.0.1:%d: %w", port4, err)
		}
		lp.ln4 = ln
		lp.addr4 = ln.Addr().(*net.TCPAddr).AddrPort()
		if port6 == 0 && a.opts.ListenPort == 0 {
			port6 = lp.addr4.Port() // one port for both families when free
		}
		ln6, err := listenTCP("tcp6", &net.TCPAddr{IP: net.IPv6loopback, Port: int(port6)})
		if err != nil && port6 != 0 && !pinned.Listen6.IsValid() {
			ln6, err = listenTCP("tcp6", &net.TCPAddr{IP: net.IPv6loopback})
		}
		if err != nil {
			// No IPv6 loopback in this namespace: IPv6 connects are then
			// refused by the programs (no listener), never passed.
			a.opts.Logger.WithField("netns", netnsPath).WithError(err).Warn("no IPv6 listener")
			return nil
		}
		lp.ln6 = ln6
		lp.addr6 = ln6.Addr().(*net.TCPAddr).AddrPort()
		return nil
	})
	if err != nil {
		if lp.ln4 != nil {
			lp.ln4.Close()
		}
		return nil, err
	}
	for _, ln := range []*net.TCPListener{lp.ln4, lp.ln6} {
		if ln == nil {
			continue
		}
		a.bg.Add(1)
		go func() { defer a.bg.Done(); a.proxy.serve(a.ctx, ln, netnsPath) }()
	}
	a.listeners[netnsPath] = lp
	return lp, nil
}

// listenTCP listens for redirected connections. Accepted sockets get no TCP
// keep-alive: the idle reaper (idleSet) closes a relay that has gone quiet,
// which makes the probes redundant, and they would cost four setsockopt
// calls on every connection.
func listenTCP(network string, addr *net.TCPAddr) (*net.TCPListener, error) {
	lc := net.ListenConfig{KeepAlive: -1}
	ln, err := lc.Listen(context.Background(), network, addr.String())
	if err != nil {
		return nil, err
	}
	return ln.(*net.TCPListener), nil
}

func (a *Agent) releaseListener(lp *listenerPair) {
	lp.refcnt--
	if lp.refcnt > 0 {
		return
	}
	lp.ln4.Close()
	if lp.ln6 != nil {
		lp.ln6.Close()
	}
	delete(a.listeners, lp.netns)
}
