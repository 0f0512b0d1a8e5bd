package agent

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/backbay-labs/chio-agent/internal/testutil"
	"github.com/backbay-labs/chio-agent/internal/testutil/containerd"
	"github.com/backbay-labs/chio-agent/kernel"
)

// countingGateway serves HTTP on the host side of the pods' bridge (its
// gateway address, which exists once the first pod is up), answering
// "kube-api host=... path=...", and counts the requests it answered, by
// path: a connection that reached it undecided is one more than the agent's
// allow decisions.
func countingGateway(t *testing.T, rt *containerd.Runtime) (netip.AddrPort, func(path string) int) {
	t.Helper()
	s := newPathServer(t, rt)
	return s.addr, s.count
}

// loopConnecting is a container command that sends a request to srv every
// 20 ms, forever, printing each attempt's result on a line of its own.
func loopConnecting(srv netip.AddrPort) []string {
	return []string{"/bin/busybox", "sh", "-c", fmt.Sprintf(`while true; do
out=$(/bin/busybox printf 'GET /loop HTTP/1.0\r\nHost: api.allowed.test\r\n\r\n' | /bin/busybox nc %s %d 2>&1)
echo "result: $out" | /bin/busybox tr '\r\n' '  '; echo
/bin/busybox usleep 20000
done`, srv.Addr(), srv.Port())}
}

// loopResults counts a looping container's attempts: those answered by the
// server (through the agent, or undecided) and those that failed (refused,
// reset).
func loopResults(t *testing.T, rt *containerd.Runtime, p *containerd.Pod) (answered, failed int) {
	t.Helper()
	for _, line := range strings.Split(containerLog(t, rt, p, "main"), "\n") {
		_, res, ok := strings.Cut(line, "result: ")
		switch {
		case !ok:
		case strings.Contains(res, "kube-api host=api.allowed.test"):
			answered++
		default:
			failed++
		}
	}
	return answered, failed
}

func (kd *kubeDaemon) allowed(workload string, from int) int {
	kd.mu.Lock()
	defer kd.mu.Unlock()
	n := 0
	for _, x := range kd.decided[from:] {
		if x.Workload == workload && x.Verdict == kernel.VerdictAllow {
			n++
		}
	}
	return n
}

// TestKubeUpgradeAcrossLayouts is a rolling update of the agent to a binary
// whose pinned map layout differs, under a pod that connects every 20 ms
// throughout. The old agent stops (its listeners go with it): the pinned
// links stay, so the pod's attempts are refused. The new agent loads its
// own maps beside the old ones, rebuilds the pods' protection there, and
// only then swaps each pinned link to its own program: the links are the
// same ones (no hook was ever empty), the new agent decides the pod's
// connections, and the old layout's pins are gone. Every request the server
// answered was allowed by an agent: none passed undecided.
func TestKubeUpgradeAcrossLayouts(t *testing.T) {
	rt := containerd.Shared(t)
	rt.RunPod(t, containerd.PodSpec{Namespace: "team-u", Name: "first"}) // the gateway exists once a pod is up
	srv, accepted := countingGateway(t, rt)
	kd := newKubeDaemon(t, rt, "not-a-pod", srv.Addr())
	kd.edit = testutil.OtherLayout
	kd.start()
	const wl = "team-u/looping"
	loop := rt.RunPod(t, containerd.PodSpec{Namespace: "team-u", Name: "looping", Command: loopConnecting(srv)})
	waitFor(t, "the old agent deciding the pod's connections", func() bool { return kd.allowed(wl, 0) >= 2 })
	old := queryStatus(t, kd.sock)
	if len(old.Attachments) == 0 {
		t.Fatal("the old agent has no attachments")
	}
	oldLinks := map[string]uint32{}
	for _, a := range old.Attachments {
		oldLinks[a.Program] = a.LinkID
	}
	oldLayout := testutil.LayoutDir(t, kd.pinDir)

	// The rolling update stops the old agent first: the pod is refused.
	kd.stop()
	_, failedBefore := loopResults(t, rt, loop)
	waitFor(t, "the pod's attempts refused while no agent runs", func() bool {
		_, failed := loopResults(t, rt, loop)
		return failed >= failedBefore+3
	})
	decidedBefore := len(kd.decided)

	kd.edit = nil
	kd.start()
	st := queryStatus(t, kd.sock)
	// One layout left, the new one: the old layout's pins are gone.
	newLayout := testutil.LayoutDir(t, kd.pinDir)
	if newLayout == oldLayout {
		t.Fatalf("both agents pinned under %s: the test upgrades nothing", oldLayout)
	}
	if len(st.Attachments) != len(oldLinks) {
		t.Fatalf("attachments after the upgrade: %+v; want %d", st.Attachments, len(oldLinks))
	}
	for _, a := range st.Attachments {
		if !a.HandedOver || a.LinkID != oldLinks[a.Program] || !strings.HasPrefix(a.PinPath, newLayout+"/") {
			t.Errorf("attachment %+v: want the old agent's link %d handed over and pinned under this layout", a, oldLinks[a.Program])
		}
	}
	if p := podIn(t, st, "team-u", "looping"); p.State != string(StateProtected) {
		t.Fatalf("the pod after the upgrade: %+v", p)
	}
	waitFor(t, "the new agent deciding the pod's connections", func() bool { return kd.allowed(wl, decidedBefore) >= 2 })

	// Stop the pod, then count: every answered request was allowed.
	answered, failed := loopResults(t, rt, loop)
	loop.Remove(t)
	served := accepted("/loop")
	// A decision is recorded as the relay starts: give the last ones time.
	for deadline := time.Now().Add(10 * time.Second); kd.allowed(wl, 0) < served && time.Now().Before(deadline); {
		time.Sleep(20 * time.Millisecond)
	}
	if allowed := kd.allowed(wl, 0); allowed < served {
		t.Fatalf("the server answered %d of the pod's requests, the agents allowed %d: %d passed undecided", served, allowed, served-allowed)
	}
	t.Logf("%d attempts answered through an agent, %d refused, server answered %d", answered, failed, served)
	if failed == 0 {
		t.Error("no attempt was refused while no agent ran")
	}
}
