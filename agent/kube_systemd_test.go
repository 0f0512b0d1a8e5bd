package agent

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/backbay-labs/chio-agent/bpf"
	"github.com/backbay-labs/chio-agent/internal/cgroupfs"
	"github.com/backbay-labs/chio-agent/internal/cri"
	"github.com/backbay-labs/chio-agent/internal/testutil"
	"github.com/backbay-labs/chio-agent/internal/testutil/fakecri"
	"github.com/backbay-labs/chio-agent/kernel"
	"github.com/backbay-labs/chio-agent/kernel/config"
	"github.com/backbay-labs/chio-agent/kernel/hushspec"
	"github.com/backbay-labs/chio-agent/receipts"
)

// The systemd cgroup driver end to end, as far as these machines allow: PID 1
// is not systemd, so runc's systemd driver (which asks systemd over D-Bus for
// each slice and scope) cannot run, and CRI-O is not packaged. The test
// therefore plays the runtime: it makes real cgroups in the exact layout the
// systemd driver makes (kubepods.slice/kubepods-<qos>.slice/
// kubepods-<qos>-pod<uid_>.slice/cri-containerd-<id>.scope, crio-<id>.scope
// for CRI-O, a guaranteed pod's slice directly under kubepods.slice), real
// network namespaces, real processes in the scopes, and a CRI server
// (fakecri) that reports them with the systemd-form cgroupsPath
// ("<pod slice>:cri-containerd:<id>", "<pod slice>:crio:<id>") as
// containerd's and CRI-O's verbose status does. The agent under test is the
// real daemon (RunDaemon with pod discovery). The hierarchy is a test cgroup
// standing for the cgroup2 mount (KubeOptions.Mount), so that nothing is
// made at the machine's root; on these machines that mount is itself the
// hybrid layout's /sys/fs/cgroup/unified.

// sdLayout is where a kubelet with the systemd driver puts the pods.
type sdLayout struct {
	// root is the pods' root directory, relative to the mount.
	root string
	// prefix is the root slice's name without ".slice": "kubepods", or
	// "kubelet-kubepods" under --cgroup-root=/kubelet.
	prefix string
	// cgroupfs lays pods out as the cgroupfs driver does instead.
	cgroupfs bool
}

// sdPod is one pod laid out as its runtime and cgroup driver would.
type sdPod struct {
	ns, name, uid string
	// runtime is the scope prefix: "cri-containerd" or "crio".
	runtime string
	// qos is burstable, besteffort, or "" for guaranteed.
	qos              string
	sandboxID, ctrID string
	ctrName          string
	// cgroupsPath is the runtime's linux.cgroupsPath of a sandbox or
	// container id.
	cgroupsPath func(id string) string
	// podDir is the pod-level cgroup, sandboxDir the sandbox's (made for
	// containerd's pause only), ctrDir the container's; all absolute.
	podDir, sandboxDir, ctrDir string
	netns                      testutil.NetNS
	srv                        netip.AddrPort // a server on 127.0.0.1 in the pod's netns
	sandboxPID, ctrPID         int
	labels                     map[string]string
	accepted                   func(path string) int
}

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

func randomUID() string {
	h := randomHex(16)
	return h[:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}

// mkCgroup makes a cgroup directory, removed at the end of the test (after
// everything made below it, cleanups running last first).
func mkCgroup(t *testing.T, path string) {
	t.Helper()
	if _, err := cgroupfs.Create(path); err != nil {
		t.Fatalf("make cgroup: %v", err)
	}
	t.Cleanup(func() {
		if err := cgroupfs.Remove(path); err != nil {
			t.Errorf("remove cgroup: %v", err)
		}
	})
}

// startIn starts a long-lived process directly inside a cgroup (a pause or
// a container's init) and returns its pid; it is killed at the end.
func startIn(t *testing.T, dir string) int {
	t.Helper()
	cmd := exec.Command("sleep", "3600")
	testutil.Cgroup{Path: dir}.CommandIn(t, cmd)
	if err := cmd.Start(); err != nil {
		t.Fatalf("start a process in %s: %v", dir, err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	return cmd.Process.Pid
}

// newSDPod lays a pod out under the mount: its slice (and scopes for the
// sandbox and one container, each with a process in it), its netns with a
// server on its loopback. The runtime does not report it yet (report).
func newSDPod(t *testing.T, mount string, l sdLayout, ns, name, runtime, qos, ctrName string) *sdPod {
	t.Helper()
	p := &sdPod{ns: ns, name: name, uid: randomUID(), runtime: runtime, qos: qos, ctrName: ctrName,
		sandboxID: randomHex(32), ctrID: randomHex(32)}
	parent := filepath.Join(mount, l.root)
	switch {
	case l.cgroupfs:
		// The cgroupfs driver, for contrast: kubepods/<qos>/pod<uid>/<id>.
		if qos != "" {
			parent = filepath.Join(parent, qos)
		}
		p.podDir = filepath.Join(parent, "pod"+p.uid)
		p.sandboxDir, p.ctrDir = filepath.Join(p.podDir, p.sandboxID), filepath.Join(p.podDir, p.ctrID)
		rel, _ := filepath.Rel(mount, p.podDir)
		p.cgroupsPath = func(id string) string { return "/" + rel + "/" + id }
	default:
		u := strings.ReplaceAll(p.uid, "-", "_")
		slice := l.prefix + "-pod" + u + ".slice"
		if qos != "" {
			parent = filepath.Join(parent, l.prefix+"-"+qos+".slice")
			slice = l.prefix + "-" + qos + "-pod" + u + ".slice"
		}
		p.podDir = filepath.Join(parent, slice)
		p.sandboxDir = filepath.Join(p.podDir, runtime+"-"+p.sandboxID+".scope")
		p.ctrDir = filepath.Join(p.podDir, runtime+"-"+p.ctrID+".scope")
		p.cgroupsPath = func(id string) string { return slice + ":" + runtime + ":" + id }
	}
	mkCgroup(t, p.podDir)
	if runtime == "crio" {
		// CRI-O drops the infra container (drop_infra_ctr, its default):
		// the sandbox's scope is named in its spec but never made. Its
		// conmon runs in a scope of its own in the pod's slice
		// (conmon_cgroup "pod").
		conmon := filepath.Join(p.podDir, "crio-conmon-"+p.ctrID+".scope")
		mkCgroup(t, conmon)
		startIn(t, conmon)
	} else {
		mkCgroup(t, p.sandboxDir)
		p.sandboxPID = startIn(t, p.sandboxDir)
	}
	mkCgroup(t, p.ctrDir)
	p.ctrPID = startIn(t, p.ctrDir)
	p.netns = testutil.NewNetNS(t)
	p.srv, p.accepted = netnsServer(t, p.netns.Path)
	return p
}

// report makes the fake runtime list the pod, with the cgroupsPath of its
// driver.
func (p *sdPod) report(f *fakecri.Runtime) {
	f.AddSandbox(fakecri.Sandbox{ID: p.sandboxID, Namespace: p.ns, Name: p.name, UID: p.uid,
		CgroupsPath: p.cgroupsPath(p.sandboxID), Netns: p.netns.Path, PID: p.sandboxPID, Labels: p.labels})
	f.AddContainer(fakecri.Container{ID: p.ctrID, SandboxID: p.sandboxID, Name: p.ctrName,
		CgroupsPath: p.cgroupsPath(p.ctrID), PID: p.ctrPID})
}

// get sends an HTTP request for host to the pod's server from a new process
// in its container scope and netns, and returns what came back and curl's
// exit status.
func (p *sdPod) get(t *testing.T, host, path string) (string, int) {
	t.Helper()
	port := p.srv.Port()
	return p.run(t, "curl", "-sS", "--max-time", "10",
		"--resolve", fmt.Sprintf("%s:%d:127.0.0.1", host, port), fmt.Sprintf("http://%s:%d%s", host, port, path))
}

// run runs a command in the pod's container scope (from its first
// instruction) and netns, and returns its output and exit status.
func (p *sdPod) run(t *testing.T, name string, args ...string) (string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", p.netns.Name, name}, args...)...)
	testutil.Cgroup{Path: p.ctrDir}.CommandIn(t, cmd)
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return string(out), 0
	case errors.As(err, &ee):
		return string(out), ee.ExitCode()
	}
	t.Fatalf("%s in %s: %v", name, p.name, err)
	return "", -1
}

// netnsServer is a pathServer on 127.0.0.1 inside a network namespace.
func netnsServer(t *testing.T, nsPath string) (netip.AddrPort, func(path string) int) {
	t.Helper()
	var ln net.Listener
	if err := inNetns(nsPath, func() (err error) {
		ln, err = net.Listen("tcp4", "127.0.0.1:0")
		return err
	}); err != nil {
		t.Fatalf("listen in the pod's netns: %v", err)
	}
	s := servePaths(t, ln)
	return s.addr, s.count
}

// sdDaemon is RunDaemon with pod discovery on the fake runtime.
type sdDaemon struct {
	sock string
	// stop stops it (pinned state stays until the test ends).
	stop   func()
	pinDir string
	log    *receipts.Log
	mu     sync.Mutex
	dec    []Decision
}

func startSDDaemon(t *testing.T, mount, attach string, f *fakecri.Runtime, cgroupRoot string) *sdDaemon {
	t.Helper()
	d, err := runSDDaemon(t, mount, attach, f, cgroupRoot, "")
	if err != nil {
		t.Fatalf("daemon exited: %v", err)
	}
	return d
}

// runSDDaemon starts the daemon and waits until it is ready (nil error) or
// has exited (its error). pinDir is an earlier daemon's (a restart), or ""
// for a new one.
func runSDDaemon(t *testing.T, mount, attach string, f *fakecri.Runtime, cgroupRoot, pinDir string) (*sdDaemon, error) {
	t.Helper()
	dir := t.TempDir()
	if pinDir == "" {
		pinDir = testutil.PinDir(t)
	}
	policy, err := hushspec.Parse([]byte(kubePolicy))
	if err != nil {
		t.Fatal(err)
	}
	def := filepath.Join(dir, "default.yaml")
	if err := os.WriteFile(def, []byte(kubePolicy), 0o644); err != nil {
		t.Fatal(err)
	}
	_, key, _ := ed25519.GenerateKey(rand.Reader)
	d := &sdDaemon{sock: filepath.Join(dir, "status.sock"), pinDir: pinDir}
	if d.log, err = receipts.Open(filepath.Join(dir, "receipts.db"), receipts.Options{Key: key}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.log.Close() })
	t.Cleanup(func() { bpf.Uninstall(pinDir) })
	ready := filepath.Join(dir, "ready")
	kc := &config.Kubernetes{CRISocket: f.Socket, CgroupRoot: cgroupRoot, PollInterval: config.Duration(100 * time.Millisecond),
		Policies: map[string]string{"default": def}, DefaultPolicy: "default", ExemptNamespaces: []string{"kube-system"}}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- RunDaemon(ctx, DaemonOptions{
			Agent: Options{Policy: policy, Key: key, Log: d.log, PinDir: pinDir, AttachCgroup: attach,
				Hosts: map[string][]netip.Addr{"api.allowed.test": {netip.MustParseAddr("127.0.0.1")}},
				OnDecision: func(x Decision) {
					d.mu.Lock()
					d.dec = append(d.dec, x)
					d.mu.Unlock()
				}},
			StatusSocket: d.sock, ReadyFile: ready, WatchInterval: 50 * time.Millisecond,
			Kubernetes: &KubeOptions{SelfUID: "not-a-pod", Mount: mount, Config: kc},
		})
	}()
	var exited error
	waitFor(t, "the daemon ready or exited", func() bool {
		select {
		case exited = <-done:
			if exited == nil {
				exited = errors.New("exited with no error")
			}
			return true
		default:
		}
		_, err := os.Stat(ready)
		return err == nil
	})
	if exited != nil {
		cancel()
		return nil, exited
	}
	var once sync.Once
	d.stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("daemon: %v", err)
			}
		})
	}
	t.Cleanup(d.stop)
	return d, nil
}

// decision waits for a decision that matches.
func (d *sdDaemon) decision(t *testing.T, what string, match func(Decision) bool) Decision {
	t.Helper()
	var got Decision
	waitFor(t, what, func() bool {
		d.mu.Lock()
		defer d.mu.Unlock()
		for _, x := range d.dec {
			if match(x) {
				got = x
				return true
			}
		}
		return false
	})
	return got
}

// count is how many decisions of a workload had the verdict.
func (d *sdDaemon) count(workload, verdict string) int {
	d.mu.Lock()
	defer d.mu.Unlock()
	n := 0
	for _, x := range d.dec {
		if x.Workload == workload && x.Verdict == verdict {
			n++
		}
	}
	return n
}

func (d *sdDaemon) receipt(t *testing.T, x Decision) string {
	t.Helper()
	ent, err := d.log.Get(x.Seq)
	if err != nil || x.ReceiptID == "" {
		t.Fatalf("receipt of %+v: %v", x, err)
	}
	return string(ent.Receipt)
}

// TestKubeSystemdDriver: pods laid out by the systemd cgroup driver, for
// containerd (cri-containerd-<id>.scope) and CRI-O (crio-<id>.scope), a
// guaranteed pod's slice directly under the root, are protected by the
// daemon following the runtime: with kubernetes.cgroup_root auto, the root
// found is kubepods.slice; named, a nested root (the kubelet's --cgroup-root
// under systemd: kubelet.slice/kubelet-kubepods.slice) that auto would not
// find. In both: a protected pod's connection is decided, with a receipt
// naming the pod and its container; a pod in an exempt namespace reaches its
// server undecided; a container scope made under the root before the
// runtime reports its pod is refused in the kernel (EPERM, never reaching
// the server) and decided once the agent has classified it; a cgroup made
// below a container's scope is the pod's; a removed pod is released.
func TestKubeSystemdDriver(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.RequireTools(t, "ip", "curl", "sleep", "bash")
	for _, tc := range []struct {
		name   string
		layout sdLayout
		// configured is kubernetes.cgroup_root; "%s" is the mount.
		configured string
	}{
		{"auto", sdLayout{root: "kubepods.slice", prefix: "kubepods"}, "auto"},
		{"named", sdLayout{root: "kubelet.slice/kubelet-kubepods.slice", prefix: "kubelet-kubepods"}, "%s/kubelet.slice/kubelet-kubepods.slice"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			testSystemdDriver(t, tc.layout, tc.configured)
		})
	}
}

func testSystemdDriver(t *testing.T, l sdLayout, configured string) {
	// The test's cgroup stands for the cgroup2 mount.
	top := testutil.NewCgroup(t, "")
	mount := top.Path
	if strings.Contains(configured, "%s") {
		configured = fmt.Sprintf(configured, mount)
	}
	root := filepath.Join(mount, l.root)
	// What the kubelet makes at its start.
	for dir := mount; dir != root; {
		rel, _ := filepath.Rel(dir, root)
		dir = filepath.Join(dir, strings.Split(rel, string(filepath.Separator))[0])
		mkCgroup(t, dir)
	}
	for _, q := range []string{"burstable", "besteffort"} {
		mkCgroup(t, filepath.Join(root, l.prefix+"-"+q+".slice"))
	}

	if _, err := cri.FindRoot(mount, "auto"); configured != "auto" && err == nil {
		t.Fatalf("auto finds a root in the named layout; the test would not show that naming it works")
	}

	f := fakecri.New(t)
	burst := newSDPod(t, mount, l, "team-a", "sd-burstable", "cri-containerd", "burstable", "main")
	guar := newSDPod(t, mount, l, "team-g", "sd-guaranteed", "crio", "", "app")
	infra := newSDPod(t, mount, l, "kube-system", "sd-infra", "cri-containerd", "besteffort", "main")
	for _, p := range []*sdPod{burst, guar, infra} {
		p.report(f)
	}

	d := startSDDaemon(t, mount, mount, f, configured)
	st := queryStatus(t, d.sock)
	if st.Birth == nil || !slices.Equal(st.Birth.Roots, []string{root}) {
		t.Fatalf("birth roots %+v; want the pods' root %s", st.Birth, root)
	}
	for _, p := range []*sdPod{burst, guar} {
		ps := podIn(t, st, p.ns, p.name)
		if ps.State != string(StateProtected) || ps.Cgroup != p.podDir || ps.Workload != p.ns+"/"+p.name ||
			!slices.Equal(ps.Containers, []string{p.ctrName}) || ps.Netns != p.netns.Path {
			t.Fatalf("pod %s/%s: %+v; want protected at %s", p.ns, p.name, ps, p.podDir)
		}
		w := workloadIn(t, st, ps.Workload)
		if id, err := cgroupfs.ID(p.podDir); err != nil || w.CgroupID != id || w.Labels[LabelPodUID] != p.uid {
			t.Fatalf("workload of %s: %+v (pod slice id %d, %v)", p.name, w, id, err)
		}
	}
	if ps := podIn(t, st, "kube-system", "sd-infra"); ps.State != PodExempt || ps.Cgroup != infra.podDir {
		t.Fatalf("exempt pod: %+v", ps)
	}
	if !slices.Contains(st.Birth.Exempt, infra.podDir) {
		t.Fatalf("exempt cgroups %v lack the exempt pod's slice %s", st.Birth.Exempt, infra.podDir)
	}

	// containerd's pod under the systemd driver: decided, and the receipt
	// names the pod and its container (found by its scope).
	if out, code := burst.get(t, "api.allowed.test", "/burstable"); code != 0 || !strings.Contains(out, "kube-api host=api.allowed.test") {
		t.Fatalf("allowed request from the burstable pod: exit %d, %q", code, out)
	}
	x := d.decision(t, "the burstable pod's decision", func(x Decision) bool { return x.Workload == "team-a/sd-burstable" })
	if x.Verdict != kernel.VerdictAllow {
		t.Fatalf("burstable pod's decision: %+v", x)
	}
	r := d.receipt(t, x)
	for _, want := range []string{burst.uid, `"io.kubernetes.pod.namespace":"team-a"`, `"io.kubernetes.pod.name":"sd-burstable"`, `"io.kubernetes.container.name":"main"`} {
		if !strings.Contains(r, want) {
			t.Errorf("receipt does not name the pod (%s): %s", want, r)
		}
	}

	// A cgroup a container makes below its own scope is the container's:
	// decided as the pod's, never unclassified.
	nested := filepath.Join(burst.ctrDir, "nested")
	mkCgroup(t, nested)
	inner := *burst
	inner.ctrDir = nested
	if out, code := inner.get(t, "api.allowed.test", "/nested"); code != 0 || !strings.Contains(out, "kube-api host=api.allowed.test") {
		t.Fatalf("request from below the container's scope: exit %d, %q", code, out)
	}
	waitFor(t, "the nested request decided as the pod's", func() bool { return d.count("team-a/sd-burstable", kernel.VerdictAllow) == 2 })
	if n := d.count(unclassifiedName, kernel.VerdictDeny); n != 0 {
		t.Errorf("%d refusals of unclassified cgroups while every cgroup below the root is classified", n)
	}

	// CRI-O's guaranteed pod: a blocked name is refused by the agent (the
	// server never sees it), an allowed one decided with its container.
	if out, _ := guar.get(t, "forbidden.test", "/guaranteed-blocked"); strings.Contains(out, "kube-api") {
		t.Fatalf("blocked request from the guaranteed pod reached the server: %q", out)
	}
	if n := guar.accepted("/guaranteed-blocked"); n != 0 {
		t.Fatalf("the server answered the guaranteed pod's blocked request %d times", n)
	}
	x = d.decision(t, "the guaranteed pod's refusal", func(x Decision) bool { return x.Workload == "team-g/sd-guaranteed" })
	if x.Verdict != kernel.VerdictDeny {
		t.Fatalf("guaranteed pod's blocked request: %+v", x)
	}
	if out, code := guar.get(t, "api.allowed.test", "/guaranteed"); code != 0 || !strings.Contains(out, "kube-api host=api.allowed.test") {
		t.Fatalf("allowed request from the guaranteed pod: exit %d, %q", code, out)
	}
	x = d.decision(t, "the guaranteed pod's allow", func(x Decision) bool {
		return x.Workload == "team-g/sd-guaranteed" && x.Verdict == kernel.VerdictAllow
	})
	if r := d.receipt(t, x); !strings.Contains(r, guar.uid) || !strings.Contains(r, `"io.kubernetes.container.name":"app"`) {
		t.Errorf("guaranteed pod's receipt: %s", r)
	}

	// The exempt pod reaches its server directly, even for a blocked name.
	if out, code := infra.get(t, "forbidden.test", "/infra"); code != 0 || !strings.Contains(out, "kube-api host=forbidden.test") {
		t.Fatalf("exempt pod's request: exit %d, %q", code, out)
	}
	if n := infra.accepted("/infra"); n != 1 {
		t.Errorf("exempt pod's requests answered: %d, want 1", n)
	}

	// A pod whose scopes exist before the runtime reports it (the agent has
	// not classified it): refused in the kernel, never at the server.
	late := newSDPod(t, mount, l, "team-l", "sd-late", "cri-containerd", "burstable", "main")
	out, code := late.run(t, "bash", "-c", fmt.Sprintf(`exec 3<>/dev/tcp/127.0.0.1/%d && printf 'GET /late-early HTTP/1.0\r\n\r\n' >&3 && cat <&3`, late.srv.Port()))
	if code == 0 || late.accepted("/late-early") != 0 || !strings.Contains(out, "Operation not permitted") {
		t.Fatalf("an unclassified container scope's request: exit %d, %q; server answered %d; want EPERM", code, out, late.accepted("/late-early"))
	}
	x = d.decision(t, "the unclassified scope's refusal receipted", func(x Decision) bool {
		if x.Workload != unclassifiedName {
			return false
		}
		ent, err := d.log.Get(x.Seq)
		// Named as in /proc/PID/cgroup, relative to the cgroup2 mount.
		return err == nil && strings.Contains(string(ent.Receipt), strings.TrimPrefix(late.ctrDir, mustMount(t)))
	})
	if x.Verdict != kernel.VerdictDeny || !strings.Contains(x.Reason, "not classified") {
		t.Fatalf("unclassified refusal: %+v", x)
	}
	late.report(f)
	waitFor(t, "the late pod protected", func() bool {
		for _, p := range queryStatus(t, d.sock).Pods {
			if p.UID == late.uid && p.State == string(StateProtected) && len(p.Containers) == 1 {
				return true
			}
		}
		return false
	})
	if out, code := late.get(t, "api.allowed.test", "/late"); code != 0 || !strings.Contains(out, "kube-api host=api.allowed.test") {
		t.Fatalf("the late pod once classified: exit %d, %q", code, out)
	}
	x = d.decision(t, "the late pod's decision", func(x Decision) bool { return x.Workload == "team-l/sd-late" })
	if x.Verdict != kernel.VerdictAllow || !strings.Contains(d.receipt(t, x), late.uid) {
		t.Fatalf("late pod's decision: %+v", x)
	}

	// A removed pod is released.
	f.RemoveSandbox(burst.sandboxID)
	waitFor(t, "the removed pod released", func() bool {
		s := queryStatus(t, d.sock)
		for _, w := range s.Workloads {
			if w.Name == "team-a/sd-burstable" {
				return false
			}
		}
		return !slices.ContainsFunc(s.Pods, func(p PodStatus) bool { return p.UID == burst.uid })
	})
}

// TestKubeStaleDriverTree: a node whose kubelet changed cgroup drivers keeps
// the other driver's tree until it reboots. With both kubepods.slice and
// kubepods there, cgroup_root auto refuses to guess (taking the stale one
// would leave every new pod outside the birth root, passing undecided until
// classified); named as the stale one, status says the pods are outside it;
// restarted with the live one named, the stale root is withdrawn and a pod
// made in the live tree before the runtime reports it is refused in the
// kernel.
func TestKubeStaleDriverTree(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.RequireTools(t, "ip", "curl", "sleep", "bash")
	top := testutil.NewCgroup(t, "")
	mount := top.Path
	for _, dir := range []string{"kubepods.slice", "kubepods.slice/kubepods-burstable.slice", "kubepods", "kubepods/burstable"} {
		mkCgroup(t, filepath.Join(mount, dir))
	}
	f := fakecri.New(t)
	live := sdLayout{root: "kubepods", cgroupfs: true}
	running := newSDPod(t, mount, live, "team-s", "running", "cri-containerd", "burstable", "main")
	running.report(f)

	if d, err := runSDDaemon(t, mount, mount, f, "auto", ""); err == nil {
		st := queryStatus(t, d.sock)
		t.Fatalf("the agent started beside a stale driver tree, birth roots %+v", st.Birth)
	} else if !strings.Contains(err.Error(), "kubernetes.cgroup_root") {
		t.Fatalf("refusal does not say what to do: %v", err)
	}

	// Named wrong, the stale tree: the running pod is protected all the
	// same, and status says its tree is not the root.
	d := startSDDaemon(t, mount, mount, f, "kubepods.slice")
	if p := podIn(t, queryStatus(t, d.sock), "team-s", "running"); p.State != string(StateProtected) {
		t.Fatalf("running pod under a wrong root: %+v", p)
	}
	if errs := queryStatus(t, d.sock).Errors; !slices.ContainsFunc(errs, func(e TimedError) bool {
		return strings.Contains(e.Message, running.podDir+" is not below the pods' root")
	}) {
		t.Errorf("status errors %+v do not say the pod is outside the root", errs)
	}
	d.stop()

	// Restarted with the live tree named: the stale root is withdrawn (it
	// would refuse whatever runs below it, forever), the live one set.
	d, err := runSDDaemon(t, mount, mount, f, "kubepods", d.pinDir)
	if err != nil {
		t.Fatalf("daemon exited: %v", err)
	}
	if st := queryStatus(t, d.sock); st.Birth == nil || !slices.Equal(st.Birth.Roots, []string{filepath.Join(mount, "kubepods")}) {
		t.Fatalf("birth roots %+v after a restart with the live tree named", st.Birth)
	}
	if p := podIn(t, queryStatus(t, d.sock), "team-s", "running"); p.State != string(StateProtected) || p.Cgroup != running.podDir {
		t.Fatalf("running pod: %+v", p)
	}
	late := newSDPod(t, mount, live, "team-s", "late", "cri-containerd", "burstable", "main")
	out, code := late.run(t, "bash", "-c", fmt.Sprintf(`exec 3<>/dev/tcp/127.0.0.1/%d`, late.srv.Port()))
	if code == 0 || !strings.Contains(out, "Operation not permitted") {
		t.Fatalf("a container of the live tree not yet reported: exit %d, %q; want EPERM", code, out)
	}
}
