package sidecar

import (
	"context"
	"errors"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/miekg/dns"
	"github.com/sirupsen/logrus"

	"github.com/backbay-labs/chio-agent/kernel/session"
)

// testDNS is a DNS server on loopback answering one name with the
// addresses the test sets; no test resolves through the machine's
// resolver.
type testDNS struct {
	mu       sync.Mutex
	name     string
	addrs    []net.IP
	servfail bool
	down     atomic.Bool
	addr     string
}

const testPeersName = "chio-peers.chio.test."

func startTestDNS(t *testing.T, addrs ...string) *testDNS {
	d := &testDNS{name: testPeersName}
	d.set(addrs...)
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	d.addr = pc.LocalAddr().String()
	srv := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(d.serve)}
	started := make(chan struct{})
	srv.NotifyStartedFunc = func() { close(started) }
	go srv.ActivateAndServe()
	<-started
	t.Cleanup(func() { srv.Shutdown() })
	return d
}

func (d *testDNS) set(addrs ...string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.addrs, d.servfail = nil, false
	for _, a := range addrs {
		d.addrs = append(d.addrs, net.ParseIP(a))
	}
}

func (d *testDNS) serve(w dns.ResponseWriter, q *dns.Msg) {
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

// resolver dials the test server whatever the system configures; while
// down it refuses to dial at all.
func (d *testDNS) resolver() *net.Resolver {
	return &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
		if d.down.Load() {
			return nil, errors.New("test dns server down")
		}
		var nd net.Dialer
		return nd.DialContext(ctx, network, d.addr)
	}}
}

// TestDNSPeersRefresh: the ring follows the name's answers; a server that
// is down, fails, answers nothing, or leaves this replica out keeps the
// last ring and is counted.
func TestDNSPeersRefresh(t *testing.T) {
	d := startTestDNS(t, "10.0.0.1", "10.0.0.2")
	var ring atomic.Pointer[session.Ring]
	p := &dnsPeers{host: testPeersName, port: "8080", self: "10.0.0.1:8080", resolver: d.resolver(), log: logrus.New(), ring: &ring}
	ctx := context.Background()
	peers := func() []string {
		if r := ring.Load(); r != nil {
			return r.Peers()
		}
		return nil
	}
	if err := p.refresh(ctx); err != nil || !slices.Equal(peers(), []string{"10.0.0.1:8080", "10.0.0.2:8080"}) {
		t.Fatalf("first refresh: %v %v", peers(), err)
	}
	d.set("10.0.0.2", "10.0.0.1", "fd00::3")
	if err := p.refresh(ctx); err != nil || !slices.Equal(peers(), []string{"10.0.0.1:8080", "10.0.0.2:8080", "[fd00::3]:8080"}) {
		t.Fatalf("answers changed: %v %v", peers(), err)
	}
	good := ring.Load()
	for name, break_ := range map[string]func(){
		"server down":   func() { d.down.Store(true) },
		"servfail":      func() { d.mu.Lock(); d.servfail = true; d.mu.Unlock() },
		"empty answer":  func() { d.set() },
		"self left out": func() { d.set("10.0.0.2", "10.0.0.9") },
	} {
		before := p.failures.Load()
		break_()
		if err := p.refresh(ctx); err == nil {
			t.Fatalf("%s: refresh reported no error", name)
		}
		if ring.Load() != good || p.failures.Load() != before+1 {
			t.Fatalf("%s: ring %v (failures %d→%d); the last good ring must stay", name, peers(), before, p.failures.Load())
		}
		d.down.Store(false)
		d.set("10.0.0.2", "10.0.0.1", "fd00::3")
	}
	// A replica whose first resolution fails has no ring: its session
	// requests are refused (route), not decided locally.
	var none atomic.Pointer[session.Ring]
	d.set("10.0.0.2")
	q := &dnsPeers{host: testPeersName, port: "8080", self: "10.0.0.1:8080", resolver: d.resolver(), log: logrus.New(), ring: &none}
	if err := q.refresh(ctx); err == nil || none.Load() != nil {
		t.Fatalf("no ring expected: %v %v", none.Load(), err)
	}
}
