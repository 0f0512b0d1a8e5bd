package agent

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/backbay-labs/chio-agent/internal/testutil/containerd"
	"github.com/backbay-labs/chio-agent/internal/testutil/objstore"
	"github.com/backbay-labs/chio-agent/kernel"
	"github.com/backbay-labs/chio-agent/kernel/config"
)

// TestKubeStorePolicyReload: a pod policy of kubernetes.policies kept in an
// object store decides its pods, a change of the object is loaded without a
// signal (polled, as the file watch loads a changed file), and a broken
// replacement is refused, named in status, the policy before deciding on.
func TestKubeStorePolicyReload(t *testing.T) {
	rt := containerd.Shared(t)
	st := objstore.Stores[0] // S3, as an EKS node would name it
	base, put := st.Bucket(t)
	put("pods/research.yaml", researchPolicy)
	lab := rt.RunPod(t, containerd.PodSpec{Namespace: "team-o", Name: "lab", Labels: map[string]string{config.PolicyLabel: "research"}})
	srv := gatewayServer(t, rt)
	kd, _ := policiesDaemon(t, rt, srv.Addr(), "default")
	src := base + "pods/research.yaml"
	kd.kube.Policies["research"] = src
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	srcs := config.NewPolicySources(ctx, "", 50*time.Millisecond)
	kd.loadPolicy, kd.policyChanged = srcs.Load, srcs.Changed
	kd.start()
	v1 := podPolicyIn(t, queryStatus(t, kd.sock), "research")
	if ok, d, _ := kd.request(lab, srv, "new.test"); ok || d.Verdict != kernel.VerdictDeny {
		t.Fatalf("research pod on new.test before the change: reached %v, %+v", ok, d)
	}

	put("pods/research.yaml", researchPolicyV2)
	var v2 PodPolicyStatus
	waitFor(t, "the changed research policy loaded", func() bool {
		v2 = podPolicyIn(t, queryStatus(t, kd.sock), "research")
		return v2.Hash != v1.Hash
	})
	if ok, d, r := kd.request(lab, srv, "new.test"); !ok || d.Verdict != kernel.VerdictAllow || !strings.Contains(r, `"policy_hash":"`+v2.Hash+`"`) {
		t.Fatalf("research pod on new.test after the change: reached %v, %+v\n%s", ok, d, r)
	}

	put("pods/research.yaml", "hushspec: \"0.1.0\"\nrules:\n  egress:\n    allow: [\"*\"]\n    defualt: allow\n")
	var broken PodPolicyStatus
	waitFor(t, "the broken research policy refused", func() bool {
		broken = podPolicyIn(t, queryStatus(t, kd.sock), "research")
		return broken.ReloadError != ""
	})
	if broken.Hash != v2.Hash || !strings.Contains(broken.ReloadError, src) {
		t.Fatalf("research policy after a broken reload: %+v", broken)
	}
	if ok, _, _ := kd.request(lab, srv, "forbidden.test"); ok {
		t.Fatal("a broken research policy widened the research pod")
	}
	if ok, d, _ := kd.request(lab, srv, "new.test"); !ok || d.Verdict != kernel.VerdictAllow {
		t.Fatalf("research pod on new.test after a broken reload: reached %v, %+v", ok, d)
	}
}
