package agent

import (
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/backbay-labs/chio-agent/internal/testutil"
	"github.com/backbay-labs/chio-agent/kernel"
)

// TestWorkloadInItsOwnNetns protects a workload that lives in its own network
// namespace, as a Kubernetes pod does: the proxy listens inside that
// namespace and dials from it. The upstream is in a second namespace reached
// over a veth pair and sees the workload's veth address as the peer, which
// proves the dial happened inside the workload's namespace. No packet leaves
// the two namespaces the test made.
func TestWorkloadInItsOwnNetns(t *testing.T) {
	t.Parallel()
	testutil.RequireTools(t, "curl", "ip")
	wlNS := testutil.NewNetNS(t)
	srvNS := testutil.NewNetNS(t)
	testutil.Veth(t, wlNS, srvNS, "10.213.7.1/30", "10.213.7.2/30")
	upstream := netip.MustParseAddr("10.213.7.2")

	e := newE2E(t, e2eOptions{netns: wlNS.Path, hosts: map[string][]netip.Addr{"api.allowed.test": {upstream}}})

	var ln net.Listener
	if err := inNetns(srvNS.Path, func() (err error) {
		ln, err = net.Listen("tcp4", "10.213.7.2:0")
		return err
	}); err != nil {
		t.Fatalf("listen in server netns: %v", err)
	}
	peers := make(chan string, 4)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		peers <- r.RemoteAddr
		bodyHandler("in-netns-api").ServeHTTP(w, r)
	}), ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	port := ln.Addr().(*net.TCPAddr).Port

	out, code := e.run("ip", "netns", "exec", wlNS.Name, "curl", "-sS", "--max-time", "10",
		"--resolve", fmt.Sprintf("api.allowed.test:%d:10.213.7.2", port), fmt.Sprintf("http://api.allowed.test:%d/pod", port))
	if code != 0 || !strings.HasPrefix(out, "in-netns-api host=api.allowed.test") {
		t.Fatalf("curl in the workload netns: exit %d, %q", code, out)
	}
	d := e.waitDecision(func(d Decision) bool { return d.Dst.Addr() == upstream })
	if d.Verdict != kernel.VerdictAllow || d.Comm != "curl" {
		t.Fatalf("decision = %+v", d)
	}
	// A denied host from inside the namespace gets the 403 from the
	// listener in that namespace.
	out, code = e.run("ip", "netns", "exec", wlNS.Name, "curl", "-sS", "--max-time", "10", "-o", "/dev/null", "-w", "%{http_code}",
		"--resolve", fmt.Sprintf("nope.test:%d:10.213.7.2", port), fmt.Sprintf("http://nope.test:%d/", port))
	if code != 0 || out != "403" {
		t.Fatalf("denied curl in the workload netns: exit %d, %q; want 403", code, out)
	}
	// The listener is inside the workload's namespace.
	st := e.agent.Status("test")
	found := false
	for _, l := range st.Listeners {
		found = found || l.Netns == wlNS.Path
	}
	if !found {
		t.Fatalf("no listener in %s: %+v", wlNS.Path, st.Listeners)
	}
	// The upstream saw the connection come from the workload's side of the
	// veth: the proxy dialled from inside the workload's namespace.
	if p := <-peers; !strings.HasPrefix(p, "10.213.7.1:") {
		t.Fatalf("upstream saw the connection from %s, want the workload's 10.213.7.1", p)
	}
}
