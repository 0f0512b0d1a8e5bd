package agent

import (
	"bufio"
	"bytes"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/backbay-labs/chio-agent/internal/testutil"
	"github.com/backbay-labs/chio-agent/kernel"
)

// Attacks of issue 10 that fail closed, each tried by a hostile workload
// (the test binary again, attacks_child_test.go) as root and as an
// unprivileged user: the forbidden server counts what reaches it, and every
// refusal must come with a deny receipt. These back the "blocked" rows of
// docs/datapath.md's attack table.

// nobody is the unprivileged user the attacks also run as.
const nobody = 65534

var attackUIDs = []int{0, nobody}

// forbiddenContent is what a trap server answers: an attack that gets it
// back has reached a server it must not reach.
const forbiddenContent = "FORBIDDEN-CONTENT"

// vhostServer is a lenient HTTP/1.x server with virtual hosts, as a shared
// server or a CDN edge would be: it takes the host from an absolute request
// target, else from the last Host header, ignoring case, a trailing dot and
// a port, and serves forbiddenContent for forbidden.test (for every host
// when trap is set). It counts the connections it accepts and records the
// hosts it served. It answers bytes that are not HTTP too.
type vhostServer struct {
	addr     netip.AddrPort
	trap     bool
	accepted atomic.Int64
	mu       sync.Mutex
	served   []string
}

func serveVhost(t *testing.T, network, addr string, trap bool) *vhostServer {
	t.Helper()
	s := &vhostServer{trap: trap}
	s.addr, _ = testutil.ServeTCP(t, network, addr, func(c net.Conn) {
		s.accepted.Add(1)
		s.handle(c)
	})
	return s
}

func (s *vhostServer) handle(c net.Conn) {
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReader(c)
	for {
		host, ok := readLenientHead(br)
		if host == "" && !ok {
			if s.trap { // opaque bytes reached the trap
				fmt.Fprintf(c, "%s\n", forbiddenContent)
			}
			return
		}
		s.mu.Lock()
		s.served = append(s.served, host)
		s.mu.Unlock()
		body := "allowed-content host=" + host
		if s.trap || host == "forbidden.test" {
			body = forbiddenContent + " host=" + host
		}
		fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
		if !ok {
			return
		}
	}
}

// readLenientHead reads one request head and returns the host it names
// (normalised) and whether another request may follow.
func readLenientHead(br *bufio.Reader) (string, bool) {
	line, err := br.ReadString('\n')
	if err != nil {
		return "", false
	}
	fields := strings.Fields(line)
	if len(fields) != 3 || !strings.HasPrefix(fields[2], "HTTP/") {
		return "", false
	}
	host := ""
	if u, err := url.Parse(fields[1]); err == nil && u.Host != "" {
		host = u.Host
	} else if fields[0] == "CONNECT" {
		host = fields[1]
	}
	fromTarget := host != ""
	length, more := 0, true
	for {
		h, err := br.ReadString('\n')
		if err != nil {
			return "", false
		}
		h = strings.TrimRight(h, "\r\n")
		if h == "" {
			break
		}
		k, v, _ := strings.Cut(h, ":")
		switch strings.ToLower(strings.TrimSpace(k)) {
		case "host":
			if !fromTarget {
				host = strings.TrimSpace(v) // the last one wins
			}
		case "content-length":
			length, _ = strconv.Atoi(strings.TrimSpace(v))
		case "connection":
			more = !strings.EqualFold(strings.TrimSpace(v), "close")
		}
	}
	if length > 0 {
		br.Discard(length)
	}
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	return strings.TrimSuffix(strings.ToLower(host), "."), more
}

func (s *vhostServer) hosts() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.served...)
}

// udpTrap is a UDP socket on 127.0.0.1 that counts the datagrams reaching it.
type udpTrap struct {
	addr netip.AddrPort
	got  atomic.Int64
}

func serveUDPTrap(t *testing.T, network, addr string) *udpTrap {
	t.Helper()
	pc, err := net.ListenPacket(network, addr)
	if err != nil {
		t.Fatalf("listen udp %s: %v", addr, err)
	}
	t.Cleanup(func() { pc.Close() })
	u := &udpTrap{addr: pc.LocalAddr().(*net.UDPAddr).AddrPort()}
	go func() {
		buf := make([]byte, 2048)
		for {
			if _, _, err := pc.ReadFrom(buf); err != nil {
				return
			}
			u.got.Add(1)
		}
	}()
	return u
}

// attack runs the hostile child in the protected workload as uid and
// returns its outcome line.
// mustRelay runs child mode name as uid against the allowed HTTP server:
// the same call that was refused to a forbidden one must be relayed, so
// that the attack was redirected rather than merely broken.
func (e *e2e) mustRelay(uid int, what, name string, env ...string) {
	e.t.Helper()
	out := e.attack(uid, name, append([]string{"CHIO_E2E_ADDR=" + e.httpAddr.String(), "CHIO_E2E_DATA=" + allowedGet}, env...)...)
	if !strings.Contains(out, "plain-api host=api.allowed.test path=/attack") {
		e.t.Fatalf("%s as uid %d to an allowed server: %s", what, uid, out)
	}
}

func (e *e2e) attack(uid int, name string, env ...string) string {
	e.t.Helper()
	return e.attackIn(e.wl, uid, name, env...)
}

func (e *e2e) attackIn(cg testutil.Cgroup, uid int, name string, env ...string) string {
	e.t.Helper()
	args := append([]string{"CHIO_E2E_CHILD=attack", "CHIO_E2E_ATTACK=" + name, "CHIO_E2E_UID=" + strconv.Itoa(uid)}, env...)
	out, code := e.runIn(cg, "env", append(args, os.Args[0], "-test.run=^$")...)
	if code != 0 {
		e.t.Fatalf("attack %s as uid %d: exit %d\n%s", name, uid, code, out)
	}
	lines := strings.Split(out, "\n")
	return lines[len(lines)-1]
}

// decisions is a copy of the decisions reported so far.
func (e *e2e) decisions() []Decision {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]Decision(nil), e.decided...)
}

// waitDecisionSince is waitDecision among the decisions reported after the
// first n.
func (e *e2e) waitDecisionSince(n int, match func(Decision) bool) Decision {
	e.t.Helper()
	for i := 0; i < 1000; i++ {
		if ds := e.decisions(); len(ds) > n {
			for _, d := range ds[n:] {
				if match(d) {
					return d
				}
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	ds := e.decisions()
	e.t.Fatalf("no matching decision among the %d after the first %d: %+v", len(ds)-n, n, ds[min(n, len(ds)):])
	return Decision{}
}

// denied waits for the deny decision of a connection to dst, checks that
// its receipt is stored, verifies, and names uid, and returns the decision.
func (e *e2e) denied(what string, uid int, dst netip.AddrPort) Decision {
	e.t.Helper()
	return e.deniedSince(0, what, uid, dst)
}

// deniedSince is denied among the decisions reported after the first n.
func (e *e2e) deniedSince(n int, what string, uid int, dst netip.AddrPort) Decision {
	e.t.Helper()
	d := e.waitDecisionSince(n, func(d Decision) bool {
		return d.Dst.Addr().Unmap() == dst.Addr().Unmap() && d.Dst.Port() == dst.Port()
	})
	if d.Verdict != kernel.VerdictDeny {
		e.t.Fatalf("%s as uid %d: decision = %+v; want a deny", what, uid, d)
	}
	if raw := e.verifiedReceipt(d); !strings.Contains(raw, fmt.Sprintf(`"uid":%d`, uid)) {
		e.t.Errorf("%s as uid %d: receipt does not name the uid: %s", what, uid, raw)
	}
	return d
}

// mustNotReach fails if the attack reached the trap or got its content
// back. (An answer may come back: the agent's 403.)
func mustNotReach(t *testing.T, what string, uid int, out string, trap *vhostServer) {
	t.Helper()
	if strings.Contains(out, forbiddenContent) || trap.accepted.Load() != 0 {
		t.Fatalf("%s as uid %d reached the forbidden server (%d connections): %s", what, uid, trap.accepted.Load(), out)
	}
}

// control runs the attack as nobody from an unprotected cgroup beside the
// workload (under the same attached programs), where it must reach a fresh
// trap: the attack is real, and the checks above can fail.
func (e *e2e) control(plain testutil.Cgroup, name string, network, addr string, env ...string) {
	e.t.Helper()
	trap := serveVhost(e.t, network, addr, true)
	out := e.attackIn(plain, nobody, name, append(env, "CHIO_E2E_ADDR="+trap.addr.String())...)
	if !strings.Contains(out, forbiddenContent) || trap.accepted.Load() == 0 {
		e.t.Fatalf("control: %s from an unprotected cgroup did not reach its server: %s", name, out)
	}
}

const allowedGet = "GET /attack HTTP/1.1\r\nHost: api.allowed.test\r\nConnection: close\r\n\r\n"

// TestAttackTCPFastOpen: data in the SYN, with sendto(MSG_FASTOPEN) and no
// connect(), or with TCP_FASTOPEN_CONNECT, is redirected and decided like
// any connect: a forbidden address sees nothing, and an allowed request
// still goes through the proxy.
func TestAttackTCPFastOpen(t *testing.T) {
	t.Parallel()
	e := newE2E(t, e2eOptions{})
	plain := testutil.NewCgroup(t, e.parent.Path)
	for _, uid := range attackUIDs {
		for _, mode := range []string{"tfo-sendto", "tfo-connect"} {
			e.control(plain, mode, "tcp4", "127.0.0.2:0")
			trap := serveVhost(t, "tcp4", "127.0.0.2:0", true)
			out := e.attack(uid, mode, "CHIO_E2E_ADDR="+trap.addr.String())
			d := e.denied(mode, uid, trap.addr)
			mustNotReach(t, mode, uid, out, trap)
			t.Logf("%s as uid %d: %s; %s by %s", mode, uid, out, d.Verdict, d.Guard)

			// The same call to an allowed server is relayed: TFO is
			// redirected, not merely broken.
			e.mustRelay(uid, mode, mode)
		}
	}
}

// TestAttackIPv6AndV4Mapped: an AF_INET6 socket reaching IPv4 through a
// v4-mapped address is decided like IPv4 (by the proxy, or refused at
// connect for a blocked literal), and native IPv6 to ::1 is decided too: a
// port outside the workload's egress ports is refused with a receipt.
func TestAttackIPv6AndV4Mapped(t *testing.T) {
	t.Parallel()
	// Servers made before the agent, so that the workload's egress ports can
	// name them: listed6 is allowed; unlisted6 is on a port not listed.
	listed6 := serveVhost(t, "tcp6", "[::1]:0", false)
	unlisted6 := serveVhost(t, "tcp6", "[::1]:0", true)
	mapped := serveVhost(t, "tcp4", "127.0.0.2:0", true)
	static := serveVhost(t, "tcp4", "127.0.0.9:0", true)
	e := newE2E(t, e2eOptions{workload: func(w *WorkloadSpec) {
		w.EgressPorts = []uint16{listed6.addr.Port(), mapped.addr.Port(), static.addr.Port()}
	}})
	plain := testutil.NewCgroup(t, e.parent.Path)
	e.control(plain, "tcp6", "tcp4", "127.0.0.2:0") // an IPv4 target: the child dials it with AF_INET
	e.control(plain, "tcp6", "tcp6", "[::1]:0")
	for _, uid := range attackUIDs {
		// ::ffff:127.0.0.2, forbidden by the default rule, through the proxy.
		v4m := netip.AddrPortFrom(netip.AddrFrom16(mapped.addr.Addr().As16()), mapped.addr.Port())
		before := len(e.decisions())
		out := e.attack(uid, "tcp6", "CHIO_E2E_ADDR="+v4m.String())
		d := e.deniedSince(before, "v4-mapped", uid, mapped.addr)
		mustNotReach(t, "v4-mapped", uid, out, mapped)
		if d.MatchedRule != "rules.egress.default" {
			t.Errorf("v4-mapped as uid %d: decision = %+v; want the policy's default", uid, d)
		}
		t.Logf("v4-mapped %s as uid %d: %s; %s by %s (%s)", v4m, uid, out, d.Verdict, d.Guard, d.MatchedRule)

		// ::ffff:127.0.0.9, a blocked IP literal: refused in the kernel.
		v4m = netip.AddrPortFrom(netip.AddrFrom16(static.addr.Addr().As16()), static.addr.Port())
		before = len(e.decisions())
		out = e.attack(uid, "tcp6", "CHIO_E2E_ADDR="+v4m.String())
		d = e.deniedSince(before, "v4-mapped blocked literal", uid, static.addr)
		mustNotReach(t, "v4-mapped blocked literal", uid, out, static)
		if out != "refused:EPERM" || d.Guard != kernel.GuardEgressPolicy || d.MatchedRule != "rules.egress.block" {
			t.Errorf("v4-mapped blocked literal as uid %d: %s, decision %+v; want EPERM by the block rule", uid, out, d)
		}

		// Native ::1 on a port not listed: decided, refused.
		before = len(e.decisions())
		out = e.attack(uid, "tcp6", "CHIO_E2E_ADDR="+unlisted6.addr.String(), "CHIO_E2E_DATA="+allowedGet)
		d = e.deniedSince(before, "::1 unlisted port", uid, unlisted6.addr)
		mustNotReach(t, "::1 unlisted port", uid, out, unlisted6)
		if d.Guard != GuardPort {
			t.Errorf("::1 unlisted port as uid %d: decision = %+v; want %s", uid, d, GuardPort)
		}

		// Native ::1 on a listed port: decided, allowed, receipted.
		n := listed6.accepted.Load()
		before = len(e.decisions())
		out = e.attack(uid, "tcp6", "CHIO_E2E_ADDR="+listed6.addr.String(), "CHIO_E2E_DATA="+allowedGet)
		if !strings.Contains(out, "allowed-content host=api.allowed.test") || listed6.accepted.Load() != n+1 {
			t.Fatalf("::1 listed port as uid %d: %s", uid, out)
		}
		d = e.waitDecisionSince(before, func(d Decision) bool { return d.Dst == listed6.addr })
		if d.Verdict != kernel.VerdictAllow {
			t.Fatalf("::1 listed port as uid %d: decision = %+v", uid, d)
		}
		e.verifiedReceipt(d)
	}
}

// TestAttackUDPEverySyscall: UDP to anything but the resolver is refused
// (EPERM) with a receipt whatever syscall sends it, IPv4, IPv6 and
// v4-mapped, and on a socket connected to the resolver.
func TestAttackUDPEverySyscall(t *testing.T) {
	t.Parallel()
	e := newE2E(t, e2eOptions{})
	serveDNS(e.dns)
	dns := "CHIO_E2E_DNS=" + e.dns.LocalAddr().String()
	// Control: from an unprotected cgroup the same datagram arrives.
	plain := testutil.NewCgroup(t, e.parent.Path)
	ctl := serveUDPTrap(t, "udp4", "127.0.0.1:0")
	if out := e.attackIn(plain, nobody, "udp", "CHIO_E2E_UDP_CALL=sendmmsg", "CHIO_E2E_ADDR="+ctl.addr.String()); out != "sent" {
		t.Fatalf("control: udp sendmmsg from an unprotected cgroup: %s", out)
	}
	for i := 0; i < 500 && ctl.got.Load() < 2; i++ {
		time.Sleep(10 * time.Millisecond)
	}
	if ctl.got.Load() != 2 {
		t.Fatalf("control: %d of 2 datagrams arrived", ctl.got.Load())
	}
	for _, uid := range attackUIDs {
		// The resolver itself is reachable: the refusals below are policy.
		if out := e.attack(uid, "udp", "CHIO_E2E_UDP_CALL=sendto", "CHIO_E2E_ADDR="+e.dns.LocalAddr().String()); out != "sent" {
			t.Fatalf("udp to the resolver as uid %d: %s", uid, out)
		}
		for _, c := range []struct{ call, network, addr string }{
			{"sendto", "udp4", "127.0.0.1:0"},
			{"sendmsg", "udp4", "127.0.0.1:0"},
			{"sendmmsg", "udp4", "127.0.0.1:0"},
			{"connect-write", "udp4", "127.0.0.1:0"},
			{"resolver-then-sendto", "udp4", "127.0.0.1:0"},
			{"sendto", "udp6", "[::1]:0"},
			{"sendmsg", "udp6", "[::1]:0"},
			{"connect-write", "udp6", "[::1]:0"},
			{"sendto", "v4-mapped", "127.0.0.1:0"},
			{"connect-write", "v4-mapped", "127.0.0.1:0"},
		} {
			what := c.network + " " + c.call
			network := c.network
			if network == "v4-mapped" {
				network = "udp4"
			}
			trap := serveUDPTrap(t, network, c.addr)
			dst := trap.addr
			if c.network == "v4-mapped" {
				dst = netip.AddrPortFrom(netip.AddrFrom16(dst.Addr().As16()), dst.Port())
			}
			out := e.attack(uid, "udp", "CHIO_E2E_UDP_CALL="+c.call, "CHIO_E2E_ADDR="+dst.String(), dns)
			d := e.waitDecision(func(d Decision) bool {
				return d.Transport == kernel.TransportUDP && d.Dst.Addr().Unmap() == trap.addr.Addr() && d.Dst.Port() == trap.addr.Port()
			})
			if out != "refused:EPERM" || trap.got.Load() != 0 {
				t.Fatalf("%s as uid %d: %s, %d datagrams reached the server; want EPERM and none", what, uid, out, trap.got.Load())
			}
			if d.Verdict != kernel.VerdictDeny || d.Guard != GuardDatapath {
				t.Fatalf("%s as uid %d: decision = %+v", what, uid, d)
			}
			if raw := e.verifiedReceipt(d); !strings.Contains(raw, `"transport":"udp"`) || !strings.Contains(raw, fmt.Sprintf(`"uid":%d`, uid)) {
				t.Errorf("%s as uid %d: receipt lacks udp or the uid: %s", what, uid, raw)
			}
		}
	}
}

// TestAttackMPTCP: an MPTCP socket (whose subflows are TCP) connecting to a
// forbidden address is redirected and refused with a receipt, with connect()
// and with MSG_FASTOPEN; to an allowed server it is relayed.
func TestAttackMPTCP(t *testing.T) {
	t.Parallel()
	e := newE2E(t, e2eOptions{})
	plain := testutil.NewCgroup(t, e.parent.Path)
	for _, uid := range attackUIDs {
		for _, mode := range []string{"mptcp", "mptcp-tfo"} {
			if uid == 0 {
				e.control(plain, mode, "tcp4", "127.0.0.2:0")
			}
			trap := serveVhost(t, "tcp4", "127.0.0.2:0", true)
			out := e.attack(uid, mode, "CHIO_E2E_ADDR="+trap.addr.String())
			if strings.HasPrefix(out, "socket-refused:") {
				// MPTCP disabled (net.mptcp.enabled=0) or not built: the
				// attack cannot start.
				t.Logf("%s as uid %d: no MPTCP socket here (%s)", mode, uid, out)
				mustNotReach(t, mode, uid, out, trap)
				continue
			}
			d := e.denied(mode, uid, trap.addr)
			mustNotReach(t, mode, uid, out, trap)
			t.Logf("%s as uid %d: %s; %s by %s", mode, uid, out, d.Verdict, d.Guard)

			e.mustRelay(uid, mode, mode)
		}
	}
}

// TestAttackIOURing: IORING_OP_CONNECT (run inline, by an io-wq worker
// with IOSQE_ASYNC, or by the ring's SQPOLL thread) still runs the cgroup
// connect hook, and IORING_OP_SENDMSG the sendmsg hook: a forbidden TCP
// server sees nothing and UDP is refused, each with a receipt.
func TestAttackIOURing(t *testing.T) {
	t.Parallel()
	e := newE2E(t, e2eOptions{})
	disabled, _ := os.ReadFile("/proc/sys/kernel/io_uring_disabled")
	plain := testutil.NewCgroup(t, e.parent.Path)
	for _, uid := range attackUIDs {
		for _, mode := range []string{"", "async", "sqpoll"} {
			what := strings.TrimSuffix("io_uring connect "+mode, " ")
			if uid == 0 && len(disabled) > 0 && disabled[0] == '0' {
				e.control(plain, "iouring-connect", "tcp4", "127.0.0.2:0", "CHIO_E2E_IOURING="+mode)
			}
			trap := serveVhost(t, "tcp4", "127.0.0.2:0", true)
			out := e.attack(uid, "iouring-connect", "CHIO_E2E_ADDR="+trap.addr.String(), "CHIO_E2E_IOURING="+mode)
			if strings.HasPrefix(out, "iouring-refused:") {
				// kernel.io_uring_disabled (1: root only, 2: nobody), or a
				// kernel without io_uring: the attack cannot start.
				t.Logf("%s as uid %d: io_uring refused (%s; io_uring_disabled=%s)", what, uid, out, bytes.TrimSpace(disabled))
				mustNotReach(t, what, uid, out, trap)
				continue
			}
			d := e.denied(what, uid, trap.addr)
			mustNotReach(t, what, uid, out, trap)
			t.Logf("%s as uid %d: %s; %s by %s", what, uid, out, d.Verdict, d.Guard)

			e.mustRelay(uid, what, "iouring-connect", "CHIO_E2E_IOURING="+mode)

			what = strings.TrimSuffix("io_uring sendmsg "+mode, " ")
			udp := serveUDPTrap(t, "udp4", "127.0.0.1:0")
			out = e.attack(uid, "iouring-sendmsg", "CHIO_E2E_ADDR="+udp.addr.String(), "CHIO_E2E_IOURING="+mode)
			d = e.waitDecision(func(d Decision) bool { return d.Transport == kernel.TransportUDP && d.Dst == udp.addr })
			if out != "refused:EPERM" || udp.got.Load() != 0 || d.Verdict != kernel.VerdictDeny {
				t.Fatalf("%s as uid %d: %s, %d datagrams, decision %+v; want EPERM, none, a deny", what, uid, out, udp.got.Load(), d)
			}
			e.verifiedReceipt(d)
		}
	}
}

// TestAttackSOMark: the agent's own sockets carry a mark that the hooks let
// pass. An unprivileged workload cannot set it (EPERM). A workload that can
// (root, or any uid holding CAP_NET_RAW, as container runtimes grant by
// default, or CAP_NET_ADMIN) sets it in vain: the hooks honour it only on
// the agent's own process's sockets, so the connection is still decided.
func TestAttackSOMark(t *testing.T) {
	t.Parallel()
	e := newE2E(t, e2eOptions{})
	mark := "CHIO_E2E_MARK=" + strconv.Itoa(DefaultAgentMark)
	plain := testutil.NewCgroup(t, e.parent.Path)
	e.control(plain, "somark", "tcp4", "127.0.0.2:0", mark)
	for _, c := range []struct {
		who, mode string
		uid       int // the uid the child runs as, and its receipt names
		outcome   string
	}{
		{"uid 65534", "somark", nobody, "mark-refused:EPERM "},
		{"root", "somark", 0, "mark-set "},
		{"uid 65534 holding CAP_NET_RAW", "somark-cap-netraw", nobody, "mark-set "},
	} {
		trap := serveVhost(t, "tcp4", "127.0.0.2:0", true)
		childUID := c.uid
		if c.mode == "somark-cap-netraw" {
			childUID = 0 // it changes uid itself, keeping CAP_NET_RAW
		}
		out := e.attack(childUID, c.mode, mark, "CHIO_E2E_ADDR="+trap.addr.String())
		if !strings.HasPrefix(out, c.outcome) {
			t.Fatalf("SO_MARK as %s: %s; want %s", c.who, out, c.outcome)
		}
		d := e.denied("SO_MARK as "+c.who, c.uid, trap.addr)
		mustNotReach(t, "SO_MARK as "+c.who, c.uid, out, trap)
		t.Logf("SO_MARK as %s: %s; %s by %s", c.who, out, d.Verdict, d.Guard)
	}
}

// TestAttackCgroupEscape: an unprivileged workload cannot move itself out
// of its cgroup (cgroup.procs elsewhere is root's), so its connection is
// still decided. A root workload can, and is then unprotected: root is
// outside the guarantee (docs/datapath.md); only logged here.
func TestAttackCgroupEscape(t *testing.T) {
	t.Parallel()
	e := newE2E(t, e2eOptions{})
	plain := testutil.NewCgroup(t, e.parent.Path)
	trap := serveVhost(t, "tcp4", "127.0.0.2:0", true)
	out := e.attack(nobody, "cgroup-escape", "CHIO_E2E_CGROUP="+plain.Path, "CHIO_E2E_ADDR="+trap.addr.String())
	if !strings.HasPrefix(out, "move-refused:") {
		t.Fatalf("cgroup escape as uid %d: %s; want the move refused", nobody, out)
	}
	d := e.denied("cgroup escape", nobody, trap.addr)
	mustNotReach(t, "cgroup escape", nobody, out, trap)
	t.Logf("cgroup escape as uid %d: %s; %s by %s", nobody, out, d.Verdict, d.Guard)

	trap = serveVhost(t, "tcp4", "127.0.0.2:0", true)
	out = e.attack(0, "cgroup-escape", "CHIO_E2E_CGROUP="+plain.Path, "CHIO_E2E_ADDR="+trap.addr.String())
	t.Logf("cgroup escape as root (outside the guarantee): %s; the forbidden server accepted %d connections", out, trap.accepted.Load())
}

// hostTrick is one hand-written request of TestAttackHostTricks; %[1]d is
// the server's port.
type hostTrick struct{ name, request string }

var hostTricks = []hostTrick{
	{"uppercase", "GET /t HTTP/1.1\r\nHost: FORBIDDEN.TEST\r\n\r\n"},
	{"trailing dot", "GET /t HTTP/1.1\r\nHost: forbidden.test.\r\n\r\n"},
	{"with port", "GET /t HTTP/1.1\r\nHost: forbidden.test:%[1]d\r\n\r\n"},
	{"mixed case, dot and port", "GET /t HTTP/1.1\r\nHost: Forbidden.Test.:%[1]d\r\n\r\n"},
	{"absolute-form", "GET http://forbidden.test/ HTTP/1.1\r\nHost: api.allowed.test\r\n\r\n"},
	{"absolute-form, no Host", "GET http://forbidden.test/ HTTP/1.1\r\n\r\n"},
	{"absolute-form uppercase with dot and port", "GET http://FORBIDDEN.TEST.:%[1]d/ HTTP/1.1\r\nHost: api.allowed.test\r\n\r\n"},
	{"absolute-form with userinfo", "GET http://api.allowed.test@forbidden.test/ HTTP/1.1\r\nHost: api.allowed.test\r\n\r\n"},
	{"duplicate Host", "GET /t HTTP/1.1\r\nHost: api.allowed.test\r\nHost: forbidden.test\r\n\r\n"},
	{"duplicate Host, other case", "GET /t HTTP/1.1\r\nHost: api.allowed.test\r\nhOST: forbidden.test\r\n\r\n"},
	{"folded Host", "GET /t HTTP/1.1\r\nHost: api.allowed.test\r\n forbidden.test\r\n\r\n"},
	{"CONNECT", "CONNECT forbidden.test:443 HTTP/1.1\r\nHost: api.allowed.test\r\n\r\n"},
	{"later request absolute-form", "GET /one HTTP/1.1\r\nHost: api.allowed.test\r\n\r\nGET http://forbidden.test/ HTTP/1.1\r\nHost: api.allowed.test\r\n\r\n"},
	{"later request duplicate Host", "GET /one HTTP/1.1\r\nHost: api.allowed.test\r\n\r\nGET /two HTTP/1.1\r\nHost: api.allowed.test\r\nHost: forbidden.test\r\nConnection: close\r\n\r\n"},
	{"later request uppercase", "GET /one HTTP/1.1\r\nHost: api.allowed.test\r\n\r\nGET /two HTTP/1.1\r\nHost: FORBIDDEN.TEST\r\n\r\n"},
	{"smuggled in a body (CL and TE)", "POST /one HTTP/1.1\r\nHost: api.allowed.test\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /two HTTP/1.1\r\nHost: forbidden.test\r\n\r\n"},
}

// TestAttackHostTricks: a shared server on an allowed address also serves
// forbidden.test (its name resolves there too, so only the policy's block
// rule stands between), under a policy whose default is allow. Every way of
// naming forbidden.test in the request — case, trailing dot, port,
// absolute-form target, duplicate or folded Host, CONNECT, a later request
// on a kept-alive connection, a request smuggled in a body — is either
// decided on forbidden.test or refused, each with a deny receipt; the server
// never serves forbidden.test, and what it does serve was allowed with a
// receipt. The same tricks naming the allowed name, sent to the forbidden
// newSharedEdgeE2E protects a workload under a default-allow policy that
// blocks forbidden.test, which resolves to the allowed name's address: the
// shared edge (one address, several virtual hosts) that Host and SNI tricks
// try to reach the forbidden tenant of.
func newSharedEdgeE2E(t *testing.T) *e2e {
	t.Helper()
	const policy = `hushspec: "0.1.0"
name: shared
rules:
  egress:
    allow: ["api.allowed.test"]
    block: ["forbidden.test"]
    default: allow
`
	return newE2E(t, e2eOptions{policy: policy, hosts: map[string][]netip.Addr{
		"forbidden.test": {netip.MustParseAddr("127.0.0.1")},
	}})
}

// address, are refused by the anti-spoofing check.
func TestAttackHostTricks(t *testing.T) {
	t.Parallel()
	e := newSharedEdgeE2E(t)
	shared := serveVhost(t, "tcp4", "127.0.0.1:0", false)
	// Control: the shared server does serve forbidden.test to an
	// unprotected client.
	plain := testutil.NewCgroup(t, e.parent.Path)
	if out := e.attackIn(plain, nobody, "http-raw", "CHIO_E2E_ADDR="+shared.addr.String(),
		"CHIO_E2E_DATA=GET / HTTP/1.1\r\nHost: forbidden.test\r\nConnection: close\r\n\r\n"); !strings.Contains(out, forbiddenContent) {
		t.Fatalf("control: the shared server did not serve forbidden.test: %s", out)
	}
	for i, c := range hostTricks {
		uid := attackUIDs[i%len(attackUIDs)]
		request := c.request
		if strings.Contains(request, "%[1]d") {
			request = fmt.Sprintf(request, shared.addr.Port())
		}
		before := len(e.decisions())
		servedBefore := len(shared.hosts())
		out := e.attack(uid, "http-raw", "CHIO_E2E_ADDR="+shared.addr.String(), "CHIO_E2E_DATA="+request)
		if strings.Contains(out, forbiddenContent) {
			t.Fatalf("%s as uid %d: the shared server served forbidden.test: %s", c.name, uid, out)
		}
		d := e.waitDecisionSince(before, func(d Decision) bool { return d.Dst == shared.addr && d.Verdict == kernel.VerdictDeny })
		raw := e.verifiedReceipt(d)
		if !strings.Contains(raw, fmt.Sprintf(`"uid":%d`, uid)) {
			t.Errorf("%s as uid %d: receipt does not name the uid: %s", c.name, uid, raw)
		}
		for _, h := range shared.hosts()[servedBefore:] {
			if h != "api.allowed.test" {
				t.Fatalf("%s as uid %d: the shared server served %q", c.name, uid, h)
			}
		}
		// Whatever reached the server was allowed first, with a receipt.
		var allowed int
		for _, d := range e.decisions()[before:] {
			if d.Dst == shared.addr && d.Verdict == kernel.VerdictAllow {
				e.verifiedReceipt(d)
				allowed++
			}
		}
		if served := len(shared.hosts()) - servedBefore; served > 0 && allowed == 0 {
			t.Fatalf("%s as uid %d: %d requests served with no allow receipt", c.name, uid, served)
		}
		t.Logf("%s as uid %d: %s by %s (name %q): %s", c.name, uid, d.Verdict, d.Guard, d.Name, d.Reason)
	}

	// The allowed name, in the same disguises, to the forbidden address.
	trap := serveVhost(t, "tcp4", "127.0.0.2:0", true)
	for i, req := range []string{
		"GET /t HTTP/1.1\r\nHost: API.ALLOWED.TEST\r\n\r\n",
		"GET /t HTTP/1.1\r\nHost: api.allowed.test.\r\n\r\n",
		"GET /t HTTP/1.1\r\nHost: api.allowed.test:%[1]d\r\n\r\n",
		"GET http://api.allowed.test/ HTTP/1.1\r\nHost: api.allowed.test\r\n\r\n",
		"GET /t HTTP/1.1\r\nHost: [::1]\r\n\r\n",
	} {
		uid := attackUIDs[i%len(attackUIDs)]
		if strings.Contains(req, "%[1]d") {
			req = fmt.Sprintf(req, trap.addr.Port())
		}
		before := len(e.decisions())
		out := e.attack(uid, "http-raw", "CHIO_E2E_ADDR="+trap.addr.String(), "CHIO_E2E_DATA="+req)
		d := e.deniedSince(before, "allowed name to a forbidden address", uid, trap.addr)
		mustNotReach(t, fmt.Sprintf("%q to the forbidden address", req), uid, out, trap)
		t.Logf("%q to %s as uid %d: %s by %s: %s", req, trap.addr, uid, d.Verdict, d.Guard, d.Reason)
	}
}

// TestAttackSNITricks: TLS naming forbidden.test in SNI with another case
// is decided on forbidden.test; the allowed name in SNI to the forbidden
// address is refused by the anti-spoofing check. Never a server's answer.
func TestAttackSNITricks(t *testing.T) {
	t.Parallel()
	e := newSharedEdgeE2E(t)
	spoofed := e.serveHTTPS("tcp4", "127.0.0.2:0", "forbidden-server")
	for _, c := range []struct {
		sni  string
		addr netip.AddrPort
	}{
		{"FORBIDDEN.TEST", e.tlsAddr},
		{"Forbidden.Test", e.tlsAddr},
		{"API.ALLOWED.TEST", spoofed},
		{"api.allowed.test", spoofed},
	} {
		for _, uid := range attackUIDs {
			before := len(e.decisions())
			out := e.attack(uid, "tls", "CHIO_E2E_ADDR="+c.addr.String(), "CHIO_E2E_SNI="+c.sni)
			if strings.Contains(out, "allowed-api") || strings.Contains(out, "forbidden-server") || !strings.HasPrefix(out, "tls-refused") {
				t.Fatalf("SNI %q to %s as uid %d: %s; want the handshake refused", c.sni, c.addr, uid, out)
			}
			d := e.deniedSince(before, "SNI "+c.sni, uid, c.addr)
			t.Logf("SNI %q to %s as uid %d: %s; %s by %s (name %q)", c.sni, c.addr, uid, out, d.Verdict, d.Guard, d.Name)
		}
	}
}

// TestAttackFlood: 5,000 connections from the workload, 64 at a time, half
// to an allowed server and half to a forbidden one, against per-workload
// bounds of 24 pending connections and 24 relays, so that many are refused
// for the bound. Every connection is either relayed with an allow receipt
// or refused with a (possibly aggregated) deny receipt: the allow receipts
// equal what the allowed server accepted, the forbidden server accepts
// nothing, allows and refusals add up to the attempts, and the agent still
// answers afterwards.
func TestAttackFlood(t *testing.T) {
	t.Parallel()
	e := newE2E(t, e2eOptions{limits: Limits{PendingPerWorkload: 24, RelaysPerWorkload: 24}})
	allowed, accepted := countingServer(t)
	trap := serveVhost(t, "tcp4", "127.0.0.2:0", true)
	const n = 5000
	for _, uid := range attackUIDs {
		before, acceptedBefore := len(e.decisions()), accepted.Load()
		out := e.attack(uid, "flood", "CHIO_E2E_N="+strconv.Itoa(n), "CHIO_E2E_PAR=64",
			"CHIO_E2E_ALLOWED="+allowed.String(), "CHIO_E2E_ADDR="+trap.addr.String())
		var okAllowed, otherAllowed, replyForbidden, refusedForbidden int
		if _, err := fmt.Sscanf(out, "allowed-ok %d allowed-other %d forbidden-reply %d forbidden-refused %d",
			&okAllowed, &otherAllowed, &replyForbidden, &refusedForbidden); err != nil {
			t.Fatalf("flood as uid %d: %q: %v", uid, out, err)
		}
		t.Logf("flood as uid %d: %s", uid, out)
		if trap.accepted.Load() != 0 || replyForbidden != 0 {
			t.Fatalf("flood as uid %d: the forbidden server accepted %d connections", uid, trap.accepted.Load())
		}
		if okAllowed+otherAllowed+replyForbidden+refusedForbidden != n {
			t.Fatalf("flood as uid %d: outcomes add up to %d of %d", uid, okAllowed+otherAllowed+replyForbidden+refusedForbidden, n)
		}
		// Every attempt is in a receipt: allows one each, refusals possibly
		// aggregated (Count). Aggregated refusals may be receipted a little
		// after the client is done.
		var allows, denies int
		for i := 0; i < 3000; i++ {
			allows, denies = 0, 0
			for _, d := range e.decisions()[before:] {
				switch {
				case d.Err != "" || d.ReceiptID == "":
					t.Fatalf("flood as uid %d: a decision without its receipt: %+v", uid, d)
				case d.Verdict == kernel.VerdictAllow && d.Dst == allowed:
					allows++
				case d.Verdict == kernel.VerdictDeny:
					denies += int(max(d.Count, 1))
				}
			}
			if allows+denies >= n && int64(allows) == accepted.Load()-acceptedBefore {
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
		if allows+denies != n || int64(allows) != accepted.Load()-acceptedBefore {
			t.Fatalf("flood as uid %d: %d allow receipts, refusals %d in deny receipts, %d accepted by the allowed server; want %d in all and allows = accepted",
				uid, allows, denies, accepted.Load()-acceptedBefore, n)
		}
		t.Logf("flood as uid %d: %d allow receipts, %d refusals in deny receipts", uid, allows, denies)
		if allows < okAllowed {
			t.Fatalf("flood as uid %d: %d answered but %d allow receipts", uid, okAllowed, allows)
		}
	}
	// The agent still answers.
	out := e.attack(nobody, "http-raw", "CHIO_E2E_ADDR="+allowed.String(), "CHIO_E2E_DATA="+allowedGet)
	if !strings.Contains(out, "counted host=api.allowed.test") {
		t.Fatalf("after the flood: %s", out)
	}
}
