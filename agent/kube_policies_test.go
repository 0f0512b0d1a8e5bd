package agent

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/backbay-labs/chio-agent/internal/cri"
	"github.com/backbay-labs/chio-agent/internal/testutil/containerd"
	"github.com/backbay-labs/chio-agent/kernel"
	"github.com/backbay-labs/chio-agent/kernel/config"
	"github.com/backbay-labs/chio-agent/kernel/hushspec"
)

// TestChoosePodPolicy: which policy decides a pod, without root. A label
// names its policy in any namespace; a label naming no policy (a typo, the
// reserved "none", an empty value, a path) is refused everything, never
// given another policy; a policy the section names but the agent does not
// hold (its first load by a reload failed) refuses everything too; with
// default_policy none only labelled pods are protected.
func TestChoosePodPolicy(t *testing.T) {
	k := &config.Kubernetes{Policies: map[string]string{"default": "/d.yaml", "research": "/r.yaml"},
		DefaultPolicy: "default", ExemptNamespaces: []string{"kube-system"}}
	loaded := map[string]*podPolicy{"default": {}, "research": {}}
	pod := func(ns string, labels map[string]string) cri.Pod {
		return cri.Pod{Namespace: ns, Name: "p", UID: "uid-" + ns, Labels: labels}
	}
	label := func(v string) map[string]string { return map[string]string{config.PolicyLabel: v} }
	for _, tc := range []struct {
		name      string
		k         *config.Kubernetes
		loaded    map[string]*podPolicy
		pod       cri.Pod
		protect   bool
		policy    string
		refuseAll string // a word the reason holds; "" when not refused
	}{
		{"labelled", k, loaded, pod("team", label("research")), true, "research", ""},
		{"unlabelled", k, loaded, pod("team", nil), true, "default", ""},
		{"labelled in an exempt namespace", k, loaded, pod("kube-system", label("research")), true, "research", ""},
		{"unlabelled in an exempt namespace", k, loaded, pod("kube-system", nil), false, "", ""},
		{"unknown name", k, loaded, pod("team", label("nosuch")), true, "", "nosuch"},
		{"path-like name", k, loaded, pod("team", label("../x")), true, "", "../x"},
		{"path to a policy file", k, loaded, pod("team", label("/r.yaml")), true, "", "/r.yaml"},
		{"reserved none", k, loaded, pod("team", label("none")), true, "", "none"},
		{"empty value", k, loaded, pod("team", label("")), true, "", "names no policy"},
		{"case differs", k, loaded, pod("team", label("Research")), true, "", "Research"},
		{"configured but not loaded", k, map[string]*podPolicy{"default": {}}, pod("team", label("research")), true, "", "did not load"},
		{"default not loaded", k, map[string]*podPolicy{"research": {}}, pod("team", nil), true, "", "did not load"},
		{"default none, unlabelled", &config.Kubernetes{Policies: k.Policies, DefaultPolicy: config.NoPolicy}, loaded, pod("team", nil), false, "", ""},
		{"default none, labelled", &config.Kubernetes{Policies: k.Policies, DefaultPolicy: config.NoPolicy}, loaded, pod("team", label("research")), true, "research", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sel := choose(tc.k, tc.loaded, tc.pod, "self-uid")
			if sel.Protect != tc.protect || sel.Policy != tc.policy || sel.RefuseAll != (tc.refuseAll != "") ||
				!strings.Contains(sel.Reason, tc.refuseAll) {
				t.Fatalf("choose: %+v; want protect %v, policy %q, refuse-all %q", sel, tc.protect, tc.policy, tc.refuseAll)
			}
		})
	}
	if sel := choose(k, loaded, cri.Pod{Namespace: "team", UID: "self-uid", Labels: label("research")}, "self-uid"); sel.Protect {
		t.Errorf("the agent's own pod: %+v", sel)
	}
}

// Policies of the tests below: research allows a name default does not.
const (
	researchPolicy = `hushspec: "0.1.0"
name: research
rules:
  egress:
    allow: ["api.allowed.test", "research.test"]
    default: block
`
	// researchPolicyV2 adds new.test.
	researchPolicyV2 = `hushspec: "0.1.0"
name: research
rules:
  egress:
    allow: ["api.allowed.test", "research.test", "new.test"]
    default: block
`
	addedPolicy = `hushspec: "0.1.0"
name: added
rules:
  egress:
    allow: ["added.test"]
    default: block
`
)

// writePolicy writes a policy file whole (a rename), so that the file watch
// never reads half of it.
func writePolicy(t *testing.T, path, text string) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// policiesDaemon is a daemon whose section names default (kubePolicy) and
// research, each in its own file, with every test name at the gateway.
func policiesDaemon(t *testing.T, rt *containerd.Runtime, gw netip.Addr, defaultPolicy string) (kd *kubeDaemon, files map[string]string) {
	t.Helper()
	kd = newKubeDaemon(t, rt, "not-a-pod", gw)
	files = map[string]string{"default": filepath.Join(kd.dir, "default.yaml"), "research": filepath.Join(kd.dir, "research.yaml")}
	writePolicy(t, files["default"], kubePolicy)
	writePolicy(t, files["research"], researchPolicy)
	kd.kube = &config.Kubernetes{Policies: map[string]string{"default": files["default"], "research": files["research"]},
		DefaultPolicy: defaultPolicy, ExemptNamespaces: []string{"kube-system"}}
	for _, n := range []string{"research.test", "new.test", "added.test"} {
		kd.hosts[n] = []netip.Addr{gw}
	}
	return kd, files
}

// decisionsOf are the decisions of a workload so far.
func (kd *kubeDaemon) decisionsOf(workload string) []Decision {
	kd.mu.Lock()
	defer kd.mu.Unlock()
	var out []Decision
	for _, d := range kd.decided {
		if d.Workload == workload {
			out = append(out, d)
		}
	}
	return out
}

// request sends one request for host from a pod, waits for its decision,
// and returns whether the server answered and the decision's receipt.
func (kd *kubeDaemon) request(p *containerd.Pod, srv netip.AddrPort, host string) (bool, Decision, string) {
	t := kd.t
	t.Helper()
	workload := p.Spec.Namespace + "/" + p.Spec.Name
	n := len(kd.decisionsOf(workload))
	out, _ := podGet(t, p, srv, host)
	var d Decision
	waitFor(t, "a decision for "+workload+" on "+host, func() bool {
		ds := kd.decisionsOf(workload)
		if len(ds) > n {
			d = ds[n]
			return true
		}
		return false
	})
	ent, err := kd.log.Get(d.Seq)
	if err != nil || d.ReceiptID == "" {
		t.Fatalf("receipt of %+v: %v", d, err)
	}
	return strings.Contains(out, "kube-api host="+host), d, string(ent.Receipt)
}

func podPolicyIn(t *testing.T, s Status, name string) PodPolicyStatus {
	t.Helper()
	for _, p := range s.PodPolicies {
		if p.Name == name {
			return p
		}
	}
	t.Fatalf("pod policy %s not in status: %+v", name, s.PodPolicies)
	return PodPolicyStatus{}
}

func refuseAllHash(t *testing.T) string {
	t.Helper()
	p, err := hushspec.Parse([]byte(refuseAllPolicy))
	if err != nil {
		t.Fatal(err)
	}
	return p.Hash()
}

// TestKubePoliciesByLabel: two policies chosen by labels on a real
// containerd. The pod labelled research reaches a name its policy allows,
// which the pod under default_policy is refused; each receipt names the
// pod's policy and carries its hash, and status shows each pod's policy and
// hash. Attacks: a pod whose label names no policy, a path-like name
// (../research, trying to reach a policy file by its path) or the reserved
// "none" is protected and refused everything, even for a name both policies
// allow, with a receipt saying why under the refuse-all policy's hash.
func TestKubePoliciesByLabel(t *testing.T) {
	rt := containerd.Shared(t)
	lab := rt.RunPod(t, containerd.PodSpec{Namespace: "team-p", Name: "lab", Labels: map[string]string{config.PolicyLabel: "research"}})
	web := rt.RunPod(t, containerd.PodSpec{Namespace: "team-p", Name: "web"})
	srv := gatewayServer(t, rt)
	kd, _ := policiesDaemon(t, rt, srv.Addr(), "default")
	kd.start()
	attackers := map[string]*containerd.Pod{}
	for name, label := range map[string]string{"nosuch": "nosuch", "pathlike": "../research", "none": "none"} {
		attackers[label] = rt.RunPod(t, containerd.PodSpec{Namespace: "team-p", Name: name, Labels: map[string]string{config.PolicyLabel: label}})
	}
	waitFor(t, "every pod protected", func() bool {
		n := 0
		for _, p := range queryStatus(t, kd.sock).Pods {
			if p.State == string(StateProtected) && len(p.Containers) == 1 {
				n++
			}
		}
		return n == 5
	})

	st := queryStatus(t, kd.sock)
	research, def := podPolicyIn(t, st, "research"), podPolicyIn(t, st, "default")
	if research.Hash == def.Hash || research.Hash == "" || !def.Default || research.Default || research.Pods != 1 || def.Pods != 1 {
		t.Fatalf("pod policies in status: %+v", st.PodPolicies)
	}
	if p := podIn(t, st, "team-p", "lab"); p.Policy != "research" || p.PolicyHash != research.Hash {
		t.Fatalf("the research pod in status: %+v", p)
	}
	if p := podIn(t, st, "team-p", "web"); p.Policy != "default" || p.PolicyHash != def.Hash {
		t.Fatalf("the default pod in status: %+v", p)
	}

	ok, d, r := kd.request(lab, srv, "research.test")
	if !ok || d.Verdict != kernel.VerdictAllow {
		t.Fatalf("the research pod on a name its policy allows: reached %v, %+v", ok, d)
	}
	for _, want := range []string{`"chio.dev/policy":"research"`, `"policy_hash":"` + research.Hash + `"`, lab.UID, `"io.kubernetes.container.name":"main"`} {
		if !strings.Contains(r, want) {
			t.Errorf("research pod's receipt lacks %s: %s", want, r)
		}
	}
	ok, d, r = kd.request(web, srv, "research.test")
	if ok || d.Verdict != kernel.VerdictDeny || d.Guard != kernel.GuardEgressPolicy {
		t.Fatalf("the default pod on a name only research allows: reached %v, %+v", ok, d)
	}
	for _, want := range []string{`"chio.dev/policy":"default"`, `"policy_hash":"` + def.Hash + `"`, web.UID} {
		if !strings.Contains(r, want) {
			t.Errorf("default pod's receipt lacks %s: %s", want, r)
		}
	}

	refuse := refuseAllHash(t)
	for label, p := range attackers {
		ps := podIn(t, st, "team-p", p.Spec.Name)
		if !ps.RefuseAll || ps.Policy != "" || ps.PolicyHash != refuse || !strings.Contains(ps.Reason, fmt.Sprintf("%q", label)) {
			t.Errorf("pod labelled %q in status: %+v", label, ps)
		}
		ok, d, r := kd.request(p, srv, "api.allowed.test")
		if ok || d.Verdict != kernel.VerdictDeny || d.Guard != kernel.GuardPodPolicy || !strings.Contains(d.Reason, label) {
			t.Errorf("pod labelled %q on a name every policy allows: reached %v, %+v", label, ok, d)
		}
		for _, want := range []string{kernel.GuardPodPolicy, `"policy_hash":"` + refuse + `"`, p.UID} {
			if !strings.Contains(r, want) {
				t.Errorf("receipt of the pod labelled %q lacks %s: %s", label, want, r)
			}
		}
	}
}

// TestKubeDefaultPolicyNone: with default_policy none only labelled pods
// are protected; an unlabelled pod in any namespace is exempt (documented)
// and reaches the server undecided, while the labelled one is decided.
func TestKubeDefaultPolicyNone(t *testing.T) {
	rt := containerd.Shared(t)
	lab := rt.RunPod(t, containerd.PodSpec{Namespace: "team-q", Name: "lab", Labels: map[string]string{config.PolicyLabel: "research"}})
	free := rt.RunPod(t, containerd.PodSpec{Namespace: "team-q", Name: "free"})
	srv := gatewayServer(t, rt)
	kd, _ := policiesDaemon(t, rt, srv.Addr(), config.NoPolicy)
	kd.start()
	st := queryStatus(t, kd.sock)
	if p := podIn(t, st, "team-q", "free"); p.State != PodExempt || p.Workload != "" || !strings.Contains(p.Reason, "none") {
		t.Fatalf("unlabelled pod under default_policy none: %+v", p)
	}
	if p := podIn(t, st, "team-q", "lab"); p.State != string(StateProtected) || p.Policy != "research" {
		t.Fatalf("labelled pod under default_policy none: %+v", p)
	}
	if out, _ := podGet(t, free, srv, "forbidden.test"); !strings.Contains(out, "kube-api host=forbidden.test") {
		t.Fatalf("the unprotected pod's request: %q", out)
	}
	if ok, d, _ := kd.request(lab, srv, "forbidden.test"); ok || d.Verdict != kernel.VerdictDeny {
		t.Fatalf("the labelled pod on a blocked name: reached %v, %+v", ok, d)
	}
	if ds := kd.decisionsOf("team-q/free"); len(ds) != 0 {
		t.Errorf("the unprotected pod was decided: %+v", ds)
	}
}

// TestKubePolicyReload: each policy reloads on its own. A changed research
// file affects only the research pod (the default pod keeps its policy and
// hash); a broken one is refused and the research pod keeps the policy it
// had (never widened, never dropped), with the error in status; a reload
// of the section adding a policy re-classifies the pod whose label named
// it (refused everything until then); a section dropping the research
// policy leaves its pod refused everything, never moved to the default;
// default_policy none by a reload exempts the unlabelled pod, and back to a
// policy protects it again with its exemption withdrawn.
func TestKubePolicyReload(t *testing.T) {
	rt := containerd.Shared(t)
	lab := rt.RunPod(t, containerd.PodSpec{Namespace: "team-s", Name: "lab", Labels: map[string]string{config.PolicyLabel: "research"}})
	web := rt.RunPod(t, containerd.PodSpec{Namespace: "team-s", Name: "web"})
	early := rt.RunPod(t, containerd.PodSpec{Namespace: "team-s", Name: "early", Labels: map[string]string{config.PolicyLabel: "added"}})
	srv := gatewayServer(t, rt)
	kd, files := policiesDaemon(t, rt, srv.Addr(), "default")
	var next *config.Kubernetes // what the section reads on the next reload signal
	kd.reloadCfg = func(context.Context) (*config.Kubernetes, error) { return next, nil }
	kd.start()
	st := queryStatus(t, kd.sock)
	v1, def := podPolicyIn(t, st, "research"), podPolicyIn(t, st, "default")
	if ok, d, _ := kd.request(lab, srv, "new.test"); ok || d.Verdict != kernel.VerdictDeny {
		t.Fatalf("research pod on new.test before the change: reached %v, %+v", ok, d)
	}

	// The research file changes: the file watch loads it.
	writePolicy(t, files["research"], researchPolicyV2)
	var v2 PodPolicyStatus
	waitFor(t, "the changed research policy loaded", func() bool {
		v2 = podPolicyIn(t, queryStatus(t, kd.sock), "research")
		return v2.Hash != v1.Hash
	})
	st = queryStatus(t, kd.sock)
	if p := podIn(t, st, "team-s", "lab"); p.PolicyHash != v2.Hash {
		t.Fatalf("research pod after the change: %+v, want hash %s", p, v2.Hash)
	}
	if p := podIn(t, st, "team-s", "web"); p.PolicyHash != def.Hash || podPolicyIn(t, st, "default").Hash != def.Hash {
		t.Fatalf("default pod after research changed: %+v", p)
	}
	ok, d, r := kd.request(lab, srv, "new.test")
	if !ok || d.Verdict != kernel.VerdictAllow || !strings.Contains(r, `"policy_hash":"`+v2.Hash+`"`) {
		t.Fatalf("research pod on new.test after the change: reached %v, %+v\n%s", ok, d, r)
	}
	if ok, d, _ := kd.request(web, srv, "new.test"); ok || d.Verdict != kernel.VerdictDeny {
		t.Fatalf("default pod on new.test after research changed: reached %v, %+v", ok, d)
	}

	// A broken research file: refused, the policy before stays.
	writePolicy(t, files["research"], "hushspec: \"0.1.0\"\nrules:\n  egress:\n    allow: [\"*\"]\n    defualt: allow\n")
	var broken PodPolicyStatus
	waitFor(t, "the broken research policy refused", func() bool {
		broken = podPolicyIn(t, queryStatus(t, kd.sock), "research")
		return broken.ReloadError != ""
	})
	if broken.Hash != v2.Hash || !strings.Contains(broken.ReloadError, files["research"]) || !strings.Contains(broken.ReloadError, "research") {
		t.Fatalf("research policy after a broken reload: %+v", broken)
	}
	if ok, d, r := kd.request(lab, srv, "new.test"); !ok || d.Verdict != kernel.VerdictAllow || !strings.Contains(r, `"policy_hash":"`+v2.Hash+`"`) {
		t.Fatalf("research pod on new.test after a broken reload: reached %v, %+v", ok, d)
	}
	if ok, _, _ := kd.request(lab, srv, "forbidden.test"); ok {
		t.Fatal("a broken research policy widened the research pod")
	}

	// The section gains a policy: the pod whose label named it gets it.
	if p := podIn(t, queryStatus(t, kd.sock), "team-s", "early"); !p.RefuseAll {
		t.Fatalf("pod labelled with a policy not configured yet: %+v", p)
	}
	if ok, d, _ := kd.request(early, srv, "added.test"); ok || d.Guard != kernel.GuardPodPolicy {
		t.Fatalf("pod labelled with a policy not configured yet: reached %v, %+v", ok, d)
	}
	added := filepath.Join(kd.dir, "added.yaml")
	writePolicy(t, added, addedPolicy)
	k2 := *kd.kube
	k2.Policies = map[string]string{"default": files["default"], "research": files["research"], "added": added}
	next = &k2
	kd.reload <- syscall.SIGHUP
	waitFor(t, "the pod labelled added re-classified", func() bool {
		p := podIn(t, queryStatus(t, kd.sock), "team-s", "early")
		return p.Policy == "added" && !p.RefuseAll && p.State == string(StateProtected)
	})
	ok, d, r = kd.request(early, srv, "added.test")
	if !ok || d.Verdict != kernel.VerdictAllow || !strings.Contains(r, `"chio.dev/policy":"added"`) {
		t.Fatalf("pod labelled added after the reload: reached %v, %+v\n%s", ok, d, r)
	}
	if p := podPolicyIn(t, queryStatus(t, kd.sock), "research"); p.Hash != v2.Hash || p.ReloadError == "" {
		t.Errorf("the broken research policy after the section reload: %+v", p)
	}

	// The section drops research: its pod is refused everything.
	k3 := k2
	k3.Policies = map[string]string{"default": files["default"], "added": added}
	next = &k3
	kd.reload <- syscall.SIGHUP
	waitFor(t, "the research pod refused everything", func() bool {
		return podIn(t, queryStatus(t, kd.sock), "team-s", "lab").RefuseAll
	})
	if ok, d, _ := kd.request(lab, srv, "api.allowed.test"); ok || d.Guard != kernel.GuardPodPolicy {
		t.Fatalf("pod whose policy was dropped: reached %v, %+v", ok, d)
	}

	// default_policy none by a reload: the unlabelled pod is exempt (by its
	// cgroup) and reaches the server undecided; back to default, it is
	// protected again and its exemption withdrawn (decided once more).
	k4 := k3
	k4.DefaultPolicy = config.NoPolicy
	next = &k4
	kd.reload <- syscall.SIGHUP
	waitFor(t, "the unlabelled pod exempt", func() bool {
		return podIn(t, queryStatus(t, kd.sock), "team-s", "web").State == PodExempt
	})
	webCg := podIn(t, queryStatus(t, kd.sock), "team-s", "web").Cgroup
	if b := queryStatus(t, kd.sock).Birth; b == nil || !slices.Contains(b.Exempt, webCg) {
		t.Fatalf("the unlabelled pod's cgroup is not exempt: %+v", b)
	}
	if out, _ := podGet(t, web, srv, "forbidden.test"); !strings.Contains(out, "kube-api host=forbidden.test") {
		t.Fatalf("the pod exempt by default_policy none: %q", out)
	}
	k5 := k3
	next = &k5
	kd.reload <- syscall.SIGHUP
	waitFor(t, "the unlabelled pod protected again", func() bool {
		p := podIn(t, queryStatus(t, kd.sock), "team-s", "web")
		return p.State == string(StateProtected) && p.Policy == "default"
	})
	if b := queryStatus(t, kd.sock).Birth; b != nil && slices.Contains(b.Exempt, webCg) {
		t.Fatalf("the protected pod's cgroup is still exempt: %+v", b)
	}
	if ok, d, _ := kd.request(web, srv, "forbidden.test"); ok || d.Verdict != kernel.VerdictDeny {
		t.Fatalf("the pod protected again on a blocked name: reached %v, %+v", ok, d)
	}
}

// BenchmarkPodPolicySnapshot: the policy snapshot a connection is decided
// under, for a pod with a policy of its own (one pointer, one atomic load)
// beside the agent's own policy (the cost before policies per pod).
func BenchmarkPodPolicySnapshot(b *testing.B) {
	pol, err := hushspec.Parse([]byte(kubePolicy))
	if err != nil {
		b.Fatal(err)
	}
	_, key, _ := ed25519.GenerateKey(rand.Reader)
	agentK, err := kernel.New(kernel.Options{Policy: pol, SigningKey: key})
	if err != nil {
		b.Fatal(err)
	}
	podK, err := kernel.New(kernel.Options{Policy: pol, SigningKey: key})
	if err != nil {
		b.Fatal(err)
	}
	for _, bc := range []struct {
		name string
		w    *workload
	}{{"agent-policy", &workload{}}, {"pod-policy", &workload{kern: podK}}} {
		b.Run(bc.name, func(b *testing.B) {
			b.RunParallel(func(pb *testing.PB) {
				var h string
				for pb.Next() {
					h = bc.w.decider(agentK).Snapshot().Hash()
				}
				_ = h
			})
		})
	}
}
