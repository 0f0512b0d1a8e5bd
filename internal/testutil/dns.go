package testutil

import (
	"context"
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/miekg/dns"
)

// DNS is a DNS server on loopback (UDP) answering one name with the
// addresses the test sets (A and AAAA), NXDOMAIN for any other; no test
// resolves through the machine's resolver.
type DNS struct {
	// Addr is the server's ip:port.
	Addr string
	// Down makes Resolver refuse to dial, as if the server were gone.
	Down atomic.Bool

	mu       sync.Mutex
	name     string
	addrs    []net.IP
	servfail bool
}

// StartDNS serves name (fully qualified, with its final dot) until the
// test ends.
func StartDNS(t testing.TB, name string, addrs ...string) *DNS {
	t.Helper()
	d := &DNS{name: name}
	d.Set(addrs...)
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	d.Addr = pc.LocalAddr().String()
	srv := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(d.serve)}
	started := make(chan struct{})
	srv.NotifyStartedFunc = func() { close(started) }
	go srv.ActivateAndServe()
	<-started
	t.Cleanup(func() { srv.Shutdown() })
	return d
}

// Set replaces the answer (and ends Servfail).
func (d *DNS) Set(addrs ...string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.addrs, d.servfail = nil, false
	for _, a := range addrs {
		d.addrs = append(d.addrs, net.ParseIP(a))
	}
}

// Servfail answers SERVFAIL until the next Set.
func (d *DNS) Servfail() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.servfail = true
}

func (d *DNS) serve(w dns.ResponseWriter, q *dns.Msg) {
	d.mu.Lock()
	defer d.mu.Unlock()
	m := new(dns.Msg)
	m.SetReply(q)
	if d.servfail {
		m.Rcode = dns.RcodeServerFailure
		w.WriteMsg(m)
		return
	}
	if len(q.Question) != 1 || q.Question[0].Name != d.name {
		m.Rcode = dns.RcodeNameError
		w.WriteMsg(m)
		return
	}
	hdr := dns.RR_Header{Name: d.name, Class: dns.ClassINET, Ttl: 1}
	for _, ip := range d.addrs {
		switch v4 := ip.To4(); {
		case v4 != nil && q.Question[0].Qtype == dns.TypeA:
			hdr.Rrtype = dns.TypeA
			m.Answer = append(m.Answer, &dns.A{Hdr: hdr, A: v4})
		case v4 == nil && q.Question[0].Qtype == dns.TypeAAAA:
			hdr.Rrtype = dns.TypeAAAA
			m.Answer = append(m.Answer, &dns.AAAA{Hdr: hdr, AAAA: ip})
		}
	}
	w.WriteMsg(m)
}

// Resolver dials this server whatever the system configures; while Down
// it refuses to dial at all.
func (d *DNS) Resolver() *net.Resolver {
	return &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
		if d.Down.Load() {
			return nil, errors.New("test dns server down")
		}
		var nd net.Dialer
		return nd.DialContext(ctx, network, d.Addr)
	}}
}
