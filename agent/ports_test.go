package agent

import (
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"testing"

	"github.com/backbay-labs/chio-agent/internal/testutil"
	"github.com/backbay-labs/chio-agent/kernel"
)

// listenLoopback opens a listener on a free 127.0.0.1 port, closed in
// t.Cleanup, so that its port is known before the agent starts.
func listenLoopback(t *testing.T) (net.Listener, uint16) {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln, ln.Addr().(*net.TCPAddr).AddrPort().Port()
}

func serveOn(t *testing.T, ln net.Listener, body string) {
	srv := &http.Server{Handler: bodyHandler(body)}
	srv.SetKeepAlivesEnabled(false)
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
}

// An allowed name on a port the workload does not allow is refused, with a
// receipt naming the port rule and the port; on an allowed port it passes.
func TestEgressPortsRestrictAnAllowedName(t *testing.T) {
	t.Parallel()
	testutil.RequireTools(t, "curl")
	lnP, p := listenLoopback(t)
	lnQ, q := listenLoopback(t)
	e := newE2E(t, e2eOptions{workload: func(s *WorkloadSpec) { s.EgressPorts = []uint16{p} }})
	serveOn(t, lnP, "port-p")
	serveOn(t, lnQ, "port-q")
	curl := func(port uint16) (string, int) {
		return e.run("curl", "-sS", "-f", "--max-time", "10", "--resolve", fmt.Sprintf("api.allowed.test:%d:127.0.0.1", port),
			fmt.Sprintf("http://api.allowed.test:%d/", port))
	}

	out, code := curl(q)
	if code == 0 || strings.Contains(out, "port-q") {
		t.Fatalf("curl to an allowed name on port %d: exit %d, %q; want refused", q, code, out)
	}
	dq := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), q)
	d := e.waitDecision(func(d Decision) bool { return d.Dst == dq })
	if d.Verdict != kernel.VerdictDeny || d.Guard != GuardPort || d.MatchedRule != RuleEgressAllowPorts {
		t.Fatalf("decision = %+v; want deny by %s (%s)", d, GuardPort, RuleEgressAllowPorts)
	}
	raw := e.receiptFor(d)
	for _, want := range []string{fmt.Sprintf(`"port":%d`, q), `"matched_rule":"egress.allow_ports"`,
		`"policy_decision":"allow"`, `"guard":"ChioAgentPortGuard"`, `"verdict":"deny"`} {
		if !strings.Contains(raw, want) {
			t.Errorf("deny receipt lacks %s: %s", want, raw)
		}
	}

	out, code = curl(p)
	if code != 0 || !strings.HasPrefix(out, "port-p host=api.allowed.test") {
		t.Fatalf("curl to an allowed name on allowed port %d: exit %d, %q", p, code, out)
	}
	dp := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), p)
	d = e.waitDecision(func(d Decision) bool { return d.Dst == dp })
	if d.Verdict != kernel.VerdictAllow || d.MatchedRule != "rules.egress.allow" {
		t.Fatalf("decision = %+v; want allow", d)
	}
	if raw := e.receiptFor(d); !strings.Contains(raw, fmt.Sprintf(`"port":%d`, p)) {
		t.Errorf("allow receipt lacks the port %d: %s", p, raw)
	}
}
