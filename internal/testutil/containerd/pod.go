package containerd

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// PodSpec is a pod to run, as the kubelet would describe it.
type PodSpec struct {
	// Namespace and Name of the pod. Required.
	Namespace, Name string
	// UID of the pod. Default: a random UUID.
	UID string
	// Labels and Annotations are the pod's; the kubelet's own
	// io.kubernetes.pod.* labels are added.
	Labels, Annotations map[string]string
	// QOS is besteffort (default), burstable or guaranteed (directly under
	// kubepods).
	QOS string
	// Containers are the names of containers to run in it, each the test
	// image sleeping. Default: one named "main".
	Containers []string
	// Command is every container's command. Default: the test image
	// sleeping.
	Command []string
	// HostNetwork runs the pod in the node's network namespace
	// (hostNetwork: true): no CNI, no netns of its own.
	HostNetwork bool
	// Attempt is the sandbox's attempt number: the kubelet makes a pod's
	// sandbox again (same UID, same pod-level cgroup, a new netns) with the
	// next one, after stopping the old.
	Attempt uint32
}

// Pod is a running pod.
type Pod struct {
	Spec PodSpec
	// UID is the pod's UID.
	UID string
	// SandboxID is the runtime's sandbox id.
	SandboxID string
	// CgroupParent is the pod-level cgroup the kubelet gave the runtime.
	CgroupParent string
	// Containers maps container names to ids.
	Containers map[string]string
	// RequestedAt is when RunPodSandbox was called, SandboxAt when it
	// returned (the pod's cgroup and netns exist), StartedAt when the last
	// StartContainer returned.
	RequestedAt, SandboxAt, StartedAt time.Time

	rt       *Runtime
	cfg      *runtimeapi.PodSandboxConfig
	attempts map[string]uint32 // by container name: restarts so far
	removed  bool
}

func newUID() string {
	b := []byte(randHex(16))
	return fmt.Sprintf("%s-%s-4%s-a%s-%s", b[0:8], b[8:12], b[13:16], b[17:20], b[20:32])
}

// RunPod runs a pod and its containers, and removes it in t.Cleanup.
func (r *Runtime) RunPod(t testing.TB, spec PodSpec) *Pod {
	t.Helper()
	p, err := r.runPod(spec)
	if p != nil {
		t.Cleanup(func() {
			if err := p.remove(); err != nil {
				t.Errorf("remove pod %s/%s: %v", spec.Namespace, spec.Name, err)
			}
		})
	}
	if err != nil {
		t.Fatalf("run pod %s/%s: %v", spec.Namespace, spec.Name, err)
	}
	return p
}

func (r *Runtime) runPod(spec PodSpec) (*Pod, error) {
	if spec.UID == "" {
		spec.UID = newUID()
	}
	if len(spec.Containers) == 0 {
		spec.Containers = []string{"main"}
	}
	parent := r.CgroupRoot
	switch spec.QOS {
	case "", "besteffort":
		parent += "/besteffort"
	case "burstable":
		parent += "/burstable"
	case "guaranteed":
	default:
		return nil, fmt.Errorf("unknown QoS class %q", spec.QOS)
	}
	parent += "/pod" + spec.UID
	p := &Pod{Spec: spec, UID: spec.UID, CgroupParent: parent, Containers: map[string]string{}, rt: r, RequestedAt: time.Now()}
	kube := map[string]string{
		"io.kubernetes.pod.name":      spec.Name,
		"io.kubernetes.pod.namespace": spec.Namespace,
		"io.kubernetes.pod.uid":       spec.UID,
	}
	labels := map[string]string{}
	for k, v := range spec.Labels {
		labels[k] = v
	}
	for k, v := range kube {
		labels[k] = v
	}
	annotations := map[string]string{"kubernetes.io/config.source": "api"}
	for k, v := range spec.Annotations {
		annotations[k] = v
	}
	logDir := filepath.Join(r.Dir, "pods", spec.Namespace+"_"+spec.Name+"_"+spec.UID)
	if spec.Attempt > 0 {
		logDir += fmt.Sprintf(".%d", spec.Attempt) // the earlier sandbox's logs stay apart
	}
	if err := os.MkdirAll(logDir, 0o755); err != nil {
		return nil, err
	}
	nsOpts := &runtimeapi.NamespaceOption{Network: runtimeapi.NamespaceMode_POD,
		Pid: runtimeapi.NamespaceMode_CONTAINER, Ipc: runtimeapi.NamespaceMode_POD}
	hostname := spec.Name
	if spec.HostNetwork {
		nsOpts.Network, hostname = runtimeapi.NamespaceMode_NODE, "" // the kubelet leaves the node's name
	}
	cfg := &runtimeapi.PodSandboxConfig{
		Metadata:     &runtimeapi.PodSandboxMetadata{Name: spec.Name, Namespace: spec.Namespace, Uid: spec.UID},
		Hostname:     hostname,
		LogDirectory: logDir,
		Labels:       labels,
		Annotations:  annotations,
		Linux: &runtimeapi.LinuxPodSandboxConfig{
			CgroupParent:    parent,
			SecurityContext: &runtimeapi.LinuxSandboxSecurityContext{NamespaceOptions: nsOpts},
		},
	}
	cfg.Metadata.Attempt = spec.Attempt
	p.cfg, p.attempts = cfg, map[string]uint32{}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	sb, err := r.RT.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: cfg})
	if err != nil {
		// The kubelet's pod cgroup may already exist: clean it (unless an
		// earlier sandbox of the same pod still uses it).
		if spec.Attempt == 0 {
			removeCgroupTree(parent)
		}
		return nil, fmt.Errorf("run sandbox: %w", err)
	}
	p.SandboxID, p.SandboxAt = sb.PodSandboxId, time.Now()
	for _, name := range spec.Containers {
		// The runtime reserves a container's name per pod UID and attempt:
		// a sandbox made again starts its containers at its own attempt.
		p.attempts[name] = spec.Attempt
		if err := p.startContainer(ctx, name); err != nil {
			return p, err
		}
	}
	return p, nil
}

// startContainer creates and starts the named container (its next attempt).
func (p *Pod) startContainer(ctx context.Context, name string) error {
	command := p.Spec.Command
	if len(command) == 0 {
		command = []string{"/bin/busybox", "sleep", "2147483"}
	}
	cl := map[string]string{"io.kubernetes.container.name": name}
	for _, k := range []string{"io.kubernetes.pod.name", "io.kubernetes.pod.namespace", "io.kubernetes.pod.uid"} {
		cl[k] = p.cfg.Labels[k]
	}
	attempt := p.attempts[name]
	nsOpts := p.cfg.Linux.SecurityContext.NamespaceOptions
	cc, err := p.rt.RT.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{
		PodSandboxId: p.SandboxID,
		Config: &runtimeapi.ContainerConfig{
			Metadata: &runtimeapi.ContainerMetadata{Name: name, Attempt: attempt},
			Image:    &runtimeapi.ImageSpec{Image: Image},
			Command:  command,
			Labels:   cl,
			LogPath:  logName(name, attempt),
			Linux: &runtimeapi.LinuxContainerConfig{
				Resources:       &runtimeapi.LinuxContainerResources{},
				SecurityContext: &runtimeapi.LinuxContainerSecurityContext{NamespaceOptions: nsOpts},
			},
		},
		SandboxConfig: p.cfg,
	})
	if err != nil {
		return fmt.Errorf("create container %s: %w", name, err)
	}
	p.Containers[name] = cc.ContainerId
	if _, err := p.rt.RT.StartContainer(ctx, &runtimeapi.StartContainerRequest{ContainerId: cc.ContainerId}); err != nil {
		return fmt.Errorf("start container %s: %w", name, err)
	}
	p.StartedAt = time.Now()
	return nil
}

// RestartContainer does what the kubelet does when a container exits: it
// removes the old one and starts the next attempt in the same sandbox (a
// new container cgroup under the same pod-level cgroup). Its log is
// LogPath(name).
func (p *Pod) RestartContainer(t testing.TB, name string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if id := p.Containers[name]; id != "" {
		p.rt.RT.StopContainer(ctx, &runtimeapi.StopContainerRequest{ContainerId: id, Timeout: 0})
		if _, err := p.rt.RT.RemoveContainer(ctx, &runtimeapi.RemoveContainerRequest{ContainerId: id}); err != nil {
			t.Fatalf("remove container %s of %s/%s: %v", name, p.Spec.Namespace, p.Spec.Name, err)
		}
	}
	p.attempts[name]++
	if err := p.startContainer(ctx, name); err != nil {
		t.Fatalf("restart container %s of %s/%s: %v", name, p.Spec.Namespace, p.Spec.Name, err)
	}
}

// LogPath is the log file of the named container's current attempt.
func (p *Pod) LogPath(name string) string {
	return filepath.Join(p.cfg.LogDirectory, logName(name, p.attempts[name]))
}

// logName is a container's log file name: NAME.log for its first attempt,
// NAME.N.log for restart N.
func logName(name string, attempt uint32) string {
	if attempt == 0 {
		return name + ".log"
	}
	return fmt.Sprintf("%s.%d.log", name, attempt)
}

// Stop stops the pod's sandbox (its containers are killed; the sandbox
// stays listed, not ready, until removed), as the kubelet does before making
// a pod's sandbox again.
func (p *Pod) Stop(t testing.TB) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for _, id := range p.Containers {
		p.rt.RT.StopContainer(ctx, &runtimeapi.StopContainerRequest{ContainerId: id, Timeout: 0})
	}
	if _, err := p.rt.RT.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: p.SandboxID}); err != nil {
		t.Fatalf("stop pod %s/%s: %v", p.Spec.Namespace, p.Spec.Name, err)
	}
}

// Terminate does what the kubelet does when a pod ends: it stops the
// sandbox and removes the pod-level cgroup, leaving the stopped sandbox
// listed until Remove (the kubelet's garbage collection, minutes later).
func (p *Pod) Terminate(t testing.TB) {
	t.Helper()
	p.Stop(t)
	if err := removeCgroupTree(p.CgroupParent); err != nil {
		t.Fatalf("remove the cgroup of %s/%s: %v", p.Spec.Namespace, p.Spec.Name, err)
	}
}

// RunPods runs pods, at most parallel at once (the CRI serves them
// concurrently; the host's cores bound what that gains), and removes each in
// t.Cleanup. Pods are returned in the order of specs.
func (r *Runtime) RunPods(t testing.TB, parallel int, specs ...PodSpec) []*Pod {
	t.Helper()
	pods := make([]*Pod, len(specs))
	errs := make([]error, len(specs))
	each(len(specs), parallel, func(i int) {
		pods[i], errs[i] = r.runPod(specs[i])
	})
	for i, p := range pods {
		if p != nil {
			t.Cleanup(func() {
				if err := p.remove(); err != nil {
					t.Errorf("remove pod %s/%s: %v", p.Spec.Namespace, p.Spec.Name, err)
				}
			})
		}
		if errs[i] != nil {
			t.Errorf("run pod %s/%s: %v", specs[i].Namespace, specs[i].Name, errs[i])
		}
	}
	if t.Failed() {
		t.FailNow()
	}
	return pods
}

// RemovePods removes pods as Remove does, at most parallel at once.
func RemovePods(t testing.TB, parallel int, pods ...*Pod) {
	t.Helper()
	errs := make([]error, len(pods))
	each(len(pods), parallel, func(i int) { errs[i] = pods[i].remove() })
	for i, err := range errs {
		if err != nil {
			t.Errorf("remove pod %s/%s: %v", pods[i].Spec.Namespace, pods[i].Spec.Name, err)
		}
	}
	if t.Failed() {
		t.FailNow()
	}
}

// each calls fn(0..n-1) from at most parallel goroutines at once.
func each(n, parallel int, fn func(int)) {
	if parallel < 1 {
		parallel = 1
	}
	var wg sync.WaitGroup
	sem := make(chan struct{}, parallel)
	for i := range n {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			fn(i)
		}()
	}
	wg.Wait()
}

// Exec runs cmd in the named container (ExecSync) and returns its output and
// exit code.
func (p *Pod) Exec(t testing.TB, container string, cmd ...string) (stdout, stderr string, code int32) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	r, err := p.rt.RT.ExecSync(ctx, &runtimeapi.ExecSyncRequest{ContainerId: p.Containers[container], Cmd: cmd, Timeout: 20})
	if err != nil {
		t.Fatalf("exec %s in %s/%s: %v", strings.Join(cmd, " "), p.Spec.Name, container, err)
	}
	return string(r.Stdout), string(r.Stderr), r.ExitCode
}

// Remove stops the pod at once (timeout 0: busybox sleep as PID 1 ignores
// SIGTERM), removes it, and removes the pod-level cgroup directories the
// runtime leaves (the kubelet's job). A second call does nothing.
func (p *Pod) Remove(t testing.TB) {
	t.Helper()
	if err := p.remove(); err != nil {
		t.Fatalf("remove pod %s/%s: %v", p.Spec.Namespace, p.Spec.Name, err)
	}
}

// RemoveSandbox removes the pod's sandbox as Remove does but leaves the
// pod-level cgroup, which a later sandbox of the same pod (Attempt) uses.
// Remove and the cleanup then do nothing.
func (p *Pod) RemoveSandbox(t testing.TB) {
	t.Helper()
	p.removed = true
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := p.rt.removeSandbox(ctx, p.SandboxID); err != nil {
		t.Fatalf("remove sandbox of %s/%s: %v", p.Spec.Namespace, p.Spec.Name, err)
	}
}

func (p *Pod) remove() error {
	if p.removed {
		return nil
	}
	p.removed = true
	if p.SandboxID != "" {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		if err := p.rt.removeSandbox(ctx, p.SandboxID); err != nil {
			return err
		}
	}
	return removeCgroupTree(p.CgroupParent)
}
