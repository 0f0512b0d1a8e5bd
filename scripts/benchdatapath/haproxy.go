package main

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"time"
)

// server is a proxy the driver runs as its own child process, listening
// on addr on 127.0.0.1: HAProxy or the Go relay.
type server struct {
	name   string
	cmd    *exec.Cmd
	addr   netip.AddrPort
	stderr bytes.Buffer
	exited chan struct{}
}

// startServer starts cmd, which must listen on addr, records it for
// scripts/bench's trap, and returns once addr accepts connections (a probe
// that sends nothing), bounded by 10 s.
func startServer(ctx context.Context, name, work string, addr netip.AddrPort, cmd *exec.Cmd) (*server, error) {
	s := &server{name: name, cmd: cmd, addr: addr, exited: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = &s.stderr, &s.stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	recordPID(work, name, cmd.Process.Pid)
	go func() { cmd.Wait(); close(s.exited) }()
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", addr.String(), 200*time.Millisecond)
		if err == nil {
			c.Close()
			return s, nil
		}
		select {
		case <-s.exited:
			return nil, fmt.Errorf("%s exited at start: %s", name, s.stderr.String())
		case <-ctx.Done():
			s.stop()
			return nil, ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			s.stop()
			return nil, fmt.Errorf("%s not listening on %s after 10s: %s", name, addr, s.stderr.String())
		}
	}
}

func (s *server) stop() {
	s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.exited:
	case <-time.After(3 * time.Second):
		s.cmd.Process.Kill()
		<-s.exited
	}
}

// startHAProxy runs the peer user-space proxy: HAProxy from Debian in mode
// tcp, one frontend on 127.0.0.1 forwarding every connection to the
// upstream. It is configured as it ships (no splice option, default
// threads) so that it is the proxy a user would run, not one tuned for this
// benchmark.
func startHAProxy(ctx context.Context, bin, work string, up netip.AddrPort) (*server, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	addr := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), port)
	cfg := fmt.Sprintf(`global
    maxconn 4000

defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s

frontend bench
    bind %s
    default_backend upstream

backend upstream
    server up %s
`, addr, up)
	path := filepath.Join(work, "haproxy.cfg")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		return nil, fmt.Errorf("write haproxy config: %w", err)
	}
	// -db: stay in the foreground, so that this process owns it and the
	// parent-death signal takes it down if the driver is killed.
	return startServer(ctx, "haproxy", work, addr, exec.Command(bin, "-db", "-f", path))
}

// freePort returns a port on 127.0.0.1 that was free a moment ago.
func freePort() (uint16, error) {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find a free port: %w", err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).AddrPort().Port(), nil
}

// recordPID notes a child in the work directory, so that scripts/bench's
// trap can end it (and remove its cgroup) even if this driver is killed
// before its own cleanup runs.
func recordPID(work, what string, pid int) {
	f, err := os.OpenFile(filepath.Join(work, "children"), os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		return
	}
	defer f.Close()
	f.WriteString(what + " " + strconv.Itoa(pid) + "\n")
}
