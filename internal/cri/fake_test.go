package cri

import (
	"context"
	"errors"
	"net"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// fakeCRI is a runtime whose answers a test controls: shapes containerd on
// this machine never gives (systemd paths, CRI-O's scopes, missing specs,
// host-network pods), failures, and container events.
type fakeCRI struct {
	runtimeapi.UnimplementedRuntimeServiceServer
	mu          sync.Mutex
	sandboxes   []*runtimeapi.PodSandbox
	containers  []*runtimeapi.Container
	info        map[string]string // sandbox or container id → verbose "info" JSON
	hostNet     map[string]bool
	listErr     error
	noEvents    bool
	events      chan *runtimeapi.ContainerEventResponse
	lists       chan struct{} // one send per ListPodSandbox, when not nil
	statusCalls int
}

func newFakeCRI(t *testing.T) (*fakeCRI, *Client) {
	t.Helper()
	f := &fakeCRI{info: map[string]string{}, hostNet: map[string]bool{},
		events: make(chan *runtimeapi.ContainerEventResponse, 16)}
	sock := filepath.Join(t.TempDir(), "cri.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	runtimeapi.RegisterRuntimeServiceServer(srv, f)
	go srv.Serve(l)
	t.Cleanup(srv.Stop)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := Dial(ctx, sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return f, c
}

func (f *fakeCRI) addPod(id, ns, name, uid, cgroupsPath, netns string, labels map[string]string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.sandboxes = append(f.sandboxes, &runtimeapi.PodSandbox{Id: id, State: runtimeapi.PodSandboxState_SANDBOX_READY,
		Metadata: &runtimeapi.PodSandboxMetadata{Name: name, Namespace: ns, Uid: uid}, Labels: labels})
	f.info[id] = `{"pid":1,"runtimeSpec":{"linux":{"cgroupsPath":"` + cgroupsPath + `","namespaces":[{"type":"network","path":"` + netns + `"}]}}}`
}

func (f *fakeCRI) addContainer(id, sandbox, name, cgroupsPath string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.containers = append(f.containers, &runtimeapi.Container{Id: id, PodSandboxId: sandbox,
		Metadata: &runtimeapi.ContainerMetadata{Name: name}, State: runtimeapi.ContainerState_CONTAINER_RUNNING})
	f.info[id] = `{"pid":7,"runtimeSpec":{"linux":{"cgroupsPath":"` + cgroupsPath + `"}}}`
}

func (f *fakeCRI) Version(context.Context, *runtimeapi.VersionRequest) (*runtimeapi.VersionResponse, error) {
	return &runtimeapi.VersionResponse{RuntimeName: "fake", RuntimeVersion: "1"}, nil
}

func (f *fakeCRI) ListPodSandbox(context.Context, *runtimeapi.ListPodSandboxRequest) (*runtimeapi.ListPodSandboxResponse, error) {
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
	return &runtimeapi.ListPodSandboxResponse{Items: append([]*runtimeapi.PodSandbox(nil), f.sandboxes...)}, nil
}

func (f *fakeCRI) ListContainers(context.Context, *runtimeapi.ListContainersRequest) (*runtimeapi.ListContainersResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return &runtimeapi.ListContainersResponse{Containers: append([]*runtimeapi.Container(nil), f.containers...)}, nil
}

func (f *fakeCRI) PodSandboxStatus(_ context.Context, r *runtimeapi.PodSandboxStatusRequest) (*runtimeapi.PodSandboxStatusResponse, error) {
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

func (f *fakeCRI) ContainerStatus(_ context.Context, r *runtimeapi.ContainerStatusRequest) (*runtimeapi.ContainerStatusResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.statusCalls++
	return &runtimeapi.ContainerStatusResponse{Status: &runtimeapi.ContainerStatus{Id: r.ContainerId},
		Info: map[string]string{"info": f.info[r.ContainerId]}}, nil
}

func (f *fakeCRI) GetContainerEvents(_ *runtimeapi.GetEventsRequest, s runtimeapi.RuntimeService_GetContainerEventsServer) error {
	if f.noEvents {
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

const fakeUID = "3f5c2a1e-8d4b-4c6a-9e2f-1b7d0c9a8e65"

// TestListSystemdAndIncomplete: a CRI-O pod under the systemd driver is read
// into the right directories; a host-network pod has no netns and no error; a
// sandbox whose status carries no runtime spec is still listed, with an
// error, so that the agent refuses it rather than forgets it.
func TestListSystemdAndIncomplete(t *testing.T) {
	f, c := newFakeCRI(t)
	u := "3f5c2a1e_8d4b_4c6a_9e2f_1b7d0c9a8e65"
	f.addPod("sb1", "ns", "crio-pod", fakeUID, "kubepods-burstable-pod"+u+".slice:crio:sb1", "/var/run/netns/x", nil)
	f.addContainer("ct1", "sb1", "main", "kubepods-burstable-pod"+u+".slice:crio:ct1")
	f.addPod("sb2", "kube-system", "hostnet", "u2", "/kubepods/besteffort/podu2/sb2", "", nil)
	f.hostNet["sb2"] = true
	f.addPod("sb3", "ns", "broken", "u3", "", "", nil)
	f.info["sb3"] = `{"pid":1}`
	pods, err := c.List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	byName := map[string]Pod{}
	for _, p := range pods {
		byName[p.Name] = p
	}
	p := byName["crio-pod"]
	pod := "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + u + ".slice"
	if p.Err != nil || p.Driver != DriverSystemd || p.Cgroup != pod || p.SandboxCgroup != pod+"/crio-sb1.scope" ||
		p.Netns != "/var/run/netns/x" || len(p.Containers) != 1 || p.Containers[0].Cgroup != pod+"/crio-ct1.scope" || p.Containers[0].PID != 7 {
		t.Errorf("systemd pod read as %+v", p)
	}
	if h := byName["hostnet"]; h.Err != nil || !h.HostNetwork || h.Netns != "" || h.Cgroup != "kubepods/besteffort/podu2" {
		t.Errorf("host-network pod read as %+v", h)
	}
	if b, ok := byName["broken"]; !ok || !errors.Is(b.Err, ErrNoSpec) {
		t.Errorf("a sandbox without a runtime spec must be listed with ErrNoSpec: %+v (listed %v)", b, ok)
	}
	calls := f.statusCalls
	if _, err := c.List(context.Background()); err != nil {
		t.Fatal(err)
	}
	// The good pods' facts are cached; the broken one is asked again.
	if got := f.statusCalls - calls; got != 1 {
		t.Errorf("second listing made %d status calls, want 1 (only the incomplete sandbox)", got)
	}
}

// TestWatcherKeepsPodsWhileRuntimeFails: a runtime that stops answering (or
// answers errors) makes no pod disappear, so nothing protected is released.
func TestWatcherKeepsPodsWhileRuntimeFails(t *testing.T) {
	f, c := newFakeCRI(t)
	f.noEvents = true
	f.lists = make(chan struct{}, 64)
	f.addPod("sb1", "ns", "a", "u1", "/kubepods/besteffort/podu1/sb1", "/var/run/netns/a", nil)
	changes := make(chan []Change, 64)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- (&Watcher{Client: c, Interval: 10 * time.Millisecond}).Run(ctx, func(ch []Change) { changes <- ch })
	}()
	defer func() { cancel(); <-done }()
	first := <-changes
	if len(first) != 1 || first[0].Kind != PodAdded {
		t.Fatalf("first sync %+v", first)
	}
	f.mu.Lock()
	f.listErr = status.Error(codes.Unavailable, "runtime down")
	f.mu.Unlock()
	drain(f.lists)
	for range 5 { // five failed listings
		<-f.lists
	}
	f.mu.Lock()
	f.listErr = nil
	f.mu.Unlock()
	f.addPod("sb2", "ns", "b", "u2", "/kubepods/besteffort/podu2/sb2", "/var/run/netns/b", nil)
	for {
		ch := <-changes
		for _, c := range ch {
			if c.Kind == PodRemoved {
				t.Fatalf("pod %s reported removed while the runtime failed", c.Pod.Name)
			}
			if c.Kind == PodAdded && c.Pod.Name == "b" {
				return
			}
		}
	}
}

// TestWatcherResyncsOnEvent: with a poll an hour apart, a container event
// alone brings a new pod in.
func TestWatcherResyncsOnEvent(t *testing.T) {
	f, c := newFakeCRI(t)
	changes := make(chan []Change, 64)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- (&Watcher{Client: c, Interval: time.Hour}).Run(ctx, func(ch []Change) { changes <- ch })
	}()
	defer func() { cancel(); <-done }()
	if first := <-changes; len(first) != 0 {
		t.Fatalf("first sync of an empty runtime: %+v", first)
	}
	f.addPod("sb1", "ns", "a", "u1", "/kubepods/besteffort/podu1/sb1", "/var/run/netns/a", nil)
	f.events <- &runtimeapi.ContainerEventResponse{ContainerId: "sb1", ContainerEventType: runtimeapi.ContainerEventType_CONTAINER_CREATED_EVENT}
	select {
	case ch := <-changes:
		if len(ch) != 1 || ch[0].Kind != PodAdded || ch[0].Pod.Name != "a" {
			t.Fatalf("after the event: %+v", ch)
		}
	case <-time.After(time.Minute): // a bound on a hang; the poll is an hour away
		t.Fatal("the event did not trigger a listing")
	}
}

func drain(c chan struct{}) {
	for {
		select {
		case <-c:
		default:
			return
		}
	}
}

func TestSocketNamed(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "cri.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	for _, named := range []string{sock, "unix://" + sock} {
		if got, err := Socket(named); err != nil || got != sock {
			t.Errorf("Socket(%q) = %q, %v", named, got, err)
		}
	}
	if _, err := Socket(filepath.Join(dir, "missing.sock")); err == nil {
		t.Error("a named socket that does not exist was accepted")
	}
	if _, err := Socket(dir); err == nil {
		t.Error("a directory was accepted as the CRI socket")
	}
}
