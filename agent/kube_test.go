package agent

import (
	"cmp"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/backbay-labs/chio-agent/bpf"
	"github.com/backbay-labs/chio-agent/internal/cgroupfs"
	"github.com/backbay-labs/chio-agent/internal/cri"
	"github.com/backbay-labs/chio-agent/internal/dnsproxy"
	"github.com/backbay-labs/chio-agent/internal/testutil"
	"github.com/backbay-labs/chio-agent/internal/testutil/containerd"
	"github.com/backbay-labs/chio-agent/kernel"
	"github.com/backbay-labs/chio-agent/kernel/config"
	"github.com/backbay-labs/chio-agent/kernel/hushspec"
	"github.com/backbay-labs/chio-agent/receipts"
)

// kubePolicy allows one name, which the test's hosts table gives the pods'
// gateway address.
const kubePolicy = `hushspec: "0.1.0"
name: kube
rules:
  egress:
    allow: ["api.allowed.test"]
    default: block
`

// TestKubePodsProtected runs the daemon with pod discovery on a real
// containerd, acting as the kubelet: a pod started before the agent is
// protected once it starts and its connection is decided with a receipt
// naming the pod; a pod started while it runs whose label names no policy is
// protected and refused everything, with the reason; a host-network pod is
// decided through the node's listener; a pod in an exempt namespace, and the
// agent's own pod, are left alone (the first reaches the server undecided); deleting a pod releases its
// workload (status, maps and listeners back to where they were).
func TestKubePodsProtected(t *testing.T) {
	rt := containerd.Shared(t)
	mount, err := cgroupfs.Mount()
	if err != nil {
		t.Fatal(err)
	}
	before := rt.RunPod(t, containerd.PodSpec{Namespace: "team-a", Name: "before"})
	exempt := rt.RunPod(t, containerd.PodSpec{Namespace: "kube-system", Name: "infra"})
	self := rt.RunPod(t, containerd.PodSpec{Namespace: "team-a", Name: "chio-agent-self"})
	hostNet := rt.RunPod(t, containerd.PodSpec{Namespace: "team-h", Name: "hostnet", HostNetwork: true})

	srvAddr := gatewayServer(t, rt)
	gw := srvAddr.Addr()
	kd := newKubeDaemon(t, rt, self.UID, gw)
	kd.start()
	sock, log := kd.sock, kd.log

	// Ready means the first listing is applied: the pod that predates the
	// agent is protected already, the exempt one is not.
	st := queryStatus(t, sock)
	pa := podIn(t, st, "team-a", "before")
	if pa.State != string(StateProtected) || pa.Policy != "default" || pa.Workload != "team-a/before" || pa.UID != before.UID {
		t.Fatalf("pod started before the agent: %+v", pa)
	}
	if pe := podIn(t, st, "kube-system", "infra"); pe.State != PodExempt || pe.Workload != "" {
		t.Fatalf("pod in an exempt namespace: %+v", pe)
	}
	if ps := podIn(t, st, "team-a", "chio-agent-self"); ps.State != PodExempt || ps.Workload != "" {
		t.Fatalf("the agent's own pod: %+v", ps)
	}
	if ph := podIn(t, st, "team-h", "hostnet"); ph.State != string(StateProtected) || !ph.HostNetwork || ph.Netns != "" {
		t.Fatalf("host-network pod: %+v", ph)
	}
	w := workloadIn(t, st, "team-a/before")
	if w.Cgroup != cri.Abs(mount, before.CgroupParent) || w.Pod == nil || w.Pod.UID != before.UID ||
		w.Labels[LabelPodUID] != before.UID || w.Labels[LabelContainers] != "main" || !w.InboundAll {
		t.Fatalf("workload of the pod: %+v (pod %+v)", w, w.Pod)
	}
	baseline := st

	// A pod started while the agent runs, labelled with a policy no one
	// configured: protected, every connection refused.
	during := rt.RunPod(t, containerd.PodSpec{Namespace: "team-b", Name: "during",
		Labels: map[string]string{config.PolicyLabel: "nosuch"}})
	waitFor(t, "the new pod protected with its container", func() bool {
		for _, p := range queryStatus(t, sock).Pods {
			if p.UID == during.UID && p.State == string(StateProtected) && len(p.Containers) == 1 {
				return true
			}
		}
		return false
	})
	if pb := podIn(t, queryStatus(t, sock), "team-b", "during"); !pb.RefuseAll || !strings.Contains(pb.Reason, "nosuch") {
		t.Fatalf("pod labelled with an unknown policy: %+v", pb)
	}

	get := func(p *containerd.Pod, host string) (string, int32) { return podGet(t, p, srvAddr, host) }
	decision := kd.decision
	receiptOf := func(d Decision) string {
		t.Helper()
		ent, err := log.Get(d.Seq)
		if err != nil || d.ReceiptID == "" {
			t.Fatalf("receipt of %+v: %v", d, err)
		}
		return string(ent.Receipt)
	}

	// The protected pod's connection is redirected and decided (allowed),
	// and its receipt names the pod.
	if out, _ := get(before, "api.allowed.test"); !strings.Contains(out, "kube-api host=api.allowed.test") {
		t.Fatalf("allowed request from the protected pod: %q", out)
	}
	d := decision("team-a/before")
	if d.Verdict != kernel.VerdictAllow {
		t.Fatalf("protected pod's decision: %+v", d)
	}
	r := receiptOf(d)
	for _, want := range []string{before.UID, `"team-a/before"`, `"io.kubernetes.pod.namespace":"team-a"`, `"io.kubernetes.pod.name":"before"`, `"io.kubernetes.container.name":"main"`} {
		if !strings.Contains(r, want) {
			t.Errorf("receipt does not name the pod (%s): %s", want, r)
		}
	}

	// The host-network pod goes through the node's own listener.
	if out, _ := get(hostNet, "api.allowed.test"); !strings.Contains(out, "kube-api host=api.allowed.test") {
		t.Fatalf("allowed request from the host-network pod: %q", out)
	}
	if d := decision("team-h/hostnet"); d.Verdict != kernel.VerdictAllow {
		t.Fatalf("host-network pod's decision: %+v", d)
	}

	// The refuse-all pod: the same request is refused, with the reason.
	if out, _ := get(during, "api.allowed.test"); strings.Contains(out, "kube-api") {
		t.Fatalf("pod with an unknown policy reached the server: %q", out)
	}
	d = decision("team-b/during")
	if d.Verdict != kernel.VerdictDeny || d.Guard != kernel.GuardPodPolicy || !strings.Contains(d.Reason, "nosuch") {
		t.Fatalf("refuse-all pod's decision: %+v", d)
	}
	if r := receiptOf(d); !strings.Contains(r, during.UID) || !strings.Contains(r, kernel.GuardPodPolicy) {
		t.Errorf("refuse-all receipt: %s", r)
	}

	// The exempt pod reaches the server directly, even for a name the
	// policy blocks, and nothing decides it.
	if out, _ := get(exempt, "forbidden.test"); !strings.Contains(out, "kube-api host=forbidden.test") {
		t.Fatalf("exempt pod's request: %q", out)
	}
	kd.mu.Lock()
	for _, x := range kd.decided {
		if strings.HasPrefix(x.Workload, "kube-system/") {
			t.Errorf("exempt pod decided: %+v", x)
		}
	}
	kd.mu.Unlock()

	// Deleting the pod releases its workload: gone from status, maps and
	// listeners back to where they were before it.
	during.Remove(t)
	waitFor(t, "the deleted pod released", func() bool {
		s := queryStatus(t, sock)
		for _, p := range s.Pods {
			if p.UID == during.UID {
				return false
			}
		}
		for _, w := range s.Workloads {
			if w.Name == "team-b/during" {
				return false
			}
		}
		return true
	})
	st = queryStatus(t, sock)
	if st.Maps.Workloads != baseline.Maps.Workloads || st.Maps.Guards != baseline.Maps.Guards ||
		len(st.Listeners) != len(baseline.Listeners) || len(st.Workloads) != len(baseline.Workloads) {
		t.Errorf("after the pod's deletion: maps %+v, %d listeners, %d workloads; before it: maps %+v, %d listeners, %d workloads",
			st.Maps, len(st.Listeners), len(st.Workloads), baseline.Maps, len(baseline.Listeners), len(baseline.Workloads))
	}
	if st.Maps.Workloads == 0 || st.Maps.Guards == 0 {
		t.Errorf("the pod still running is not in the maps: %+v", st.Maps)
	}
}

// gatewayServer serves plain HTTP on the host side of the pods' bridge (its
// gateway address, which exists once the first pod is up).
func gatewayServer(t *testing.T, rt *containerd.Runtime) netip.AddrPort {
	t.Helper()
	srv, _ := countingGateway(t, rt)
	return srv
}

// podGet sends an HTTP request for host to srv from the pod's main
// container, with busybox nc, and returns what came back.
func podGet(t testing.TB, p *containerd.Pod, srv netip.AddrPort, host string) (string, int32) {
	t.Helper()
	req := fmt.Sprintf(`GET /hello HTTP/1.0\r\nHost: %s\r\n\r\n`, host)
	out, errOut, code := p.Exec(t, "main", "/bin/busybox", "sh", "-c",
		fmt.Sprintf("/bin/busybox printf '%s' | /bin/busybox nc %s %d", req, srv.Addr(), srv.Port()))
	return out + errOut, code
}

// kubeDaemon runs RunDaemon with pod discovery on the test containerd; stop
// and start again keep its pin directory and receipt log (an agent restart).
type kubeDaemon struct {
	t       testing.TB
	rt      *containerd.Runtime
	selfUID string
	gw      netip.Addr
	dir     string
	pinDir  string
	sock    string
	policy  *hushspec.Policy
	key     ed25519.PrivateKey
	log     *receipts.Log
	cancel  context.CancelFunc
	done    chan error

	// kube, when set before start, replaces the default section (one
	// policy, "default", the file kubePolicy is written to); reload and
	// reloadCfg are the daemon's reload signal and section reader.
	kube      *config.Kubernetes
	reload    chan os.Signal
	reloadCfg func(ctx context.Context) (*config.Kubernetes, error)
	// loadPolicy and policyChanged, when set, are KubeOptions.LoadPolicy
	// and PolicyChanged (object store policies).
	loadPolicy    config.PolicyLoader
	policyChanged func(string) bool
	// hosts are the anti-spoofing answers; default api.allowed.test at gw.
	hosts map[string][]netip.Addr

	// poll is the CRI poll interval; 0: 100ms.
	poll time.Duration
	// dns answers the pods' DNS (Options.DNS): the Kubernetes mode runs
	// with the DNS listeners, so that the churn test counts them.
	dns dnsproxy.Handler

	mu      sync.Mutex
	decided []Decision
	// edit, when set, makes the next start a binary of another map layout.
	edit  func(*ebpf.CollectionSpec) error
	agent *Agent // the running daemon's agent
}

func newKubeDaemon(t testing.TB, rt *containerd.Runtime, selfUID string, gw netip.Addr) *kubeDaemon {
	t.Helper()
	kd := &kubeDaemon{t: t, rt: rt, selfUID: selfUID, gw: gw, dir: t.TempDir(), pinDir: testutil.PinDir(t)}
	kd.sock = filepath.Join(kd.dir, "status.sock")
	kd.reload = make(chan os.Signal, 1)
	kd.hosts = map[string][]netip.Addr{"api.allowed.test": {gw}}
	kd.dns = &recordingDNS{}
	var err error
	if kd.policy, err = hushspec.Parse([]byte(kubePolicy)); err != nil {
		t.Fatal(err)
	}
	_, kd.key, _ = ed25519.GenerateKey(rand.Reader)
	if kd.log, err = receipts.Open(filepath.Join(kd.dir, "receipts.db"), receipts.Options{Key: kd.key}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { kd.log.Close() })
	t.Cleanup(func() { bpf.Uninstall(kd.pinDir) })
	t.Cleanup(kd.stop) // first of the three
	return kd
}

// start runs the daemon and waits for its ready file.
func (kd *kubeDaemon) start() {
	t := kd.t
	t.Helper()
	mount, err := cgroupfs.Mount()
	if err != nil {
		t.Fatal(err)
	}
	ready := filepath.Join(kd.dir, "ready")
	kc := kd.kube
	if kc == nil {
		def := filepath.Join(kd.dir, "default.yaml")
		if err := os.WriteFile(def, []byte(kubePolicy), 0o644); err != nil {
			t.Fatal(err)
		}
		kc = &config.Kubernetes{
			Policies:         map[string]string{"default": def},
			DefaultPolicy:    "default",
			ExemptNamespaces: []string{"kube-system"},
		}
	}
	kc.CRISocket, kc.CgroupRoot, kc.PollInterval = kd.rt.Socket, kd.rt.CgroupRoot, config.Duration(cmp.Or(kd.poll, 100*time.Millisecond))
	ctx, cancel := context.WithCancel(context.Background())
	kd.cancel, kd.done = cancel, make(chan error, 1)
	go func() {
		kd.done <- RunDaemon(ctx, DaemonOptions{
			Agent: Options{Policy: kd.policy, Key: kd.key, Log: kd.log, PinDir: kd.pinDir,
				AttachCgroup: cri.Abs(mount, kd.rt.CgroupRoot),
				Hosts:        kd.hosts, editSpec: kd.edit, DNS: kd.dns,
				OnDecision: func(d Decision) {
					kd.mu.Lock()
					kd.decided = append(kd.decided, d)
					kd.mu.Unlock()
				}},
			StatusSocket:  kd.sock,
			ReadyFile:     ready,
			Reload:        kd.reload,
			WatchInterval: 50 * time.Millisecond,
			started: func(a *Agent) {
				kd.mu.Lock()
				kd.agent = a
				kd.mu.Unlock()
			},
			Kubernetes: &KubeOptions{SelfUID: kd.selfUID, Config: kc, ReloadConfig: kd.reloadCfg,
				LoadPolicy: kd.loadPolicy, PolicyChanged: kd.policyChanged},
		})
	}()
	done := kd.done
	waitFor(t, "the daemon ready", func() bool {
		select {
		case err := <-done:
			done <- err
			t.Fatalf("daemon exited: %v", err)
		default:
		}
		_, err := os.Stat(ready)
		return err == nil
	})
}

// stop stops the daemon (pinned state stays), once per start.
func (kd *kubeDaemon) stop() {
	if kd.cancel == nil {
		return
	}
	kd.cancel()
	if err := <-kd.done; err != nil {
		kd.t.Errorf("daemon: %v", err)
	}
	kd.cancel = nil
}

// decision waits for the first decision of a workload.
func (kd *kubeDaemon) decision(workload string) Decision {
	kd.t.Helper()
	var d Decision
	waitFor(kd.t, "a decision for "+workload, func() bool {
		kd.mu.Lock()
		defer kd.mu.Unlock()
		for _, x := range kd.decided {
			if x.Workload == workload {
				d = x
				return true
			}
		}
		return false
	})
	return d
}

func queryStatus(t testing.TB, sock string) Status {
	t.Helper()
	s, err := QueryStatus(context.Background(), sock)
	if err != nil {
		t.Fatalf("status: %v", err)
	}
	return s
}

func podIn(t *testing.T, s Status, ns, name string) PodStatus {
	t.Helper()
	for _, p := range s.Pods {
		if p.Namespace == ns && p.Name == name {
			return p
		}
	}
	t.Fatalf("pod %s/%s not in status: %+v", ns, name, s.Pods)
	return PodStatus{}
}

func workloadIn(t *testing.T, s Status, name string) WorkloadStatus {
	t.Helper()
	for _, w := range s.Workloads {
		if w.Name == name {
			return w
		}
	}
	t.Fatalf("workload %s not in status", name)
	return WorkloadStatus{}
}

// waitFor polls a condition (a readiness signal, not a guessed delay), for at
// most a minute: pods take seconds to start here.
func waitFor(t testing.TB, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestKubeRestartAdoptsPods: a pod keeps its protection across an agent
// restart. While no agent runs, the pinned state still redirects its
// connections (to a listener that is gone: refused, never passed); the
// restarted agent adopts it under the same workload id and cgroup before it
// is ready; a pod created while the agent was down is protected on restart
// and decided.
func TestKubeRestartAdoptsPods(t *testing.T) {
	rt := containerd.Shared(t)
	steady := rt.RunPod(t, containerd.PodSpec{Namespace: "team-r", Name: "steady"})
	srv := gatewayServer(t, rt)
	kd := newKubeDaemon(t, rt, "not-a-pod", srv.Addr())
	kd.start()
	w1 := workloadIn(t, queryStatus(t, kd.sock), "team-r/steady")
	if w1.State != StateProtected || w1.CgroupID == 0 {
		t.Fatalf("pod before the restart: %+v", w1)
	}
	kd.stop()

	if out, _ := podGet(t, steady, srv, "api.allowed.test"); strings.Contains(out, "kube-api") {
		t.Fatalf("a protected pod's connection passed while no agent ran: %q", out)
	}
	down := rt.RunPod(t, containerd.PodSpec{Namespace: "team-r", Name: "while-down"})

	kd.start()
	st := queryStatus(t, kd.sock)
	w2 := workloadIn(t, st, "team-r/steady")
	if w2.ID != w1.ID || w2.State != StateProtected || w2.CgroupID != w1.CgroupID {
		t.Fatalf("pod after the restart: %+v, before: %+v", w2, w1)
	}
	if p := podIn(t, st, "team-r", "while-down"); p.State != string(StateProtected) {
		t.Fatalf("pod created while the agent was down, after the restart: %+v", p)
	}
	if st.Maps.Workloads != 2 {
		t.Errorf("workloads map after the restart: %d entries, want 2 (one per pod)", st.Maps.Workloads)
	}
	if out, _ := podGet(t, down, srv, "api.allowed.test"); !strings.Contains(out, "kube-api host=api.allowed.test") {
		t.Fatalf("pod created while the agent was down: %q", out)
	}
	if d := kd.decision("team-r/while-down"); d.Verdict != kernel.VerdictAllow {
		t.Fatalf("decision: %+v", d)
	}
}

// bornConnecting is a container command that connects to the server from
// its first instant, printing each result, until a request gets through.
func bornConnecting(srv netip.AddrPort, name string) []string {
	return []string{"/bin/busybox", "sh", "-c", fmt.Sprintf(`while true; do
out=$(/bin/busybox printf 'GET /born-%s HTTP/1.0\r\nHost: api.allowed.test\r\n\r\n' | /bin/busybox nc %s %d 2>&1)
echo "result: $out" | /bin/busybox tr '\r\n' '  '; echo
case "$out" in *kube-api*) break;; esac
/bin/busybox usleep 20000
done
echo connected
exec /bin/busybox sleep 2147483`, name, srv.Addr(), srv.Port())}
}

// containerLog reads a pod's container log (the CRI's log format: one line
// per output line, after a timestamp and stream).
func containerLog(t *testing.T, rt *containerd.Runtime, p *containerd.Pod, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(rt.Dir, "pods", p.Spec.Namespace+"_"+p.Spec.Name+"_"+p.UID, name+".log"))
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	return string(b)
}

// TestKubePodsProtectedFromBirth: once the first listing is applied, the
// pods' cgroup root is a birth root. A pod created while the agent runs
// whose container connects from its first instant never reaches the server
// undecided: its early attempts are refused in the kernel (EPERM, receipted
// under "unclassified") until the agent protects it, and every connection
// the server accepts came through the agent, with an allow receipt naming
// the pod. A pod in an exempt namespace is exempted by its cgroup and then
// reaches the server directly; its exemption is withdrawn when it is
// removed. Status and metrics show the birth root.
func TestKubePodsProtectedFromBirth(t *testing.T) {
	rt := containerd.Shared(t)
	mount := mustMount(t)
	root := cri.Abs(mount, rt.CgroupRoot)
	rt.RunPod(t, containerd.PodSpec{Namespace: "team-n", Name: "first"}) // the gateway exists once a pod is up

	// The server counts the connections it accepted, by path (one per pod).
	srvAddr, accepted := countingGateway(t, rt)
	gw := srvAddr.Addr()

	kd := newKubeDaemon(t, rt, "not-a-pod", gw)
	kd.start()
	st := queryStatus(t, kd.sock)
	if st.Birth == nil || !slices.Equal(st.Birth.Roots, []string{root}) {
		t.Fatalf("birth roots in status: %+v; want %s", st.Birth, root)
	}
	if want := fmt.Sprintf("chio_agent_birth_root{cgroup=%q} 1", root); !strings.Contains(statusMetrics(t, kd.sock), want) {
		t.Errorf("metrics lack %s", want)
	}

	born := rt.RunPod(t, containerd.PodSpec{Namespace: "team-n", Name: "newborn", Command: bornConnecting(srvAddr, "newborn")})
	infra := rt.RunPod(t, containerd.PodSpec{Namespace: "kube-system", Name: "born-infra", Command: bornConnecting(srvAddr, "infra")})
	waitFor(t, "the new pod's request through", func() bool {
		return strings.Contains(containerLog(t, rt, born, "main"), "connected")
	})
	waitFor(t, "the exempt pod's request through", func() bool {
		return strings.Contains(containerLog(t, rt, infra, "main"), "connected")
	})

	// Every attempt of the new pod was refused in the kernel or decided.
	checkBorn(t, kd, rt, born, "team-n/newborn", accepted)
	kd.mu.Lock()
	for _, x := range kd.decided {
		if strings.HasPrefix(x.Workload, "kube-system/") {
			t.Errorf("exempt pod decided: %+v", x)
		}
	}
	kd.mu.Unlock()
	if n := accepted("/born-infra"); n != 1 {
		t.Errorf("exempt pod's connections accepted: %d, want 1", n)
	}

	// The exempt pod is exempt by its cgroup, until it is removed.
	infraCg := cri.Abs(mount, infra.CgroupParent)
	st = queryStatus(t, kd.sock)
	if p := podIn(t, st, "kube-system", "born-infra"); p.State != PodExempt {
		t.Fatalf("exempt pod: %+v", p)
	}
	if st.Birth == nil || !slices.Contains(st.Birth.Exempt, infraCg) {
		t.Fatalf("exempt cgroups: %+v; want %s", st.Birth, infraCg)
	}
	infra.Remove(t)
	waitFor(t, "the removed pod's exemption withdrawn", func() bool {
		b := queryStatus(t, kd.sock).Birth
		return b == nil || len(b.Exempt) == len(st.Birth.Exempt)-1
	})

	// Stopped, the agent leaves the root pinned: pods stay refused.
	kd.stop()
	m, err := ebpf.LoadPinnedMap(filepath.Join(testutil.LayoutDir(t, kd.pinDir), "maps", "birth_roots"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	var k uint64
	var v uint32
	n := 0
	for it := m.Iterate(); it.Next(&k, &v); {
		n++
	}
	if n != 1 {
		t.Errorf("birth roots pinned after the agent stopped: %d, want 1", n)
	}

	// A pod created while no agent runs is refused from its first
	// connect, until the agent, started again, protects it.
	down := rt.RunPod(t, containerd.PodSpec{Namespace: "team-n", Name: "while-down", Command: bornConnecting(srvAddr, "while-down")})
	waitFor(t, "the pod created while the agent is down refused twice", func() bool {
		out := containerLog(t, rt, down, "main")
		if strings.Contains(out, "kube-api") {
			t.Fatalf("a pod created while no agent ran reached the server: %s", out)
		}
		return strings.Count(out, "Operation not permitted") >= 2
	})
	if n := accepted("/born-while-down"); n != 0 {
		t.Fatalf("a pod created while no agent ran reached the server %d times", n)
	}
	kd.start()
	if b := queryStatus(t, kd.sock).Birth; b == nil || !slices.Equal(b.Roots, []string{root}) {
		t.Fatalf("birth roots after the restart: %+v", b)
	}
	waitFor(t, "the pod created while the agent was down through", func() bool {
		return strings.Contains(containerLog(t, rt, down, "main"), "connected")
	})
	checkBorn(t, kd, rt, down, "team-n/while-down", accepted)
}

// checkBorn checks a pod that connected from birth: each attempt its log
// shows was refused in the kernel (EPERM) or decided, each refusal the agent
// saw has a receipt under "unclassified" naming the pod's cgroup, and every
// connection the server accepted for it has an allow decision whose receipt
// names the pod.
func checkBorn(t *testing.T, kd *kubeDaemon, rt *containerd.Runtime, p *containerd.Pod, workload string, accepted func(path string) int) {
	t.Helper()
	refused, _ := attempts(t, workload, containerLog(t, rt, p, "main"))
	t.Logf("%s: %d attempts refused before it was classified", workload, refused)
	n := accepted("/born-" + p.Spec.Name)
	if n == 0 {
		t.Errorf("%s: the server accepted none of its connections", workload)
	}
	waitFor(t, "an allow decision for each connection "+workload+" made", func() bool { return kd.allowed(workload, 0) >= n })
	kd.mu.Lock()
	defer kd.mu.Unlock()
	unclassified := false
	for _, x := range kd.decided {
		if x.Workload == workload && x.Verdict == kernel.VerdictAllow {
			if ent, err := kd.log.Get(x.Seq); err != nil || !strings.Contains(string(ent.Receipt), p.UID) {
				t.Errorf("%s: allow receipt does not name the pod: %v", workload, err)
			}
		}
		if x.Workload == unclassifiedName && x.Verdict == kernel.VerdictDeny {
			if ent, err := kd.log.Get(x.Seq); err == nil && strings.Contains(string(ent.Receipt), p.CgroupParent) {
				unclassified = true
				if !strings.Contains(x.Reason, "not classified") {
					t.Errorf("%s: refusal's decision: %+v", workload, x)
				}
			}
		}
	}
	if refused > 0 && !unclassified {
		t.Logf("%s: no refusal receipt seen yet (refusals while no agent ran are receipted when it reads them)", workload)
	}
}

// statusMetrics reads the daemon's metrics through its status socket.
func statusMetrics(t *testing.T, sock string) string {
	t.Helper()
	c := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}}
	resp, err := c.Get("http://chio/metrics")
	if err != nil {
		t.Fatalf("metrics: %v", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
