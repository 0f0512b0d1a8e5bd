package agent

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/backbay-labs/chio-agent/bpf"
	"github.com/backbay-labs/chio-agent/internal/cgroupfs"
	"github.com/backbay-labs/chio-agent/internal/cri"
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

	// The server: on the host side of the pods' bridge (its gateway address,
	// which exists once the first pod is up), answering plain HTTP.
	a4 := rt.Subnet.Addr().As4()
	gw := netip.AddrFrom4([4]byte{a4[0], a4[1], a4[2], 1})
	ln, err := net.Listen("tcp4", netip.AddrPortFrom(gw, 0).String())
	if err != nil {
		t.Fatalf("listen on the pods' gateway: %v", err)
	}
	srv := &http.Server{Handler: bodyHandler("kube-api")}
	srv.SetKeepAlivesEnabled(false)
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	srvAddr := ln.Addr().(*net.TCPAddr).AddrPort()

	dir := t.TempDir()
	policy, err := hushspec.Parse([]byte(kubePolicy))
	if err != nil {
		t.Fatal(err)
	}
	_, key, _ := ed25519.GenerateKey(rand.Reader)
	log, err := receipts.Open(filepath.Join(dir, "receipts.db"), receipts.Options{Key: key})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { log.Close() })
	pinDir := testutil.PinDir(t)
	t.Cleanup(func() { bpf.Uninstall(pinDir) })
	var mu sync.Mutex
	var decided []Decision
	sock, ready := filepath.Join(dir, "status.sock"), filepath.Join(dir, "ready")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- RunDaemon(ctx, DaemonOptions{
			Agent: Options{Policy: policy, Key: key, Log: log, PinDir: pinDir,
				AttachCgroup: cri.Abs(mount, rt.CgroupRoot),
				Hosts:        map[string][]netip.Addr{"api.allowed.test": {gw}},
				OnDecision: func(d Decision) {
					mu.Lock()
					decided = append(decided, d)
					mu.Unlock()
				}},
			StatusSocket: sock,
			ReadyFile:    ready,
			Kubernetes: &KubeOptions{SelfUID: self.UID, Config: &config.Kubernetes{
				CRISocket:        rt.Socket,
				Policies:         map[string]string{"default": "/unused/by/this/test"},
				DefaultPolicy:    "default",
				ExemptNamespaces: []string{"kube-system"},
				PollInterval:     config.Duration(100 * time.Millisecond),
			}},
		})
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("daemon: %v", err)
		}
	})
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
		w.Labels[LabelPodUID] != before.UID || w.Labels[LabelContainers] != "main" {
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

	get := func(p *containerd.Pod, host string) (string, int32) {
		t.Helper()
		req := fmt.Sprintf(`GET /hello HTTP/1.0\r\nHost: %s\r\n\r\n`, host)
		out, errOut, code := p.Exec(t, "main", "/bin/busybox", "sh", "-c",
			fmt.Sprintf("/bin/busybox printf '%s' | /bin/busybox nc %s %d", req, srvAddr.Addr(), srvAddr.Port()))
		return out + errOut, code
	}
	decision := func(workload string) Decision {
		t.Helper()
		var d Decision
		waitFor(t, "a decision for "+workload, func() bool {
			mu.Lock()
			defer mu.Unlock()
			for _, x := range decided {
				if x.Workload == workload {
					d = x
					return true
				}
			}
			return false
		})
		return d
	}
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
	for _, want := range []string{before.UID, `"team-a/before"`, `"io.kubernetes.pod.namespace":"team-a"`, `"io.kubernetes.pod.name":"before"`} {
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
	mu.Lock()
	for _, x := range decided {
		if strings.HasPrefix(x.Workload, "kube-system/") {
			t.Errorf("exempt pod decided: %+v", x)
		}
	}
	mu.Unlock()

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

func queryStatus(t *testing.T, sock string) Status {
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
func waitFor(t *testing.T, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
