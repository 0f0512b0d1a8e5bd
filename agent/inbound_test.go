package agent

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/backbay-labs/chio-agent/internal/testutil"
	"github.com/backbay-labs/chio-agent/kernel"
)

// inboundWorkload is a hostile workload that tries to be reached from
// outside: a bind() to fixed port argv[1], a listener on a port the kernel
// picks, and a listener on the allowed port argv[2] that hands "secret" to
// whoever connects. It prints one line per step, then waits for stdin to close.
const inboundWorkload = `
import errno, socket, sys
try:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", int(sys.argv[1])))
    s.listen(1)
    print("fixed ok", flush=True)
except OSError as e:
    print("fixed", errno.errorcode.get(e.errno), flush=True)
a = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
a.listen(1)
print("any", a.getsockname()[1], flush=True)
x = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
x.bind(("127.0.0.1", int(sys.argv[2])))
x.listen(1)
print("allowed ok", flush=True)
c, _ = x.accept()
c.sendall(b"secret")
c.close()
sys.stdin.readline()
`

// selfRelay listens on a kernel-picked port and connects to itself there,
// which the datapath sends through the proxy; it prints what its listener
// answered.
const selfRelay = pyRecv + `
ln = socket.socket()
ln.listen(1)
c = socket.create_connection(("127.0.0.1", ln.getsockname()[1]), timeout=10)
c.sendall(b"GET / HTTP/1.1\r\nHost: api.allowed.test\r\n\r\n")
s, _ = ln.accept()
s.settimeout(10)
s.recv(4096)
s.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nConnection: close\r\n\r\npong")
s.close()
print(read_all(c).split(b"\r\n\r\n", 1)[1].decode())
`

// A protected workload cannot be reached from outside: a bind to a fixed
// port fails with EPERM, a listener on a kernel-picked port receives no
// connection, and each refusal has a verifying deny receipt naming the port;
// a port the configuration allows works, and so does the workload's
// ordinary outbound HTTPS through the proxy.
func TestInboundRefusedWithReceiptExceptAllowedPort(t *testing.T) {
	t.Parallel()
	testutil.RequireTools(t, "python3", "curl")
	// Free ports, for the workload to try.
	lnFixed, fixed := listenLoopback(t)
	lnAllowed, allowed := listenLoopback(t)
	lnFixed.Close()
	lnAllowed.Close()
	e := newE2E(t, e2eOptions{workload: func(s *WorkloadSpec) { s.InboundPorts = []uint16{allowed} }})

	cmd := exec.Command("python3", "-c", inboundWorkload, fmt.Sprint(fixed), fmt.Sprint(allowed))
	e.wl.CommandIn(t, cmd)
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatalf("start workload: %v", err)
	}
	t.Cleanup(func() { stdin.Close(); cmd.Process.Kill(); cmd.Wait() })
	lines := bufio.NewReader(stdout)
	next := func() string {
		l, err := lines.ReadString('\n')
		if err != nil {
			t.Fatalf("read workload output: %v", err)
		}
		return strings.TrimSpace(l)
	}

	// A fixed port: bind fails, nothing listens, a host peer is refused.
	if l := next(); l != "fixed EPERM" {
		t.Fatalf("bind to 127.0.0.1:%d: %q; want EPERM", fixed, l)
	}
	fixedAddr := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), fixed)
	if c, err := net.DialTimeout("tcp", fixedAddr.String(), 2*time.Second); err == nil {
		c.Close()
		t.Fatalf("a host process connected to the workload on %s", fixedAddr)
	}
	d := e.waitDecision(func(d Decision) bool { return d.Dst == fixedAddr })
	if d.Verdict != kernel.VerdictDeny || d.Guard != GuardInbound || d.MatchedRule != RuleInboundAllowPorts || d.Comm != "python3" {
		t.Fatalf("decision = %+v; want deny by %s", d, GuardInbound)
	}
	raw := e.receiptFor(d)
	for _, want := range []string{`"direction":"inbound"`, `"tool_name":"bind"`, fmt.Sprintf(`"port":%d`, fixed), `"verdict":"deny"`} {
		if !strings.Contains(raw, want) {
			t.Errorf("bind receipt lacks %s: %s", want, raw)
		}
	}

	// A kernel-picked port: listen() succeeds, but no peer gets in.
	var anyPort uint16
	if _, err := fmt.Sscanf(next(), "any %d", &anyPort); err != nil {
		t.Fatalf("workload's kernel-picked port: %v", err)
	}
	d = e.waitDecision(func(d Decision) bool { return d.Dst.Port() == anyPort && d.Guard == GuardInbound })
	if raw := e.receiptFor(d); !strings.Contains(raw, `"tool_name":"listen"`) || !strings.Contains(raw, fmt.Sprintf(`"port":%d`, anyPort)) {
		t.Errorf("listen receipt: %s", raw)
	}
	// Its SYNs are dropped: a host peer's connect times out.
	anyAddr := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), anyPort)
	c, err := net.DialTimeout("tcp", anyAddr.String(), 2*time.Second)
	var nerr net.Error
	if err == nil {
		c.Close()
		t.Fatalf("a host process connected to the workload's listener on %s", anyAddr)
	}
	if !errors.As(err, &nerr) || !nerr.Timeout() {
		t.Fatalf("connect to the refused listener on %s: %v; want a timeout", anyAddr, err)
	}
	// The workload still reaches a listener of its own through the proxy,
	// whose relay carries the agent's mark (the policy allows the name).
	out, code := e.run("python3", "-c", selfRelay)
	if code != 0 || out != "pong" {
		t.Fatalf("workload to its own listener through the proxy: exit %d, %q", code, out)
	}
	if d := e.waitDecision(func(d Decision) bool { return d.Comm == "python3" && d.Name == "api.allowed.test" }); d.Verdict != kernel.VerdictAllow {
		t.Fatalf("the workload's connection to itself: %+v; want decided and allowed", d)
	}

	// The allowed port: a host peer connects in and reads.
	if l := next(); l != "allowed ok" {
		t.Fatalf("listen on allowed port %d: %q", allowed, l)
	}
	c, err = net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", allowed), 10*time.Second)
	if err != nil {
		t.Fatalf("connect to the allowed port: %v", err)
	}
	c.SetDeadline(time.Now().Add(10 * time.Second))
	got, err := io.ReadAll(c)
	c.Close()
	if err != nil || string(got) != "secret" {
		t.Fatalf("read from the allowed port: %q, %v", got, err)
	}

	// Outbound through the proxy is untouched.
	out, code = e.run("curl", "-sS", "--max-time", "10", "--cacert", e.ca,
		"--resolve", fmt.Sprintf("api.allowed.test:%d:127.0.0.1", e.tlsAddr.Port()), e.httpsURL)
	if code != 0 || !strings.HasPrefix(out, "allowed-api") {
		t.Fatalf("outbound HTTPS from the workload: exit %d, %q", code, out)
	}
}

// A listener the workload opened before it was protected, which no hook
// saw, is refused when protection starts: receipted, and no peer gets in.
func TestInboundListenerOpenedBeforeProtectionRefused(t *testing.T) {
	t.Parallel()
	testutil.RequireTools(t, "python3")
	e := newE2E(t, e2eOptions{})
	late := testutil.NewCgroup(t, e.parent.Path)
	cmd := exec.Command("python3", "-c", `
import socket, sys
s = socket.socket()
s.bind(("127.0.0.1", 0))
s.listen(8)
print(s.getsockname()[1], flush=True)
while True:
    c, _ = s.accept()
    c.sendall(b"secret")
    c.close()
`)
	late.CommandIn(t, cmd)
	stdout, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatalf("start listener: %v", err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	var port uint16
	if _, err := fmt.Fscan(stdout, &port); err != nil {
		t.Fatalf("read listener port: %v", err)
	}
	addr := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), port)
	read := func() (string, error) {
		c, err := net.DialTimeout("tcp", addr.String(), 2*time.Second)
		if err != nil {
			return "", err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(2 * time.Second))
		b, err := io.ReadAll(c)
		return string(b), err
	}
	if got, err := read(); got != "secret" {
		t.Fatalf("before protection: %q, %v; want the listener to answer", got, err)
	}

	if err := e.agent.Protect(WorkloadSpec{Name: "e2e/late", Cgroup: late.Path}); err != nil {
		t.Fatalf("protect: %v", err)
	}
	d := e.waitDecision(func(d Decision) bool { return d.Workload == "e2e/late" && d.Dst == addr })
	if d.Verdict != kernel.VerdictDeny || d.Guard != GuardInbound || !strings.Contains(d.Reason, "before the workload was protected") {
		t.Fatalf("decision = %+v; want deny by %s", d, GuardInbound)
	}
	if raw := e.receiptFor(d); !strings.Contains(raw, `"tool_name":"listen"`) || !strings.Contains(raw, `"direction":"inbound"`) {
		t.Errorf("receipt: %s", raw)
	}
	var nerr net.Error
	if got, err := read(); err == nil || !errors.As(err, &nerr) || !nerr.Timeout() {
		t.Fatalf("after protection: %q, %v; want the connect to time out", got, err)
	}
	// Unprotected again, it answers again.
	if err := e.agent.Unprotect("e2e/late"); err != nil {
		t.Fatalf("unprotect: %v", err)
	}
	if got, err := read(); got != "secret" {
		t.Fatalf("after unprotect: %q, %v; want the listener to answer", got, err)
	}
}
