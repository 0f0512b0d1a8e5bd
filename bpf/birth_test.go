package bpf_test

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/backbay-labs/chio-agent/bpf"
	"github.com/backbay-labs/chio-agent/internal/cgroupfs"
	"github.com/backbay-labs/chio-agent/internal/testutil"
)

// Environment of birthChild.
const (
	envBirthDst  = "CHIO_TEST_BIRTH_DST"  // destination, 127.0.0.1:port
	envBirthMove = "CHIO_TEST_BIRTH_MOVE" // optional cgroup to move into once the first sockets are made
)

// birthChild tries, with raw system calls (Go's net package makes sockets
// of its own to probe the stack), what a process does first with the
// network: a TCP and a UDP socket, then (after moving itself into
// envBirthMove, when set, so that these sockets predate the move) a TCP
// connect, a UDP sendmsg and a UDP connect to envBirthDst, and last a fresh
// IPv6 UDP socket. It prints "op=result" for each, the result "ok", an
// errno name, or "-" when the socket it needed was refused.
func birthChild() int {
	dst := netip.MustParseAddrPort(os.Getenv(envBirthDst))
	sa := &unix.SockaddrInet4{Port: int(dst.Port()), Addr: dst.Addr().As4()}
	var out []string
	res := func(op string, err error) {
		r := "ok"
		if err != nil {
			var errno unix.Errno
			if errors.As(err, &errno) {
				r = unix.ErrnoName(errno)
			} else {
				r = err.Error()
			}
		}
		out = append(out, op+"="+r)
	}
	tcp, terr := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	res("tcp-socket", terr)
	udp, uerr := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	res("udp-socket", uerr)
	if cg := os.Getenv(envBirthMove); cg != "" {
		if err := os.WriteFile(filepath.Join(cg, "cgroup.procs"), []byte(strconv.Itoa(os.Getpid())), 0); err != nil {
			fmt.Println("move:", err)
			return 2
		}
	}
	if terr == nil {
		res("tcp-connect", unix.Connect(tcp, sa))
	} else {
		out = append(out, "tcp-connect=-")
	}
	if uerr == nil {
		res("udp-sendmsg", unix.Sendto(udp, []byte("x"), 0, sa))
		res("udp-connect", unix.Connect(udp, sa))
	} else {
		out = append(out, "udp-sendmsg=-", "udp-connect=-")
	}
	_, err := unix.Socket(unix.AF_INET6, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	res("udp6-socket", err)
	fmt.Println(strings.Join(out, " "))
	return 0
}

// runBirth runs birthChild in cg (moving into move afterwards when it is
// not empty) and returns what it printed and its pid.
func runBirth(t *testing.T, cg testutil.Cgroup, dst netip.AddrPort, move string) (string, int) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), envBirthDst+"="+dst.String())
	if move != "" {
		cmd.Env = append(cmd.Env, envBirthMove+"="+move)
	}
	cg.CommandIn(t, cmd)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("birth child: %v: %s", err, out)
	}
	return strings.TrimSpace(string(out)), cmd.Process.Pid
}

// Results of birthChild.
const (
	// birthUntouched: nothing refused; nothing listens at the destination.
	birthUntouched = "tcp-socket=ok udp-socket=ok tcp-connect=ECONNREFUSED udp-sendmsg=ok udp-connect=ok udp6-socket=ok"
	// birthRefused: no socket for an unclassified cgroup.
	birthRefused = "tcp-socket=EPERM udp-socket=EPERM tcp-connect=- udp-sendmsg=- udp-connect=- udp6-socket=EPERM"
	// birthMovedRefused: sockets made before the move are refused every use.
	birthMovedRefused = "tcp-socket=ok udp-socket=ok tcp-connect=EPERM udp-sendmsg=EPERM udp-connect=EPERM udp6-socket=EPERM"
)

// refusalsOf reads every event in the ring and every refusal still pending
// (a final take), and checks that the kernel counted exactly as many
// refusals since before as they stand for.
func refusalsOf(t *testing.T, objs *bpf.Objects, rd *bpf.EventReader, before uint64) []bpf.Event {
	t.Helper()
	if err := rd.Flush(); err != nil {
		t.Fatalf("flush events: %v", err)
	}
	var evs []bpf.Event
	for {
		e, err := rd.Read()
		if errors.Is(err, bpf.ErrFlushed) {
			break
		}
		if err != nil {
			t.Fatalf("read event: %v", err)
		}
		evs = append(evs, e)
	}
	taken, err := objs.TakeRefusals(true)
	if err != nil {
		t.Fatalf("take refusals: %v", err)
	}
	evs = append(evs, taken...)
	var n uint64
	for _, e := range evs {
		n += uint64(e.Count)
	}
	st, err := objs.RefusalStats()
	if err != nil {
		t.Fatalf("refusal stats: %v", err)
	}
	if st.Refused-before != n || st.Lost != 0 {
		t.Fatalf("kernel counted %d refusals (%d lost); the events and pending counts stand for %d: %+v", st.Refused-before, st.Lost, n, evs)
	}
	return evs
}

func refusedSoFar(t *testing.T, objs *bpf.Objects) uint64 {
	t.Helper()
	st, err := objs.RefusalStats()
	if err != nil {
		t.Fatalf("refusal stats: %v", err)
	}
	return st.Refused
}

// wantUnclassified checks that evs are exactly the refusals of birthRefused
// (moved false) or birthMovedRefused (moved true) by pid in cgroup cg.
func wantUnclassified(t *testing.T, evs []bpf.Event, cg uint64, pid int, dst netip.AddrPort, moved bool) {
	t.Helper()
	type want struct {
		op     bpf.UnclassifiedOp
		socket bpf.Socket
	}
	wants := map[want]bool{
		{bpf.UnclassifiedSocket, bpf.Socket{Family: unix.AF_INET6, Type: unix.SOCK_DGRAM, Protocol: unix.IPPROTO_UDP}}: true,
	}
	if moved {
		wants[want{bpf.UnclassifiedConnect, bpf.Socket{Family: unix.AF_INET, Type: unix.SOCK_STREAM, Protocol: unix.IPPROTO_TCP}}] = true
		wants[want{bpf.UnclassifiedSendmsg, bpf.Socket{Family: unix.AF_INET, Type: unix.SOCK_DGRAM, Protocol: unix.IPPROTO_UDP}}] = true
		wants[want{bpf.UnclassifiedConnect, bpf.Socket{Family: unix.AF_INET, Type: unix.SOCK_DGRAM, Protocol: unix.IPPROTO_UDP}}] = true
	} else {
		wants[want{bpf.UnclassifiedSocket, bpf.Socket{Family: unix.AF_INET, Type: unix.SOCK_STREAM, Protocol: unix.IPPROTO_TCP}}] = true
		wants[want{bpf.UnclassifiedSocket, bpf.Socket{Family: unix.AF_INET, Type: unix.SOCK_DGRAM, Protocol: unix.IPPROTO_UDP}}] = true
	}
	if len(evs) != len(wants) {
		t.Fatalf("%d events, want %d: %+v", len(evs), len(wants), evs)
	}
	for _, e := range evs {
		w := want{bpf.UnclassifiedOp(e.RuleID), e.Socket}
		if !wants[w] {
			t.Fatalf("event %+v (op %v) not wanted, or twice", e, w.op)
		}
		delete(wants, w)
		wantDst := dst
		if w.op == bpf.UnclassifiedSocket {
			wantDst = netip.AddrPort{}
		}
		if e.Kind != bpf.EventUnclassified || e.WorkloadID != 0 || e.CgroupID != cg || int(e.PID) != pid || e.Count != 1 || e.Dst != wantDst || e.Comm == "" {
			t.Fatalf("event = %+v; want unclassified, no workload, cgroup %d, pid %d, one refusal, dst %v", e, cg, pid, wantDst)
		}
	}
}

// TestUnclassifiedCgroupRefusedUntilClassified is a workload started under
// the pods' cgroup root before the agent has classified its cgroup: its
// socket(), connect() and sendmsg() are refused in the kernel, each one
// reported, until the agent protects the cgroup (then redirected) or
// exempts it (then untouched, and its descendants too). A cgroup outside
// the root, the root itself, and this test process (outside the attach
// point, as the agent is) are untouched throughout; a cgroup removed and
// made again at the same path is refused again.
func TestUnclassifiedCgroupRefusedUntilClassified(t *testing.T) {
	env := newRedirectEnv(t)
	rd := openEvents(t, env.objs)
	parent := filepath.Dir(env.plain.Path)
	root := testutil.NewCgroup(t, parent)
	if err := env.objs.SetBirthRoot(root.ID); err != nil {
		t.Fatalf("set birth root: %v", err)
	}
	if roots, err := env.objs.BirthRoots(); err != nil || len(roots) != 1 || roots[0] != root.ID {
		t.Fatalf("birth roots = %v, %v; want [%d]", roots, err, root.ID)
	}
	dst := freeAddr(t, "tcp4", "127.0.0.1")
	check := func(name string, cg testutil.Cgroup, move string, want string) int {
		t.Helper()
		out, pid := runBirth(t, cg, dst, move)
		if out != want {
			t.Fatalf("%s:\n got %s\nwant %s", name, out, want)
		}
		return pid
	}

	// A cgroup made under the root after it was set: nothing, and every
	// attempt reported.
	pod := testutil.NewCgroup(t, root.Path)
	before := refusedSoFar(t, env.objs)
	pid := check("fresh pod cgroup", pod, "", birthRefused)
	wantUnclassified(t, refusalsOf(t, env.objs, rd, before), pod.ID, pid, dst, false)
	// A container's cgroup inside it, likewise.
	ctr := testutil.NewCgroup(t, pod.Path)
	before = refusedSoFar(t, env.objs)
	pid = check("fresh container cgroup", ctr, "", birthRefused)
	wantUnclassified(t, refusalsOf(t, env.objs, rd, before), ctr.ID, pid, dst, false)
	// Sockets made elsewhere (outside the root, still under the attach
	// point) and carried in are refused every use.
	before = refusedSoFar(t, env.objs)
	pid = check("sockets carried into the container", env.plain, ctr.Path, birthMovedRefused)
	wantUnclassified(t, refusalsOf(t, env.objs, rd, before), ctr.ID, pid, dst, true)

	// Untouched: a cgroup outside the root, the root itself, this process.
	before = refusedSoFar(t, env.objs)
	check("outside the root", env.plain, "", birthUntouched)
	check("the root itself", root, "", birthUntouched)
	if fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM, 0); err != nil {
		t.Fatalf("socket in the test process: %v", err)
	} else {
		unix.Close(fd)
	}
	if evs := refusalsOf(t, env.objs, rd, before); len(evs) != 0 {
		t.Fatalf("refusals outside unclassified cgroups: %+v", evs)
	}

	// Protected: the pod (and so its container) is redirected; UDP follows
	// the workload's rules, no longer the birth rule.
	l4 := env.listen(t, "tcp4", "127.0.0.1:0")
	if err := env.objs.Protect(pod.ID, bpf.Workload{ID: 9, Listen4: l4}); err != nil {
		t.Fatal(err)
	}
	before = refusedSoFar(t, env.objs)
	pid = check("protected container", ctr, "", "tcp-socket=ok udp-socket=ok tcp-connect=ok udp-sendmsg=EPERM udp-connect=EPERM udp6-socket=ok")
	if orig := <-env.seen; orig.Dst != dst || orig.WorkloadID != 9 || int(orig.PID) != pid || orig.CgroupID != ctr.ID {
		t.Fatalf("original = %+v; want %s from pid %d in cgroup %d, workload 9", orig, dst, pid, ctr.ID)
	}
	for _, e := range refusalsOf(t, env.objs, rd, before) {
		if e.Kind != bpf.EventUDPRefused || e.WorkloadID != 9 {
			t.Fatalf("protected container's refusal = %+v; want udp_refused of workload 9", e)
		}
	}

	// Exempt: another pod, and a grandchild of it, untouched.
	other := testutil.NewCgroup(t, root.Path)
	grandchild := testutil.NewCgroup(t, testutil.NewCgroup(t, other.Path).Path)
	before = refusedSoFar(t, env.objs)
	check("unclassified grandchild", grandchild, "", birthRefused)
	refusalsOf(t, env.objs, rd, before)
	if err := env.objs.Exempt(other.ID); err != nil {
		t.Fatal(err)
	}
	before = refusedSoFar(t, env.objs)
	check("exempt pod", other, "", birthUntouched)
	check("grandchild of the exempt pod", grandchild, "", birthUntouched)
	if evs := refusalsOf(t, env.objs, rd, before); len(evs) != 0 {
		t.Fatalf("refusals in an exempt pod: %+v", evs)
	}
	if ex, err := env.objs.Exempted(); err != nil || len(ex) != 1 || ex[0] != other.ID {
		t.Fatalf("exempted = %v, %v; want [%d]", ex, err, other.ID)
	}

	// Removed and made again at the same path: a new cgroup, unclassified.
	if err := cgroupfs.RemoveTree(other.Path); err != nil {
		t.Fatal(err)
	}
	newID, err := cgroupfs.Create(other.Path)
	if err != nil {
		t.Fatal(err)
	}
	if newID == other.ID {
		t.Fatalf("recreated cgroup kept id %d", newID)
	}
	again := testutil.Cgroup{Path: other.Path, ID: newID}
	before = refusedSoFar(t, env.objs)
	pid = check("pod made again", again, "", birthRefused)
	wantUnclassified(t, refusalsOf(t, env.objs, rd, before), newID, pid, dst, false)

	// Unexempting and removing the root undo it all.
	if err := env.objs.Unexempt(other.ID); err != nil {
		t.Fatal(err)
	}
	if err := env.objs.RemoveBirthRoot(root.ID); err != nil {
		t.Fatal(err)
	}
	before = refusedSoFar(t, env.objs)
	check("no birth root", again, "", birthUntouched)
	if evs := refusalsOf(t, env.objs, rd, before); len(evs) != 0 {
		t.Fatalf("refusals with no birth root: %+v", evs)
	}
	if roots, _ := env.objs.BirthRoots(); len(roots) != 0 {
		t.Fatalf("birth roots after removal = %v", roots)
	}
	if ex, _ := env.objs.Exempted(); len(ex) != 0 {
		t.Fatalf("exempted after removal = %v", ex)
	}
}

// An exemption above the birth root classifies nothing below it: only the
// agent's classification of a cgroup at or below the root lifts the
// refusal.
func TestExemptAboveBirthRootDoesNotClassify(t *testing.T) {
	env := newRedirectEnv(t)
	rd := openEvents(t, env.objs)
	above := testutil.NewCgroup(t, filepath.Dir(env.plain.Path))
	root := testutil.NewCgroup(t, above.Path)
	pod := testutil.NewCgroup(t, root.Path)
	if err := env.objs.Exempt(above.ID); err != nil {
		t.Fatal(err)
	}
	if err := env.objs.SetBirthRoot(root.ID); err != nil {
		t.Fatal(err)
	}
	dst := freeAddr(t, "tcp4", "127.0.0.1")
	before := refusedSoFar(t, env.objs)
	out, pid := runBirth(t, pod, dst, "")
	if out != birthRefused {
		t.Fatalf("pod below an exempt ancestor of the root:\n got %s\nwant %s", out, birthRefused)
	}
	wantUnclassified(t, refusalsOf(t, env.objs, rd, before), pod.ID, pid, dst, false)
	// Exempting the root itself classifies its whole subtree.
	if err := env.objs.Exempt(root.ID); err != nil {
		t.Fatal(err)
	}
	if out, _ := runBirth(t, pod, dst, ""); out != birthUntouched {
		t.Fatalf("pod below an exempt root:\n got %s\nwant %s", out, birthUntouched)
	}
}
