package bpf

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf"
)

// HostPID returns the calling process's id as the programs see it, in the
// initial pid namespace, for Options.AgentPID. It runs whoami.c once with
// BPF_PROG_RUN, so it is right in a pid namespace too, where getpid() is
// not that id. It needs what loading a tracing program needs (CAP_BPF and
// CAP_PERFMON, or CAP_SYS_ADMIN).
func HostPID() (uint32, error) {
	var objs whoamiObjects
	if err := loadWhoamiObjects(&objs, nil); err != nil {
		return 0, fmt.Errorf("load whoami: %w", err)
	}
	defer objs.Close()
	pid, err := objs.ChioWhoami.Run(&ebpf.RunOptions{})
	if err != nil {
		return 0, fmt.Errorf("run whoami: %w", err)
	}
	if pid == 0 {
		return 0, errors.New("run whoami: no process id")
	}
	return pid, nil
}
