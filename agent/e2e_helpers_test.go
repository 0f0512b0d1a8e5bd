package agent

import (
	"cmp"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/backbay-labs/chio-agent/bpf"
	"github.com/backbay-labs/chio-agent/internal/dnsproxy"
	"github.com/backbay-labs/chio-agent/internal/testutil"
	"github.com/backbay-labs/chio-agent/kernel/hushspec"
	"github.com/backbay-labs/chio-agent/receipts"
)

// The policy the end-to-end tests run under, written as a user would from
// the HushSpec docs.
const e2ePolicy = `hushspec: "0.1.0"
name: e2e
rules:
  egress:
    allow: ["api.allowed.test", "**.allowed.test", "::1"]
    block: ["forbidden.test", "127.0.0.9"]
    default: block
`

// e2e is one agent protecting one workload cgroup, with local servers.
type e2e struct {
	t        *testing.T
	dir      string
	agent    *Agent
	log      *receipts.Log
	key      ed25519.PrivateKey
	parent   testutil.Cgroup
	wl       testutil.Cgroup
	ca       string // CA bundle path for clients
	cert     tls.Certificate
	mu       sync.Mutex
	decided  []Decision
	httpsURL string // https://api.allowed.test:PORT, served on 127.0.0.1
	httpAddr netip.AddrPort
	tlsAddr  netip.AddrPort
	dns      net.PacketConn // the workload's resolver (see serveDNS), bound before the agent starts
}

type e2eOptions struct {
	mode   receipts.Mode
	netns  string
	policy string
	hosts  map[string][]netip.Addr
	idle   time.Duration
	// firstBytes is the first-bytes timeout (default 2s).
	firstBytes time.Duration
	limits     Limits
	// workload, when set, changes the protected workload's spec.
	workload func(*WorkloadSpec)
	// dns, when set, answers the workload's DNS (Options.DNS).
	dns dnsproxy.Handler
	// dnsProxy runs the agent's own DNS proxy (Options.DNSProxy), with the
	// test's resolver (e.dns, served by the test) as its upstream.
	dnsProxy bool
}

// newE2E starts an agent attached to a fresh cgroup of the test's own, with
// servers on kernel-chosen loopback ports and a resolver on a random
// 127.x.y.z address: nothing two such tests share, so the tests built on it
// call t.Parallel() (their time is mostly spent waiting on children and
// connections, not on the CPU). A test stays sequential when it measures the
// whole test process (socket descriptors, the Go heap), touches cgroups or
// pins beyond its own (the agent's own cgroup, exec runs), or drives the
// shared containerd (the kube tests); sequential tests never overlap the
// parallel ones, which wait until every sequential test has finished.
func newE2E(t *testing.T, o e2eOptions) *e2e {
	t.Helper()
	testutil.RequireRoot(t)
	e := &e2e{t: t, dir: t.TempDir()}
	e.parent = testutil.NewCgroup(t, "")
	e.wl = testutil.NewCgroup(t, e.parent.Path)
	e.makeCA()

	pol := o.policy
	if pol == "" {
		pol = e2ePolicy
	}
	policy, err := hushspec.Parse([]byte(pol))
	if err != nil {
		t.Fatalf("policy: %v", err)
	}
	_, e.key, _ = ed25519.GenerateKey(rand.Reader)
	e.log, err = receipts.Open(filepath.Join(e.dir, "receipts.db"), receipts.Options{Key: e.key, Mode: o.mode})
	if err != nil {
		t.Fatalf("open log: %v", err)
	}
	t.Cleanup(func() {
		// After the agent has stopped (cleanups run last-in first-out):
		// close the log (a test may have closed it already) and verify the
		// whole file read-only.
		e.log.Close()
		ro, err := receipts.Open(filepath.Join(e.dir, "receipts.db"), receipts.Options{ReadOnly: true})
		if err != nil {
			t.Errorf("reopen receipt log: %v", err)
			return
		}
		defer ro.Close()
		if _, err := ro.Verify(context.Background(), receipts.VerifyOptions{}); err != nil {
			t.Errorf("verify receipt log: %v", err)
		}
	})
	hosts := map[string][]netip.Addr{
		"api.allowed.test":   {netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("::1")},
		"other.allowed.test": {netip.MustParseAddr("127.0.0.1")},
		"forbidden.test":     {netip.MustParseAddr("127.0.0.2")},
	}
	for k, v := range o.hosts {
		hosts[k] = v
	}
	e.dns = listenDNS(t)
	var dnsProxy *dnsproxy.Options
	if o.dnsProxy {
		dnsProxy = &dnsproxy.Options{}
	}
	e.agent, err = Start(Options{
		Policy: policy, Key: e.key, Log: e.log, AttachCgroup: e.parent.Path,
		Hosts:     hosts,
		Resolvers: []netip.AddrPort{e.dns.LocalAddr().(*net.UDPAddr).AddrPort()},
		Timeouts:  Timeouts{FirstBytes: cmp.Or(o.firstBytes, 2*time.Second), Idle: o.idle},
		Limits:    o.limits,
		DNS:       o.dns,
		DNSProxy:  dnsProxy,
		OnDecision: func(d Decision) {
			e.mu.Lock()
			e.decided = append(e.decided, d)
			e.mu.Unlock()
		},
	})
	if errors.Is(err, bpf.ErrNotSupported) {
		testutil.Skip(t, "kernel lacks an eBPF feature: "+err.Error())
	}
	if err != nil {
		t.Fatalf("start agent: %v", err)
	}
	t.Cleanup(func() {
		if err := e.agent.Close(); err != nil {
			t.Errorf("close agent: %v", err)
		}
	})
	spec := WorkloadSpec{Name: "e2e/wl", Cgroup: e.wl.Path, Netns: o.netns, Labels: map[string]string{"suite": "e2e"}}
	if o.workload != nil {
		o.workload(&spec)
	}
	if err := e.agent.Protect(spec); err != nil {
		t.Fatalf("protect: %v", err)
	}
	e.tlsAddr = e.serveHTTPS("tcp4", "127.0.0.1:0", "allowed-api")
	e.httpAddr = e.serveHTTP("tcp4", "127.0.0.1:0", "plain-api")
	e.httpsURL = fmt.Sprintf("https://api.allowed.test:%d/hello", e.tlsAddr.Port())
	return e
}

// makeCA writes a CA and a server certificate for the test names.
func (e *e2e) makeCA() {
	ca, err := newLocalCA([]string{"api.allowed.test", "other.allowed.test", "forbidden.test"},
		[]net.IP{net.ParseIP("127.0.0.1"), net.ParseIP("::1")})
	if err != nil {
		e.t.Fatal(err)
	}
	e.cert = ca.Cert
	e.ca = filepath.Join(e.dir, "ca.pem")
	if err := os.WriteFile(e.ca, ca.PEM, 0o644); err != nil {
		e.t.Fatal(err)
	}
}

func (e *e2e) serveHTTPS(network, addr, body string) netip.AddrPort {
	e.t.Helper()
	ln, err := net.Listen(network, addr)
	if err != nil {
		e.t.Fatalf("listen %s: %v", addr, err)
	}
	srv := &http.Server{Handler: bodyHandler(body), TLSConfig: &tls.Config{Certificates: []tls.Certificate{e.cert}}}
	go srv.ServeTLS(ln, "", "")
	e.t.Cleanup(func() { srv.Close() })
	return ln.Addr().(*net.TCPAddr).AddrPort()
}

func (e *e2e) serveHTTP(network, addr, body string) netip.AddrPort {
	e.t.Helper()
	ln, err := net.Listen(network, addr)
	if err != nil {
		e.t.Fatalf("listen %s: %v", addr, err)
	}
	srv := &http.Server{Handler: bodyHandler(body)}
	srv.SetKeepAlivesEnabled(false)
	go srv.Serve(ln)
	e.t.Cleanup(func() { srv.Close() })
	return ln.Addr().(*net.TCPAddr).AddrPort()
}

func bodyHandler(body string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "%s host=%s path=%s", body, r.Host, r.URL.Path)
	})
}

// pyRecv starts the python clients of these tests, so that each reads a
// socket the same way: recv_until reads from s until marker has come (or the
// peer closed), rest until the peer closes or resets and says which,
// read_all until the peer closes (a reset raises).
const pyRecv = `
import socket
def recv_until(s, marker):
    buf = b""
    while marker not in buf:
        chunk = s.recv(4096)
        if not chunk:
            break
        buf += chunk
    return buf
def rest(s):
    buf = b""
    try:
        while True:
            chunk = s.recv(4096)
            if not chunk:
                return buf, "closed"
            buf += chunk
    except ConnectionResetError:
        return buf, "reset"
def read_all(s):
    buf, how = rest(s)
    if how == "reset":
        raise ConnectionResetError("read_all: connection reset")
    return buf
`

// python runs script, formatted with args and started by pyRecv, in python3
// inside the protected workload, and returns its output and exit status.
func (e *e2e) python(script string, args ...any) (string, int) {
	e.t.Helper()
	return e.run("python3", "-c", pyRecv+fmt.Sprintf(script, args...))
}

// run runs a client inside the protected workload and returns its combined
// output and exit status.
func (e *e2e) run(name string, args ...string) (string, int) {
	e.t.Helper()
	return e.runIn(e.wl, name, args...)
}

func (e *e2e) runIn(cg testutil.Cgroup, name string, args ...string) (string, int) {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cg.CommandIn(e.t, cmd)
	out, err := cmd.CombinedOutput()
	return strings.TrimSpace(string(out)), testutil.ExitCode(e.t, err)
}

// lastDecision waits for the decision that matches and returns it.
func (e *e2e) waitDecision(match func(Decision) bool) Decision {
	e.t.Helper()
	for i := 0; i < 500; i++ {
		e.mu.Lock()
		for _, d := range e.decided {
			if match(d) {
				e.mu.Unlock()
				return d
			}
		}
		e.mu.Unlock()
		time.Sleep(10 * time.Millisecond)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	e.t.Fatalf("no matching decision among %d: %+v", len(e.decided), e.decided)
	return Decision{}
}

// receiptFor reads the stored receipt of a decision and checks it verifies.
func (e *e2e) receiptFor(d Decision) string {
	e.t.Helper()
	if d.Seq == 0 || d.ReceiptID == "" {
		e.t.Fatalf("decision has no receipt: %+v", d)
	}
	ent, err := e.log.Get(d.Seq)
	if err != nil {
		e.t.Fatalf("receipt %d: %v", d.Seq, err)
	}
	raw := string(ent.Receipt)
	if !strings.Contains(raw, d.ReceiptID) {
		e.t.Fatalf("receipt %d is not %s: %s", d.Seq, d.ReceiptID, raw)
	}
	return raw
}
