package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"syscall"
	"time"
)

// The Go relay is the floor of any Go proxy that decides on a connection's
// first bytes: it accepts, reads what the client sends first, dials the
// upstream, replays those bytes and copies both ways with io.Copy (splice),
// like the agent, but decides nothing, signs nothing and has no eBPF in
// front of it. What chio-agent adds beyond it is the price of its own work;
// what the relay adds over direct is the price of a Go hop on this machine.
// It runs as its own process, this program re-executed as "relay".

func relayMain(args []string) int {
	if len(args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: benchdatapath relay LISTEN TARGET")
		return 2
	}
	ln, err := net.Listen("tcp", args[0])
	if err != nil {
		fmt.Fprintln(os.Stderr, "relay:", err)
		return 1
	}
	target := args[1]
	for {
		c, err := ln.Accept()
		if err != nil {
			fmt.Fprintln(os.Stderr, "relay:", err)
			return 1
		}
		go relayConn(c.(*net.TCPConn), target)
	}
}

func relayConn(c *net.TCPConn, target string) {
	defer c.Close()
	buf := make([]byte, 16<<10)
	n, err := c.Read(buf)
	if err != nil {
		return
	}
	u, err := net.Dial("tcp", target)
	if err != nil {
		return
	}
	up := u.(*net.TCPConn)
	defer up.Close()
	if _, err := up.Write(buf[:n]); err != nil {
		return
	}
	done := make(chan struct{})
	go func() {
		io.Copy(up, c)
		up.CloseWrite()
		close(done)
	}()
	io.Copy(c, up)
	c.CloseWrite()
	<-done
}

type goRelay struct {
	cmd    *exec.Cmd
	addr   netip.AddrPort
	stderr bytes.Buffer
	exited chan struct{}
}

func startGoRelay(ctx context.Context, self, work string, up netip.AddrPort) (*goRelay, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	r := &goRelay{addr: netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), port), exited: make(chan struct{})}
	r.cmd = exec.Command(self, "relay", r.addr.String(), up.String())
	r.cmd.Stdout, r.cmd.Stderr = &r.stderr, &r.stderr
	r.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := r.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start go relay: %w", err)
	}
	recordPID(work, "relay", r.cmd.Process.Pid)
	go func() { r.cmd.Wait(); close(r.exited) }()
	deadline := time.Now().Add(10 * time.Second)
	for {
		// A probe that sends nothing: the relay reads, sees EOF, and drops it.
		c, err := net.DialTimeout("tcp", r.addr.String(), 200*time.Millisecond)
		if err == nil {
			c.Close()
			return r, nil
		}
		select {
		case <-r.exited:
			return nil, fmt.Errorf("go relay exited at start: %s", r.stderr.String())
		case <-ctx.Done():
			r.stop()
			return nil, ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			r.stop()
			return nil, fmt.Errorf("go relay not listening on %s after 10s: %s", r.addr, r.stderr.String())
		}
	}
}

func (r *goRelay) stop() {
	r.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-r.exited:
	case <-time.After(3 * time.Second):
		r.cmd.Process.Kill()
		<-r.exited
	}
}
