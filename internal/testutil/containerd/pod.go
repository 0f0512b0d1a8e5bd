package containerd

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
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

	rt      *Runtime
	removed bool
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
	p := &Pod{Spec: spec, UID: spec.UID, CgroupParent: parent, Containers: map[string]string{}, rt: r}
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
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	sb, err := r.RT.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: cfg})
	if err != nil {
		// The kubelet's pod cgroup may already exist: clean it.
		removeCgroupTree(parent)
		return nil, fmt.Errorf("run sandbox: %w", err)
	}
	p.SandboxID = sb.PodSandboxId
	command := spec.Command
	if len(command) == 0 {
		command = []string{"/bin/busybox", "sleep", "2147483"}
	}
	for _, name := range spec.Containers {
		cl := map[string]string{"io.kubernetes.container.name": name}
		for k, v := range kube {
			cl[k] = v
		}
		cc, err := r.RT.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{
			PodSandboxId: p.SandboxID,
			Config: &runtimeapi.ContainerConfig{
				Metadata: &runtimeapi.ContainerMetadata{Name: name},
				Image:    &runtimeapi.ImageSpec{Image: Image},
				Command:  command,
				Labels:   cl,
				LogPath:  name + ".log",
				Linux: &runtimeapi.LinuxContainerConfig{
					Resources:       &runtimeapi.LinuxContainerResources{},
					SecurityContext: &runtimeapi.LinuxContainerSecurityContext{NamespaceOptions: nsOpts},
				},
			},
			SandboxConfig: cfg,
		})
		if err != nil {
			return p, fmt.Errorf("create container %s: %w", name, err)
		}
		p.Containers[name] = cc.ContainerId
		if _, err := r.RT.StartContainer(ctx, &runtimeapi.StartContainerRequest{ContainerId: cc.ContainerId}); err != nil {
			return p, fmt.Errorf("start container %s: %w", name, err)
		}
	}
	return p, nil
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
