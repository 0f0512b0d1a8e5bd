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
	// dns are the namespace's DNS listeners (dns.go); nil without
	// Options.DNS.
	dns *dnsListeners
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
	if err == nil && a.dns != nil {
		err = inNetns(netnsPath, func() (err error) {
			lp.dns, err = openDNS(lp, pinned)
			return err
		})
	}
	if err != nil {
		lp.close()
		return nil, err
	}
	for _, ln := range []*net.TCPListener{lp.ln4, lp.ln6} {
		if ln == nil {
			continue
		}
		a.bg.Add(1)
		go func() { defer a.bg.Done(); a.proxy.serve(a.ctx, ln, netnsPath) }()
	}
	if lp.dns != nil {
		a.dns.serveDNS(a.ctx, lp.dns, &a.bg)
	}
	a.listeners[netnsPath] = lp
	return lp, nil
}

// close closes every listener of the pair.
func (lp *listenerPair) close() {
	if lp.ln4 != nil {
		lp.ln4.Close()
	}
	if lp.ln6 != nil {
		lp.ln6.Close()
	}
	if lp.dns != nil {
		lp.dns.close()
	}
}

// datapath is what the programs need to send the pair's workloads here.
func (lp *listenerPair) datapath(id uint32) bpf.Workload {
	w := bpf.Workload{ID: id, Listen4: lp.addr4, Listen6: lp.addr6}
	if lp.dns != nil {
		w.DNSPort4, w.DNSPort6 = lp.dns.port4, lp.dns.port6
	}
	return w
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
	lp.close()
	delete(a.listeners, lp.netns)
}
