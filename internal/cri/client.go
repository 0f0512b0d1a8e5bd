package cri

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/backbay-labs/chio-agent/kernel/config"
)

// maxMsgSize bounds one answer of the runtime (a node's full container list
// with verbose specs stays well below it); the kubelet uses the same 16 MiB.
const maxMsgSize = 16 << 20

// Socket returns the CRI socket to use: configured when set (a path or
// unix://PATH, which must exist), else the first of config.DefaultCRISockets
// that exists.
func Socket(configured string) (string, error) {
	if configured != "" {
		p := strings.TrimPrefix(configured, "unix://")
		fi, err := os.Stat(p)
		if err != nil {
			return "", fmt.Errorf("find CRI socket: %w", err)
		}
		if fi.Mode()&os.ModeSocket == 0 {
			return "", fmt.Errorf("find CRI socket: %s is not a socket", p)
		}
		return p, nil
	}
	for _, p := range config.DefaultCRISockets {
		if fi, err := os.Stat(p); err == nil && fi.Mode()&os.ModeSocket != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("find CRI socket: %w (tried %s)", ErrNoSocket, strings.Join(config.DefaultCRISockets, ", "))
}

// Client reads pods from a runtime's CRI socket. Its methods may be called
// from several goroutines.
type Client struct {
	conn   *grpc.ClientConn
	rt     runtimeapi.RuntimeServiceClient
	socket string

	mu sync.Mutex
	// sandboxes and containers cache the facts of a verbose status, which do
	// not change over a sandbox's or container's life, so that a poll
	// costs two list calls and not one status call per object.
	sandboxes  map[string]sandboxFacts
	containers map[string]specFacts
}

type sandboxFacts struct {
	spec        specFacts
	hostNetwork bool
}

// Dial connects to the CRI socket and checks that the runtime answers the
// runtime/v1 API (Version) before ctx ends.
func Dial(ctx context.Context, socket string) (*Client, error) {
	conn, err := grpc.NewClient("unix://"+socket,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxMsgSize)))
	if err != nil {
		return nil, fmt.Errorf("dial CRI %s: %w", socket, err)
	}
	c := &Client{conn: conn, rt: runtimeapi.NewRuntimeServiceClient(conn), socket: socket,
		sandboxes: map[string]sandboxFacts{}, containers: map[string]specFacts{}}
	if _, _, err := c.Version(ctx); err != nil {
		conn.Close()
		return nil, err
	}
	return c, nil
}

// Close closes the connection.
func (c *Client) Close() error { return c.conn.Close() }

// Socket returns the path the client talks to.
func (c *Client) Socket() string { return c.socket }

// Version returns the runtime's name and version.
func (c *Client) Version(ctx context.Context) (name, version string, err error) {
	v, err := c.rt.Version(ctx, &runtimeapi.VersionRequest{})
	if err != nil {
		return "", "", fmt.Errorf("query CRI version at %s: %w", c.socket, err)
	}
	return v.RuntimeName, v.RuntimeVersion, nil
}

// List returns every pod sandbox on the node with its containers. A sandbox
// or container whose verbose status cannot be read is still listed, with Err
// set, so that a caller fails closed on it rather than forgetting it.
func (c *Client) List(ctx context.Context) ([]Pod, error) {
	sbs, err := c.rt.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{})
	if err != nil {
		return nil, fmt.Errorf("list pod sandboxes: %w", err)
	}
	cts, err := c.rt.ListContainers(ctx, &runtimeapi.ListContainersRequest{})
	if err != nil {
		return nil, fmt.Errorf("list containers: %w", err)
	}
	byPod := map[string][]*runtimeapi.Container{}
	for _, ct := range cts.Containers {
		byPod[ct.PodSandboxId] = append(byPod[ct.PodSandboxId], ct)
	}
	pods := make([]Pod, 0, len(sbs.Items))
	liveSB, liveCT := map[string]bool{}, map[string]bool{}
	for _, sb := range sbs.Items {
		liveSB[sb.Id] = true
		p := c.pod(ctx, sb)
		for _, ct := range byPod[sb.Id] {
			liveCT[ct.Id] = true
			p.Containers = append(p.Containers, c.container(ctx, ct))
		}
		// The runtime's order is not stable between calls; a watcher
		// compares listings.
		slices.SortFunc(p.Containers, func(a, b Container) int { return strings.Compare(a.ID, b.ID) })
		pods = append(pods, p)
	}
	c.mu.Lock()
	for id := range c.sandboxes {
		if !liveSB[id] {
			delete(c.sandboxes, id)
		}
	}
	for id := range c.containers {
		if !liveCT[id] {
			delete(c.containers, id)
		}
	}
	c.mu.Unlock()
	return pods, nil
}

func (c *Client) pod(ctx context.Context, sb *runtimeapi.PodSandbox) Pod {
	p := Pod{
		SandboxID:   sb.Id,
		Ready:       sb.State == runtimeapi.PodSandboxState_SANDBOX_READY,
		CreatedAt:   time.Unix(0, sb.CreatedAt),
		Labels:      sb.Labels,
		Annotations: sb.Annotations,
	}
	if m := sb.Metadata; m != nil {
		p.Namespace, p.Name, p.UID, p.Attempt = m.Namespace, m.Name, m.Uid, m.Attempt
	}
	f, err := c.sandboxFacts(ctx, sb.Id)
	if err != nil {
		p.Err = err
		return p
	}
	p.HostNetwork = f.hostNetwork
	if !f.hostNetwork {
		p.Netns = f.spec.Netns
		if p.Netns == "" {
			p.Err = fmt.Errorf("read sandbox %s: no network namespace path", sb.Id)
		}
	}
	dir, driver, err := CgroupDir(f.spec.CgroupsPath)
	if err != nil {
		p.Err = fmt.Errorf("read sandbox %s: %w", sb.Id, err)
		return p
	}
	p.Driver, p.SandboxCgroup = driver, dir
	if k, err := ParseKubepods(dir); err == nil {
		p.Cgroup = k.Pod
	} else {
		p.Cgroup = podCgroup(dir)
	}
	return p
}

func (c *Client) sandboxFacts(ctx context.Context, id string) (sandboxFacts, error) {
	c.mu.Lock()
	f, ok := c.sandboxes[id]
	c.mu.Unlock()
	if ok {
		return f, nil
	}
	st, err := c.rt.PodSandboxStatus(ctx, &runtimeapi.PodSandboxStatusRequest{PodSandboxId: id, Verbose: true})
	if err != nil {
		return sandboxFacts{}, fmt.Errorf("read sandbox %s status: %w", id, err)
	}
	spec, err := parseVerbose(st.Info)
	if err != nil {
		return sandboxFacts{}, fmt.Errorf("read sandbox %s status: %w", id, err)
	}
	f = sandboxFacts{spec: spec}
	if s := st.GetStatus().GetLinux().GetNamespaces().GetOptions(); s != nil {
		f.hostNetwork = s.Network == runtimeapi.NamespaceMode_NODE
	}
	c.mu.Lock()
	c.sandboxes[id] = f
	c.mu.Unlock()
	return f, nil
}

func (c *Client) container(ctx context.Context, ct *runtimeapi.Container) Container {
	k := Container{
		ID:          ct.Id,
		Attempt:     ct.GetMetadata().GetAttempt(),
		Name:        ct.GetMetadata().GetName(),
		State:       containerState(ct.State),
		CreatedAt:   time.Unix(0, ct.CreatedAt),
		Labels:      ct.Labels,
		Annotations: ct.Annotations,
	}
	c.mu.Lock()
	f, ok := c.containers[ct.Id]
	c.mu.Unlock()
	if !ok {
		st, err := c.rt.ContainerStatus(ctx, &runtimeapi.ContainerStatusRequest{ContainerId: ct.Id, Verbose: true})
		if err == nil {
			f, err = parseVerbose(st.Info)
		}
		if err != nil {
			k.Err = fmt.Errorf("read container %s status: %w", ct.Id, err)
			return k
		}
		// A created container has no process yet: its pid comes later,
		// so cache only once it has one.
		if f.PID != 0 || ct.State != runtimeapi.ContainerState_CONTAINER_CREATED {
			c.mu.Lock()
			c.containers[ct.Id] = f
			c.mu.Unlock()
		}
	}
	k.PID = f.PID
	dir, _, err := CgroupDir(f.CgroupsPath)
	if err != nil {
		k.Err = fmt.Errorf("read container %s: %w", ct.Id, err)
		return k
	}
	k.Cgroup = dir
	return k
}

func containerState(s runtimeapi.ContainerState) string {
	switch s {
	case runtimeapi.ContainerState_CONTAINER_CREATED:
		return "created"
	case runtimeapi.ContainerState_CONTAINER_RUNNING:
		return "running"
	case runtimeapi.ContainerState_CONTAINER_EXITED:
		return "exited"
	}
	return "unknown"
}

// errUnimplemented reports whether err is gRPC's Unimplemented, which a
// runtime answers for an API it does not offer (GetContainerEvents before
// containerd 1.7).
func errUnimplemented(err error) bool { return status.Code(err) == codes.Unimplemented }
