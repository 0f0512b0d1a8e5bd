package cri

import (
	"path/filepath"
	"time"
)

// Pod is one pod sandbox on the node, as the runtime reports it.
type Pod struct {
	// SandboxID is the runtime's id of the sandbox. A pod recreated under
	// the same name and UID gets a new one.
	SandboxID string
	// Namespace, Name and UID come from the sandbox metadata the kubelet
	// wrote.
	Namespace, Name, UID string
	// Attempt counts the kubelet's sandbox recreations of this pod.
	Attempt uint32
	// Ready is false once the sandbox is stopped (its containers are gone
	// or going).
	Ready bool
	// CreatedAt is when the runtime created the sandbox.
	CreatedAt time.Time
	// Labels and Annotations are the pod's, as the kubelet copied them.
	Labels, Annotations map[string]string
	// HostNetwork is true for a pod in the node's network namespace.
	HostNetwork bool
	// Netns is the path of the pod's network namespace (for containerd
	// /var/run/netns/cni-<id>), "" for a host-network pod.
	Netns string
	// Driver is the cgroup driver the runtime wrote the paths in.
	Driver Driver
	// Cgroup is the pod-level cgroup directory, relative to the cgroup2
	// mount (kubepods/besteffort/pod<uid>): every container of the pod is
	// below it.
	Cgroup string
	// SandboxCgroup is the sandbox (pause) container's own cgroup.
	SandboxCgroup string
	// Containers are the pod's containers, in the order the runtime lists.
	Containers []Container
	// Err says why the runtime's answer about this sandbox was incomplete
	// (no runtime spec, an unparsable cgroup path): such a pod must be
	// treated as unclassified, never as unprotected. Listing again retries.
	Err error
}

// Container is one container of a pod.
type Container struct {
	// ID is the runtime's container id.
	ID string
	// Name is the container's name in the pod spec.
	Name string
	// Attempt counts restarts of this container.
	Attempt uint32
	// State is created, running, exited or unknown.
	State string
	// CreatedAt is when the runtime created it.
	CreatedAt time.Time
	// Labels and Annotations are the container's.
	Labels, Annotations map[string]string
	// Cgroup is the container's cgroup directory, relative to the cgroup2
	// mount; below Pod.Cgroup.
	Cgroup string
	// PID is its init process's pid, 0 if the runtime did not say.
	PID int
	// Err is as Pod.Err, for this container.
	Err error
}

// CgroupPath returns the pod-level cgroup directory as an absolute path under
// the cgroup2 mount.
func (p Pod) CgroupPath(mount string) string { return Abs(mount, p.Cgroup) }

// podCgroup returns the pod-level directory holding a sandbox's cgroup: its
// parent, under either driver.
func podCgroup(sandboxCgroup string) string { return filepath.Dir(sandboxCgroup) }
