package testutil

import (
	"fmt"
	"net"
	"os/exec"
	"runtime"
	"sync"
)

// Pdeathsig kills a child when the thread that started it ends, and Go
// ends a thread when a goroutine locked to it (a network namespace
// helper, say) returns without unlocking. So the servers tests start
// (nats-server, the object store emulators) are started from one goroutine
// locked to its thread for the life of the test binary: they die with the
// binary, never with an unrelated thread.
var (
	spawnOnce sync.Once
	spawnReqs chan spawnReq
)

type spawnReq struct {
	cmd  *exec.Cmd
	done chan error
}

// StartChild starts cmd (which should set Pdeathsig) on the binary's one
// spawning thread.
func StartChild(cmd *exec.Cmd) error {
	spawnOnce.Do(func() {
		spawnReqs = make(chan spawnReq)
		go func() {
			runtime.LockOSThread() // never unlocked: this thread lives as long as the binary
			for r := range spawnReqs {
				r.done <- r.cmd.Start()
			}
		}()
	})
	done := make(chan error, 1)
	spawnReqs <- spawnReq{cmd: cmd, done: done}
	return <-done
}

// FreePort asks the kernel for a free loopback port for a server a test
// starts. Another process could take it before the server binds; its start
// then fails, loudly.
func FreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("pick a loopback port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
