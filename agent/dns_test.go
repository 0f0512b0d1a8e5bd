package agent

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/dns/dnsmessage"
	"golang.org/x/sys/unix"

	"github.com/backbay-labs/chio-agent/bpf"
	"github.com/backbay-labs/chio-agent/internal/dnsproxy"
	"github.com/backbay-labs/chio-agent/internal/testutil"
	"github.com/backbay-labs/chio-agent/kernel/hushspec"
	"github.com/backbay-labs/chio-agent/receipts"
)

// recordingDNS is the tests' Handler: it records every query and answers
// each well-formed one itself (an A record, 127.0.0.7); bytes that are no
// DNS message get nil, as the proxy refuses them.
type recordingDNS struct {
	mu sync.Mutex
	qs []dnsproxy.Query
}

func (h *recordingDNS) Answer(_ context.Context, q dnsproxy.Query) []byte {
	q.Msg = append([]byte(nil), q.Msg...)
	h.mu.Lock()
	h.qs = append(h.qs, q)
	h.mu.Unlock()
	var p dnsmessage.Parser
	hdr, err := p.Start(q.Msg)
	if err != nil {
		return nil
	}
	qn, err := p.Question()
	if err != nil {
		return nil
	}
	b := dnsmessage.NewBuilder(nil, dnsmessage.Header{ID: hdr.ID, Response: true, RecursionDesired: hdr.RecursionDesired, RecursionAvailable: true})
	b.StartQuestions()
	b.Question(qn)
	b.StartAnswers()
	b.AResource(dnsmessage.ResourceHeader{Name: qn.Name, Class: dnsmessage.ClassINET, TTL: 60}, dnsmessage.AResource{A: [4]byte{127, 0, 0, 7}})
	m, err := b.Finish()
	if err != nil {
		return nil
	}
	return m
}

// take returns and forgets the queries so far.
func (h *recordingDNS) take() []dnsproxy.Query {
	h.mu.Lock()
	defer h.mu.Unlock()
	qs := h.qs
	h.qs = nil
	return qs
}

// trapResolver is a resolver on port 53 of a random loopback address that
// counts every datagram and connection reaching it: protected workloads'
// DNS addressed to it must never arrive.
type trapResolver struct {
	addr netip.AddrPort
	mu   sync.Mutex
	seen []string
}

func newTrapResolver(t *testing.T) *trapResolver {
	t.Helper()
	var b [3]byte
	rand.Read(b[:])
	tr := &trapResolver{addr: netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 100 + b[0]%100, b[1], 1 + b[2]%250}), 53)}
	pc, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(tr.addr))
	if err != nil {
		t.Fatalf("trap resolver: %v", err)
	}
	ln, err := net.ListenTCP("tcp4", net.TCPAddrFromAddrPort(tr.addr))
	if err != nil {
		pc.Close()
		t.Fatalf("trap resolver: %v", err)
	}
	t.Cleanup(func() { pc.Close(); ln.Close() })
	go func() {
		buf := make([]byte, 65535)
		for {
			_, from, err := pc.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			tr.mu.Lock()
			tr.seen = append(tr.seen, "udp from "+from.String())
			tr.mu.Unlock()
		}
	}()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			tr.mu.Lock()
			tr.seen = append(tr.seen, "tcp from "+c.RemoteAddr().String())
			tr.mu.Unlock()
			c.Close()
		}
	}()
	return tr
}

func (tr *trapResolver) check(t *testing.T) {
	t.Helper()
	tr.mu.Lock()
	defer tr.mu.Unlock()
	if len(tr.seen) != 0 {
		t.Errorf("the resolver the workload addressed was reached directly: %v", tr.seen)
	}
}

// dnsChild runs childDNS in the workload (in netns, when named) and returns
// its output line.
func (e *e2e) dnsChild(netns, mode string, dst netip.AddrPort) string {
	e.t.Helper()
	args := []string{"env", "CHIO_E2E_CHILD=dns", "CHIO_DNS_MODE=" + mode, "CHIO_DNS_ADDR=" + dst.String(),
		"CHIO_DNS_NAME=q-" + mode + ".allowed.test.", os.Args[0], "-test.run=^$"}
	if netns != "" {
		args = append([]string{"ip", "netns", "exec", netns}, args...)
	}
	out, code := e.run(args[0], args[1:]...)
	if code != 0 {
		e.t.Fatalf("dns child %s to %s: exit %d, %q", mode, dst, code, out)
	}
	return out
}

// TestDNSReachesTheAgentNotTheResolver: a protected workload's DNS, over UDP
// (unconnected, connected, from an AF_INET6 socket to a v4-mapped address,
// to IPv6) and TCP, to port 53 of any address reaches the agent's handler
// with the workload, the client and the resolver it addressed; the answer's
// source is that resolver (a connected socket accepts it); bytes that are no
// DNS message reach the handler too (which refuses them: no answer, the TCP
// connection closed); the resolver itself never sees a packet.
func TestDNSReachesTheAgentNotTheResolver(t *testing.T) {
	t.Parallel()
	h := &recordingDNS{}
	trap := newTrapResolver(t)
	e := newE2E(t, e2eOptions{dns: h})
	wl := e.agent.reg.byName("e2e/wl")
	comm := filepath.Base(os.Args[0])
	comm = comm[:min(len(comm), 15)]
	v6 := netip.MustParseAddrPort("[::1]:53")

	for _, tc := range []struct {
		mode      string
		dst       netip.AddrPort
		want      string // the child's output
		transport string
		family    string // of the client address the handler sees
	}{
		{"udp", trap.addr, "answer from=" + trap.addr.String() + " name=q-udp.allowed.test.", "udp", "4"},
		{"udp-connected", trap.addr, "answer from=" + trap.addr.String() + " name=q-udp-connected.allowed.test.", "udp", "4"},
		{"udp-mapped", trap.addr, "answer from=" + trap.addr.String() + " name=q-udp-mapped.allowed.test.", "udp", "4"},
		{"udp", v6, "answer from=" + v6.String() + " name=q-udp.allowed.test.", "udp", "6"},
		{"tcp", trap.addr, "answer from=" + trap.addr.String() + " name=q-tcp.allowed.test.", "tcp", "4"},
		{"tcp", v6, "answer from=" + v6.String() + " name=q-tcp.allowed.test.", "tcp", "6"},
		{"raw-udp", trap.addr, "noanswer", "udp", "4"},
		{"raw-tcp", trap.addr, "closed", "tcp", "4"},
	} {
		t.Run(tc.mode+"-"+tc.family, func(t *testing.T) {
			if got := e.dnsChild("", tc.mode, tc.dst); got != tc.want {
				t.Fatalf("child: %q, want %q", got, tc.want)
			}
			qs := h.take()
			if len(qs) != 1 {
				t.Fatalf("handler saw %d queries, want 1: %+v", len(qs), qs)
			}
			q := qs[0]
			if q.Workload != wl.id || q.Transport != tc.transport || q.Resolver != tc.dst || q.PID == 0 || q.Comm != comm {
				t.Errorf("query = %+v; want workload %d, %s, resolver %s, comm %q", q, wl.id, tc.transport, tc.dst, comm)
			}
			if q.Client.Addr().Is4() != (tc.family == "4") || !q.Client.Addr().IsLoopback() || q.Client.Port() == 0 {
				t.Errorf("client = %s; want a loopback IPv%s socket", q.Client, tc.family)
			}
			if strings.HasPrefix(tc.mode, "raw-") != (len(q.Msg) > 0 && q.Msg[0] == 'G') {
				t.Errorf("handler got %q", q.Msg)
			}
		})
	}
	trap.check(t)
}

// TestAttackDNSAroundTheListener: the DNS listener answers only what the
// kernel redirected and recorded. A protected workload addressing the
// listener's own port, or a resolver on another port, is refused (UDP to a
// port other than 53); one unconnected socket sending to two resolvers in
// turn gets each answer from the one it addressed, and the handler is told
// each; a process outside every workload sending to the listener directly
// (it has no record) is not taken for a workload: the handler never sees
// it.
func TestAttackDNSAroundTheListener(t *testing.T) {
	t.Parallel()
	h := &recordingDNS{}
	trap := newTrapResolver(t)
	e := newE2E(t, e2eOptions{dns: h})
	other := netip.AddrPortFrom(trap.addr.Addr(), 5353)
	if out := e.dnsChild("", "udp", other); !strings.HasPrefix(out, "refused:") || !strings.Contains(out, "operation not permitted") {
		t.Errorf("protected workload to a resolver's other port: %q, want refused", out)
	}
	second := netip.MustParseAddrPort("127.0.0.53:53")
	out, code := e.run("env", "CHIO_E2E_CHILD=dns", "CHIO_DNS_MODE=udp-two", "CHIO_DNS_ADDR="+trap.addr.String(),
		"CHIO_DNS_ADDR2="+second.String(), "CHIO_DNS_NAME=two.allowed.test.", os.Args[0], "-test.run=^$")
	if want := "answer from=" + trap.addr.String() + " name=two.allowed.test.; answer from=" + second.String() + " name=two.allowed.test."; code != 0 || out != want {
		t.Errorf("two resolvers from one socket: exit %d, %q, want %q", code, out, want)
	}
	if qs := h.take(); len(qs) != 2 || qs[0].Resolver != trap.addr || qs[1].Resolver != second || qs[0].Client != qs[1].Client {
		t.Errorf("two resolvers from one socket: handler saw %+v", qs)
	}
	trap.check(t)
	wl := e.agent.reg.byName("e2e/wl")
	dns4 := netip.AddrPortFrom(wl.listen.addr4.Addr(), wl.listen.dns.port4)
	if dns4.Port() == 0 {
		t.Fatal("no IPv4 DNS listener")
	}
	// A protected workload addressing the listener itself: UDP to a port
	// that is not 53, refused by the kernel.
	if out := e.dnsChild("", "udp", dns4); !strings.HasPrefix(out, "refused:") || !strings.Contains(out, "operation not permitted") {
		t.Errorf("protected workload to the DNS listener's port: %q, want refused", out)
	}
	// TCP to the listener's port goes to the proxy like any connection.
	// Outside every workload: no record, no answer, nothing handled.
	c, err := net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(dns4))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write(dnsQuery("outside.allowed.test.")); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
	if n, err := c.Read(make([]byte, 512)); err == nil {
		t.Errorf("an unprotected process got a %d-byte answer from the DNS listener", n)
	}
	// The unprotected datagram went in before this one: once the
	// workload's query is handled, the other would have been too.
	if out := e.dnsChild("", "udp", netip.MustParseAddrPort("127.0.0.53:53")); !strings.HasPrefix(out, "answer") {
		t.Fatalf("workload query: %q", out)
	}
	for _, q := range h.take() {
		if q.Client.Port() == uint16(c.LocalAddr().(*net.UDPAddr).Port) {
			t.Errorf("handler took an unprotected process's datagram for workload %d's", q.Workload)
		}
	}
}

// TestDNSInWorkloadNetns: a workload in its own network namespace reaches
// the DNS listener the agent opened there, for a resolver address of that
// namespace, over UDP and TCP.
func TestDNSInWorkloadNetns(t *testing.T) {
	t.Parallel()
	testutil.RequireTools(t, "ip")
	ns := testutil.NewNetNS(t)
	h := &recordingDNS{}
	e := newE2E(t, e2eOptions{dns: h, netns: ns.Path})
	dst := netip.MustParseAddrPort("127.0.0.53:53")
	for _, mode := range []string{"udp", "udp-connected", "tcp"} {
		want := "answer from=" + dst.String() + " name=q-" + mode + ".allowed.test."
		if got := e.dnsChild(ns.Name, mode, dst); got != want {
			t.Errorf("%s: %q, want %q", mode, got, want)
		}
	}
	qs := h.take()
	if len(qs) != 3 {
		t.Fatalf("handler saw %d queries, want 3", len(qs))
	}
	for _, q := range qs {
		if q.Resolver != dst {
			t.Errorf("query %+v: resolver %s, want %s", q, q.Resolver, dst)
		}
	}
}

// blockingDNS holds every query until released, counting those it holds.
type blockingDNS struct {
	held    atomic.Int32
	release chan struct{}
}

func (h *blockingDNS) Answer(ctx context.Context, _ dnsproxy.Query) []byte {
	h.held.Add(1)
	select {
	case <-h.release:
	case <-ctx.Done():
	}
	return nil
}

// TestDNSInFlightBoundedPerWorkload: a workload that sends queries faster
// than they are answered gets at most dnsInFlightPerWorkload of them to the
// handler at once; the rest are dropped and counted, and every datagram is
// either held or counted.
func TestDNSInFlightBoundedPerWorkload(t *testing.T) {
	t.Parallel()
	h := &blockingDNS{release: make(chan struct{})}
	e := newE2E(t, e2eOptions{dns: h})
	defer close(h.release)
	const n = 300
	out, code := e.run("env", "CHIO_E2E_CHILD=dns", "CHIO_DNS_MODE=udp-burst", "CHIO_DNS_N="+strconv.Itoa(n),
		"CHIO_DNS_ADDR=127.0.0.53:53", "CHIO_DNS_NAME=burst.allowed.test.", os.Args[0], "-test.run=^$")
	if code != 0 || out != fmt.Sprintf("sent %d", n) {
		t.Fatalf("burst: exit %d, %q", code, out)
	}
	// Datagrams the socket buffers dropped never reach the agent: wait
	// until the listener has read every one that arrived, which is when
	// the counts stop moving.
	s := e.agent.dns
	var last uint64
	for i := 0; i < 100; i++ {
		now := uint64(h.held.Load()) + s.overBound.Load()
		if now == last && now > dnsInFlightPerWorkload {
			break
		}
		last = now
		time.Sleep(50 * time.Millisecond)
	}
	if got := h.held.Load(); got != dnsInFlightPerWorkload {
		t.Errorf("handler holds %d queries, want the bound %d", got, dnsInFlightPerWorkload)
	}
	t.Logf("%d sent: %d held, %d over the bound, %d unattributed", n, h.held.Load(), s.overBound.Load(), s.unattributed.Load())
	if s.overBound.Load() == 0 || uint64(h.held.Load())+s.overBound.Load() > n {
		t.Errorf("held %d + dropped %d of %d sent", h.held.Load(), s.overBound.Load(), n)
	}
}

// BenchmarkDNSSocketLookup is what attributing one UDP query costs the
// agent beyond the handler: the sock_diag lookup of its sending socket.
func BenchmarkDNSSocketLookup(b *testing.B) {
	testutil.RequireRoot(b)
	srv, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		b.Fatal(err)
	}
	defer srv.Close()
	cl, err := net.DialUDP("udp4", nil, srv.LocalAddr().(*net.UDPAddr))
	if err != nil {
		b.Fatal(err)
	}
	defer cl.Close()
	d, err := openDiag()
	if err != nil {
		b.Fatal(err)
	}
	defer d.close()
	local, client := srv.LocalAddr().(*net.UDPAddr).AddrPort(), cl.LocalAddr().(*net.UDPAddr).AddrPort()
	b.ResetTimer()
	for range b.N {
		if _, err := d.udpCookie(unix.AF_INET, local, client); err != nil {
			b.Fatal(err)
		}
	}
}

// TestDNSSocketLookupFindsTheSender: sock_diag names the socket a datagram
// came from (connected or not, IPv4 and IPv6, and a dual-stack socket
// reaching an IPv4 listener), and none once that socket is closed.
func TestDNSSocketLookupFindsTheSender(t *testing.T) {
	testutil.RequireRoot(t)
	d, err := openDiag()
	if err != nil {
		t.Fatal(err)
	}
	defer d.close()
	cookieOf := func(c *net.UDPConn) uint64 {
		rc, _ := c.SyscallConn()
		var v uint64
		rc.Control(func(fd uintptr) {
			n, err := unix.GetsockoptUint64(int(fd), unix.SOL_SOCKET, unix.SO_COOKIE)
			if err != nil {
				t.Fatal(err)
			}
			v = n
		})
		return v
	}
	for _, tc := range []struct {
		name, srvNet, srvAddr, clNet string
		connect                      bool
	}{
		{"v4 connected", "udp4", "127.0.0.1:0", "udp4", true},
		{"v4 unconnected", "udp4", "127.0.0.1:0", "udp4", false},
		{"v6 unconnected", "udp6", "[::1]:0", "udp6", false},
		{"dual-stack to v4", "udp4", "127.0.0.1:0", "udp", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv, err := net.ListenUDP(tc.srvNet, net.UDPAddrFromAddrPort(netip.MustParseAddrPort(tc.srvAddr)))
			if err != nil {
				t.Fatal(err)
			}
			defer srv.Close()
			local := srv.LocalAddr().(*net.UDPAddr).AddrPort()
			var cl *net.UDPConn
			if tc.connect {
				cl, err = net.DialUDP(tc.clNet, nil, net.UDPAddrFromAddrPort(local))
			} else {
				laddr := &net.UDPAddr{}
				if tc.clNet == "udp" {
					laddr.IP = net.IPv6unspecified
				}
				cl, err = net.ListenUDP(tc.clNet, laddr)
			}
			if err != nil {
				t.Fatal(err)
			}
			defer cl.Close()
			if _, err := cl.WriteToUDPAddrPort([]byte("x"), local); err != nil && !tc.connect {
				t.Fatal(err)
			} else if tc.connect {
				cl.Write([]byte("x"))
			}
			_, from, err := srv.ReadFromUDPAddrPort(make([]byte, 8))
			if err != nil {
				t.Fatal(err)
			}
			family := uint8(unix.AF_INET)
			if local.Addr().Is6() {
				family = unix.AF_INET6
			}
			got, err := d.udpCookie(family, local, from)
			if err != nil || got != cookieOf(cl) {
				t.Fatalf("udpCookie(%s from %s) = %d, %v; want %d", local, from, got, err, cookieOf(cl))
			}
			// Once the sender is closed, its datagrams name no socket.
			cl.Close()
			if c, err := d.udpCookie(family, local, from); err == nil {
				t.Errorf("udpCookie for %s after its socket closed: %d", from, c)
			}
		})
	}
}

// TestExecDNSGoesToTheHandler: exec's command, like a listed workload and a
// pod, has its DNS (UDP and TCP to port 53) answered by the agent's handler.
func TestExecDNSGoesToTheHandler(t *testing.T) {
	t.Parallel()
	testutil.RequireRoot(t)
	policy, key, log := agentBasics(t, e2ePolicy)
	h := &recordingDNS{}
	dst := netip.MustParseAddrPort("127.0.0.53:53")
	for _, mode := range []string{"udp-connected", "tcp"} {
		var out strings.Builder
		code, err := Exec(context.Background(), ExecOptions{
			Agent: Options{Policy: policy, Key: key, Log: log, DNS: h},
			Args: []string{"env", "CHIO_E2E_CHILD=dns", "CHIO_DNS_MODE=" + mode, "CHIO_DNS_ADDR=" + dst.String(),
				"CHIO_DNS_NAME=exec.allowed.test.", os.Args[0], "-test.run=^$"},
			Stdout: &out,
		})
		if errors.Is(err, bpf.ErrNotSupported) {
			testutil.Skip(t, "kernel lacks an eBPF feature: "+err.Error())
		}
		if want := "answer from=" + dst.String() + " name=exec.allowed.test."; err != nil || code != 0 || strings.TrimSpace(out.String()) != want {
			t.Fatalf("exec %s: %d, %v, %q; want %q", mode, code, err, out.String(), want)
		}
		comm := filepath.Base(os.Args[0])
		comm = comm[:min(len(comm), 15)]
		if qs := h.take(); len(qs) != 1 || qs[0].Resolver != dst || qs[0].Comm != comm || qs[0].PID == 0 {
			t.Errorf("exec %s: handler saw %+v", mode, qs)
		}
	}
}

// forwardingDNS forwards each query verbatim to upstream over a socket of
// its own, as a proxy that allows everything would.
type forwardingDNS struct{ upstream netip.AddrPort }

func (f forwardingDNS) Answer(ctx context.Context, q dnsproxy.Query) []byte {
	c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(f.upstream))
	if err != nil {
		return nil
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	if _, err := c.Write(q.Msg); err != nil {
		return nil
	}
	buf := make([]byte, 1500)
	n, err := c.Read(buf)
	if err != nil {
		return nil
	}
	return buf[:n]
}

// echoResolver answers every datagram on port 53 of a random loopback
// address with itself, marked as a response.
func echoResolver(t testing.TB) netip.AddrPort {
	t.Helper()
	var b [3]byte
	rand.Read(b[:])
	addr := netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 100 + b[0]%100, b[1], 1 + b[2]%250}), 53)
	pc, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(addr))
	if err != nil {
		t.Fatalf("resolver: %v", err)
	}
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 1500)
		for {
			n, from, err := pc.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			if n > 2 {
				buf[2] |= 0x80
			}
			pc.WriteToUDPAddrPort(buf[:n], from)
		}
	}()
	return addr
}

// BenchmarkDNSRedirectLatency: what the DNS path adds to a round trip, same
// run: a workload's queries to a local resolver through the agent against an
// unprotected process's straight to it. "verbatim": the redirect,
// attribution and restored source with a handler forwarding verbatim (no
// decision); "proxy": the agent's own DNS proxy (decision under the policy,
// a fresh question upstream, the answer checked, a signed receipt appended
// to the log in its mode). max(b.N, 100) queries each way.
func BenchmarkDNSRedirectLatency(b *testing.B) {
	for _, name := range []string{"verbatim", "proxy-async", "proxy-sync"} {
		b.Run(name, func(b *testing.B) { benchDNSRedirect(b, name) })
	}
}

func benchDNSRedirect(b *testing.B, handler string) {
	testutil.RequireRoot(b)
	resolver := echoResolver(b)
	parent := testutil.NewCgroup(b, "")
	wl, plain := testutil.NewCgroup(b, parent.Path), testutil.NewCgroup(b, parent.Path)
	pol, err := hushspec.Parse([]byte(e2ePolicy))
	if err != nil {
		b.Fatal(err)
	}
	_, key, _ := ed25519.GenerateKey(rand.Reader)
	mode := receipts.ModeSync
	if handler == "proxy-async" {
		mode = receipts.ModeAsync
	}
	log, err := receipts.Open(filepath.Join(b.TempDir(), "receipts.db"), receipts.Options{Key: key, Mode: mode})
	if err != nil {
		b.Fatal(err)
	}
	defer log.Close()
	opts := Options{Policy: pol, Key: key, Log: log, AttachCgroup: parent.Path}
	if handler == "verbatim" {
		opts.DNS = forwardingDNS{upstream: resolver}
	} else {
		opts.Resolvers, opts.DNSProxy = []netip.AddrPort{resolver}, &dnsproxy.Options{Rate: 1e9, Burst: 1 << 30, DistinctNames: 1 << 30}
	}
	a, err := Start(opts)
	if err != nil {
		b.Fatal(err)
	}
	defer a.Close()
	if err := a.Protect(WorkloadSpec{Name: "bench/dns", Cgroup: wl.Path}); err != nil {
		b.Fatal(err)
	}
	n := max(b.N, 100)
	run := func(cg testutil.Cgroup) (p50, p99 float64) {
		cmd := exec.Command(os.Args[0], "-test.run=^$", "-test.bench=^$")
		cmd.Env = append(os.Environ(), "CHIO_E2E_CHILD=dns", "CHIO_DNS_MODE=udp-latency", "CHIO_DNS_N="+strconv.Itoa(n),
			"CHIO_DNS_ADDR="+resolver.String(), "CHIO_DNS_NAME=bench.allowed.test.")
		cg.CommandIn(b, cmd)
		out, err := cmd.Output()
		if _, serr := fmt.Sscanf(string(out), "p50=%g p99=%g", &p50, &p99); err != nil || serr != nil {
			b.Fatalf("dns child: %v, %q", err, out)
		}
		return p50, p99
	}
	b.ResetTimer()
	p50v, p99v := run(wl)
	p50d, p99d := run(plain)
	b.StopTimer()
	b.ReportMetric(p50v/1e3, "agent-p50-µs")
	b.ReportMetric(p99v/1e3, "agent-p99-µs")
	b.ReportMetric(p50d/1e3, "direct-p50-µs")
	b.ReportMetric(p99d/1e3, "direct-p99-µs")
	b.ReportMetric(p50v/p50d, "p50-ratio")
}

// agentBasics are what Start needs beside the datapath: the policy parsed
// from text, a fresh key, and a receipt log closed with the test.
func agentBasics(tb testing.TB, policy string) (*hushspec.Policy, ed25519.PrivateKey, *receipts.Log) {
	tb.Helper()
	pol, err := hushspec.Parse([]byte(policy))
	if err != nil {
		tb.Fatal(err)
	}
	_, key, _ := ed25519.GenerateKey(rand.Reader)
	log, err := receipts.Open(filepath.Join(tb.TempDir(), "receipts.db"), receipts.Options{Key: key})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { log.Close() })
	return pol, key, log
}
