package receipts

import (
	"runtime"

	"golang.org/x/sys/unix"
)

// asyncCommitterNice is the nice value of the async committer's thread.
// Nobody waits on an async commit, so its bursts of CPU (a batch's bbolt
// work, a checkpoint's signature) should yield to the threads serving
// requests on a small machine rather than stretch their tail latency.
const asyncCommitterNice = 10

// deprioritize pins the calling goroutine to its OS thread and lowers that
// thread's scheduling priority. The thread is never handed back: it exits
// with the goroutine, so no other goroutine inherits the lower priority.
func deprioritize() {
	runtime.LockOSThread()
	unix.Setpriority(unix.PRIO_PROCESS, unix.Gettid(), asyncCommitterNice)
}
