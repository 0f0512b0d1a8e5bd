package main

import (
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/backbay-labs/chio-agent/internal/cgroupfs"
	"github.com/backbay-labs/chio-agent/internal/testutil"
	"github.com/backbay-labs/chio-agent/internal/testutil/containerd"
)

// One containerd for the binary, started by the first test that asks for it.
func TestMain(m *testing.M) { os.Exit(containerd.Main(m)) }

// TestRunProtectsPods runs the real binary with a kernel.yaml whose
// kubernetes: section names the test containerd and no agent.workloads: the
// pod running before the agent is protected by readiness, `status --pod`
// shows it with its policy, and its connection goes through the agent (a
// name the policy blocks is refused; the allowed one reaches the server).
// Killed, as when its DaemonSet is deleted, the agent leaves the pods
// failing closed until uninstall removes protection.
func TestRunProtectsPods(t *testing.T) {
	rt := containerd.Shared(t)
	pod := rt.RunPod(t, containerd.PodSpec{Namespace: "team-k", Name: "web"})
	bin, dir, pinDir, keyPath := daemonTest(t)

	gw, port := serveOnPodGateway(t, rt, "pod-upstream")

	policy := filepath.Join(dir, "policy.yaml")
	if err := os.WriteFile(policy, []byte("hushspec: \"0.1.0\"\nname: pods\nrules:\n  egress:\n    allow: [api.allowed.test]\n    default: block\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	d := newDaemon(t, bin, dir)
	kcfg := agentYAML(policy, keyPath, filepath.Join(dir, "receipts.db"), pinDir, d.socket) + fmt.Sprintf(`  hosts: {api.allowed.test: [%s]}
kubernetes:
  cri_socket: %s
  cgroup_root: %s
  policies: {default: %s}
  default_policy: default
  exempt_namespaces: [kube-system]
  poll_interval: 100ms
`, gw, rt.Socket, rt.CgroupRoot, policy)
	if err := os.WriteFile(d.config, []byte(kcfg), 0o600); err != nil {
		t.Fatal(err)
	}
	d.start()
	t.Cleanup(func() {
		if !d.gone() {
			d.signal(syscall.SIGTERM)
			<-d.exited
		}
	})

	out, err := exec.Command(bin, "status", "--status-socket", d.socket, "--pod", "team-k/web").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "protected") || !strings.Contains(string(out), "default") ||
		!strings.Contains(string(out), pod.UID) {
		t.Fatalf("status --pod team-k/web: %v\n%s\nagent logs:\n%s", err, out, d.logs)
	}
	get := func(host string) string { return podGet(t, pod, gw, port, host) }
	if got := get("forbidden.test"); strings.Contains(got, "pod-upstream") {
		t.Fatalf("a blocked name from the protected pod reached the server: %q", got)
	}
	if got := get("api.allowed.test"); !strings.Contains(got, "pod-upstream") {
		t.Fatalf("the allowed name from the protected pod: %q\nagent logs:\n%s", got, d.logs)
	}
	s := d.status()
	if s.Counts.Allowed != 1 || s.Counts.Denied != 1 {
		t.Errorf("counts %+v, want one allowed and one denied", s.Counts)
	}
	out, err = exec.Command(bin, "status", "--status-socket", d.socket).CombinedOutput()
	if root := filepath.Join(mustCgroupMount(t), rt.CgroupRoot); err != nil || !strings.Contains(string(out), "birth      roots "+root+" ") {
		t.Errorf("status does not show the pods' birth root %s: %v\n%s", root, err, out)
	}

	// Deleting the DaemonSet kills the agent (SIGKILL once the grace period
	// is over): the pinned programs and links stay, so the protected pod's
	// connections are refused, and a pod started afterwards is refused from
	// its first socket.
	d.signal(syscall.SIGKILL)
	<-d.exited
	layoutDir := testutil.LayoutDir(t, pinDir)
	for _, name := range []string{"links/chio_connect4", "links/chio_sock_create", "maps/birth_roots", "maps/workloads"} {
		if _, err := os.Stat(filepath.Join(layoutDir, name)); err != nil {
			t.Fatalf("after the agent was killed, %s: %v; want it still pinned", name, err)
		}
	}
	if got := get("api.allowed.test"); strings.Contains(got, "pod-upstream") {
		t.Fatalf("the protected pod reached the server with its agent killed: %q", got)
	}
	late := rt.RunPod(t, containerd.PodSpec{Namespace: "team-k", Name: "after-agent"})
	if got := podGet(t, late, gw, port, "api.allowed.test"); strings.Contains(got, "pod-upstream") || !strings.Contains(got, "not permitted") {
		t.Fatalf("a pod started with the agent killed: %q; want its socket refused (EPERM)", got)
	}

	// Removing protection from the node is uninstall, run with no agent.
	if out, err := exec.Command(bin, "uninstall", "--pin-dir", pinDir).CombinedOutput(); err != nil {
		t.Fatalf("uninstall: %v\n%s", err, out)
	}
	if got := get("api.allowed.test"); !strings.Contains(got, "pod-upstream") {
		t.Fatalf("the pod after uninstall: %q; want a direct connection", got)
	}
}

func mustCgroupMount(t *testing.T) string {
	t.Helper()
	m, err := cgroupfs.Mount()
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// podGet sends an HTTP request for host to gw:port from the pod's main
// container, with busybox nc, and returns what came back.
func podGet(t *testing.T, pod *containerd.Pod, gw netip.Addr, port int, host string) string {
	t.Helper()
	req := fmt.Sprintf(`GET / HTTP/1.0\r\nHost: %s\r\n\r\n`, host)
	o, e, _ := pod.Exec(t, "main", "/bin/busybox", "sh", "-c",
		fmt.Sprintf("/bin/busybox printf '%s' | /bin/busybox nc %s %d", req, gw, port))
	return o + e
}
