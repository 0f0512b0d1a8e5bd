// Package fakecri is an in-process CRI runtime service (runtime/v1 over a
// unix socket) whose answers a test controls. It stands in for a container
// runtime that cannot run where the tests run: containerd or runc with the
// systemd cgroup driver (which needs systemd as PID 1, over D-Bus) and CRI-O
// (not packaged for the test machines). The test makes the cgroups and
// network namespaces itself, in the layout that runtime would, and the fake
// reports them as that runtime's verbose status does: the OCI runtime spec's
// linux.cgroupsPath ("kubepods-burstable-pod<uid_>.slice:cri-containerd:<id>",
// "...:crio:<id>", or cgroupfs's "/kubepods/...") and its network namespace
// path, under the "info" key both containerd and CRI-O use.
//
// It answers Version, ListPodSandbox, ListContainers, PodSandboxStatus,
// ContainerStatus and GetContainerEvents; the rest is unimplemented, as the
// agent never calls it. Filters in list requests are ignored (the agent
// lists everything).
package fakecri

import (
	"context"
	"encoding/json"
	"net"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// Runtime is the fake runtime. Its methods are safe for concurrent use.
type Runtime struct {
	runtimeapi.UnimplementedRuntimeServiceServer
	// Socket is the unix socket it serves on.
	Socket string

	mu          sync.Mutex
	sandboxes   []*runtimeapi.PodSandbox
	containers  []*runtimeapi.Container
	info        map[string]string // sandbox or container id → verbose "info" JSON
	hostNet     map[string]bool
	listErr     error
	noEvents    bool
	events      chan *runtimeapi.ContainerEventResponse
	lists       chan struct{}
	statusCalls int
}

// New serves a runtime with no pods on a socket in t.TempDir(), until the
// test ends.
func New(t testing.TB) *Runtime {
	t.Helper()
	f := &Runtime{Socket: filepath.Join(t.TempDir(), "cri.sock"), info: map[string]string{}, hostNet: map[string]bool{},
		events: make(chan *runtimeapi.ContainerEventResponse, 16)}
	l, err := net.Listen("unix", f.Socket)
	if err != nil {
		t.Fatalf("fake CRI: %v", err)
	}
	srv := grpc.NewServer()
	runtimeapi.RegisterRuntimeServiceServer(srv, f)
	go srv.Serve(l)
	t.Cleanup(srv.Stop)
	return f
}

// Sandbox is a pod sandbox as the fake reports it.
type Sandbox struct {
	ID                   string
	Namespace, Name, UID string
	// CgroupsPath is the sandbox container's linux.cgroupsPath, in the
	// driver's own form.
	CgroupsPath string
	// Netns is the path of the pod's network namespace; "" with
	// HostNetwork (the spec then has no network namespace entry).
	Netns       string
	HostNetwork bool
	// PID is the sandbox (pause) process, 0 if none.
	PID    int
	Labels map[string]string
}

// Container is a container as the fake reports it.
type Container struct {
	ID, SandboxID, Name string
	// CgroupsPath is as Sandbox's.
	CgroupsPath string
	// PID is the container's init process, 0 if none.
	PID int
}

// spec is the part of the OCI runtime spec a verbose status carries that
// the agent reads, spelled as containerd and CRI-O spell it.
type spec struct {
	PID         int `json:"pid"`
	RuntimeSpec struct {
		Linux struct {
			CgroupsPath string      `json:"cgroupsPath"`
			Namespaces  []namespace `json:"namespaces"`
		} `json:"linux"`
	} `json:"runtimeSpec"`
}

type namespace struct {
	Type string `json:"type"`
	Path string `json:"path,omitempty"`
}

func verbose(pid int, cgroupsPath, netns string, hostNet bool) string {
	var s spec
	s.PID = pid
	s.RuntimeSpec.Linux.CgroupsPath = cgroupsPath
	s.RuntimeSpec.Linux.Namespaces = []namespace{{Type: "pid"}, {Type: "ipc"}, {Type: "uts"}, {Type: "mount"}}
	if !hostNet {
		s.RuntimeSpec.Linux.Namespaces = append(s.RuntimeSpec.Linux.Namespaces, namespace{Type: "network", Path: netns})
	}
	b, err := json.Marshal(s)
	if err != nil {
		panic(err) // a fixed struct of strings and ints always marshals
	}
	return string(b)
}

// AddSandbox reports a ready sandbox, created now.
func (f *Runtime) AddSandbox(s Sandbox) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.sandboxes = append(f.sandboxes, &runtimeapi.PodSandbox{Id: s.ID, State: runtimeapi.PodSandboxState_SANDBOX_READY,
		CreatedAt: time.Now().UnixNano(),
		Metadata:  &runtimeapi.PodSandboxMetadata{Name: s.Name, Namespace: s.Namespace, Uid: s.UID}, Labels: s.Labels})
	f.info[s.ID] = verbose(s.PID, s.CgroupsPath, s.Netns, s.HostNetwork)
	f.hostNet[s.ID] = s.HostNetwork
}

// AddContainer reports a running container, created now.
func (f *Runtime) AddContainer(c Container) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.containers = append(f.containers, &runtimeapi.Container{Id: c.ID, PodSandboxId: c.SandboxID,
		CreatedAt: time.Now().UnixNano(),
		Metadata:  &runtimeapi.ContainerMetadata{Name: c.Name}, State: runtimeapi.ContainerState_CONTAINER_RUNNING})
	f.info[c.ID] = verbose(c.PID, c.CgroupsPath, "", true)
}

// RemoveSandbox forgets a sandbox and its containers, as RemovePodSandbox
// does.
func (f *Runtime) RemoveSandbox(id string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.sandboxes = slices.DeleteFunc(f.sandboxes, func(s *runtimeapi.PodSandbox) bool { return s.Id == id })
	f.containers = slices.DeleteFunc(f.containers, func(c *runtimeapi.Container) bool {
		if c.PodSandboxId == id {
			delete(f.info, c.Id)
			return true
		}
		return false
	})
	delete(f.info, id)
	delete(f.hostNet, id)
}

// SetInfo replaces the verbose "info" JSON of a sandbox or container (a
// runtime answer the agent must survive).
func (f *Runtime) SetInfo(id, info string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.info[id] = info
}

// SetListErr makes ListPodSandbox fail with err (nil: answer again).
func (f *Runtime) SetListErr(err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.listErr = err
}

// DisableEvents makes GetContainerEvents unimplemented, as on a runtime
// without container events.
func (f *Runtime) DisableEvents() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.noEvents = true
}

// Event sends a container event to the subscribers (one of them takes it).
func (f *Runtime) Event(e *runtimeapi.ContainerEventResponse) { f.events <- e }

// CountLists returns a channel that receives one value per ListPodSandbox
// answered (values are dropped when it is full).
func (f *Runtime) CountLists(buffer int) <-chan struct{} {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.lists = make(chan struct{}, buffer)
	return f.lists
}

// StatusCalls is how many PodSandboxStatus and ContainerStatus calls were
// answered.
func (f *Runtime) StatusCalls() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.statusCalls
}

// Version answers as a runtime named "fake".
func (f *Runtime) Version(context.Context, *runtimeapi.VersionRequest) (*runtimeapi.VersionResponse, error) {
	return &runtimeapi.VersionResponse{RuntimeName: "fake", RuntimeVersion: "1"}, nil
}

// ListPodSandbox lists every sandbox.
func (f *Runtime) ListPodSandbox(context.Context, *runtimeapi.ListPodSandboxRequest) (*runtimeapi.ListPodSandboxResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.lists != nil {
		defer func() {
			select { // never block the runtime on a test that stopped counting
			case f.lists <- struct{}{}:
			default:
			}
		}()
	}
	if f.listErr != nil {
		return nil, f.listErr
	}
	return &runtimeapi.ListPodSandboxResponse{Items: slices.Clone(f.sandboxes)}, nil
}

// ListContainers lists every container.
func (f *Runtime) ListContainers(context.Context, *runtimeapi.ListContainersRequest) (*runtimeapi.ListContainersResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return &runtimeapi.ListContainersResponse{Containers: slices.Clone(f.containers)}, nil
}

// PodSandboxStatus answers with the namespace mode and the verbose info.
func (f *Runtime) PodSandboxStatus(_ context.Context, r *runtimeapi.PodSandboxStatusRequest) (*runtimeapi.PodSandboxStatusResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.statusCalls++
	mode := runtimeapi.NamespaceMode_POD
	if f.hostNet[r.PodSandboxId] {
		mode = runtimeapi.NamespaceMode_NODE
	}
	return &runtimeapi.PodSandboxStatusResponse{
		Status: &runtimeapi.PodSandboxStatus{Id: r.PodSandboxId, Linux: &runtimeapi.LinuxPodSandboxStatus{
			Namespaces: &runtimeapi.Namespace{Options: &runtimeapi.NamespaceOption{Network: mode}}}},
		Info: map[string]string{"info": f.info[r.PodSandboxId]}}, nil
}

// ContainerStatus answers with the verbose info.
func (f *Runtime) ContainerStatus(_ context.Context, r *runtimeapi.ContainerStatusRequest) (*runtimeapi.ContainerStatusResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.statusCalls++
	return &runtimeapi.ContainerStatusResponse{Status: &runtimeapi.ContainerStatus{Id: r.ContainerId},
		Info: map[string]string{"info": f.info[r.ContainerId]}}, nil
}

// GetContainerEvents streams the events sent with Event.
func (f *Runtime) GetContainerEvents(_ *runtimeapi.GetEventsRequest, s runtimeapi.RuntimeService_GetContainerEventsServer) error {
	f.mu.Lock()
	off := f.noEvents
	f.mu.Unlock()
	if off {
		return status.Error(codes.Unimplemented, "no events")
	}
	for {
		select {
		case <-s.Context().Done():
			return nil
		case e := <-f.events:
			if err := s.Send(e); err != nil {
				return err
			}
		}
	}
}
