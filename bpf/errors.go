package bpf

import (
	"errors"

	"github.com/cilium/ebpf"
)

var (
	// ErrNotSupported wraps a kernel feature this machine lacks (BTF, a program
	// type, a helper). Tests skip on it; the agent refuses to start.
	ErrNotSupported = ebpf.ErrNotSupported

	// ErrNoOriginal means no original destination is recorded for a connection:
	// it was not redirected by these programs, or its entry was already taken.
	ErrNoOriginal = errors.New("no original destination recorded")

	// ErrPinDirInUse means a live process owns the state pinned under a pin
	// directory: it holds the directory's lock or the pinned objects open.
	ErrPinDirInUse = errors.New("pin directory in use by a running agent")

	// ErrPinnedElsewhere means a link pinned under the pin directory is
	// attached to another cgroup or hook than the one asked for, so it is
	// not adopted.
	ErrPinnedElsewhere = errors.New("pinned link attached elsewhere")
)
