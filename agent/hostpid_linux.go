package agent

import (
	"os"
	"syscall"
)

// initPIDNamespace is the inode of the initial pid namespace
// (PROC_PID_INIT_INO, include/linux/proc_ns.h): it is the same on every boot.
const initPIDNamespace = 0xEFFFFFFC

// hostPID returns this process's id as the kernel's programs see it (in the
// initial pid namespace), or 0 when the agent runs in another pid namespace,
// where os.Getpid is not that id.
func hostPID() uint32 {
	var st syscall.Stat_t
	if err := syscall.Stat("/proc/self/ns/pid", &st); err != nil || st.Ino != initPIDNamespace {
		return 0
	}
	return uint32(os.Getpid())
}
