package bpf_test

import (
	"errors"
	"fmt"
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

// Exit codes of socketChild.
const (
	sockSent    = 0 // socket made and a datagram sent to loopback
	sockEPERM   = 5 // socket() refused with EPERM (the datapath)
	sockOther   = 6 // socket() failed otherwise (not supported here...)
	sockNoSend  = 7 // socket made, sendto failed
	sockBadSpec = 2
)

// socketChild makes socket(family, type, protocol) from spec
// "family,type,protocol", as uid CHIO_TEST_SOCKET_UID when set (dropping
// root first, as an unprivileged workload), and sends one ICMP echo
// request or datagram to loopback with it.
func socketChild(spec string) int {
	var fam, typ, proto int
	if _, err := fmt.Sscanf(spec, "%d,%d,%d", &fam, &typ, &proto); err != nil {
		fmt.Println("bad spec", spec)
		return sockBadSpec
	}
	if uid := os.Getenv("CHIO_TEST_SOCKET_UID"); uid != "" {
		var id int
		fmt.Sscan(uid, &id)
		if err := syscall.Setgroups(nil); err != nil {
			fmt.Println("setgroups", err)
			return sockBadSpec
		}
		if err := syscall.Setgid(id); err != nil {
			fmt.Println("setgid", err)
			return sockBadSpec
		}
		if err := syscall.Setuid(id); err != nil {
			fmt.Println("setuid", err)
			return sockBadSpec
		}
	}
	fd, err := unix.Socket(fam, typ, proto)
	if err != nil {
		fmt.Println("socket:", err)
		if errors.Is(err, unix.EPERM) {
			return sockEPERM
		}
		return sockOther
	}
	defer unix.Close(fd)
	// An echo request (ICMP type 8, ICMPv6 type 128); other protocols see
	// just bytes.
	msg := []byte{8, 0, 0, 0, 0, 1, 0, 1}
	port := 9
	if typ == unix.SOCK_RAW {
		port = 0 // a raw socket's "port" would name its protocol
	}
	var to unix.Sockaddr = &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}, Port: port}
	if fam == unix.AF_INET6 {
		msg[0] = 128
		to = &unix.SockaddrInet6{Addr: netip.IPv6Loopback().As16(), Port: port}
	}
	if err := unix.Sendto(fd, msg, 0, to); err != nil {
		fmt.Println("sendto:", err)
		return sockNoSend
	}
	fmt.Println("sent")
	return sockSent
}

// runSocketIn runs socketChild in cg and network namespace ns.
func runSocketIn(t *testing.T, cg testutil.Cgroup, ns testutil.NetNS, spec string, uid int) (string, int, int) {
	t.Helper()
	cmd := exec.Command("ip", "netns", "exec", ns.Name, os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "CHIO_TEST_SOCKET="+spec)
	if uid >= 0 {
		cmd.Env = append(cmd.Env, fmt.Sprintf("CHIO_TEST_SOCKET_UID=%d", uid))
	}
	cg.CommandIn(t, cmd)
	out, err := cmd.Output()
	return strings.TrimSpace(string(out)), testutil.ExitCode(t, err), cmd.Process.Pid
}

const nobody = 65534

// A protected workload gets no socket that the connect and sendmsg hooks do
// not see: ping sockets (unprivileged), raw sockets (root), UDP-Lite, SCTP.
// Each refusal is reported. The same sockets work outside, so the test
// would fail if the datapath let them through.
func TestUnmediatedSocketsRefusedAndReported(t *testing.T) {
	env := newRedirectEnv(t)
	rd := openEvents(t, env.objs)
	ns := testutil.NewPingNetNS(t)
	for _, tc := range []struct {
		name               string
		family, typ, proto int
		uid                int
		optional           bool // the kernel may lack it (a module)
	}{
		{"ping4-unprivileged", unix.AF_INET, unix.SOCK_DGRAM, unix.IPPROTO_ICMP, nobody, false},
		{"ping6-unprivileged", unix.AF_INET6, unix.SOCK_DGRAM, unix.IPPROTO_ICMPV6, nobody, false},
		{"raw-icmp-root", unix.AF_INET, unix.SOCK_RAW, unix.IPPROTO_ICMP, -1, false},
		{"raw-icmpv6-root", unix.AF_INET6, unix.SOCK_RAW, unix.IPPROTO_ICMPV6, -1, false},
		{"raw-ipproto-raw-root", unix.AF_INET, unix.SOCK_RAW, unix.IPPROTO_RAW, -1, false},
		{"raw-udp-root", unix.AF_INET6, unix.SOCK_RAW, unix.IPPROTO_UDP, -1, false},
		{"udplite", unix.AF_INET, unix.SOCK_DGRAM, unix.IPPROTO_UDPLITE, nobody, true},
		{"sctp", unix.AF_INET, unix.SOCK_SEQPACKET, unix.IPPROTO_SCTP, nobody, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			spec := fmt.Sprintf("%d,%d,%d", tc.family, tc.typ, tc.proto)
			// Outside the workload the socket works.
			out, code, _ := runSocketIn(t, env.plain, ns, spec, tc.uid)
			if code == sockOther && tc.optional {
				t.Logf("this kernel has no such socket (%s): nothing to refuse", out)
				return
			}
			if code != sockSent && !(tc.proto == unix.IPPROTO_RAW && code == sockNoSend) {
				t.Fatalf("unprotected: exit %d, %q; want the socket made and used", code, out)
			}
			out, code, pid := runSocketIn(t, env.protected, ns, spec, tc.uid)
			if code != sockEPERM {
				t.Fatalf("protected: exit %d, %q; want socket() refused with EPERM", code, out)
			}
			e := readEvent(t, rd)
			want := bpf.Socket{Family: tc.family, Type: tc.typ, Protocol: uint16(tc.proto)}
			if e.Kind != bpf.EventSocketRefused || e.Socket != want || e.WorkloadID != 7 || int(e.PID) != pid || e.Count != 1 || e.Dst.IsValid() || e.CgroupID != env.protected.ID {
				t.Fatalf("event = %+v; want socket_refused of %+v by pid %d", e, want, pid)
			}
			if tc.uid >= 0 && e.UID != uint32(tc.uid) {
				t.Fatalf("event uid = %d, want %d", e.UID, tc.uid)
			}
		})
	}
	// TCP and UDP sockets are still made (and then decided by the other
	// hooks, as the other tests show).
	for _, spec := range []string{
		fmt.Sprintf("%d,%d,0", unix.AF_INET, unix.SOCK_STREAM),
		fmt.Sprintf("%d,%d,%d", unix.AF_INET6, unix.SOCK_STREAM, unix.IPPROTO_TCP),
	} {
		if out, code, _ := runSocketIn(t, env.protected, ns, spec, nobody); code == sockEPERM || code == sockOther {
			t.Fatalf("protected socket(%s): exit %d, %q; want it made", spec, code, out)
		}
	}
	if out, code, _ := runSocketIn(t, env.protected, ns, fmt.Sprintf("%d,%d,0", unix.AF_INET, unix.SOCK_DGRAM), nobody); code != sockNoSend {
		t.Fatalf("protected UDP socket: exit %d, %q; want made, and its datagram refused", code, out)
	}
}

// udpFloodChild sends one datagram to each of n distinct loopback
// destinations (127.1.0.0 on, port CHIO_TEST_UDP_PORT) and prints how many
// were refused with EPERM.
func udpFloodChild(arg string) int {
	var n, port int
	fmt.Sscan(arg, &n)
	fmt.Sscan(os.Getenv("CHIO_TEST_UDP_PORT"), &port)
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM, 0)
	if err != nil {
		fmt.Println("socket:", err)
		return 2
	}
	refused := 0
	for i := 0; i < n; i++ {
		to := &unix.SockaddrInet4{Addr: [4]byte{127, byte(1 + i>>16), byte(i >> 8), byte(i)}, Port: port}
		if err := unix.Sendto(fd, []byte("x"), 0, to); errors.Is(err, unix.EPERM) {
			refused++
		}
	}
	fmt.Println(refused)
	return 0
}

// drainEvents reads every event in the ring (the reader is flushed first)
// and returns the refusals they stand for.
func drainEvents(t *testing.T, rd *bpf.EventReader) (events int, refusals uint64) {
	t.Helper()
	if err := rd.Flush(); err != nil {
		t.Fatalf("flush events: %v", err)
	}
	for {
		e, err := rd.Read()
		if errors.Is(err, bpf.ErrFlushed) {
			return events, refusals
		}
		if err != nil {
			t.Fatalf("read event: %v", err)
		}
		events++
		refusals += uint64(e.Count)
	}
}

// A flood to more distinct destinations than the refusals map holds, with
// nobody reading the ring: the ring fills, the map fills, and still every
// refusal is in exactly one of an event, a pending count the agent takes,
// or the kernel's lost count.
func TestRefusalAccountingExactUnderOverflow(t *testing.T) {
	env := newRedirectEnv(t)
	rd := openEvents(t, env.objs)
	const n = 70000 // more than the refusals map's 65536 entries
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), fmt.Sprintf("CHIO_TEST_UDP_FLOOD=%d", n), "CHIO_TEST_UDP_PORT=7")
	env.protected.CommandIn(t, cmd)
	out, err := cmd.Output()
	if err != nil || strings.TrimSpace(string(out)) != fmt.Sprint(n) {
		t.Fatalf("flood: %v, %q; want %d refused", err, out, n)
	}
	events, inEvents := drainEvents(t, rd)
	taken, err := env.objs.TakeRefusals(true)
	if err != nil {
		t.Fatalf("take refusals: %v", err)
	}
	var pending uint64
	for _, e := range taken {
		if e.Kind != bpf.EventUDPRefused || e.WorkloadID != 7 || e.Dst.Port() != 7 || e.Count == 0 || e.Comm == "" {
			t.Fatalf("taken = %+v", e)
		}
		pending += uint64(e.Count)
	}
	st, err := env.objs.RefusalStats()
	if err != nil {
		t.Fatalf("refusal stats: %v", err)
	}
	t.Logf("%d refusals: %d in %d events, %d taken from %d entries, stats %+v", n, inEvents, events, pending, len(taken), st)
	if st.Refused != n {
		t.Fatalf("kernel counted %d refusals, want %d", st.Refused, n)
	}
	if inEvents+pending+st.Lost != n {
		t.Fatalf("events %d + pending %d + lost %d = %d, want exactly %d", inEvents, pending, st.Lost, inEvents+pending+st.Lost, n)
	}
	// The overflow is visible, not silent.
	if st.RingFull == 0 || st.MapFull == 0 || st.Lost == 0 {
		t.Fatalf("stats %+v; want the ring and map overflow counted", st)
	}
	// A final take leaves nothing behind.
	if again, err := env.objs.TakeRefusals(true); err != nil || len(again) != 0 {
		t.Fatalf("second take = %d events, %v; want none", len(again), err)
	}
}

// Refusals within the interval wait in the kernel; a take reports them in
// one event that names the destination and the latest refuser.
func TestPendingRefusalsTaken(t *testing.T) {
	env := newRedirectEnv(t)
	rd := openEvents(t, env.objs)
	dst := netip.MustParseAddrPort("127.0.0.1:443")
	for i := 0; i < 5; i++ {
		if out, code, _ := runUDPIn(t, env.protected, dst.String()); code != 4 {
			t.Fatalf("UDP to %s: exit %d, %q; want EPERM", dst, code, out)
		}
	}
	_, _, pid := runUDPIn(t, env.protected, dst.String())
	if e := readEvent(t, rd); e.Count != 1 || e.Dst != dst {
		t.Fatalf("first event = %+v; want one refusal of %s", e, dst)
	}
	taken, err := env.objs.TakeRefusals(true)
	if err != nil {
		t.Fatalf("take refusals: %v", err)
	}
	// Refusals after the first within its interval are pending, unless a
	// slow machine let the interval pass (then an event carried some).
	var sum uint64
	for _, e := range taken {
		if e.Kind != bpf.EventUDPRefused || e.Dst != dst || e.Proto != bpf.ProtoUDP || e.WorkloadID != 7 || int(e.PID) != pid {
			t.Fatalf("taken = %+v; want udp_refused of %s by pid %d", e, dst, pid)
		}
		sum += uint64(e.Count)
	}
	_, inEvents := drainEvents(t, rd)
	if sum+inEvents != 5 {
		t.Fatalf("taken %d + later events %d; want the 5 refusals after the first", sum, inEvents)
	}
	if n, err := env.objs.RefusalKeys(); err != nil || n != 0 {
		t.Fatalf("refusal keys after a final take = %d, %v; want 0", n, err)
	}

	// An entry with nothing pending leaves the map once it has been idle
	// for the interval, so that the map holds only live floods.
	runUDPIn(t, env.protected, dst.String())
	if e := readEvent(t, rd); e.Count != 1 {
		t.Fatalf("event = %+v; want one refusal", e)
	}
	if n, _ := env.objs.RefusalKeys(); n != 1 {
		t.Fatalf("refusal keys = %d; want the one just refused", n)
	}
	time.Sleep(1100 * time.Millisecond) // the idle interval: not an assertion on speed
	if taken, err := env.objs.TakeRefusals(false); err != nil || len(taken) != 0 {
		t.Fatalf("take = %+v, %v; want nothing pending", taken, err)
	}
	if n, _ := env.objs.RefusalKeys(); n != 0 {
		t.Fatalf("refusal keys after an idle take = %d; want 0", n)
	}
}
