package bpf

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf"
)

// Identity names a process as the programs see it: its id in the initial
// pid namespace and its start time (the thread-group leader's
// task_struct.start_time, ns of CLOCK_MONOTONIC). The pair outlives the
// process: a later process given the same id has another start time.
type Identity struct {
	PID   uint32
	Start uint64
}

// HostIdentity returns the calling process's Identity, for Options.AgentPID
// and Options.AgentStart. It runs whoami.c once with BPF_PROG_RUN, so the id
// is right in a pid namespace too, where getpid() is not that id. It needs
// what loading a tracing program needs (CAP_BPF and CAP_PERFMON, or
// CAP_SYS_ADMIN).
func HostIdentity() (Identity, error) {
	var objs whoamiObjects
	if err := loadWhoamiObjects(&objs, nil); err != nil {
		return Identity{}, fmt.Errorf("load whoami: %w", err)
	}
	defer objs.Close()
	pid, err := objs.ChioWhoami.Run(&ebpf.RunOptions{})
	if err != nil {
		return Identity{}, fmt.Errorf("run whoami: %w", err)
	}
	if pid == 0 {
		return Identity{}, errors.New("run whoami: no process id")
	}
	id := Identity{PID: pid}
	if err := objs.StartTime.Get(&id.Start); err != nil {
		return Identity{}, fmt.Errorf("read whoami start time: %w", err)
	}
	if id.Start == 0 {
		return Identity{}, errors.New("run whoami: no start time")
	}
	return id, nil
}
