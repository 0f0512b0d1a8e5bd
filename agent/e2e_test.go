package agent

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/backbay-labs/chio-agent/internal/testutil"
	"github.com/backbay-labs/chio-agent/kernel"
	"github.com/backbay-labs/chio-agent/receipts"
)

func TestCurlHTTPSAllowedByName(t *testing.T) {
	t.Parallel()
	testutil.RequireTools(t, "curl")
	e := newE2E(t, e2eOptions{})
	out, code := e.run("curl", "-sS", "--max-time", "10", "--cacert", e.ca,
		"--resolve", fmt.Sprintf("api.allowed.test:%d:127.0.0.1", e.tlsAddr.Port()), e.httpsURL)
	if code != 0 || !strings.HasPrefix(out, "allowed-api host=api.allowed.test") {
		t.Fatalf("curl: exit %d, %q; want the allowed API's answer", code, out)
	}
	d := e.waitDecision(func(d Decision) bool { return d.Name == "api.allowed.test" })
	if d.Verdict != kernel.VerdictAllow || d.Protocol != "tls" || d.Comm != "curl" || d.MatchedRule != "rules.egress.allow" || d.Dst != e.tlsAddr {
		t.Fatalf("decision = %+v", d)
	}
	raw := e.receiptFor(d)
	for _, want := range []string{`"sni":"api.allowed.test"`, `"verdict":"allow"`, `"comm":"curl"`, `"name":"e2e/wl"`} {
		if !strings.Contains(raw, want) {
			t.Errorf("receipt lacks %s: %s", want, raw)
		}
	}
	// The log's indexes find it by destination and workload.
	var found []uint64
	err := e.log.Scan(context.Background(), receipts.Filter{Host: "api.allowed.test", Workload: "e2e/wl", Decision: "allow"},
		func(en receipts.Entry) error { found = append(found, en.Seq); return nil })
	if err != nil || len(found) != 1 || found[0] != d.Seq {
		t.Fatalf("scan by host and workload = %v, %v; want [%d]", found, err, d.Seq)
	}
}

func TestCurlHTTPSDeniedGetsTLSAlert(t *testing.T) {
	t.Parallel()
	testutil.RequireTools(t, "curl")
	e := newE2E(t, e2eOptions{})
	// forbidden.test is served by the same server, on an address it owns.
	_, code := e.run("curl", "-sS", "--max-time", "10", "--cacert", e.ca,
		"--resolve", fmt.Sprintf("forbidden.test:%d:127.0.0.1", e.tlsAddr.Port()),
		fmt.Sprintf("https://forbidden.test:%d/", e.tlsAddr.Port()))
	if code == 0 {
		t.Fatal("curl to a blocked host succeeded")
	}
	d := e.waitDecision(func(d Decision) bool { return d.Name == "forbidden.test" })
	if d.Verdict != kernel.VerdictDeny || d.MatchedRule != "rules.egress.block" {
		t.Fatalf("decision = %+v; want deny by rules.egress.block", d)
	}
	e.receiptFor(d)
}

func TestCurlHTTPDeniedGets403WithReceiptID(t *testing.T) {
	t.Parallel()
	testutil.RequireTools(t, "curl")
	e := newE2E(t, e2eOptions{})
	out, code := e.run("curl", "-sS", "--max-time", "10", "-w", "\n%{http_code}",
		"--resolve", fmt.Sprintf("unlisted.test:%d:127.0.0.1", e.httpAddr.Port()),
		fmt.Sprintf("http://unlisted.test:%d/secret?token=abc", e.httpAddr.Port()))
	if code != 0 || !strings.HasSuffix(out, "\n403") {
		t.Fatalf("curl: exit %d, %q; want a 403", code, out)
	}
	var body struct {
		Error     string `json:"error"`
		ReceiptID string `json:"receipt_id"`
	}
	jsonPart := out[:strings.LastIndex(out, "\n")]
	if err := json.Unmarshal([]byte(jsonPart), &body); err != nil {
		t.Fatalf("403 body is not JSON: %q", jsonPart)
	}
	d := e.waitDecision(func(d Decision) bool { return d.Name == "unlisted.test" })
	if body.Error != "chio_access_denied" || body.ReceiptID != d.ReceiptID || d.MatchedRule != "rules.egress.default" {
		t.Fatalf("403 names receipt %q, decision %+v", body.ReceiptID, d)
	}
	raw := e.receiptFor(d)
	if strings.Contains(raw, "token=abc") {
		t.Errorf("receipt keeps the query string: %s", raw)
	}
}

func TestSNISpoofRefused(t *testing.T) {
	t.Parallel()
	testutil.RequireTools(t, "curl")
	e := newE2E(t, e2eOptions{})
	// A forbidden server on 127.0.0.2; the client names an allowed host in
	// SNI while dialling it.
	spoofed := e.serveHTTPS("tcp4", "127.0.0.2:0", "forbidden-server")
	out, code := e.run("curl", "-sS", "--max-time", "10", "--cacert", e.ca,
		"--resolve", fmt.Sprintf("api.allowed.test:%d:127.0.0.2", spoofed.Port()),
		fmt.Sprintf("https://api.allowed.test:%d/", spoofed.Port()))
	if code == 0 || strings.Contains(out, "forbidden-server") {
		t.Fatalf("spoofed SNI reached the server: exit %d, %q", code, out)
	}
	d := e.waitDecision(func(d Decision) bool { return d.Dst == spoofed })
	if d.Verdict != kernel.VerdictDeny || d.Guard != GuardAntiSpoof {
		t.Fatalf("decision = %+v; want deny by %s", d, GuardAntiSpoof)
	}
	e.receiptFor(d)

	// The same with an allowed address literal in the HTTP Host header.
	plain := e.serveHTTP("tcp4", "127.0.0.2:0", "forbidden-server")
	out, code = e.run("curl", "-sS", "--max-time", "10", "-H", "Host: [::1]", fmt.Sprintf("http://127.0.0.2:%d/", plain.Port()))
	if strings.Contains(out, "forbidden-server") {
		t.Fatalf("a Host naming an allowed address reached another address: exit %d, %q", code, out)
	}
	d = e.waitDecision(func(d Decision) bool { return d.Dst == plain })
	if d.Verdict != kernel.VerdictDeny || d.Guard != GuardAntiSpoof || !strings.Contains(d.Reason, "named ::1 but dialled 127.0.0.2") {
		t.Fatalf("decision = %+v; want deny by %s", d, GuardAntiSpoof)
	}
}

func TestPythonURLLibAndSSL(t *testing.T) {
	t.Parallel()
	testutil.RequireTools(t, "python3")
	e := newE2E(t, e2eOptions{})
	// urllib over HTTP with an allowed Host header, and stdlib ssl with an
	// allowed SNI: unmodified Python clients.
	script := fmt.Sprintf(`
import socket, ssl, urllib.request
req = urllib.request.Request("http://127.0.0.1:%d/py", headers={"Host": "api.allowed.test"})
print(urllib.request.urlopen(req, timeout=10).read().decode())
ctx = ssl.create_default_context(cafile=%q)
with socket.create_connection(("127.0.0.1", %d), timeout=10) as s:
    with ctx.wrap_socket(s, server_hostname="other.allowed.test") as t:
        t.sendall(b"GET /tls HTTP/1.1\r\nHost: other.allowed.test\r\nConnection: close\r\n\r\n")
        print(read_all(t).decode().split("\r\n\r\n", 1)[1])
try:
    urllib.request.urlopen(urllib.request.Request("http://127.0.0.1:%d/", headers={"Host": "nope.test"}), timeout=10)
    print("UNEXPECTED-ALLOW")
except urllib.error.HTTPError as err:
    print("denied", err.code)
`, e.httpAddr.Port(), e.ca, e.tlsAddr.Port(), e.httpAddr.Port())
	out, code := e.run("python3", "-c", pyRecv+script)
	if code != 0 {
		t.Fatalf("python: exit %d\n%s", code, out)
	}
	for _, want := range []string{"plain-api host=api.allowed.test path=/py", "allowed-api host=other.allowed.test path=/tls", "denied 403"} {
		if !strings.Contains(out, want) {
			t.Errorf("python output lacks %q:\n%s", want, out)
		}
	}
	d := e.waitDecision(func(d Decision) bool { return d.Name == "other.allowed.test" })
	if d.Verdict != kernel.VerdictAllow || d.Comm != "python3" || d.MatchedRule != "rules.egress.allow" {
		t.Fatalf("decision = %+v", d)
	}
}

func TestIPv6Loopback(t *testing.T) {
	t.Parallel()
	testutil.RequireTools(t, "curl")
	e := newE2E(t, e2eOptions{})
	a6 := e.serveHTTP("tcp6", "[::1]:0", "v6-api")
	out, code := e.run("curl", "-sS", "-g", "--max-time", "10", fmt.Sprintf("http://[::1]:%d/v6", a6.Port()))
	if code != 0 || !strings.HasPrefix(out, "v6-api") {
		t.Fatalf("curl [::1]: exit %d, %q", code, out)
	}
	d := e.waitDecision(func(d Decision) bool { return d.Dst == a6 })
	if d.Verdict != kernel.VerdictAllow || d.Name != "::1" {
		t.Fatalf("decision = %+v", d)
	}
	// A name over IPv6 is checked against its IPv6 addresses too.
	out, code = e.run("curl", "-sS", "-g", "--max-time", "10", "--resolve", fmt.Sprintf("api.allowed.test:%d:[::1]", a6.Port()),
		fmt.Sprintf("http://api.allowed.test:%d/v6name", a6.Port()))
	if code != 0 || !strings.Contains(out, "path=/v6name") {
		t.Fatalf("curl name over [::1]: exit %d, %q", code, out)
	}
}

func TestStaticBlockRefusedAtConnect(t *testing.T) {
	t.Parallel()
	testutil.RequireTools(t, "curl")
	e := newE2E(t, e2eOptions{})
	// 127.0.0.9 is an IP literal of the block list: refused in the kernel,
	// never reaching the proxy, and still receipted.
	_, code := e.run("curl", "-sS", "--max-time", "5", "http://127.0.0.9:9/")
	if code != 7 {
		t.Fatalf("curl to a blocked address: exit %d; want 7 (could not connect)", code)
	}
	d := e.waitDecision(func(d Decision) bool { return d.Dst.Addr() == netip.MustParseAddr("127.0.0.9") })
	if d.Verdict != kernel.VerdictDeny || d.MatchedRule != "rules.egress.block" || d.Guard != kernel.GuardEgressPolicy {
		t.Fatalf("decision = %+v", d)
	}
	raw := e.receiptFor(d)
	if !strings.Contains(raw, `"pattern":"127.0.0.9"`) && !strings.Contains(raw, "127.0.0.9") {
		t.Errorf("receipt does not name the address: %s", raw)
	}
}

func TestClientSendingNothingIsReceipted(t *testing.T) {
	t.Parallel()
	testutil.RequireTools(t, "python3")
	e := newE2E(t, e2eOptions{})
	// Connect and send nothing until the proxy's first-bytes deadline (2s).
	out, code := e.run("python3", "-c", fmt.Sprintf(`
import socket
s = socket.create_connection(("127.0.0.1", %d), timeout=10)
print("eof" if s.recv(10) == b"" else "data")
`, e.httpAddr.Port()))
	_ = out
	_ = code
	d := e.waitDecision(func(d Decision) bool { return d.Dst == e.httpAddr && d.Verdict == kernel.VerdictDeny })
	if d.Guard != GuardProtocol || !strings.Contains(d.Reason, "sent nothing") {
		t.Fatalf("decision = %+v; want a protocol deny saying the client sent nothing", d)
	}
	e.receiptFor(d)
}

func TestAsyncReceiptsStillVerify(t *testing.T) {
	t.Parallel()
	testutil.RequireTools(t, "curl")
	e := newE2E(t, e2eOptions{mode: receipts.ModeAsync})
	for i := 0; i < 5; i++ {
		if out, code := e.run("curl", "-sS", "--max-time", "10", "--resolve", fmt.Sprintf("api.allowed.test:%d:127.0.0.1", e.httpAddr.Port()),
			fmt.Sprintf("http://api.allowed.test:%d/%d", e.httpAddr.Port(), i)); code != 0 {
			t.Fatalf("curl %d: exit %d, %q", i, code, out)
		}
	}
	// Async decisions do not wait for their receipts: they carry the id,
	// and the log holds all five once flushed.
	e.waitDecision(func(d Decision) bool { return d.Name == "api.allowed.test" && d.ReceiptID != "" })
	if err := e.log.Flush(context.Background(), true); err != nil {
		t.Fatalf("flush: %v", err)
	}
	if n := e.log.LastSeq(); n != 5 {
		t.Fatalf("log holds %d receipts after flush, want 5", n)
	}
}

func TestGoClientHTTPS(t *testing.T) {
	t.Parallel()
	e := newE2E(t, e2eOptions{})
	cmd := []string{"env", "CHIO_E2E_CHILD=https", "CHIO_E2E_CA=" + e.ca, "CHIO_E2E_ADDR=" + e.tlsAddr.String(),
		"CHIO_E2E_URL=" + e.httpsURL, os.Args[0], "-test.run=^$"}
	out, code := e.run(cmd[0], cmd[1:]...)
	if code != 0 || !strings.HasPrefix(out, "200 allowed-api host=api.allowed.test") {
		t.Fatalf("Go client: exit %d, %q", code, out)
	}
	d := e.waitDecision(func(d Decision) bool { return d.Name == "api.allowed.test" })
	if d.Verdict != kernel.VerdictAllow || d.Protocol != "tls" {
		t.Fatalf("decision = %+v", d)
	}
}

func TestUDPRefusedWhileDNSWorks(t *testing.T) {
	t.Parallel()
	e := newE2E(t, e2eOptions{})
	serveDNS(e.dns)
	out, code := e.run("env", "CHIO_E2E_CHILD=dns-udp", "CHIO_E2E_DNS="+e.dns.LocalAddr().String(), "CHIO_E2E_UDP=127.0.0.1:443", os.Args[0], "-test.run=^$")
	if code != 0 || !strings.Contains(out, "dns [127.0.0.1]") || !strings.Contains(out, "udp refused") {
		t.Fatalf("child: exit %d, %q; want DNS answered and UDP refused", code, out)
	}
	d := e.waitDecision(func(d Decision) bool { return d.Transport == kernel.TransportUDP })
	if d.Verdict != kernel.VerdictDeny || d.Dst != netip.MustParseAddrPort("127.0.0.1:443") || d.Guard != GuardDatapath {
		t.Fatalf("decision = %+v", d)
	}
	raw := e.receiptFor(d)
	if !strings.Contains(raw, `"transport":"udp"`) {
		t.Errorf("receipt does not say udp: %s", raw)
	}
}

// TestTenThousandConnectionsLeaveNothingBehind drives 10,000 connections
// through the proxy and checks that the BPF maps and the agent's file
// descriptors are as they were. Sequential: it counts the whole test
// process's sockets.
func TestTenThousandConnectionsLeaveNothingBehind(t *testing.T) {
	e := newE2E(t, e2eOptions{})
	url := fmt.Sprintf("http://api.allowed.test:%d/n", e.httpAddr.Port())
	// Warm up once so lazily opened descriptors (epoll, bbolt) exist.
	addr := "CHIO_E2E_ADDR=" + e.httpAddr.String()
	if out, code := e.run("env", "CHIO_E2E_CHILD=conns", "CHIO_E2E_N=1", "CHIO_E2E_PAR=1", "CHIO_E2E_URL="+url, addr,
		os.Args[0], "-test.run=^$"); code != 0 {
		t.Fatalf("warm-up: %d %q", code, out)
	}
	// The warm-up's handler may still hold its two sockets after the client
	// has its answer: count once the proxy holds no connection.
	for i := 0; i < 300 && e.agent.proxy.pending.Load()+e.agent.proxy.relays.Load() != 0; i++ {
		time.Sleep(10 * time.Millisecond)
	}
	fdsBefore := countFDs(t)
	for i := 0; i < 100; i++ {
		time.Sleep(20 * time.Millisecond)
		if n := countFDs(t); n == fdsBefore {
			break
		} else {
			fdsBefore = n
		}
	}
	p0, e0, err := e.agent.objs.MapCounts()
	if err != nil {
		t.Fatal(err)
	}
	out, code := e.run("env", "CHIO_E2E_CHILD=conns", "CHIO_E2E_N=10000", "CHIO_E2E_PAR=32", "CHIO_E2E_URL="+url, addr, os.Args[0], "-test.run=^$")
	if code != 0 {
		e.mu.Lock()
		last := e.decided[len(e.decided)-1]
		e.mu.Unlock()
		t.Fatalf("10,000 connections: exit %d, %q; last decision %+v; errors %v", code, out, last, e.agent.proxy.errs.list())
	}
	var p1, e1, fdsAfter int
	for i := 0; i < 300; i++ { // in-flight handlers finish after the client has its answer
		p1, e1, _ = e.agent.objs.MapCounts()
		fdsAfter = countFDs(t)
		if p1 == p0 && e1 == e0 && fdsAfter == fdsBefore {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if p1 != p0 || e1 != e0 {
		t.Errorf("map entries: pending %d→%d, established %d→%d", p0, p1, e0, e1)
	}
	if fdsAfter != fdsBefore {
		t.Errorf("agent socket descriptors: %d before, %d after", fdsBefore, fdsAfter)
		out, _ := exec.Command("sh", "-c", fmt.Sprintf("ss -tanp | grep 'pid=%d,' | head -20", os.Getpid())).CombinedOutput()
		t.Logf("sockets:\n%s", out)
	}
	if got := e.agent.proxy.counts.allowed.Load(); got != 10001 {
		t.Errorf("allowed count = %d, want 10001", got)
	}
	if n := e.log.LastSeq(); n != 10001 {
		t.Errorf("receipts = %d, want 10001", n)
	}
}

// countFDs counts the test process's socket descriptors: the agent's
// listeners and connections (and the test servers'). Other descriptors come
// and go with the Go runtime and os/exec (pidfds, pipes), not with the proxy.
func countFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, e := range ents {
		if l, err := os.Readlink("/proc/self/fd/" + e.Name()); err == nil && strings.HasPrefix(l, "socket:") {
			n++
		}
	}
	return n
}

func TestIdleConnectionClosed(t *testing.T) {
	t.Parallel()
	testutil.RequireTools(t, "python3")
	e := newE2E(t, e2eOptions{idle: 300 * time.Millisecond})
	// An upstream that answers and then holds the connection open forever.
	upstream, _ := testutil.ServeTCP(t, "tcp4", "127.0.0.1:0", func(c net.Conn) {
		buf := make([]byte, 4096)
		n, _ := c.Read(buf)
		c.Write(buf[:n])
		io.Copy(io.Discard, c) // never closes first
		c.Close()
	})
	port := upstream.Port()
	out, code := e.run("python3", "-c", fmt.Sprintf(`
import socket
s = socket.create_connection(("127.0.0.1", %d), timeout=20)
s.sendall(b"GET / HTTP/1.1\r\nHost: api.allowed.test\r\n\r\n")
got = s.recv(4096)
try:
    rest = s.recv(4096)
    print("closed" if rest == b"" else "more data")
except socket.timeout:
    print("still open")
`, port))
	if code != 0 || out != "closed" {
		t.Fatalf("idle connection: exit %d, %q; want the proxy to close it", code, out)
	}
}

func TestHTTPKeepAliveRequestsAreEachChecked(t *testing.T) {
	t.Parallel()
	testutil.RequireTools(t, "python3")
	e := newE2E(t, e2eOptions{})
	srv := serveKeepAlive(t)
	out, code := e.run("python3", "-c", fmt.Sprintf(`
import http.client
c = http.client.HTTPConnection("127.0.0.1", %d, timeout=10)
for path, host in (("/one", "api.allowed.test"), ("/two", "api.allowed.test"), ("/three", "forbidden.test")):
    try:
        c.request("GET", path, headers={"Host": host})
        r = c.getresponse()
        print(path, r.status, r.read().decode())
    except Exception as e:
        print(path, "refused", type(e).__name__)
`, srv.port))
	if code != 0 {
		t.Fatalf("python: exit %d\n%s", code, out)
	}
	for _, want := range []string{"/one 200 seen /one", "/two 200 seen /two", "/three refused"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	if n := len(srv.seen()); n != 2 {
		t.Fatalf("upstream saw %d requests, want 2", n)
	}
	e.laterRequestDenied(srv, "api.allowed.test", "forbidden.test")
}

func TestHTTPBodiesThroughTheRequestGate(t *testing.T) {
	t.Parallel()
	testutil.RequireTools(t, "curl")
	e := newE2E(t, e2eOptions{})
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		fmt.Fprintf(w, "%s %d %x", r.Method, len(b), sha256.Sum256(b))
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	port := ln.Addr().(*net.TCPAddr).Port
	body := make([]byte, 3<<20)
	rand.Read(body)
	file := filepath.Join(e.dir, "body")
	if err := os.WriteFile(file, body, 0o644); err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprintf("POST %d %x", len(body), sha256.Sum256(body))
	url := fmt.Sprintf("http://api.allowed.test:%d/upload", port)
	resolve := fmt.Sprintf("api.allowed.test:%d:127.0.0.1", port)
	for _, extra := range [][]string{nil, {"-H", "Transfer-Encoding: chunked"}, {"-H", "Expect: 100-continue"}} {
		args := append([]string{"-sS", "--max-time", "20", "--resolve", resolve, "--data-binary", "@" + file}, extra...)
		out, code := e.run("curl", append(args, url)...)
		if code != 0 || out != want {
			t.Fatalf("curl %v: exit %d, %q; want %q", extra, code, out, want)
		}
	}
}

// TestNoReceiptNoConnection closes the receipt log under a running agent:
// an allowed connection must then be refused, never relayed unreceipted.
func TestNoReceiptNoConnection(t *testing.T) {
	t.Parallel()
	testutil.RequireTools(t, "curl")
	e := newE2E(t, e2eOptions{})
	url := fmt.Sprintf("http://api.allowed.test:%d/", e.httpAddr.Port())
	resolve := fmt.Sprintf("api.allowed.test:%d:127.0.0.1", e.httpAddr.Port())
	if out, code := e.run("curl", "-sS", "--max-time", "10", "--resolve", resolve, url); code != 0 {
		t.Fatalf("before: exit %d, %q", code, out)
	}
	if err := e.log.Close(); err != nil {
		t.Fatal(err)
	}
	out, code := e.run("curl", "-sS", "--max-time", "10", "--resolve", resolve, url)
	if code == 0 || strings.Contains(out, "plain-api") {
		t.Fatalf("with the receipt log closed: exit %d, %q; want the connection refused", code, out)
	}
	d := e.waitDecision(func(d Decision) bool { return d.Err != "" })
	if d.Verdict != kernel.VerdictDeny || !strings.Contains(d.Err, "receipt not written") {
		t.Fatalf("decision = %+v", d)
	}
	if got := e.agent.Status("test").Counts.ReceiptErrors; got == 0 {
		t.Fatal("status counts no receipt error")
	}
}

func TestMetricsCountDecisions(t *testing.T) {
	t.Parallel()
	testutil.RequireTools(t, "curl")
	e := newE2E(t, e2eOptions{})
	resolve := fmt.Sprintf("api.allowed.test:%d:127.0.0.1", e.httpAddr.Port())
	e.run("curl", "-sS", "--max-time", "10", "--resolve", resolve, fmt.Sprintf("http://api.allowed.test:%d/", e.httpAddr.Port()))
	e.run("curl", "-sS", "--max-time", "10", "--resolve", fmt.Sprintf("nope.test:%d:127.0.0.1", e.httpAddr.Port()), fmt.Sprintf("http://nope.test:%d/", e.httpAddr.Port()))
	e.waitDecision(func(d Decision) bool { return d.Name == "nope.test" })
	rec := httptest.NewRecorder()
	e.agent.metricsHandler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	body := rec.Body.String()
	for _, want := range []string{
		`chio_agent_decisions_total{guard="HushSpecEgressGuard",verdict="allow",workload="e2e/wl"} 1`,
		`chio_agent_decisions_total{guard="HushSpecEgressGuard",verdict="deny",workload="e2e/wl"} 1`,
		`chio_agent_decision_seconds_count 2`,
		`chio_agent_receipts_last_seq 2`,
		`chio_agent_workloads 1`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("metrics lack %q", want)
		}
	}
	if t.Failed() {
		t.Logf("metrics:\n%s", body)
	}
}
