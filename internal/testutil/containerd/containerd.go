// Package containerd runs Debian's containerd for tests, once per test binary,
// and drives it through the CRI as the kubelet would: RunPodSandbox with the
// kubelet's labels and a CgroupParent, CreateContainer, StartContainer,
// ExecSync. It is a package of its own, and not part of testutil, so that only
// the tests that use it link gRPC and the CRI API.
//
// Facts it relies on (docs: DESIGN "Pods on a real container runtime"):
// `containerd config default` with root, state and socket in a temporary
// directory, restrict_oom_score_adj = true (these VMs lack CAP_SYS_RESOURCE,
// and runc otherwise fails the sandbox's oom_score_adj of -998), CNI from
// /usr/lib/cni with a bridge conflist on a private /24 that nothing else on the
// machine routes, and a local image (busybox-static in an OCI layout) imported
// with ctr, since there is no registry. Pods' cgroups live under a root of
// their own (/chio-t-<hex>/kubepods, as the kubelet's --cgroup-root would put
// them), removed when the binary ends.
//
// Use:
//
//	func TestMain(m *testing.M) { os.Exit(containerd.Main(m)) }
//	...
//	rt := containerd.Shared(t)      // starts containerd on first use
//	pod := rt.RunPod(t, containerd.PodSpec{Namespace: "ns", Name: "a"})
package containerd

import (
	"bufio"
	"context"
	"crypto/rand"
	"debug/elf"
	"encoding/hex"
	"errors"
	"fmt"
	"math/bits"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials/insecure"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/backbay-labs/chio-agent/internal/cgroupfs"
	"github.com/backbay-labs/chio-agent/internal/testutil"
)

// Image is the name the CRI reports for the test image (sandbox and
// workload).
const Image = "docker.io/chio-test/busybox:1"

// cniBinDir is where Debian's containernetworking-plugins installs.
const cniBinDir = "/usr/lib/cni"

// Runtime is a running containerd.
type Runtime struct {
	// Socket is the CRI (and containerd) gRPC socket.
	Socket string
	// Dir holds its root, state, config, logs and CNI config.
	Dir string
	// CgroupRoot is the kubepods directory every pod's CgroupParent is
	// under, as a cgroup path ("/chio-t-<hex>/kubepods").
	CgroupRoot string
	// Subnet is the pods' private /24.
	Subnet netip.Prefix
	// Bridge is the CNI bridge's name on the host.
	Bridge string
	// RT is the CRI runtime service, for what the helpers do not cover.
	RT runtimeapi.RuntimeServiceClient

	cmd    *exec.Cmd
	exited chan error
	conn   *grpc.ClientConn
}

var (
	once    sync.Once
	shared  *Runtime
	initErr error
	skipMsg string
)

// Main runs the binary's tests, then stops the shared containerd if a test
// started it, removing its pods, cgroups, bridge and files.
func Main(m *testing.M) int {
	code := m.Run()
	if shared != nil {
		if err := shared.stop(); err != nil {
			fmt.Fprintln(os.Stderr, "stop test containerd:", err)
			if code == 0 {
				code = 1
			}
		}
	}
	return code
}

// Shared returns the binary's containerd, starting it on the first call. It
// skips (fails under CI) where containerd, runc, the CNI plugins or
// busybox-static are missing or the test is not root.
func Shared(t testing.TB) *Runtime {
	t.Helper()
	testutil.RequireRoot(t)
	once.Do(func() {
		if skipMsg = missing(); skipMsg != "" {
			return
		}
		shared, initErr = start()
	})
	if skipMsg != "" {
		testutil.Skip(t, skipMsg)
	}
	if initErr != nil {
		t.Fatalf("start test containerd: %v", initErr)
	}
	return shared
}

func missing() string {
	for _, b := range []string{"containerd", "runc", "ctr"} {
		if _, err := exec.LookPath(b); err != nil {
			return b + " is not installed (scripts/deps test)"
		}
	}
	for _, f := range []string{cniBinDir + "/bridge", cniBinDir + "/host-local", cniBinDir + "/loopback", busyboxPath} {
		if _, err := os.Stat(f); err != nil {
			return f + " is missing (scripts/deps test)"
		}
	}
	if f, err := elf.Open(busyboxPath); err == nil {
		defer f.Close()
		for _, p := range f.Progs {
			if p.Type == elf.PT_INTERP {
				return busyboxPath + " is dynamically linked: install busybox-static (scripts/deps test)"
			}
		}
	}
	if _, err := cgroupfs.Mount(); err != nil {
		return "no cgroup v2 hierarchy: " + err.Error()
	}
	return ""
}

func randHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

func start() (_ *Runtime, err error) {
	dir, err := os.MkdirTemp("", "chio-ctrd-")
	if err != nil {
		return nil, err
	}
	r := &Runtime{Dir: dir, Socket: filepath.Join(dir, "c.sock"), CgroupRoot: "/chio-t-" + randHex(5) + "/kubepods",
		Bridge: "chiobr" + randHex(4)}
	defer func() {
		if err != nil {
			r.stop()
		}
	}()
	if r.Subnet, err = freeSubnet(); err != nil {
		return nil, err
	}
	cfg, err := r.config()
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(dir, "config.toml"), cfg, 0o600); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Join(dir, "cni"), 0o755); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(dir, "cni", "10-chio-test.conflist"), r.conflist(), 0o644); err != nil {
		return nil, err
	}
	logf, err := os.Create(filepath.Join(dir, "containerd.log"))
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	r.cmd = exec.Command("containerd", "--config", filepath.Join(dir, "config.toml"))
	r.cmd.Stdout, r.cmd.Stderr = logf, logf
	// Gone with the test binary, even when it is killed; started on the
	// binary's spawning thread, since Pdeathsig follows the thread that
	// started it and a thread some test locked and left is destroyed (a
	// containerd started from one died mid-run, failing the pods' tests).
	r.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := testutil.StartChild(r.cmd); err != nil {
		return nil, fmt.Errorf("start containerd: %w", err)
	}
	r.exited = make(chan error, 1)
	go func() { r.exited <- r.cmd.Wait() }()
	r.conn, err = grpc.NewClient("unix://"+r.Socket,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithConnectParams(grpc.ConnectParams{MinConnectTimeout: time.Second,
			Backoff: backoff.Config{BaseDelay: 20 * time.Millisecond, Multiplier: 1.5, MaxDelay: 250 * time.Millisecond}}))
	if err != nil {
		return nil, err
	}
	r.RT = runtimeapi.NewRuntimeServiceClient(r.conn)
	if err := r.waitReady(); err != nil {
		return nil, err
	}
	tarball := filepath.Join(dir, "image.tar")
	if err := writeImage(tarball, Image); err != nil {
		return nil, fmt.Errorf("build test image: %w", err)
	}
	if out, err := exec.Command("ctr", "-a", r.Socket, "-n", "k8s.io", "images", "import", tarball).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("ctr images import: %v: %s", err, out)
	}
	return r, nil
}

// waitReady waits for the CRI to say the runtime and the network are ready:
// the socket is up, the CRI plugin initialised and the CNI config loaded.
func (r *Runtime) waitReady() error {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var last error
	for {
		st, err := r.RT.Status(ctx, &runtimeapi.StatusRequest{}, grpc.WaitForReady(true))
		if err == nil {
			ready := 0
			for _, c := range st.GetStatus().GetConditions() {
				if c.Status && (c.Type == runtimeapi.RuntimeReady || c.Type == runtimeapi.NetworkReady) {
					ready++
				}
			}
			if ready == 2 {
				return nil
			}
			err = fmt.Errorf("not ready: %v", st.GetStatus().GetConditions())
		}
		last = err
		select {
		case err := <-r.exited:
			r.exited <- err
			return fmt.Errorf("containerd exited (%v): %s", err, r.logTail())
		case <-ctx.Done():
			return fmt.Errorf("containerd not ready: %v: %s", last, r.logTail())
		case <-time.After(20 * time.Millisecond): // a poll of a readiness condition, not a guess
		}
	}
}

func (r *Runtime) logTail() string {
	b, _ := os.ReadFile(filepath.Join(r.Dir, "containerd.log"))
	if len(b) > 4000 {
		b = b[len(b)-4000:]
	}
	return string(b)
}

// config edits `containerd config default`. Each edit must apply exactly
// once, so that a changed default is an error and not a silent miss.
func (r *Runtime) config() ([]byte, error) {
	def, err := exec.Command("containerd", "config", "default").Output()
	if err != nil {
		return nil, fmt.Errorf("containerd config default: %w", err)
	}
	s := string(def)
	for _, e := range []struct{ re, val string }{
		{`(?m)^root = ".*"$`, fmt.Sprintf("root = %q", filepath.Join(r.Dir, "root"))},
		{`(?m)^state = ".*"$`, fmt.Sprintf("state = %q", filepath.Join(r.Dir, "state"))},
		{`(?m)^  address = "/run/containerd/containerd.sock"$`, fmt.Sprintf("  address = %q", r.Socket)},
		{`(?m)^(\s*)restrict_oom_score_adj = false$`, "${1}restrict_oom_score_adj = true"},
		{`(?m)^(\s*)sandbox_image = ".*"$`, fmt.Sprintf("${1}sandbox_image = %q", Image)},
		{`(?m)^(\s*)bin_dir = ".*"$`, fmt.Sprintf("${1}bin_dir = %q", cniBinDir)},
		{`(?m)^(\s*)conf_dir = ".*"$`, fmt.Sprintf("${1}conf_dir = %q", filepath.Join(r.Dir, "cni"))},
		{`(?m)^(\s*)path = "/opt/containerd"$`, fmt.Sprintf("${1}path = %q", filepath.Join(r.Dir, "opt"))},
		{`(?m)^(\s*)stream_server_port = ".*"$`, `${1}stream_server_port = "0"`},
		// runc's state, which otherwise goes to /run/containerd/runc.
		{`(?m)^(\s*)Root = ""$`, fmt.Sprintf("${1}Root = %q", filepath.Join(r.Dir, "runc"))},
	} {
		re := regexp.MustCompile(e.re)
		if n := len(re.FindAllStringIndex(s, -1)); n != 1 {
			return nil, fmt.Errorf("containerd config default: %s matches %d times, want 1", e.re, n)
		}
		s = re.ReplaceAllString(s, e.val)
	}
	return []byte(s), nil
}

// conflist is a bridge network with host-local IPAM on the private /24 and no
// route beyond it: pods reach each other and nothing else.
func (r *Runtime) conflist() []byte {
	a := r.Subnet.Addr().As4()
	gw := netip.AddrFrom4([4]byte{a[0], a[1], a[2], 1})
	return fmt.Appendf(nil, `{
  "cniVersion": "0.4.0",
  "name": "chio-test",
  "plugins": [
    {"type": "bridge", "bridge": %q, "isGateway": true, "ipMasq": false,
     "ipam": {"type": "host-local", "ranges": [[{"subnet": %q, "gateway": %q}]],
              "dataDir": %q}},
    {"type": "loopback"}
  ]
}
`, r.Bridge, r.Subnet.String(), gw.String(), filepath.Join(r.Dir, "ipam"))
}

// freeSubnet picks a random 10.x.y.0/24 that no address or route of the host
// overlaps.
func freeSubnet() (netip.Prefix, error) {
	var used []netip.Prefix
	addrs, _ := net.InterfaceAddrs()
	for _, a := range addrs {
		if p, err := netip.ParsePrefix(a.String()); err == nil {
			used = append(used, p.Masked())
		}
	}
	if f, err := os.Open("/proc/net/route"); err == nil {
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			fs := strings.Fields(sc.Text())
			if len(fs) < 8 || fs[0] == "Iface" {
				continue
			}
			dst, e1 := hex.DecodeString(fs[1])
			mask, e2 := hex.DecodeString(fs[7])
			if e1 != nil || e2 != nil || len(dst) != 4 || len(mask) != 4 {
				continue
			}
			n := 0
			for _, m := range mask {
				n += bits.OnesCount8(m)
			}
			d := [4]byte{dst[3], dst[2], dst[1], dst[0]}
			if n > 0 { // the default route overlaps everything and routes it elsewhere, not here
				used = append(used, netip.PrefixFrom(netip.AddrFrom4(d), n).Masked())
			}
		}
		f.Close()
	}
	for range 100 {
		var b [2]byte
		rand.Read(b[:])
		p := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 200 + b[0]%50, b[1], 0}), 24)
		free := true
		for _, u := range used {
			if u.Overlaps(p) {
				free = false
			}
		}
		if free {
			return p, nil
		}
	}
	return netip.Prefix{}, errors.New("no free private /24 for the test pods")
}

// stop removes every pod, stops containerd, and removes what it left: mounts
// under its directory, the bridge, the pods' cgroup root, the directory.
func (r *Runtime) stop() error {
	var errs []error
	if r.RT != nil && r.cmd != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		if l, err := r.RT.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{}); err == nil {
			for _, sb := range l.Items {
				if err := r.removeSandbox(ctx, sb.Id); err != nil {
					errs = append(errs, err)
				}
			}
		}
		cancel()
	}
	if r.conn != nil {
		r.conn.Close()
	}
	if r.cmd != nil && r.cmd.Process != nil {
		r.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-r.exited:
		case <-time.After(20 * time.Second):
			r.cmd.Process.Kill()
			<-r.exited
		}
	}
	unmountUnder(r.Dir)
	if r.Bridge != "" {
		if l, err := net.InterfaceByName(r.Bridge); err == nil && l != nil {
			if out, err := exec.Command("ip", "link", "del", r.Bridge).CombinedOutput(); err != nil {
				errs = append(errs, fmt.Errorf("delete bridge %s: %v: %s", r.Bridge, err, out))
			}
		}
	}
	if r.CgroupRoot != "" {
		if err := removeCgroupTree(filepath.Dir(r.CgroupRoot)); err != nil {
			errs = append(errs, err)
		}
	}
	if err := os.RemoveAll(r.Dir); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

func (r *Runtime) removeSandbox(ctx context.Context, id string) error {
	if l, err := r.RT.ListContainers(ctx, &runtimeapi.ListContainersRequest{Filter: &runtimeapi.ContainerFilter{PodSandboxId: id}}); err == nil {
		for _, c := range l.Containers {
			r.RT.StopContainer(ctx, &runtimeapi.StopContainerRequest{ContainerId: c.Id, Timeout: 0})
			r.RT.RemoveContainer(ctx, &runtimeapi.RemoveContainerRequest{ContainerId: c.Id})
		}
	}
	if _, err := r.RT.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: id}); err != nil {
		return fmt.Errorf("stop sandbox %s: %w", id, err)
	}
	if _, err := r.RT.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: id}); err != nil {
		return fmt.Errorf("remove sandbox %s: %w", id, err)
	}
	return nil
}

// unmountUnder detaches every mount below dir (snapshots, shm) that a killed
// containerd may have left, deepest first.
func unmountUnder(dir string) {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return
	}
	lines := strings.Split(string(b), "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		fs := strings.Fields(lines[i])
		if len(fs) > 4 && strings.HasPrefix(fs[4], dir+"/") {
			unix.Unmount(fs[4], unix.MNT_DETACH)
		}
	}
}

// cgroupMounts returns every cgroup mount point, v1 and v2: on a hybrid host
// runc's cgroupfs driver makes a pod's directories in each of them.
func cgroupMounts() []string {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	var out []string
	for _, line := range strings.Split(string(b), "\n") {
		pre, post, ok := strings.Cut(line, " - ")
		fs, tail := strings.Fields(pre), strings.Fields(post)
		if ok && len(fs) > 4 && len(tail) > 0 && (tail[0] == "cgroup" || tail[0] == "cgroup2") {
			out = append(out, fs[4])
		}
	}
	return out
}

// removeCgroupTree removes the cgroup directory rel (a cgroup path) and
// everything below it in every hierarchy, killing what is left inside.
func removeCgroupTree(rel string) error {
	var errs []error
	for _, m := range cgroupMounts() {
		root := filepath.Join(m, filepath.Clean("/"+rel))
		if root == m {
			continue
		}
		var dirs []string
		filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, p)
			}
			return nil
		})
		for i := len(dirs) - 1; i >= 0; i-- {
			os.WriteFile(filepath.Join(dirs[i], "cgroup.kill"), []byte("1"), 0)
			var err error
			for range 200 {
				if err = unix.Rmdir(dirs[i]); err == nil || errors.Is(err, unix.ENOENT) || !errors.Is(err, unix.EBUSY) {
					break
				}
				time.Sleep(5 * time.Millisecond) // rmdir is EBUSY until killed tasks are reaped
			}
			if err != nil && !errors.Is(err, unix.ENOENT) {
				errs = append(errs, fmt.Errorf("remove cgroup %s: %w", dirs[i], err))
			}
		}
	}
	return errors.Join(errs...)
}
