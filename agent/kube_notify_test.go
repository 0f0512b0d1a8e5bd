package agent

import (
	"testing"
	"time"

	"github.com/backbay-labs/chio-agent/internal/testutil/containerd"
)

// TestKubeNewPodFoundByItsCgroup: with an hour between polls, a pod started
// while the agent runs is still classified and protected: its cgroup
// appearing under the pods' root starts the listing (containerd 1.6 sends
// no container events), and its connections are decided.
func TestKubeNewPodFoundByItsCgroup(t *testing.T) {
	rt := containerd.Shared(t)
	rt.RunPod(t, containerd.PodSpec{Namespace: "kube-system", Name: "anchor"}) // the bridge's address
	srvAddr := gatewayServer(t, rt)
	kd := newKubeDaemon(t, rt, "", srvAddr.Addr())
	kd.poll = time.Hour
	kd.start()

	p := rt.RunPod(t, containerd.PodSpec{Namespace: "team-n", Name: "born"})
	waitFor(t, "the new pod protected without a poll", func() bool {
		for _, ps := range queryStatus(t, kd.sock).Pods {
			if ps.UID == p.UID && ps.State == string(StateProtected) {
				return true
			}
		}
		return false
	})
	if out, code := podGet(t, p, srvAddr, "api.allowed.test"); code != 0 {
		t.Fatalf("protected pod's allowed request: exit %d, %q", code, out)
	}
	if d := kd.decision("team-n/born"); d.Verdict != "allow" || d.ReceiptID == "" {
		t.Fatalf("decision: %+v", d)
	}
}
