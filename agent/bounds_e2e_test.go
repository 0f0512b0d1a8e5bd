package agent

import (
	"bufio"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/backbay-labs/chio-agent/internal/testutil"
	"github.com/backbay-labs/chio-agent/kernel"
)

// Attacks on the proxy's resources and on the HTTP gate, made from inside a
// protected workload (issue 10, items 2, 8 and 12).

// keepAliveServer is an HTTP/1.1 server on a random loopback port that
// keeps connections open, records the Host of every request it serves, and
// switches protocols for /ws101 (then echoes what it reads).
type keepAliveServer struct {
	port  int
	mu    sync.Mutex
	hosts []string
}

func serveKeepAlive(t *testing.T) *keepAliveServer {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &keepAliveServer{port: ln.Addr().(*net.TCPAddr).Port}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		s.hosts = append(s.hosts, r.Host)
		s.mu.Unlock()
		if r.Method == http.MethodConnect {
			http.Error(w, "no tunnel", http.StatusMethodNotAllowed)
			return
		}
		if r.URL.Path == "/ws101" {
			c, brw, err := http.NewResponseController(w).Hijack()
			if err != nil {
				return
			}
			defer c.Close()
			brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
			brw.Flush()
			buf := make([]byte, 4096)
			for {
				n, err := brw.Read(buf)
				if n > 0 {
					c.Write(buf[:n])
				}
				if err != nil {
					return
				}
			}
		}
		fmt.Fprintf(w, "seen %s", r.URL.Path)
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return s
}

func (s *keepAliveServer) seen() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.hosts...)
}

// laterRequestDenied checks what a connection decided for host must come
// to when a later request on it names other: srv served requests for host
// only, and the later request was denied (by name, with a receipt).
func (e *e2e) laterRequestDenied(srv *keepAliveServer, host, other string) {
	e.t.Helper()
	for _, h := range srv.seen() {
		if hostOnly(h) != host {
			e.t.Fatalf("upstream saw a request for %q on a connection decided for %s", h, host)
		}
	}
	d := e.waitDecision(func(d Decision) bool { return d.Name == other })
	if d.Verdict != kernel.VerdictDeny || d.Guard != GuardProtocol || !strings.Contains(d.Reason, "later request") {
		e.t.Fatalf("decision = %+v; want a deny of the later request", d)
	}
	e.receiptFor(d)
}

// heapPeak samples the Go heap in use until stop is called, and returns the
// highest figure seen. The agent runs in this process: this is its heap.
func heapPeak() (stop func() uint64) {
	var peak atomic.Uint64
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		var ms runtime.MemStats
		for {
			runtime.ReadMemStats(&ms)
			if ms.HeapInuse > peak.Load() {
				peak.Store(ms.HeapInuse)
			}
			select {
			case <-done:
				return
			case <-time.After(2 * time.Millisecond):
			}
		}
	}()
	return func() uint64 { close(done); <-finished; return peak.Load() }
}

func heapInuse() uint64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapInuse
}

// TestEndlessHeaderOnLaterRequestRefused: a client's second request on a
// kept-alive connection sends a header that never ends. The gate must refuse
// it once it passes the head bound, with a receipt naming the bound, and the
// agent's heap must not grow with what the client sends. Sequential: it
// measures the whole test process's heap.
func TestEndlessHeaderOnLaterRequestRefused(t *testing.T) {
	testutil.RequireTools(t, "python3")
	e := newE2E(t, e2eOptions{})
	srv := serveKeepAlive(t)
	const attack = 100 << 20
	before := heapInuse()
	stop := heapPeak()
	out, code := e.python(`
s = socket.create_connection(("127.0.0.1", %d), timeout=30)
s.sendall(b"GET /one HTTP/1.1\r\nHost: api.allowed.test\r\n\r\n")
buf = recv_until(s, b"seen /one")
print("first:", buf.split(b"\r\n")[0].decode())
s.sendall(b"GET /two HTTP/1.1\r\nHost: api.allowed.test\r\nX-Endless: ")
chunk, sent = b"a" * 65536, 0
try:
    while sent < %d:
        s.sendall(chunk)
        sent += len(chunk)
    print("sent all", sent)
except OSError as e:
    print("refused after", sent, type(e).__name__)
`, srv.port, attack)
	peak := stop()
	if code != 0 || !strings.Contains(out, "first: HTTP/1.1 200 OK") || !strings.Contains(out, "refused after") {
		t.Fatalf("python: exit %d\n%s", code, out)
	}
	d := e.waitDecision(func(d Decision) bool { return d.Guard == GuardLimit })
	if d.Verdict != kernel.VerdictDeny || !strings.Contains(d.Reason, boundHeadBytes) {
		t.Fatalf("decision = %+v; want a deny naming %s", d, boundHeadBytes)
	}
	e.receiptFor(d)
	// The bound is 64 KiB a head; 16 MiB leaves room for the test's own
	// allocations and is far below the 100 MiB the client sent.
	if growth := int64(peak) - int64(before); growth > 16<<20 {
		t.Fatalf("agent heap grew by %d MiB while the client sent %d MiB of header", growth>>20, attack>>20)
	}
	for _, h := range srv.seen() {
		if h != "api.allowed.test" {
			t.Fatalf("upstream saw host %q", h)
		}
	}
}

// TestPendingFloodRefusedWithReceipts holds the workload's pending bound
// with idle connections, then floods past it: every connection past the
// bound is refused at once and accounted for in (aggregated) receipts, and
// the connections held before the flood are still decided.
func TestPendingFloodRefusedWithReceipts(t *testing.T) {
	t.Parallel()
	testutil.RequireTools(t, "python3")
	const held, flood = 4, 20
	e := newE2E(t, e2eOptions{firstBytes: 30 * time.Second, limits: Limits{PendingPerWorkload: held}})
	srv := serveKeepAlive(t)
	out, code := e.python(`
held = [socket.create_connection(("127.0.0.1", %[1]d), timeout=20) for _ in range(%[2]d)]
refused = 0
for _ in range(%[3]d):
    try:
        c = socket.create_connection(("127.0.0.1", %[1]d), timeout=20)
        if c.recv(1) == b"":
            refused += 1
    except ConnectionResetError:
        refused += 1
    except OSError as e:
        print("flood:", type(e).__name__)
print("refused", refused)
for i, c in enumerate(held):
    c.sendall(b"GET /h%%d HTTP/1.1\r\nHost: api.allowed.test\r\nConnection: close\r\n\r\n" %% i)
    buf = read_all(c)
    print("held", i, buf.split(b"\r\n")[0].decode(), buf.split(b"\r\n\r\n")[-1].decode())
`, srv.port, held, flood)
	if code != 0 {
		t.Fatalf("python: exit %d\n%s", code, out)
	}
	if !strings.Contains(out, fmt.Sprintf("refused %d", flood)) {
		t.Errorf("want all %d connections past the bound refused:\n%s", flood, out)
	}
	for i := 0; i < held; i++ {
		if want := fmt.Sprintf("held %d HTTP/1.1 200 OK seen /h%d", i, i); !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	// Every refusal is in a receipt: the counts add up to the flood.
	var sum uint32
	for i := 0; i < 500 && sum < flood; i++ {
		sum = 0
		e.mu.Lock()
		for _, d := range e.decided {
			if d.Guard == GuardLimit {
				sum += max(d.Count, 1)
			}
		}
		e.mu.Unlock()
		time.Sleep(10 * time.Millisecond)
	}
	if sum != flood {
		t.Fatalf("limit receipts account for %d refusals, want %d", sum, flood)
	}
	d := e.waitDecision(func(d Decision) bool { return d.Guard == GuardLimit })
	if d.Verdict != kernel.VerdictDeny || !strings.Contains(d.Reason, boundPendingPerWorkload) {
		t.Fatalf("decision = %+v; want a deny naming %s", d, boundPendingPerWorkload)
	}
	e.receiptFor(d)
}

// TestUpgradeWithoutSwitchKeepsDeciding sends an Upgrade request that the
// server answers 200, without switching, then a request for another host on
// the same connection: it must be refused with a receipt and never reach the
// server. Both after the answer, and pipelined behind the Upgrade request;
// likewise after a CONNECT the server refused.
func TestUpgradeWithoutSwitchKeepsDeciding(t *testing.T) {
	t.Parallel()
	testutil.RequireTools(t, "python3")
	e := newE2E(t, e2eOptions{})
	srv := serveKeepAlive(t)
	out, code := e.python(`
up = b"GET /ws HTTP/1.1\r\nHost: api.allowed.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
other = b"GET /other HTTP/1.1\r\nHost: other.allowed.test\r\n\r\n"
port = %d
for mode in ("after", "pipelined", "connect"):
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    if mode == "connect":
        s.sendall(b"CONNECT api.allowed.test:%%d HTTP/1.1\r\nHost: api.allowed.test:%%d\r\n\r\n" %% (port, port))
        buf = recv_until(s, b"no tunnel")
        print(mode, "answer:", buf.split(b"\r\n")[0].decode())
        s.sendall(other)
    elif mode == "after":
        s.sendall(up)
        buf = recv_until(s, b"seen /ws")
        print(mode, "upgrade:", buf.split(b"\r\n")[0].decode())
        s.sendall(other)
    else:
        s.sendall(up + other)
    buf, how = rest(s)
    print(mode, "other:", how, b"seen /other" in buf)
`, srv.port)
	if code != 0 {
		t.Fatalf("python: exit %d\n%s", code, out)
	}
	for _, want := range []string{"after upgrade: HTTP/1.1 200 OK", "after other: reset False", "pipelined other: reset False",
		"connect answer: HTTP/1.1 405 Method Not Allowed", "connect other: reset False"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	e.laterRequestDenied(srv, "api.allowed.test", "other.allowed.test")
}

// TestWebSocketSwitchRelayed: a real protocol switch (101) still works, and
// is itself decided and receipted.
func TestWebSocketSwitchRelayed(t *testing.T) {
	t.Parallel()
	testutil.RequireTools(t, "python3")
	e := newE2E(t, e2eOptions{})
	srv := serveKeepAlive(t)
	out, code := e.python(`
s = socket.create_connection(("127.0.0.1", %d), timeout=10)
s.sendall(b"GET /ws101 HTTP/1.1\r\nHost: api.allowed.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
buf = recv_until(s, b"\r\n\r\n")
print("switch:", buf.split(b"\r\n")[0].decode())
frame = b"\x81\x05hello GET / HTTP/1.1\r\nHost: elsewhere.test\r\n\r\n"
s.sendall(frame)
got = buf.split(b"\r\n\r\n", 1)[1]
while len(got) < len(frame):
    chunk = s.recv(4096)
    if not chunk:
        break
    got += chunk
print("echo ok" if got == frame else "echo bad %%r" %% got)
`, srv.port)
	if code != 0 || !strings.Contains(out, "switch: HTTP/1.1 101 Switching Protocols") || !strings.Contains(out, "echo ok") {
		t.Fatalf("python: exit %d\n%s", code, out)
	}
	d := e.waitDecision(func(d Decision) bool { return strings.Contains(d.Reason, "protocol switch") })
	if d.Verdict != kernel.VerdictAllow || d.Name != "api.allowed.test" {
		t.Fatalf("decision = %+v", d)
	}
	raw := e.receiptFor(d)
	if !strings.Contains(raw, "101 Switching Protocols") {
		t.Errorf("receipt does not name the switch: %s", raw)
	}
}

// TestClientResetMidRequestIsNotMalformed: a client that resets its
// connection halfway through a later request made no request; it must not
// get a deny receipt for a "malformed" one.
func TestClientResetMidRequestIsNotMalformed(t *testing.T) {
	t.Parallel()
	testutil.RequireTools(t, "python3")
	e := newE2E(t, e2eOptions{})
	srv := serveKeepAlive(t)
	out, code := e.python(`
import struct
s = socket.create_connection(("127.0.0.1", %d), timeout=10)
s.sendall(b"GET /one HTTP/1.1\r\nHost: api.allowed.test\r\n\r\n")
recv_until(s, b"seen /one")
s.sendall(b"GET /two HTTP/1.1\r\nHost: api.al")
s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
s.close()
print("reset")
`, srv.port)
	if code != 0 || out != "reset" {
		t.Fatalf("python: exit %d\n%s", code, out)
	}
	e.waitDecision(func(d Decision) bool { return d.Verdict == kernel.VerdictAllow })
	// The relay ends once the gate has seen the reset.
	for i := 0; i < 500 && e.agent.proxy.relays.Load() != 0; i++ {
		time.Sleep(10 * time.Millisecond)
	}
	if n := e.agent.proxy.relays.Load(); n != 0 {
		t.Fatalf("%d relays still open", n)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, d := range e.decided {
		if d.Verdict != kernel.VerdictAllow {
			t.Errorf("a client reset got a %s decision: %+v", d.Verdict, d)
		}
	}
}

// TestMemoryUnderCeilingWithEveryBoundFull fills every bound at once with
// the most each connection can make the agent hold (a first head and a
// later head each just under the head bound), floods past them, and checks
// the agent's heap and stacks grew by less than Limits.MemoryCeiling allows
// for connections: the documented ceiling is an upper bound, not a guess.
// Sequential: it measures the whole test process's heap.
func TestMemoryUnderCeilingWithEveryBoundFull(t *testing.T) {
	testutil.RequireTools(t, "python3")
	const n = 32
	lim := Limits{PendingPerWorkload: n, Pending: n, RelaysPerWorkload: n, Relays: n}
	e := newE2E(t, e2eOptions{firstBytes: 60 * time.Second, limits: lim})
	srv := serveKeepAlive(t)
	before := memInuse()
	cmd := exec.Command("python3", "-c", pyRecv+fmt.Sprintf(`
import sys
n, port, fill = %d, %d, b"a" * (60 * 1024)
relays = []
for i in range(n):
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    s.sendall(b"GET /r HTTP/1.1\r\nHost: api.allowed.test\r\n\r\n")
    recv_until(s, b"seen /r")
    s.sendall(b"GET /r2 HTTP/1.1\r\nHost: api.allowed.test\r\nX-Fill: " + fill)
    relays.append(s)
pending = []
for i in range(n):
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    s.sendall(b"GET /p HTTP/1.1\r\nHost: api.allowed.test\r\nX-Fill: " + fill)
    pending.append(s)
refused = 0
for i in range(n):
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=30)
        if s.recv(1) == b"":
            refused += 1
    except ConnectionResetError:
        refused += 1
print("ready", refused, flush=True)
sys.stdin.read()
`, n, srv.port))
	e.wl.CommandIn(t, cmd)
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stdin.Close(); cmd.Wait() })
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil || line != fmt.Sprintf("ready %d\n", n) {
		t.Fatalf("client: %q, %v", line, err)
	}
	p := e.agent.proxy
	for i := 0; i < 500 && (p.pending.Load() != n || p.relays.Load() != n); i++ {
		time.Sleep(10 * time.Millisecond)
	}
	if p.pending.Load() != n || p.relays.Load() != n {
		t.Fatalf("pending %d, relays %d; want %d each", p.pending.Load(), p.relays.Load(), n)
	}
	growth := int64(memInuse()) - int64(before)
	allowed := lim.MemoryCeiling() - memBase
	t.Logf("heap and stacks grew by %d KiB for %d pending and %d relays holding ~60 KiB heads; the ceiling allows %d KiB",
		growth>>10, n, n, allowed>>10)
	if growth > allowed {
		t.Fatalf("memory grew by %d KiB, over the ceiling's %d KiB", growth>>10, allowed>>10)
	}
}

// memInuse is the live heap and the goroutine stacks, after a collection.
func memInuse() uint64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapInuse + ms.StackInuse
}
