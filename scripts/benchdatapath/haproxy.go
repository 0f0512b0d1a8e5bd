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

// haproxy is the peer user-space proxy: HAProxy from Debian in mode tcp, one
// frontend on 127.0.0.1 forwarding every connection to the upstream. It is
// configured as it ships (no splice option, default threads) so that it is
// the proxy a user would run, not one tuned for this benchmark.
type haproxy struct {
	cmd    *exec.Cmd
	addr   netip.AddrPort
	stderr bytes.Buffer
	exited chan struct{}
}

func startHAProxy(ctx context.Context, bin, work string, up netip.AddrPort) (*haproxy, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	h := &haproxy{addr: netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), port), exited: make(chan struct{})}
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
`, h.addr, up)
	path := filepath.Join(work, "haproxy.cfg")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		return nil, fmt.Errorf("write haproxy config: %w", err)
	}
	// -db: stay in the foreground, so that this process owns it and the
	// parent-death signal takes it down if the driver is killed.
	h.cmd = exec.Command(bin, "-db", "-f", path)
	h.cmd.Stdout, h.cmd.Stderr = &h.stderr, &h.stderr
	h.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := h.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start haproxy: %w", err)
	}
	recordPID(work, "haproxy", h.cmd.Process.Pid)
	go func() { h.cmd.Wait(); close(h.exited) }()
	// Ready when the frontend accepts: poll, bounded.
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", h.addr.String(), 200*time.Millisecond)
		if err == nil {
			c.Close()
			return h, nil
		}
		select {
		case <-h.exited:
			return nil, fmt.Errorf("haproxy exited at start: %s", h.stderr.String())
		case <-ctx.Done():
			h.stop()
			return nil, ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			h.stop()
			return nil, fmt.Errorf("haproxy not listening on %s after 10s: %s", h.addr, h.stderr.String())
		}
	}
}

func (h *haproxy) stop() {
	h.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-h.exited:
	case <-time.After(3 * time.Second):
		h.cmd.Process.Kill()
		<-h.exited
	}
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
