package agent

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/backbay-labs/chio-agent/internal/testutil/containerd"
)

// TestKubePodDNSGoesToTheHandler: a protected pod's lookup (busybox
// nslookup, to an address on the pod's own loopback) is answered by the
// agent's handler through the DNS listener in the pod's namespace, with the
// pod's workload and the resolver it addressed; the answer is the handler's.
func TestKubePodDNSGoesToTheHandler(t *testing.T) {
	rt := containerd.Shared(t)
	before := rt.RunPod(t, containerd.PodSpec{Namespace: "team-dns", Name: "resolving"})
	srvAddr := gatewayServer(t, rt)
	kd := newKubeDaemon(t, rt, "not-a-pod", srvAddr.Addr())
	h := &recordingDNS{}
	kd.dns = h
	kd.start()
	if p := podIn(t, queryStatus(t, kd.sock), "team-dns", "resolving"); p.State != string(StateProtected) {
		t.Fatalf("pod: %+v", p)
	}
	resolver := netip.MustParseAddrPort("127.0.0.53:53")
	out, errOut, code := before.Exec(t, "main", "/bin/busybox", "nslookup", "-type=a", "pod.allowed.test", resolver.Addr().String())
	if code != 0 || !strings.Contains(out, "127.0.0.7") {
		t.Fatalf("nslookup in the pod: exit %d, %q %q", code, out, errOut)
	}
	kd.mu.Lock()
	wl := kd.agent.reg.byName("team-dns/resolving")
	kd.mu.Unlock()
	qs := h.take()
	if len(qs) == 0 {
		t.Fatal("the handler saw no query")
	}
	for _, q := range qs {
		if q.Workload != wl.id || q.Resolver != resolver || q.Transport != "udp" || q.Comm != "busybox" {
			t.Errorf("query %+v; want workload %d, resolver %s, comm busybox", q, wl.id, resolver)
		}
	}
}
