package dnsproxy

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/backbay-labs/chio-agent/kernel"
	"github.com/backbay-labs/chio-agent/kernel/hushspec"
)

const testPolicy = `hushspec: "0.1.0"
name: dns-test
rules:
  egress:
    allow: ["allowed.test", "*.allowed.test"]
    block: ["blocked.allowed.test"]
    default: block
`

// authority is a local authoritative server for the tests: it answers a
// small zone and logs every question it receives.
type authority struct {
	mu  sync.Mutex
	log []string // "name type transport"
	cdn atomic.Uint32
}

func (a *authority) asked() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return slices.Clone(a.log)
}

// askedAbout says whether any question the server received mentions s.
func (a *authority) askedAbout(s string) bool {
	for _, l := range a.asked() {
		if strings.Contains(strings.ToLower(l), strings.ToLower(s)) {
			return true
		}
	}
	return false
}

func (a *authority) ServeDNS(w dns.ResponseWriter, r *dns.Msg) {
	q := r.Question[0]
	netw := w.LocalAddr().Network()
	a.mu.Lock()
	a.log = append(a.log, fmt.Sprintf("%s %s %s", q.Name, dns.TypeToString[q.Qtype], netw))
	a.mu.Unlock()
	m := new(dns.Msg)
	m.SetReply(r)
	m.Authoritative = true
	rr := func(s string) {
		x, err := dns.NewRR(s)
		if err != nil {
			panic(err)
		}
		m.Answer = append(m.Answer, x)
	}
	name := strings.ToLower(q.Name)
	switch {
	case name == "api.allowed.test." && q.Qtype == dns.TypeA:
		rr("api.allowed.test. 300 IN A 192.0.2.1")
	case name == "api.allowed.test." && q.Qtype == dns.TypeAAAA:
		rr("api.allowed.test. 300 IN AAAA 2001:db8::1")
	case name == "api.allowed.test." && q.Qtype == dns.TypeTXT:
		rr(`api.allowed.test. 300 IN TXT "hello"`)
	case name == "cdn.allowed.test.":
		n := a.cdn.Add(1)
		rr(fmt.Sprintf("cdn.allowed.test. 20 IN A 198.51.100.%d", n))
	case name == "alias.allowed.test.":
		rr("alias.allowed.test. 300 IN CNAME edge.allowed.test.")
		rr("edge.allowed.test. 60 IN A 192.0.2.7")
	case name == "chain.allowed.test.":
		rr("chain.allowed.test. 300 IN CNAME hop.allowed.test.")
		rr("hop.allowed.test. 300 IN CNAME exfil.attacker.test.")
		rr("exfil.attacker.test. 300 IN A 192.0.2.66")
	case name == "svc.allowed.test." && q.Qtype == dns.TypeHTTPS:
		rr("svc.allowed.test. 300 IN HTTPS 1 . alpn=h2 ipv4hint=192.0.2.9")
	case name == "svcbad.allowed.test." && q.Qtype == dns.TypeHTTPS:
		rr("svcbad.allowed.test. 300 IN HTTPS 1 front.attacker.test. alpn=h2")
	case name == "big.allowed.test.":
		for i := 1; i <= 120; i++ {
			rr(fmt.Sprintf("big.allowed.test. 300 IN A 10.9.%d.%d", i/250, i%250))
		}
	case name == "stray.allowed.test.":
		rr("stray.allowed.test. 300 IN A 192.0.2.8")
		rr("other.attacker.test. 300 IN A 192.0.2.99") // off the chain
	default:
		m.Rcode = dns.RcodeNameError
		m.Ns = []dns.RR{mustRR("allowed.test. 300 IN SOA ns.allowed.test. h.allowed.test. 1 2 3 4 5")}
	}
	if netw == "udp" {
		size := dns.MinMsgSize
		if o := r.IsEdns0(); o != nil {
			size = int(o.UDPSize())
		}
		m.Truncate(size)
	}
	w.WriteMsg(m)
}

func mustRR(s string) dns.RR {
	x, err := dns.NewRR(s)
	if err != nil {
		panic(err)
	}
	return x
}

// startAuthority serves the zone on host's loopback address (random ports),
// over UDP and TCP on the same port.
func startAuthority(t testing.TB, host string) (*authority, netip.AddrPort) {
	t.Helper()
	a := &authority{}
	var (
		pc   net.PacketConn
		ln   net.Listener
		port int
	)
	// A random UDP port, then TCP on the same port: another test may hold
	// that TCP port, so a few ports are tried.
	for try := 0; ln == nil; try++ {
		var err error
		pc, err = net.ListenPacket("udp", net.JoinHostPort(host, "0"))
		if err != nil {
			t.Skipf("no %s loopback: %v", host, err)
		}
		port = pc.LocalAddr().(*net.UDPAddr).Port
		ln, err = net.Listen("tcp", net.JoinHostPort(host, fmt.Sprint(port)))
		if err != nil {
			pc.Close()
			if try == 20 {
				t.Fatalf("tcp on the udp port: %v", err)
			}
		}
	}
	for _, s := range []*dns.Server{{PacketConn: pc, Handler: a}, {Listener: ln, Handler: a}} {
		started := make(chan struct{})
		s.NotifyStartedFunc = func() { close(started) }
		go s.ActivateAndServe()
		<-started
		t.Cleanup(func() { s.Shutdown() })
	}
	return a, netip.AddrPortFrom(netip.MustParseAddr(host), uint16(port))
}

// harness is a proxy for workload 1 ("w1") with its receipts kept.
type harness struct {
	p        *Proxy
	auth     *authority
	upstream netip.AddrPort
	key      ed25519.PrivateKey
	now      time.Time
	mu       sync.Mutex
	receipts []kernel.Receipt
	counts   []uint64
	failRec  bool
}

func newHarness(t testing.TB, host string, tweak func(*Options)) *harness {
	t.Helper()
	auth, up := startAuthority(t, host)
	pol, err := hushspec.Parse([]byte(testPolicy))
	if err != nil {
		t.Fatal(err)
	}
	key := ed25519.NewKeyFromSeed(make([]byte, 32))
	h := &harness{auth: auth, upstream: up, key: key, now: time.Unix(1_800_000_000, 0)}
	k, err := kernel.New(kernel.Options{Policy: pol, SigningKey: key, Clock: func() time.Time { return h.now }})
	if err != nil {
		t.Fatal(err)
	}
	opts := Options{
		Upstreams: []netip.AddrPort{up},
		Workload: func(id uint32) (kernel.WorkloadIdentity, *kernel.Kernel, bool) {
			if id != 1 && id != 2 {
				return kernel.WorkloadIdentity{}, nil, false
			}
			return kernel.WorkloadIdentity{Name: fmt.Sprintf("w%d", id)}, k, true
		},
		Record: func(_ context.Context, _ uint32, eg *kernel.Egress, count uint64) error {
			if h.failRec {
				return errors.New("log closed")
			}
			p, err := eg.Receipt()
			if err != nil {
				return err
			}
			r, err := p.Sign(key)
			if err != nil {
				return err
			}
			h.mu.Lock()
			h.receipts = append(h.receipts, r)
			h.counts = append(h.counts, count)
			h.mu.Unlock()
			return nil
		},
		Clock: func() time.Time { return h.now },
	}
	if tweak != nil {
		tweak(&opts)
	}
	h.p, err = New(opts)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// ask sends name/type as workload w over transport and returns the reply
// (nil when the proxy sends nothing).
func (h *harness) ask(t testing.TB, w uint32, name string, qtype uint16, transport string) *dns.Msg {
	t.Helper()
	q := new(dns.Msg)
	q.SetQuestion(name, qtype)
	b, err := q.Pack()
	if err != nil {
		t.Fatal(err)
	}
	out := h.p.Answer(context.Background(), Query{Workload: w, Msg: b, Transport: transport,
		Client: netip.MustParseAddrPort("10.0.0.2:40000"), Resolver: netip.MustParseAddrPort("10.0.0.53:53"), PID: 42, Comm: "curl"})
	if out == nil {
		return nil
	}
	m := new(dns.Msg)
	if err := m.Unpack(out); err != nil {
		t.Fatalf("the proxy's answer does not parse: %v", err)
	}
	if m.Id != q.Id {
		t.Fatalf("answer id %d, query id %d", m.Id, q.Id)
	}
	return m
}

func (h *harness) last(t *testing.T) (kernel.Receipt, map[string]any, map[string]any) {
	t.Helper()
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.receipts) == 0 {
		t.Fatal("no receipt")
	}
	r := h.receipts[len(h.receipts)-1]
	var params, meta map[string]any
	json.Unmarshal(r.Action.Parameters, &params)
	json.Unmarshal(r.Metadata, &meta)
	return r, params, meta
}

func (h *harness) nReceipts() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.receipts)
}

func addrsOf(m *dns.Msg) []netip.Addr {
	var out []netip.Addr
	for _, rr := range m.Answer {
		switch r := rr.(type) {
		case *dns.A:
			a, _ := netip.AddrFromSlice(r.A.To4())
			out = append(out, a)
		case *dns.AAAA:
			a, _ := netip.AddrFromSlice(r.AAAA)
			out = append(out, a)
		}
	}
	return out
}

func sameSet(a, b []netip.Addr) bool {
	a, b = slices.Clone(a), slices.Clone(b)
	cmp := func(x, y netip.Addr) int { return x.Compare(y) }
	slices.SortFunc(a, cmp)
	slices.SortFunc(b, cmp)
	return slices.Equal(a, b)
}

func TestAllowedNameAnswered(t *testing.T) {
	h := newHarness(t, "127.0.0.1", nil)
	m := h.ask(t, 1, "API.Allowed.Test.", dns.TypeA, "udp")
	if m == nil || m.Rcode != dns.RcodeSuccess || !sameSet(addrsOf(m), []netip.Addr{netip.MustParseAddr("192.0.2.1")}) {
		t.Fatalf("answer %v", m)
	}
	if !h.auth.askedAbout("api.allowed.test") {
		t.Fatal("the upstream was not asked")
	}
	r, params, meta := h.last(t)
	if r.ToolName != kernel.DNSToolName || r.Decision.Verdict != kernel.VerdictAllow ||
		params["qname"] != "API.Allowed.Test." || params["qtype"] != "A" || params["transport"] != "udp" || params["ip"] != "10.0.0.53" {
		t.Fatalf("receipt %s %+v %v", r.ToolName, r.Decision, params)
	}
	d, _ := meta["dns"].(map[string]any)
	if fmt.Sprint(d["answers"]) != "[192.0.2.1]" || d["upstream"] != h.upstream.String() || d["rcode"] != "NOERROR" {
		t.Fatalf("metadata %v", meta)
	}
	if owns, known := h.p.Told(1, "api.allowed.test", netip.MustParseAddr("192.0.2.1")); !owns || !known {
		t.Fatal("the answer is not remembered as told")
	}
	if _, known := h.p.Told(2, "api.allowed.test", netip.MustParseAddr("192.0.2.1")); known {
		t.Fatal("workload 2 was told what workload 1 was")
	}
}

func TestBlockedNameNeverForwarded(t *testing.T) {
	for _, rc := range []int{0, dns.RcodeRefused} {
		h := newHarness(t, "127.0.0.1", func(o *Options) { o.BlockRcode = rc })
		want := rc
		if want == 0 {
			want = dns.RcodeNameError
		}
		for _, name := range []string{"blocked.allowed.test.", "c2VjcmV0LWRhdGE.attacker.test.", "BLOCKED.allowed.TEST", `api\.allowed.test.`} {
			m := h.ask(t, 1, dns.Fqdn(name), dns.TypeA, "udp")
			if m == nil || m.Rcode != want || len(m.Answer) != 0 {
				t.Fatalf("%s: answer %v, want rcode %s", name, m, dns.RcodeToString[want])
			}
			r, params, _ := h.last(t)
			if r.Decision.Verdict != kernel.VerdictDeny || params["qname"] != dns.Fqdn(name) {
				t.Fatalf("%s: receipt %+v %v", name, r.Decision, params)
			}
		}
		if h.auth.askedAbout("blocked") || h.auth.askedAbout("attacker") || len(h.auth.asked()) != 0 {
			t.Fatalf("refused names reached the server: %v", h.auth.asked())
		}
	}
}

// TestRandomLabelsNeverReachUpstream: a tunnel's labels under a name the
// policy refuses never leave the node, whatever the type.
func TestRandomLabelsNeverReachUpstream(t *testing.T) {
	h := newHarness(t, "127.0.0.1", nil)
	for i, typ := range []uint16{dns.TypeA, dns.TypeAAAA, dns.TypeTXT, dns.TypeNULL, dns.TypeHTTPS, dns.TypeMX} {
		label := fmt.Sprintf("x%dq%08x", i, uint32(time.Now().UnixNano()))
		if m := h.ask(t, 1, label+".attacker.test.", typ, "tcp"); m == nil || m.Rcode != dns.RcodeNameError {
			t.Fatalf("%s: %v", dns.TypeToString[typ], m)
		}
		if h.auth.askedAbout(label) {
			t.Fatalf("label %s reached the server", label)
		}
	}
}

func TestNotAQuery(t *testing.T) {
	h := newHarness(t, "127.0.0.1", nil)
	resp := new(dns.Msg)
	resp.SetQuestion("api.allowed.test.", dns.TypeA)
	resp.Response = true
	respB, _ := resp.Pack()
	two := new(dns.Msg)
	two.SetQuestion("api.allowed.test.", dns.TypeA)
	two.Question = append(two.Question, dns.Question{Name: "x.attacker.test.", Qtype: dns.TypeA, Qclass: dns.ClassINET})
	twoB, _ := two.Pack()
	upd := new(dns.Msg)
	upd.SetUpdate("allowed.test.")
	updB, _ := upd.Pack()
	withAns := new(dns.Msg)
	withAns.SetQuestion("api.allowed.test.", dns.TypeA)
	withAns.Answer = []dns.RR{mustRR("api.allowed.test. 1 IN TXT \"smuggled\"")}
	withAnsB, _ := withAns.Pack()
	for name, b := range map[string][]byte{
		"garbage":   []byte("GET / HTTP/1.1\r\nHost: attacker.test\r\n\r\n"),
		"empty":     {},
		"short":     {0x12},
		"response":  respB,
		"two":       twoB,
		"update":    updB,
		"answer rr": withAnsB,
	} {
		for _, tr := range []string{"udp", "tcp"} {
			before := h.nReceipts()
			if out := h.p.Answer(context.Background(), Query{Workload: 1, Msg: b, Transport: tr, Resolver: netip.MustParseAddrPort("10.0.0.53:53")}); out != nil {
				t.Fatalf("%s over %s: answered %x", name, tr, out)
			}
			if h.nReceipts() != before+1 {
				t.Fatalf("%s over %s: %d receipts, want 1", name, tr, h.nReceipts()-before)
			}
			r, params, _ := h.last(t)
			if r.Decision.Verdict != kernel.VerdictDeny || r.Decision.Guard != kernel.GuardDNS || params["transport"] != tr {
				t.Fatalf("%s: receipt %+v %v", name, r.Decision, params)
			}
		}
	}
	if n := len(h.auth.asked()); n != 0 {
		t.Fatalf("the server was asked %d questions", n)
	}
	// Unknown workload: nothing forwarded, counted as unreceipted.
	if out := h.p.Answer(context.Background(), Query{Workload: 9, Msg: []byte("x"), Transport: "udp"}); out != nil || h.p.Stats().Unreceipted != 1 {
		t.Fatalf("unknown workload: %x %+v", out, h.p.Stats())
	}
}

func TestOverTCPAndTruncation(t *testing.T) {
	h := newHarness(t, "127.0.0.1", nil)
	if m := h.ask(t, 1, "api.allowed.test.", dns.TypeAAAA, "tcp"); m == nil || !sameSet(addrsOf(m), []netip.Addr{netip.MustParseAddr("2001:db8::1")}) {
		t.Fatalf("tcp answer %v", m)
	}
	if got := h.auth.asked(); len(got) != 1 || !strings.HasSuffix(got[0], " tcp") {
		t.Fatalf("a TCP query was not forwarded over TCP: %v", got)
	}
	// 120 addresses do not fit the 1232 bytes asked for over UDP: the
	// upstream truncates, the proxy asks again over TCP; the client (no
	// EDNS: 512 bytes over UDP) gets a truncated answer, and is told only
	// what it got.
	m := h.ask(t, 1, "big.allowed.test.", dns.TypeA, "udp")
	if m == nil || !m.Truncated || len(m.Answer) == 0 || len(m.Answer) >= 120 {
		t.Fatalf("udp big answer: truncated %v, %d records", m != nil && m.Truncated, len(m.Answer))
	}
	if got := h.auth.asked(); !slices.Equal(got[1:], []string{"big.allowed.test. A udp", "big.allowed.test. A tcp"}) {
		t.Fatalf("no TCP fallback upstream: %v", got)
	}
	if n := len(h.p.ToldAddrs(1, "big.allowed.test")); n != len(m.Answer) {
		t.Fatalf("told %d addresses, sent %d", n, len(m.Answer))
	}
	m = h.ask(t, 1, "big.allowed.test.", dns.TypeA, "tcp")
	if m == nil || m.Truncated || len(m.Answer) != 120 {
		t.Fatalf("tcp big answer: %d records", len(m.Answer))
	}
}

// TestCDNToldExactly: a name answering other addresses on every query is
// owned, for this workload, by exactly the addresses it was given.
func TestCDNToldExactly(t *testing.T) {
	h := newHarness(t, "127.0.0.1", nil)
	var given []netip.Addr
	for range 3 {
		m := h.ask(t, 1, "cdn.allowed.test.", dns.TypeA, "udp")
		given = append(given, addrsOf(m)...)
	}
	h.auth.cdn.Add(1) // an address the agent's own lookup could get, never given
	if !sameSet(h.p.ToldAddrs(1, "cdn.allowed.test"), given) || len(given) != 3 {
		t.Fatalf("told %v, given %v", h.p.ToldAddrs(1, "cdn.allowed.test"), given)
	}
	for _, a := range given {
		if owns, _ := h.p.Told(1, "cdn.allowed.test.", a); !owns {
			t.Fatalf("%s given but not owned", a)
		}
	}
	if owns, known := h.p.Told(1, "cdn.allowed.test", netip.MustParseAddr("198.51.100.4")); owns || !known {
		t.Fatalf("an address never given: owns %v known %v", owns, known)
	}
}

// TestTTLExpiry: what was told lasts its TTL, clamped to the floor and cap.
func TestTTLExpiry(t *testing.T) {
	h := newHarness(t, "127.0.0.1", func(o *Options) { o.TTLFloor, o.TTLCap = 30*time.Second, 120*time.Second })
	h.ask(t, 1, "cdn.allowed.test.", dns.TypeA, "udp") // TTL 20 → floor 30
	h.ask(t, 1, "api.allowed.test.", dns.TypeA, "udp") // TTL 300 → cap 120
	start := h.now
	for _, c := range []struct {
		name string
		addr netip.Addr
		ttl  time.Duration // as clamped
	}{
		{"cdn.allowed.test", netip.MustParseAddr("198.51.100.1"), 30 * time.Second},
		{"api.allowed.test", netip.MustParseAddr("192.0.2.1"), 120 * time.Second},
	} {
		h.now = start.Add(c.ttl - time.Second)
		if owns, _ := h.p.Told(1, c.name, c.addr); !owns {
			t.Fatalf("%s expired before %s", c.name, c.ttl)
		}
		h.now = start.Add(c.ttl)
		if _, known := h.p.Told(1, c.name, c.addr); known {
			t.Fatalf("%s still told after %s", c.name, c.ttl)
		}
	}
}

func TestIPv6Upstream(t *testing.T) {
	h := newHarness(t, "::1", nil)
	m := h.ask(t, 1, "api.allowed.test.", dns.TypeA, "udp")
	if m == nil || !sameSet(addrsOf(m), []netip.Addr{netip.MustParseAddr("192.0.2.1")}) {
		t.Fatalf("answer over [::1]: %v", m)
	}
	_, _, meta := h.last(t)
	if d, _ := meta["dns"].(map[string]any); d["upstream"] != h.upstream.String() || !strings.HasPrefix(h.upstream.String(), "[::1]:") {
		t.Fatalf("upstream %v", meta)
	}
	if m := h.ask(t, 1, "api.allowed.test.", dns.TypeAAAA, "tcp"); m == nil || len(m.Answer) != 1 {
		t.Fatalf("tcp over [::1]: %v", m)
	}
}

// TestUpstreamFailover: a dead first upstream costs a timeout, the second
// answers.
func TestUpstreamFailover(t *testing.T) {
	dead, err := net.ListenPacket("udp", "127.0.0.1:0") // never answers
	if err != nil {
		t.Fatal(err)
	}
	defer dead.Close()
	h := newHarness(t, "127.0.0.1", func(o *Options) {
		o.Upstreams = append([]netip.AddrPort{dead.LocalAddr().(*net.UDPAddr).AddrPort()}, o.Upstreams...)
		o.Timeout = 200 * time.Millisecond
	})
	if m := h.ask(t, 1, "api.allowed.test.", dns.TypeA, "udp"); m == nil || len(m.Answer) != 1 {
		t.Fatalf("no failover: %v", m)
	}
}

func TestChains(t *testing.T) {
	h := newHarness(t, "127.0.0.1", nil)
	// A chain of allowed names: answered, every name told.
	m := h.ask(t, 1, "alias.allowed.test.", dns.TypeA, "udp")
	if m == nil || len(m.Answer) != 2 {
		t.Fatalf("alias: %v", m)
	}
	edge := netip.MustParseAddr("192.0.2.7")
	for _, n := range []string{"alias.allowed.test", "edge.allowed.test"} {
		if owns, _ := h.p.Told(1, n, edge); !owns {
			t.Fatalf("%s not told %s", n, edge)
		}
	}
	// A chain leading to a refused name: REFUSED, nothing told.
	m = h.ask(t, 1, "chain.allowed.test.", dns.TypeA, "udp")
	if m == nil || m.Rcode != dns.RcodeRefused || len(m.Answer) != 0 {
		t.Fatalf("chain to a blocked name: %v", m)
	}
	r, _, meta := h.last(t)
	if r.Decision.Guard != kernel.GuardDNS || !strings.Contains(r.Decision.Reason, "exfil.attacker.test") {
		t.Fatalf("receipt %+v", r.Decision)
	}
	if d, _ := meta["dns"].(map[string]any); fmt.Sprint(d["chain"]) != "[hop.allowed.test. exfil.attacker.test.]" {
		t.Fatalf("chain in metadata %v", meta)
	}
	if _, known := h.p.Told(1, "chain.allowed.test", netip.MustParseAddr("192.0.2.66")); known {
		t.Fatal("a refused answer was told")
	}
	// HTTPS: a target the policy refuses refuses the answer; hints are told.
	if m := h.ask(t, 1, "svcbad.allowed.test.", dns.TypeHTTPS, "udp"); m == nil || m.Rcode != dns.RcodeRefused {
		t.Fatalf("https to a blocked target: %v", m)
	}
	if m := h.ask(t, 1, "svc.allowed.test.", dns.TypeHTTPS, "udp"); m == nil || len(m.Answer) != 1 {
		t.Fatalf("https: %v", m)
	}
	if owns, _ := h.p.Told(1, "svc.allowed.test", netip.MustParseAddr("192.0.2.9")); !owns {
		t.Fatal("an ipv4hint was not told")
	}
	// Records of names off the chain are not passed on.
	m = h.ask(t, 1, "stray.allowed.test.", dns.TypeA, "udp")
	if m == nil || !sameSet(addrsOf(m), []netip.Addr{netip.MustParseAddr("192.0.2.8")}) {
		t.Fatalf("stray: %v", m)
	}
}

func TestQueryTypes(t *testing.T) {
	h := newHarness(t, "127.0.0.1", nil)
	if m := h.ask(t, 1, "api.allowed.test.", dns.TypeTXT, "udp"); m == nil || m.Rcode != dns.RcodeSuccess || len(m.Answer) != 1 {
		t.Fatalf("TXT of an allowed name (default rule): %v", m)
	}
	for _, typ := range []uint16{dns.TypeAXFR, dns.TypeANY, dns.TypeIXFR} {
		if m := h.ask(t, 1, "api.allowed.test.", typ, "tcp"); m == nil || m.Rcode != dns.RcodeRefused {
			t.Fatalf("%s: %v", dns.TypeToString[typ], m)
		}
	}
	ch := new(dns.Msg)
	ch.SetQuestion("version.bind.", dns.TypeTXT)
	ch.Question[0].Qclass = dns.ClassCHAOS
	b, _ := ch.Pack()
	if out := h.p.Answer(context.Background(), Query{Workload: 1, Msg: b, Transport: "udp", Resolver: netip.MustParseAddrPort("10.0.0.53:53")}); out == nil {
		t.Fatal("CHAOS query: no answer")
	}
	strict := newHarness(t, "127.0.0.1", func(o *Options) { o.RefuseOtherTypes = true })
	if m := strict.ask(t, 1, "api.allowed.test.", dns.TypeTXT, "udp"); m == nil || m.Rcode != dns.RcodeRefused {
		t.Fatalf("TXT with other types refused: %v", m)
	}
	if n := len(strict.auth.asked()) + len(h.auth.asked()); n != 1 {
		t.Fatalf("%d questions forwarded, want 1 (the allowed TXT)", n)
	}
}

// TestNoReceiptNoAnswer: a decision that cannot be receipted is not acted on.
func TestNoReceiptNoAnswer(t *testing.T) {
	h := newHarness(t, "127.0.0.1", nil)
	h.failRec = true
	if m := h.ask(t, 1, "api.allowed.test.", dns.TypeA, "udp"); m == nil || m.Rcode != dns.RcodeRefused || len(m.Answer) != 0 {
		t.Fatalf("answer without a receipt: %v", m)
	}
	if _, known := h.p.Told(1, "api.allowed.test", netip.MustParseAddr("192.0.2.1")); known {
		t.Fatal("told without a receipt")
	}
	if h.p.Stats().Unreceipted != 1 {
		t.Fatalf("stats %+v", h.p.Stats())
	}
}

// TestDistinctNameFlood: 10,000 distinct names from one workload are
// limited, nothing past the bound is forwarded, and the receipts' counts
// add up to every query.
func TestDistinctNameFlood(t *testing.T) {
	h := newHarness(t, "127.0.0.1", func(o *Options) { o.Rate, o.Burst = 1e6, 1e6 }) // only the names bound
	const n = 10_000
	var answered, refused int
	for i := range n {
		// Names under an allowed zone: the bound, not the policy, stops them.
		m := h.ask(t, 1, fmt.Sprintf("n%05d.allowed.test.", i), dns.TypeA, "udp")
		switch {
		case m == nil:
			t.Fatal("no answer")
		case m.Rcode == dns.RcodeRefused:
			refused++
		default:
			answered++
		}
		if i%1000 == 999 {
			h.p.Flush(context.Background())
		}
	}
	h.p.Flush(context.Background())
	if answered != DefaultDistinctNames || refused != n-DefaultDistinctNames {
		t.Fatalf("answered %d refused %d, want %d answered", answered, refused, DefaultDistinctNames)
	}
	if got := len(h.auth.asked()); got != DefaultDistinctNames {
		t.Fatalf("%d names reached the server, want %d", got, DefaultDistinctNames)
	}
	var sum uint64
	var limitReceipts int
	for i, r := range h.receipts {
		var meta struct {
			Attempts uint64 `json:"attempts"`
		}
		json.Unmarshal(r.Metadata, &meta)
		if r.Decision.Guard != kernel.GuardLimit {
			continue
		}
		limitReceipts++
		c := max(meta.Attempts, 1)
		if c != h.counts[i] {
			t.Fatalf("receipt attempts %d, record count %d", c, h.counts[i])
		}
		sum += c
	}
	if sum != n-DefaultDistinctNames || limitReceipts > 20 {
		t.Fatalf("limit receipts stand for %d queries in %d receipts, want %d in at most 20", sum, limitReceipts, n-DefaultDistinctNames)
	}
	// A name asked within the window before is still answered.
	if m := h.ask(t, 1, "n00000.allowed.test.", dns.TypeA, "udp"); m.Rcode == dns.RcodeRefused {
		t.Fatal("a name of the window refused")
	}
	// The window passes: new names again.
	h.now = h.now.Add(DefaultNameWindow)
	if m := h.ask(t, 1, "fresh.allowed.test.", dns.TypeA, "udp"); m.Rcode == dns.RcodeRefused {
		t.Fatal("refused after the window")
	}
	// Another workload is not limited by this one's flood.
	if m := h.ask(t, 2, "other.allowed.test.", dns.TypeA, "udp"); m.Rcode == dns.RcodeRefused {
		t.Fatal("workload 2 limited by workload 1's flood")
	}
}

// TestRateFlood: one name asked past the token bucket is refused, garbage
// counts against it too, and the counts add up.
func TestRateFlood(t *testing.T) {
	h := newHarness(t, "127.0.0.1", func(o *Options) { o.Rate, o.Burst = 10, 20 })
	for i := range 100 {
		msg := []byte("garbage")
		if i%2 == 0 {
			q := new(dns.Msg)
			q.SetQuestion("nope.attacker.test.", dns.TypeA)
			msg, _ = q.Pack()
		}
		h.p.Answer(context.Background(), Query{Workload: 1, Msg: msg, Transport: "udp", Resolver: netip.MustParseAddrPort("10.0.0.53:53")})
	}
	h.p.Flush(context.Background())
	var sum uint64
	for i, r := range h.receipts {
		if r.Decision.Guard == kernel.GuardLimit {
			sum += h.counts[i]
		}
	}
	if sum != 80 || len(h.receipts) != 20+1 {
		t.Fatalf("limit receipts count %d (want 80), %d receipts (want 20 decided + 1 aggregated)", sum, len(h.receipts))
	}
	h.now = h.now.Add(time.Second) // 10 tokens back
	if m := h.ask(t, 1, "api.allowed.test.", dns.TypeA, "udp"); m.Rcode != dns.RcodeSuccess {
		t.Fatalf("refused after the bucket refilled: %v", m)
	}
}

// TestConcurrentWorkloads: the listeners call Answer concurrently; two
// workloads' answers, bounds and memories stay their own.
func TestConcurrentWorkloads(t *testing.T) {
	h := newHarness(t, "127.0.0.1", func(o *Options) { o.Rate, o.Burst = 1e6, 1e6 })
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			w := uint32(g%2 + 1)
			for i := range 20 {
				name := "cdn.allowed.test."
				if i%3 == 0 {
					name = fmt.Sprintf("z%d.attacker.test.", i)
				}
				h.ask(t, w, name, dns.TypeA, []string{"udp", "tcp"}[i%2])
			}
		}()
	}
	wg.Wait()
	told1, told2 := h.p.ToldAddrs(1, "cdn.allowed.test"), h.p.ToldAddrs(2, "cdn.allowed.test")
	if len(told1)+len(told2) != int(h.auth.cdn.Load()) {
		t.Fatalf("told %d + %d addresses, the server gave %d", len(told1), len(told2), h.auth.cdn.Load())
	}
	for _, a := range told1 {
		if slices.Contains(told2, a) {
			t.Fatalf("%s told to both workloads, given once", a)
		}
	}
	if h.auth.askedAbout("attacker") {
		t.Fatal("a refused name reached the server")
	}
}

// TestStaticHosts: agent.hosts names are answered from the configuration,
// never forwarded, and still decided by the policy.
func TestStaticHosts(t *testing.T) {
	h := newHarness(t, "127.0.0.1", func(o *Options) {
		o.Hosts = map[string][]netip.Addr{
			"Static.Allowed.Test.": {netip.MustParseAddr("127.0.0.5"), netip.MustParseAddr("::1")},
			"blocked.allowed.test": {netip.MustParseAddr("127.0.0.6")},
		}
	})
	if m := h.ask(t, 1, "static.allowed.test.", dns.TypeA, "udp"); m == nil || !sameSet(addrsOf(m), []netip.Addr{netip.MustParseAddr("127.0.0.5")}) {
		t.Fatalf("A: %v", m)
	}
	if m := h.ask(t, 1, "STATIC.allowed.test.", dns.TypeAAAA, "tcp"); m == nil || !sameSet(addrsOf(m), []netip.Addr{netip.MustParseAddr("::1")}) {
		t.Fatalf("AAAA: %v", m)
	}
	if m := h.ask(t, 1, "static.allowed.test.", dns.TypeTXT, "udp"); m == nil || m.Rcode != dns.RcodeSuccess || len(m.Answer) != 0 {
		t.Fatalf("TXT: %v", m)
	}
	if m := h.ask(t, 1, "blocked.allowed.test.", dns.TypeA, "udp"); m == nil || m.Rcode != dns.RcodeNameError {
		t.Fatalf("a static name the policy blocks: %v", m)
	}
	if n := len(h.auth.asked()); n != 0 {
		t.Fatalf("static names forwarded: %v", h.auth.asked())
	}
	if owns, _ := h.p.Told(1, "static.allowed.test", netip.MustParseAddr("127.0.0.5")); !owns {
		t.Fatal("a static answer is not remembered as told")
	}
}

// TestToldBounded: what a workload was told is bounded by names and by
// addresses per name; past a bound the entry expiring first goes.
func TestToldBounded(t *testing.T) {
	h := newHarness(t, "127.0.0.1", func(o *Options) { o.ToldNames, o.ToldAddrs = 2, 3 })
	for range 5 {
		h.ask(t, 1, "cdn.allowed.test.", dns.TypeA, "udp")
		h.now = h.now.Add(time.Second) // later answers expire later
	}
	got := h.p.ToldAddrs(1, "cdn.allowed.test")
	want := []netip.Addr{netip.MustParseAddr("198.51.100.3"), netip.MustParseAddr("198.51.100.4"), netip.MustParseAddr("198.51.100.5")}
	if !sameSet(got, want) {
		t.Fatalf("told %v, want the 3 latest %v", got, want)
	}
	h.ask(t, 1, "api.allowed.test.", dns.TypeA, "udp")
	h.now = h.now.Add(time.Second)
	h.ask(t, 1, "alias.allowed.test.", dns.TypeA, "udp") // two names: alias and edge
	names := 0
	for _, n := range []string{"cdn.allowed.test", "api.allowed.test", "alias.allowed.test", "edge.allowed.test"} {
		if len(h.p.ToldAddrs(1, n)) > 0 {
			names++
		}
	}
	if names != 2 {
		t.Fatalf("%d names remembered, bound 2", names)
	}
}
