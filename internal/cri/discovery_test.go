package cri

import (
	"context"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/backbay-labs/chio-agent/internal/cgroupfs"
	"github.com/backbay-labs/chio-agent/internal/testutil/containerd"
	"github.com/backbay-labs/chio-agent/kernel/config"
)

// One containerd for the whole binary: starting it costs seconds.
func TestMain(m *testing.M) { os.Exit(containerd.Main(m)) }

func dialShared(t *testing.T, rt *containerd.Runtime) *Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := Dial(ctx, rt.Socket)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// TestDiscoveryOnContainerd runs two pods as the kubelet would, one labelled
// with a policy, and checks that discovery through the CRI reports each with
// the kubelet's identity, a network namespace that is the pod's own, and
// cgroups whose ids are the ones the BPF programs will see.
func TestDiscoveryOnContainerd(t *testing.T) {
	rt := containerd.Shared(t)
	a := rt.RunPod(t, containerd.PodSpec{Namespace: "research", Name: "agent-a",
		Labels: map[string]string{config.PolicyLabel: "research", "app": "a"}, Annotations: map[string]string{"note": "x"}})
	b := rt.RunPod(t, containerd.PodSpec{Namespace: "team-b", Name: "plain-b", QOS: "guaranteed",
		Containers: []string{"one", "two"}})
	c := dialShared(t, rt)
	if name, _, err := c.Version(context.Background()); err != nil || name != "containerd" {
		t.Fatalf("Version = %q, %v", name, err)
	}
	pods, err := c.List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	mount, err := cgroupfs.Mount()
	if err != nil {
		t.Fatal(err)
	}
	hostNet := inode(t, "/proc/self/ns/net")
	k := &config.Kubernetes{Policies: map[string]string{"default": "/d", "research": "/r"}, DefaultPolicy: "default"}
	seenNetns := map[uint64]bool{}
	for _, want := range []*containerd.Pod{a, b} {
		p := findPod(t, pods, want.UID)
		if p.Err != nil {
			t.Fatalf("pod %s: %v", p.Name, p.Err)
		}
		if p.Namespace != want.Spec.Namespace || p.Name != want.Spec.Name || p.SandboxID != want.SandboxID || !p.Ready {
			t.Errorf("pod %s: identity %s/%s sandbox %s ready %v, want %s/%s %s", want.Spec.Name,
				p.Namespace, p.Name, p.SandboxID, p.Ready, want.Spec.Namespace, want.Spec.Name, want.SandboxID)
		}
		for key, v := range want.Spec.Labels {
			if p.Labels[key] != v {
				t.Errorf("pod %s: label %s = %q, want %q", p.Name, key, p.Labels[key], v)
			}
		}
		if p.Labels["io.kubernetes.pod.uid"] != want.UID {
			t.Errorf("pod %s: kubelet labels missing: %v", p.Name, p.Labels)
		}
		for key, v := range want.Spec.Annotations {
			if p.Annotations[key] != v {
				t.Errorf("pod %s: annotation %s = %q, want %q", p.Name, key, p.Annotations[key], v)
			}
		}

		// The network namespace: a netns, not the host's, not another pod's.
		if p.HostNetwork || p.Netns == "" {
			t.Fatalf("pod %s: no netns path (host network %v)", p.Name, p.HostNetwork)
		}
		assertNetns(t, p.Netns)
		ino := inode(t, p.Netns)
		if ino == hostNet || seenNetns[ino] {
			t.Errorf("pod %s: netns %s is the host's or another pod's", p.Name, p.Netns)
		}
		seenNetns[ino] = true

		// The pod's cgroup is the CgroupParent the kubelet gave, under the
		// cgroup2 mount (the unified one on a hybrid host).
		if p.Driver != DriverCgroupfs || "/"+p.Cgroup != want.CgroupParent {
			t.Errorf("pod %s: cgroup %q (%s), want %q", p.Name, p.Cgroup, p.Driver, want.CgroupParent)
		}
		if fi, err := os.Stat(p.CgroupPath(mount)); err != nil || !fi.IsDir() {
			t.Errorf("pod %s: cgroup dir %s: %v", p.Name, p.CgroupPath(mount), err)
		}
		if kp, err := ParseKubepods(p.SandboxCgroup); err != nil || kp.PodUID != want.UID || kp.ContainerID != p.SandboxID {
			t.Errorf("pod %s: sandbox cgroup %q parses as %+v, %v", p.Name, p.SandboxCgroup, kp, err)
		}

		if len(p.Containers) != len(want.Containers) {
			t.Fatalf("pod %s: %d containers, want %d", p.Name, len(p.Containers), len(want.Containers))
		}
		for _, ct := range p.Containers {
			if ct.Err != nil || want.Containers[ct.Name] != ct.ID || ct.State != "running" || ct.PID == 0 {
				t.Fatalf("pod %s: container %+v, want %s running", p.Name, ct, want.Containers[ct.Name])
			}
			if !strings.HasPrefix(ct.Cgroup, p.Cgroup+"/") {
				t.Errorf("container %s: cgroup %s not under the pod's %s", ct.Name, ct.Cgroup, p.Cgroup)
			}
			kp, err := ParseKubepods(ct.Cgroup)
			if err != nil || kp.PodUID != want.UID || kp.ContainerID != ct.ID {
				t.Errorf("container %s: cgroup %q parses as %+v, %v", ct.Name, ct.Cgroup, kp, err)
			}
			// The kernel puts the container's process in that cgroup ...
			f, err := os.Open(fmt.Sprintf("/proc/%d/cgroup", ct.PID))
			if err != nil {
				t.Fatal(err)
			}
			rel, err := ParseProcCgroup(f)
			f.Close()
			if err != nil || rel != ct.Cgroup {
				t.Errorf("container %s: process %d is in cgroup %q, discovery says %q (%v)", ct.Name, ct.PID, rel, ct.Cgroup, err)
			}
			// ... whose id, as bpf_get_current_cgroup_id() reports it (the
			// kernfs id in the cgroup's file handle), is what cgroupfs.ID
			// returns.
			dir := Abs(mount, ct.Cgroup)
			id, err := cgroupfs.ID(dir)
			if err != nil {
				t.Fatal(err)
			}
			if hid := handleID(t, dir); hid != id {
				t.Errorf("container %s: cgroup id %d, file handle says %d", ct.Name, id, hid)
			}
			// And it lives in the pod's netns, as seen from inside.
			out, _, code := want.Exec(t, ct.Name, "/bin/busybox", "readlink", "/proc/self/ns/net")
			if code != 0 || strings.TrimSpace(out) != fmt.Sprintf("net:[%d]", ino) {
				t.Errorf("container %s: inside, netns is %q (exit %d), want net:[%d]", ct.Name, out, code, ino)
			}
		}
	}
	if s := Select(k, findPod(t, pods, a.UID), ""); s.Policy != "research" {
		t.Errorf("labelled pod selected %+v", s)
	}
	if s := Select(k, findPod(t, pods, b.UID), ""); s.Policy != "default" {
		t.Errorf("unlabelled pod selected %+v", s)
	}
}

// TestWatcherFollowsPods: a pod created after the watch started is reported
// with its container, and reported removed once deleted.
func TestWatcherFollowsPods(t *testing.T) {
	rt := containerd.Shared(t)
	c := dialShared(t, rt)
	ctx, cancel := context.WithCancel(context.Background())
	changes := make(chan []Change, 1024)
	done := make(chan error, 1)
	go func() {
		done <- (&Watcher{Client: c, Interval: 100 * time.Millisecond}).Run(ctx, func(ch []Change) { changes <- ch })
	}()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("watcher: %v", err)
		}
	}()
	deadline := time.After(2 * time.Minute) // a bound on a hang, not a measured time
	wait := func(what string, ok func(Change) bool) Change {
		t.Helper()
		for {
			select {
			case chs := <-changes:
				for _, ch := range chs {
					if ok(ch) {
						return ch
					}
				}
			case <-deadline:
				t.Fatalf("watcher never reported %s", what)
			}
		}
	}
	select { // the first sync
	case <-changes:
	case <-deadline:
		t.Fatal("no first sync")
	}
	p := rt.RunPod(t, containerd.PodSpec{Namespace: "late", Name: "after-watch", Labels: map[string]string{config.PolicyLabel: "x"}})
	got := wait("the new pod running", func(ch Change) bool {
		return ch.Kind != PodRemoved && ch.Pod.UID == p.UID && len(ch.Pod.Containers) == 1 &&
			ch.Pod.Containers[0].State == "running" && ch.Pod.Containers[0].Cgroup != ""
	})
	if got.Pod.Namespace != "late" || got.Pod.Name != "after-watch" || got.Pod.Netns == "" || got.Pod.Labels[config.PolicyLabel] != "x" {
		t.Errorf("new pod reported as %+v", got.Pod)
	}
	p.Remove(t)
	wait("the pod removed", func(ch Change) bool { return ch.Kind == PodRemoved && ch.Pod.UID == p.UID })
}

func findPod(t *testing.T, pods []Pod, uid string) Pod {
	t.Helper()
	for _, p := range pods {
		if p.UID == uid {
			return p
		}
	}
	t.Fatalf("pod %s not discovered among %d pods", uid, len(pods))
	return Pod{}
}

func inode(t *testing.T, path string) uint64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Ino
}

// assertNetns checks that path is a network namespace (nsfs, NS_GET_NSTYPE).
func assertNetns(t *testing.T, path string) {
	t.Helper()
	var fs unix.Statfs_t
	if err := unix.Statfs(path, &fs); err != nil || fs.Type != unix.NSFS_MAGIC {
		t.Fatalf("netns %s: not on nsfs (%v)", path, err)
	}
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	typ, err := unix.IoctlRetInt(fd, unix.NS_GET_NSTYPE)
	if err != nil || typ != unix.CLONE_NEWNET {
		t.Fatalf("netns %s: type %#x (%v), want CLONE_NEWNET", filepath.Base(path), typ, err)
	}
}

// handleID is the cgroup id in the directory's file handle, the number the
// kernel's BPF cgroup helpers return.
func handleID(t *testing.T, dir string) uint64 {
	t.Helper()
	h, _, err := unix.NameToHandleAt(unix.AT_FDCWD, dir, 0)
	if err != nil {
		t.Fatal(err)
	}
	b := h.Bytes()
	if len(b) < 8 {
		t.Fatalf("cgroup file handle of %d bytes", len(b))
	}
	return binary.NativeEndian.Uint64(b[:8])
}
