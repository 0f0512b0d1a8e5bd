package bpf_test

import (
	"bufio"
	"errors"
	"net"
	"net/netip"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/backbay-labs/chio-agent/bpf"
	"github.com/backbay-labs/chio-agent/internal/testutil"
)

// inboundScript tries one inbound operation and prints "ok" or the errno
// name. argv: bind-listen HOST PORT | udp-bind HOST PORT | listen-any (prints
// the port the kernel picked, then waits for stdin to close).
const inboundScript = `
import errno, socket, sys
op = sys.argv[1]
try:
    if op == "bind-listen":
        s = socket.socket(socket.AF_INET6 if ":" in sys.argv[2] else socket.AF_INET, socket.SOCK_STREAM)
        s.bind((sys.argv[2], int(sys.argv[3])))
        s.listen(1)
    elif op == "udp-bind":
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((sys.argv[2], int(sys.argv[3])))
    elif op == "listen-any":
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.listen(8)
        print(s.getsockname()[1], flush=True)
        sys.stdin.readline()
        sys.exit(0)
    print("ok")
except OSError as e:
    print(errno.errorcode.get(e.errno, str(e.errno)))
`

func runInbound(t *testing.T, cg testutil.Cgroup, args ...string) (string, int) {
	t.Helper()
	cmd := exec.Command("python3", append([]string{"-c", inboundScript}, args...)...)
	cg.CommandIn(t, cmd)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("python3 %v: %v", args, err)
	}
	return strings.TrimSpace(string(out)), cmd.Process.Pid
}

// listenAny starts a listener on a kernel-picked port inside cg and returns
// the port and the listener's pid; it exits in t.Cleanup.
func listenAny(t *testing.T, cg testutil.Cgroup) (uint16, int) {
	t.Helper()
	cmd := exec.Command("python3", "-c", inboundScript, "listen-any")
	cg.CommandIn(t, cmd)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start listener: %v", err)
	}
	t.Cleanup(func() { stdin.Close(); cmd.Wait() })
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		t.Fatalf("read listener port: %v", err)
	}
	port, err := strconv.ParseUint(strings.TrimSpace(line), 10, 16)
	if err != nil {
		t.Fatalf("listener said %q: %v", line, err)
	}
	return uint16(port), cmd.Process.Pid
}

// dialMarked connects from this (unprotected) process, with SO_MARK mark
// when it is not 0, and reports whether the handshake completed within 2s.
func dialMarked(addr netip.AddrPort, mark int) error {
	d := net.Dialer{Timeout: 2 * time.Second, Control: func(_, _ string, rc syscall.RawConn) error {
		var serr error
		rc.Control(func(fd uintptr) {
			if mark != 0 {
				serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK, mark)
			}
		})
		return serr
	}}
	c, err := d.Dial("tcp", addr.String())
	if err != nil {
		return err
	}
	return c.Close()
}

func TestInboundBindToFixedPortRefused(t *testing.T) {
	testutil.RequireTools(t, "python3")
	env := newRedirectEnv(t)
	rd := openEvents(t, env.objs)
	port := freeAddr(t, "tcp4", "127.0.0.1").Port()
	ps := strconv.Itoa(int(port))

	out, pid := runInbound(t, env.protected, "bind-listen", "127.0.0.1", ps)
	if out != "EPERM" {
		t.Fatalf("protected bind to 127.0.0.1:%d: %s; want EPERM", port, out)
	}
	e := readEvent(t, rd)
	want := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), port)
	if e.Kind != bpf.EventInboundRefused || bpf.InboundOp(e.RuleID) != bpf.InboundBind || e.Dst != want ||
		e.Proto != bpf.ProtoTCP || int(e.PID) != pid || e.WorkloadID != 7 {
		t.Fatalf("event = %+v; want inbound_refused bind of %s by pid %d", e, want, pid)
	}
	// The unprotected sibling listens as before.
	if out, _ := runInbound(t, env.plain, "bind-listen", "127.0.0.1", ps); out != "ok" {
		t.Fatalf("unprotected listen: %s; want ok", out)
	}
	// An allowed port listens; others stay refused.
	if err := env.objs.SetInbound(7, []bpf.InboundRule{{Proto: bpf.ProtoTCP, Port: port}}); err != nil {
		t.Fatalf("set inbound: %v", err)
	}
	if out, _ := runInbound(t, env.protected, "bind-listen", "::1", ps); out != "ok" {
		t.Fatalf("protected listen on allowed port %d: %s; want ok", port, out)
	}
	if out, _ := runInbound(t, env.protected, "udp-bind", "127.0.0.1", ps); out != "EPERM" {
		t.Fatalf("protected UDP bind to TCP-only allowed port %d: %s; want EPERM", port, out)
	}
	if e := readEvent(t, rd); e.Kind != bpf.EventInboundRefused || e.Proto != bpf.ProtoUDP || e.Dst.Port() != port {
		t.Fatalf("event = %+v; want inbound_refused UDP bind of port %d", e, port)
	}
	// Port 0 (a client's bind) is fine.
	if out, _ := runInbound(t, env.protected, "udp-bind", "127.0.0.1", "0"); out != "ok" {
		t.Fatalf("protected UDP bind to port 0: %s; want ok", out)
	}
	// Clearing the rules refuses the port again.
	if err := env.objs.SetInbound(7, nil); err != nil {
		t.Fatalf("clear inbound: %v", err)
	}
	if out, _ := runInbound(t, env.protected, "bind-listen", "127.0.0.1", ps); out != "EPERM" {
		t.Fatalf("protected listen after clearing: %s; want EPERM", out)
	}
}

func TestInboundListenOnKernelPickedPortDropped(t *testing.T) {
	testutil.RequireTools(t, "python3")
	const mark = 0x43484941
	env := newRedirectEnvWith(t, bpf.Options{AgentMark: mark})
	rd := openEvents(t, env.objs)
	port, pid := listenAny(t, env.protected)
	e := readEvent(t, rd)
	if e.Kind != bpf.EventInboundRefused || bpf.InboundOp(e.RuleID) != bpf.InboundListen || e.Dst.Port() != port ||
		e.Proto != bpf.ProtoTCP || int(e.PID) != pid {
		t.Fatalf("event = %+v; want inbound_refused listen on port %d by pid %d", e, port, pid)
	}
	addr := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), port)
	// Its SYNs are dropped: the peer's connect times out.
	var nerr net.Error
	if err := dialMarked(addr, 0); !errors.As(err, &nerr) || !nerr.Timeout() {
		t.Fatalf("connect to the protected workload's listener on %s: %v; want a timeout (SYNs dropped)", addr, err)
	}
	// The agent's relay (its mark) still reaches it.
	if err := dialMarked(addr, mark); err != nil {
		t.Fatalf("marked connect to %s: %v; want the agent's relay to pass", addr, err)
	}
	// Every port allowed: a kernel-picked one listens.
	if err := env.objs.SetInbound(7, []bpf.InboundRule{{Proto: bpf.ProtoTCP}}); err != nil {
		t.Fatalf("set inbound: %v", err)
	}
	port2, _ := listenAny(t, env.protected)
	if err := dialMarked(netip.AddrPortFrom(addr.Addr(), port2), 0); err != nil {
		t.Fatalf("connect to an allowed listener: %v", err)
	}
}
