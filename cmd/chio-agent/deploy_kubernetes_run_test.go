package main

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	corev1 "k8s.io/api/core/v1"

	"github.com/backbay-labs/chio-agent/agent"
	"github.com/backbay-labs/chio-agent/internal/testutil/containerd"
	"github.com/backbay-labs/chio-agent/kernel/config"
)

// TestKubeShippedConfigMapOnARuntime runs the real binary with the
// ConfigMap's kernel.yaml and policies as shipped, on the test's containerd,
// with only the node's paths pointed at the test's own (pin directory, CRI
// socket, cgroup root, files, log, socket, metrics port) and the policies'
// host names pointed at the test's server: an unlabelled pod gets the
// default policy, a pod labelled chio.dev/policy: research gets research
// (which allows a name the default blocks), and pods of the exempt
// namespaces, kube-system and the agent's own, reach the network undecided.
func TestKubeShippedConfigMapOnARuntime(t *testing.T) {
	rt := containerd.Shared(t)
	bin, dir, pinDir, keyPath := daemonTest(t)
	ms := kubeManifests(t)
	cm, _ := only[*corev1.ConfigMap](t, ms)
	ns, _ := only[*corev1.Namespace](t, ms)

	// Pods first: the first one makes the bridge that holds the gateway.
	plain := rt.RunPod(t, containerd.PodSpec{Namespace: "team-s", Name: "plain"})
	research := rt.RunPod(t, containerd.PodSpec{Namespace: "team-s", Name: "research", Labels: map[string]string{config.PolicyLabel: "research"}})
	system := rt.RunPod(t, containerd.PodSpec{Namespace: "kube-system", Name: "dns"})
	own := rt.RunPod(t, containerd.PodSpec{Namespace: ns.Name, Name: "chio-uninstall-x"})

	gw, port := serveOnPodGateway(t, rt, "shipped-upstream")

	// The ConfigMap's files, where its mount would put them.
	etc := filepath.Join(dir, "etc", "chio")
	if err := os.MkdirAll(etc, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, body := range cm.Data {
		if err := os.WriteFile(filepath.Join(etc, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// Default allows api.openai.com and blocks pypi.org; research allows
	// both (the test fails below if the shipped policies say otherwise).
	socket := filepath.Join(dir, "status.sock")
	text := cm.Data["kernel.yaml"]
	for _, r := range [][2]string{
		{"/etc/chio/", etc + "/"},
		{"signing_key: /etc/chio-key/seed", "signing_key: " + keyPath},
		{"sink: /var/lib/chio-agent/receipts.db", "sink: " + filepath.Join(dir, "receipts.db")},
		{"pin_dir: /sys/fs/bpf/chio\n", "pin_dir: " + pinDir + "\n"},
		{"status_socket: /run/chio-agent/status.sock", "status_socket: " + socket},
		{`metrics_addr: ":9464"`, `metrics_addr: "127.0.0.1:0"`},
		{"\nagent:\n", fmt.Sprintf("\nagent:\n  hosts: {api.openai.com: [%s], pypi.org: [%s]}\n", gw, gw)},
		{"  cgroup_root: auto\n", fmt.Sprintf("  cgroup_root: %s\n  cri_socket: %s\n", rt.CgroupRoot, rt.Socket)},
		{"poll_interval: 1s", "poll_interval: 100ms"},
	} {
		if !strings.Contains(text, r[0]) {
			t.Fatalf("the ConfigMap's kernel.yaml no longer says %q; update this test", r[0])
		}
		text = strings.ReplaceAll(text, r[0], r[1])
	}
	cfgPath := filepath.Join(dir, "kernel.yaml")
	if err := os.WriteFile(cfgPath, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(cfgPath, func(string) (string, bool) { return "", false })
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.Kubernetes.Policies) < 2 || cfg.Kubernetes.Policies["research"] == "" {
		t.Fatalf("the ConfigMap's policies %v: want research beside the default", cfg.Kubernetes.Policies)
	}

	d := &daemon{t: t, bin: bin, config: cfgPath, ready: filepath.Join(dir, "ready"), socket: socket}
	d.start()
	t.Cleanup(func() {
		if !d.gone() {
			d.signal(syscall.SIGTERM)
			<-d.exited
		}
	})
	logLines(t, d.logs.String(), "workloads may reach the nameservers of /etc/resolv.conf")

	pods := map[string]agent.PodStatus{}
	for _, p := range d.status().Pods {
		pods[p.Namespace+"/"+p.Name] = p
	}
	for name, want := range map[string]struct{ state, policy string }{
		"team-s/plain":                {"protected", cfg.Kubernetes.DefaultPolicy},
		"team-s/research":             {"protected", "research"},
		"kube-system/dns":             {agent.PodExempt, ""},
		ns.Name + "/chio-uninstall-x": {agent.PodExempt, ""},
	} {
		if p := pods[name]; p.State != want.state || p.Policy != want.policy {
			t.Errorf("pod %s: state %q policy %q, want %q %q\nagent logs:\n%s", name, p.State, p.Policy, want.state, want.policy, d.logs)
		}
	}

	get := func(p *containerd.Pod, host string) bool {
		return strings.Contains(podGet(t, p, gw, port, host), "shipped-upstream")
	}
	for _, c := range []struct {
		pod  *containerd.Pod
		host string
		ok   bool
	}{
		{plain, "api.openai.com", true},
		{plain, "pypi.org", false},
		{research, "pypi.org", true},
		{research, "forbidden.test", false},
		{system, "forbidden.test", true},
		{own, "forbidden.test", true},
	} {
		if got := get(c.pod, c.host); got != c.ok {
			t.Errorf("%s/%s → %s: reached the server %v, want %v", c.pod.Spec.Namespace, c.pod.Spec.Name, c.host, got, c.ok)
		}
	}
}

// serveOnPodGateway serves body over HTTP on the pods' gateway address (the
// bridge's, there once a pod has run), a random port, and returns both.
func serveOnPodGateway(t *testing.T, rt *containerd.Runtime, body string) (netip.Addr, int) {
	t.Helper()
	a4 := rt.Subnet.Addr().As4()
	gw := netip.AddrFrom4([4]byte{a4[0], a4[1], a4[2], 1})
	return gw, serveBodyOn(t, netip.AddrPortFrom(gw, 0).String(), body)
}
