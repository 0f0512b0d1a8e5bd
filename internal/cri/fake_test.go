package cri

import (
	"context"
	"errors"
	"net"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/backbay-labs/chio-agent/internal/testutil/fakecri"
)

// newFakeCRI serves a runtime whose answers the test controls (shapes
// containerd on this machine never gives: systemd paths, CRI-O's scopes,
// missing specs, host-network pods; failures, and container events) and
// dials it.
func newFakeCRI(t *testing.T) (*fakecri.Runtime, *Client) {
	t.Helper()
	f := fakecri.New(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := Dial(ctx, f.Socket)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return f, c
}

func addPod(f *fakecri.Runtime, id, ns, name, uid, cgroupsPath, netns string) {
	f.AddSandbox(fakecri.Sandbox{ID: id, Namespace: ns, Name: name, UID: uid, CgroupsPath: cgroupsPath, Netns: netns, PID: 1})
}

const fakeUID = "3f5c2a1e-8d4b-4c6a-9e2f-1b7d0c9a8e65"

// TestListSystemdAndIncomplete: a CRI-O pod under the systemd driver is read
// into the right directories; a host-network pod has no netns and no error; a
// sandbox whose status carries no runtime spec is still listed, with an
// error, so that the agent refuses it rather than forgets it.
func TestListSystemdAndIncomplete(t *testing.T) {
	f, c := newFakeCRI(t)
	u := "3f5c2a1e_8d4b_4c6a_9e2f_1b7d0c9a8e65"
	addPod(f, "sb1", "ns", "crio-pod", fakeUID, "kubepods-burstable-pod"+u+".slice:crio:sb1", "/var/run/netns/x")
	f.AddContainer(fakecri.Container{ID: "ct1", SandboxID: "sb1", Name: "main", CgroupsPath: "kubepods-burstable-pod" + u + ".slice:crio:ct1", PID: 7})
	f.AddSandbox(fakecri.Sandbox{ID: "sb2", Namespace: "kube-system", Name: "hostnet", UID: "u2",
		CgroupsPath: "/kubepods/besteffort/podu2/sb2", HostNetwork: true, PID: 1})
	addPod(f, "sb3", "ns", "broken", "u3", "", "")
	f.SetInfo("sb3", `{"pid":1}`)
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
	calls := f.StatusCalls()
	if _, err := c.List(context.Background()); err != nil {
		t.Fatal(err)
	}
	// The good pods' facts are cached; the broken one is asked again.
	if got := f.StatusCalls() - calls; got != 1 {
		t.Errorf("second listing made %d status calls, want 1 (only the incomplete sandbox)", got)
	}
}

// TestWatcherKeepsPodsWhileRuntimeFails: a runtime that stops answering (or
// answers errors) makes no pod disappear, so nothing protected is released.
func TestWatcherKeepsPodsWhileRuntimeFails(t *testing.T) {
	f, c := newFakeCRI(t)
	f.DisableEvents()
	lists := f.CountLists(64)
	addPod(f, "sb1", "ns", "a", "u1", "/kubepods/besteffort/podu1/sb1", "/var/run/netns/a")
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
	f.SetListErr(status.Error(codes.Unavailable, "runtime down"))
	drain(lists)
	for range 5 { // five failed listings
		<-lists
	}
	f.SetListErr(nil)
	addPod(f, "sb2", "ns", "b", "u2", "/kubepods/besteffort/podu2/sb2", "/var/run/netns/b")
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
	addPod(f, "sb1", "ns", "a", "u1", "/kubepods/besteffort/podu1/sb1", "/var/run/netns/a")
	f.Event(&runtimeapi.ContainerEventResponse{ContainerId: "sb1", ContainerEventType: runtimeapi.ContainerEventType_CONTAINER_CREATED_EVENT})
	select {
	case ch := <-changes:
		if len(ch) != 1 || ch[0].Kind != PodAdded || ch[0].Pod.Name != "a" {
			t.Fatalf("after the event: %+v", ch)
		}
	case <-time.After(time.Minute): // a bound on a hang; the poll is an hour away
		t.Fatal("the event did not trigger a listing")
	}
}

func drain(c <-chan struct{}) {
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
