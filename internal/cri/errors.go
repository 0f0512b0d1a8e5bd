package cri

import "errors"

// Sentinel errors of this package.
var (
	// ErrNoSocket means no CRI socket was named and none of the default
	// ones exists on this node.
	ErrNoSocket = errors.New("no CRI socket found")
	// ErrNotKubepods means a cgroup path is not one the kubelet makes for a
	// pod or a container (no kubepods component, or an unknown shape).
	ErrNotKubepods = errors.New("not a kubepods cgroup")
	// ErrNoSpec means the runtime's verbose status carried no OCI runtime
	// spec, so the network namespace or the cgroup cannot be read from it.
	ErrNoSpec = errors.New("runtime status has no runtime spec")
)
