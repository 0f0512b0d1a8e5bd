package bpf_test

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/backbay-labs/chio-agent/bpf"
	"github.com/backbay-labs/chio-agent/internal/testutil"
)

// The test binary doubles as the client that runs inside the cgroup: with
// CHIO_TEST_DIAL set it dials that address, prints what it got back, and exits.
func TestMain(m *testing.M) {
	if addr := os.Getenv("CHIO_TEST_DIAL"); addr != "" {
		os.Exit(dialChild(addr))
	}
	if addr := os.Getenv("CHIO_TEST_UDP"); addr != "" {
		os.Exit(udpChild(addr))
	}
	if spec := os.Getenv("CHIO_TEST_SOCKET"); spec != "" {
		os.Exit(socketChild(spec))
	}
	if n := os.Getenv("CHIO_TEST_UDP_FLOOD"); n != "" {
		os.Exit(udpFloodChild(n))
	}
	if addr := os.Getenv(envLoopAddr); addr != "" {
		os.Exit(connectLoopChild(addr))
	}
	if os.Getenv(envBirthDst) != "" {
		os.Exit(birthChild())
	}
	if os.Getenv("CHIO_TEST_WHOAMI") != "" {
		os.Exit(whoamiChild())
	}
	if os.Getenv("CHIO_TEST_IDENTITY") != "" {
		os.Exit(identityChild())
	}
	os.Exit(m.Run())
}

func dialChild(addr string) int {
	var c net.Conn
	var err error
	if os.Getenv("CHIO_TEST_DIAL_INET6") != "" {
		c, err = dialInet6(addr)
	} else {
		d := net.Dialer{Timeout: 5 * time.Second}
		if m := os.Getenv("CHIO_TEST_MARK"); m != "" {
			// Mark the socket as the agent marks its own.
			var mark int
			fmt.Sscan(m, &mark)
			d.Control = func(_, _ string, rc syscall.RawConn) error {
				var serr error
				rc.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK, mark) })
				return serr
			}
		}
		c, err = d.Dial("tcp", addr)
	}
	if err != nil {
		fmt.Printf("dial-error %v\n", err)
		if errors.Is(err, syscall.ECONNREFUSED) {
			return 3
		}
		return 2
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		fmt.Printf("read-error %v\n", err)
		return 2
	}
	fmt.Print(line)
	return 0
}

// udpChild sends datagrams to addr, unconnected (sendmsg hook) and then
// connected (connect hook). Exit 0: all sent; 4: refused with EPERM.
func udpChild(addr string) int {
	ap, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		fmt.Printf("resolve-error %v\n", err)
		return 2
	}
	pc, err := net.ListenUDP("udp", nil)
	if err != nil {
		fmt.Printf("listen-error %v\n", err)
		return 2
	}
	defer pc.Close()
	n := 1
	fmt.Sscan(os.Getenv("CHIO_TEST_UDP_COUNT"), &n)
	for i := 0; i < n; i++ {
		if _, err := pc.WriteToUDP([]byte("ping"), ap); err != nil {
			fmt.Printf("sendto-error %v\n", err)
			if errors.Is(err, syscall.EPERM) {
				return 4
			}
			return 2
		}
	}
	c, err := net.DialUDP("udp", nil, ap)
	if err != nil {
		fmt.Printf("connect-error %v\n", err)
		if errors.Is(err, syscall.EPERM) {
			return 4
		}
		return 2
	}
	c.Close()
	fmt.Println("sent")
	return 0
}

// dialInet6 connects an AF_INET6 socket, even to a v4-mapped address, which
// Go's dialer would otherwise turn into an AF_INET one.
func dialInet6(addr string) (net.Conn, error) {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		return nil, err
	}
	fd, err := unix.Socket(unix.AF_INET6, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	f := os.NewFile(uintptr(fd), "inet6")
	defer f.Close()
	if err := unix.Connect(fd, &unix.SockaddrInet6{Port: int(ap.Port()), Addr: ap.Addr().As16()}); err != nil {
		return nil, err
	}
	return net.FileConn(f)
}

// redirectEnv is one loaded and attached set of programs, a protected and an
// unprotected cgroup under a common parent, and listeners that answer each
// redirected connection with the original destination the programs recorded.
type redirectEnv struct {
	objs      *bpf.Objects
	protected testutil.Cgroup
	plain     testutil.Cgroup
	seen      chan bpf.Original
}

func newRedirectEnv(t *testing.T) *redirectEnv {
	t.Helper()
	return newRedirectEnvWith(t, bpf.Options{})
}

func newRedirectEnvWith(t *testing.T, opts bpf.Options) *redirectEnv {
	t.Helper()
	testutil.RequireRoot(t)
	if err := bpf.EnsureBPFFS("/sys/fs/bpf"); err != nil {
		t.Fatalf("ensure bpffs: %v", err)
	}
	parent := testutil.NewCgroup(t, "")
	env := &redirectEnv{
		protected: testutil.NewCgroup(t, parent.Path),
		plain:     testutil.NewCgroup(t, parent.Path),
		seen:      make(chan bpf.Original, 16),
	}
	objs, err := bpf.Load(opts)
	if errors.Is(err, bpf.ErrNotSupported) {
		testutil.Skip(t, "kernel lacks a needed eBPF feature: "+err.Error())
	}
	if err != nil {
		t.Fatalf("load: %v", err)
	}
	env.objs = objs
	t.Cleanup(func() {
		if err := objs.Close(); err != nil {
			t.Errorf("close objects: %v", err)
		}
	})
	if err := objs.AttachCgroup(parent.Path); err != nil {
		t.Fatalf("attach: %v", err)
	}
	l4 := env.listen(t, "tcp4", "127.0.0.1:0")
	l6 := env.listen(t, "tcp6", "[::1]:0")
	if err := objs.Protect(env.protected.ID, bpf.Workload{ID: 7, Listen4: l4, Listen6: l6}); err != nil {
		t.Fatalf("protect: %v", err)
	}
	return env
}

// listen starts a listener that, for each connection, recovers the original
// destination and writes "redirected <dst>\n" back before closing.
func (e *redirectEnv) listen(t *testing.T, network, addr string) netip.AddrPort {
	t.Helper()
	listening, _ := testutil.ServeTCP(t, network, addr, func(c net.Conn) { e.answer(t, c.(*net.TCPConn)) })
	return listening
}

func (e *redirectEnv) answer(t *testing.T, c *net.TCPConn) {
	defer c.Close()
	cookie, err := bpf.NetnsCookie(c)
	if err != nil {
		t.Errorf("netns cookie: %v", err)
		return
	}
	orig, err := e.objs.TakeOriginal(cookie, c.RemoteAddr().(*net.TCPAddr).AddrPort())
	if err != nil {
		fmt.Fprintf(c, "unknown %v\n", err)
		return
	}
	e.seen <- orig
	fmt.Fprintf(c, "redirected %s\n", orig.Dst)
}

// freeAddr returns an address on loopback where nothing listens.
func freeAddr(t *testing.T, network, host string) netip.AddrPort {
	t.Helper()
	ln, err := net.Listen(network, net.JoinHostPort(host, "0"))
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	ap := ln.Addr().(*net.TCPAddr).AddrPort()
	ln.Close()
	return ap
}

// runIn runs the test binary as a dialing client inside cg and returns its
// output, exit status and pid.
func runIn(t *testing.T, cg testutil.Cgroup, addr string, env ...string) (string, int, int) {
	t.Helper()
	return runChild(t, cg, append([]string{"CHIO_TEST_DIAL=" + addr}, env...))
}

// runUDPIn runs the test binary as a UDP sender inside cg.
func runUDPIn(t *testing.T, cg testutil.Cgroup, addr string, env ...string) (string, int, int) {
	t.Helper()
	return runChild(t, cg, append([]string{"CHIO_TEST_UDP=" + addr}, env...))
}

func runChild(t *testing.T, cg testutil.Cgroup, env []string) (string, int, int) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), env...)
	cg.CommandIn(t, cmd)
	out, err := cmd.Output()
	return strings.TrimSpace(string(out)), testutil.ExitCode(t, err), cmd.Process.Pid
}

func TestConnectRedirectedFromProtectedCgroup(t *testing.T) {
	env := newRedirectEnv(t)
	for _, tc := range []struct {
		name, network, host string
		family              int
	}{
		{"ipv4", "tcp4", "127.0.0.1", unix.AF_INET},
		{"ipv6", "tcp6", "::1", unix.AF_INET6},
		// An AF_INET6 socket dialing a v4-mapped address reaches the IPv4
		// listener, and the original is reported unmapped.
		{"v4-mapped", "tcp4", "127.0.0.1", unix.AF_INET6},
	} {
		t.Run(tc.name, func(t *testing.T) {
			target := freeAddr(t, tc.network, tc.host)
			dial := target.String()
			var extra []string
			if tc.name == "v4-mapped" {
				dial = netip.AddrPortFrom(netip.AddrFrom16(target.Addr().As16()), target.Port()).String()
				extra = append(extra, "CHIO_TEST_DIAL_INET6=1")
			}
			out, code, pid := runIn(t, env.protected, dial, extra...)
			if code != 0 {
				t.Fatalf("protected client: exit %d, output %q; want a redirected connection", code, out)
			}
			if want := "redirected " + target.String(); out != want {
				t.Fatalf("protected client got %q, want %q", out, want)
			}
			select {
			case orig := <-env.seen:
				if orig.Dst != target || orig.WorkloadID != 7 || int(orig.PID) != pid || orig.CgroupID != env.protected.ID {
					t.Fatalf("original = %+v; want dst %s, workload 7, pid %d, cgroup %d", orig, target, pid, env.protected.ID)
				}
				if orig.Family != tc.family {
					t.Fatalf("original family = %d, want %d", orig.Family, tc.family)
				}
				if orig.Comm == "" {
					t.Fatalf("original has no comm: %+v", orig)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("listener recorded no original")
			}
		})
	}
}

func TestConnectNotRedirectedOutsideProtectedCgroup(t *testing.T) {
	env := newRedirectEnv(t)
	for _, host := range []string{"127.0.0.1", "::1"} {
		network := "tcp4"
		if strings.Contains(host, ":") {
			network = "tcp6"
		}
		target := freeAddr(t, network, host)
		// A sibling cgroup under the same attach point is not protected.
		out, code, _ := runIn(t, env.plain, target.String())
		if code != 3 {
			t.Fatalf("unprotected client to %s: exit %d, output %q; want connection refused (exit 3)", target, code, out)
		}
		// Nor is this test process, outside the attach point altogether.
		if c, err := net.DialTimeout("tcp", target.String(), time.Second); err == nil {
			c.Close()
			t.Fatalf("dial %s from the test process succeeded; want refused", target)
		}
	}
	select {
	case orig := <-env.seen:
		t.Fatalf("listener saw a connection from outside the protected cgroup: %+v", orig)
	default:
	}
}

func TestUnprotectStopsRedirect(t *testing.T) {
	env := newRedirectEnv(t)
	// Redirect once first, so the programs have cached the cgroup's
	// workload: Unprotect must invalidate that.
	if out, code, _ := runIn(t, env.protected, freeAddr(t, "tcp4", "127.0.0.1").String()); code != 0 {
		t.Fatalf("client before unprotect: exit %d, %q; want redirected", code, out)
	}
	<-env.seen
	if err := env.objs.Unprotect(env.protected.ID); err != nil {
		t.Fatalf("unprotect: %v", err)
	}
	target := freeAddr(t, "tcp4", "127.0.0.1")
	if out, code, _ := runIn(t, env.protected, target.String()); code != 3 {
		t.Fatalf("client after unprotect: exit %d, output %q; want refused", code, out)
	}
}

// A connect whose pending slot another socket holds (a workload keeping many
// connects pending, or two cookies on one slot) is recorded in orig_pending
// instead: it is redirected with its own original, and neither store keeps
// anything once the connection is taken.
func TestPendingSlotTakenFallsBackToOverflow(t *testing.T) {
	env := newRedirectEnv(t)
	check := func(wantPending int) {
		t.Helper()
		target := freeAddr(t, "tcp4", "127.0.0.1")
		out, code, pid := runIn(t, env.protected, target.String())
		if code != 0 || out != "redirected "+target.String() {
			t.Fatalf("protected client: exit %d, %q; want redirected to the listener", code, out)
		}
		select {
		case orig := <-env.seen:
			if orig.Dst != target || int(orig.PID) != pid || orig.WorkloadID != 7 {
				t.Fatalf("original = %+v; want dst %s, pid %d, workload 7", orig, target, pid)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("listener recorded no original")
		}
		pending, established, err := env.objs.MapCounts()
		if err != nil || pending != wantPending || established != 0 {
			t.Fatalf("map counts = %d pending, %d established, %v; want %d, 0", pending, established, err, wantPending)
		}
	}
	check(0)                // through its slot
	const foreign = 1 << 63 // no socket's cookie
	if err := env.objs.HoldPendingSlots(foreign); err != nil {
		t.Fatalf("hold slots: %v", err)
	}
	check(8192) // through orig_pending; the held slots stay as they were
}
