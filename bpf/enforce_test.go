package bpf_test

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/backbay-labs/chio-agent/bpf"
	"github.com/backbay-labs/chio-agent/internal/testutil"
)

// readEvent returns the next refusal event, failing the test after a while.
func readEvent(t *testing.T, rd *bpf.EventReader) bpf.Event {
	t.Helper()
	ch := make(chan bpf.Event, 1)
	errc := make(chan error, 1)
	go func() {
		e, err := rd.Read()
		if err != nil {
			errc <- err
			return
		}
		ch <- e
	}()
	select {
	case e := <-ch:
		return e
	case err := <-errc:
		t.Fatalf("read event: %v", err)
	case <-time.After(5 * time.Second):
		t.Fatal("no refusal event reported")
	}
	return bpf.Event{}
}

func openEvents(t *testing.T, objs *bpf.Objects) *bpf.EventReader {
	t.Helper()
	rd, err := objs.OpenEvents()
	if err != nil {
		t.Fatalf("open events: %v", err)
	}
	t.Cleanup(func() { rd.Close() })
	return rd
}

func TestStaticDenyRefusesAtConnectAndReports(t *testing.T) {
	env := newRedirectEnv(t)
	rd := openEvents(t, env.objs)
	target := freeAddr(t, "tcp4", "127.0.0.1")
	rule := bpf.VerdictRule{Prefix: netip.PrefixFrom(target.Addr(), 8).Masked(), Port: target.Port(), Proto: bpf.ProtoTCP, Verdict: bpf.VerdictDeny, RuleID: 42}
	if err := env.objs.SetVerdicts(7, []bpf.VerdictRule{rule}); err != nil {
		t.Fatalf("set verdicts: %v", err)
	}
	out, code, pid := runIn(t, env.protected, target.String())
	if code != 2 || out == "" {
		t.Fatalf("denied client: exit %d, output %q; want a refused connect (EPERM)", code, out)
	}
	e := readEvent(t, rd)
	if e.Kind != bpf.EventTCPDenied || e.RuleID != 42 || e.Dst != target || int(e.PID) != pid || e.WorkloadID != 7 || e.Count != 1 || e.Proto != bpf.ProtoTCP {
		t.Fatalf("event = %+v; want tcp_denied rule 42 to %s by pid %d", e, target, pid)
	}
	// Another port of the same prefix is not denied: it is redirected.
	other := freeAddr(t, "tcp4", "127.0.0.1")
	if out, code, _ := runIn(t, env.protected, other.String()); code != 0 {
		t.Fatalf("client to a port the rule does not name: exit %d, %q; want redirected", code, out)
	}
	// Replacing the rules removes the old one.
	if err := env.objs.SetVerdicts(7, nil); err != nil {
		t.Fatalf("clear verdicts: %v", err)
	}
	if out, code, _ := runIn(t, env.protected, target.String()); code != 0 {
		t.Fatalf("client after the rule was removed: exit %d, %q; want redirected", code, out)
	}
}

func TestExemptPassesUntouched(t *testing.T) {
	env := newRedirectEnv(t)
	target := freeAddr(t, "tcp6", "::1")
	rule := bpf.VerdictRule{Prefix: netip.PrefixFrom(target.Addr(), 128), Proto: bpf.ProtoTCP, Verdict: bpf.VerdictExempt}
	if err := env.objs.SetVerdicts(7, []bpf.VerdictRule{rule}); err != nil {
		t.Fatalf("set verdicts: %v", err)
	}
	// Exempt: the connect goes to the real (empty) destination and is refused
	// by the kernel, not redirected to the listener.
	if out, code, _ := runIn(t, env.protected, target.String()); code != 3 {
		t.Fatalf("exempt client: exit %d, %q; want a direct, refused connect", code, out)
	}
}

func TestUDPRefusedExceptResolversAndAggregated(t *testing.T) {
	env := newRedirectEnv(t)
	rd := openEvents(t, env.objs)
	resolver := netip.MustParseAddrPort("127.0.0.53:53")
	if err := env.objs.SetResolvers([]netip.AddrPort{resolver}); err != nil {
		t.Fatalf("set resolvers: %v", err)
	}
	// DNS to the resolver goes out (unconnected and connected).
	if out, code, _ := runUDPIn(t, env.protected, resolver.String(), "CHIO_TEST_UDP_COUNT=3"); code != 0 {
		t.Fatalf("UDP to the resolver: exit %d, %q; want sent", code, out)
	}
	// Anything else (QUIC on 443 here) is refused.
	quic := netip.MustParseAddrPort("127.0.0.1:443")
	out, code, pid := runUDPIn(t, env.protected, quic.String())
	if code != 4 {
		t.Fatalf("UDP to %s: exit %d, %q; want EPERM", quic, code, out)
	}
	e := readEvent(t, rd)
	if e.Kind != bpf.EventUDPRefused || e.Dst != quic || int(e.PID) != pid || e.Proto != bpf.ProtoUDP || e.Count != 1 {
		t.Fatalf("event = %+v; want udp_refused to %s by pid %d", e, quic, pid)
	}
	// A flood to the same destination yields no further event within the
	// interval; after it, one event counts what was suppressed. The flood runs
	// in children that each stop at their first refusal: five of them, then,
	// after the interval, a sixth.
	for i := 0; i < 5; i++ {
		runUDPIn(t, env.protected, quic.String())
	}
	time.Sleep(1100 * time.Millisecond) // the rate limit's interval: not an assertion on speed
	runUDPIn(t, env.protected, quic.String())
	e = readEvent(t, rd)
	if e.Kind != bpf.EventUDPRefused || e.Count != 6 {
		t.Fatalf("aggregated event = %+v; want udp_refused standing for 6 refusals (5 suppressed + this one)", e)
	}
	// An unprotected process's UDP is untouched.
	if out, code, _ := runUDPIn(t, env.plain, quic.String()); code != 0 {
		t.Fatalf("unprotected UDP: exit %d, %q; want sent", code, out)
	}
}

func TestPinnedStateSurvivesAgentAndIsAdopted(t *testing.T) {
	testutil.RequireRoot(t)
	if err := bpf.EnsureBPFFS("/sys/fs/bpf"); err != nil {
		t.Fatalf("ensure bpffs: %v", err)
	}
	pinDir := testutil.PinDir(t)
	t.Cleanup(func() { bpf.Uninstall(pinDir) })

	parent := testutil.NewCgroup(t, "")
	protected := testutil.NewCgroup(t, parent.Path)
	listen := freeAddr(t, "tcp4", "127.0.0.1")

	objs, err := bpf.Load(bpf.Options{PinDir: pinDir})
	if err != nil {
		t.Fatalf("load pinned: %v", err)
	}
	if err := objs.AttachCgroup(parent.Path); err != nil {
		t.Fatalf("attach: %v", err)
	}
	if err := objs.Protect(protected.ID, bpf.Workload{ID: 3, Listen4: listen}); err != nil {
		t.Fatalf("protect: %v", err)
	}
	// The agent goes away without cleaning up, as after SIGKILL.
	if err := objs.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	target := freeAddr(t, "tcp4", "127.0.0.1")
	if out, code, _ := runIn(t, protected, target.String()); code != 3 {
		t.Fatalf("with no agent: exit %d, %q; want refused (the redirect still points at the absent listener)", code, out)
	}

	// A new agent adopts the pinned maps and links.
	objs2, err := bpf.Load(bpf.Options{PinDir: pinDir})
	if err != nil {
		t.Fatalf("reload pinned: %v", err)
	}
	t.Cleanup(func() { objs2.Close() })
	ws, err := objs2.Workloads()
	if err != nil || ws[protected.ID].ID != 3 || ws[protected.ID].Listen4 != listen {
		t.Fatalf("adopted workloads = %v, %v; want workload 3 listening on %s", ws, err, listen)
	}
	if err := objs2.AttachCgroup(parent.Path); err != nil {
		t.Fatalf("re-attach: %v", err)
	}
	for _, a := range objs2.Attachments() {
		if !a.Adopted {
			t.Errorf("attachment %s was not adopted from its pin", a.Name)
		}
		if _, _, err := a.IDs(); err != nil {
			t.Errorf("ids: %v", err)
		}
	}
	// While it runs, the pinned state is its own: a second agent is refused
	// and uninstall can see the owner.
	if o3, err := bpf.Load(bpf.Options{PinDir: pinDir}); !errors.Is(err, bpf.ErrPinDirInUse) {
		if err == nil {
			o3.Close()
		}
		t.Fatalf("second load of an owned pin dir: %v; want ErrPinDirInUse", err)
	}
	if err := bpf.CheckOwner(pinDir); !errors.Is(err, bpf.ErrPinDirInUse) {
		t.Fatalf("CheckOwner while held: %v; want ErrPinDirInUse", err)
	}
	// Its listener comes back on the pinned address: enforcement resumes.
	ln, err := net.Listen("tcp4", listen.String())
	if err != nil {
		t.Fatalf("listen again: %v", err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Write([]byte("back\n"))
			c.Close()
		}
	}()
	if out, code, _ := runIn(t, protected, target.String()); code != 0 || out != "back" {
		t.Fatalf("after restart: exit %d, %q; want the new listener", code, out)
	}

	// Uninstall removes every pin; with no handle left the hooks detach.
	if err := objs2.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	if err := bpf.CheckOwner(pinDir); err != nil {
		t.Fatalf("CheckOwner with no agent: %v", err)
	}
	removed, err := bpf.Uninstall(pinDir)
	if err != nil || len(removed) == 0 {
		t.Fatalf("uninstall: %v, %v", removed, err)
	}
	if _, err := os.Stat(pinDir); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("pin directory still there after uninstall: %v", err)
	}
	if out, code, _ := runIn(t, protected, target.String()); code != 3 {
		t.Fatalf("after uninstall: exit %d, %q; want a direct (refused) connect", code, out)
	}
}

func TestAgentMarkedSocketsAreNeverRedirected(t *testing.T) {
	const mark = 0x43484941
	env := newRedirectEnvWith(t, bpf.Options{AgentMark: mark})
	target := freeAddr(t, "tcp4", "127.0.0.1")
	// Inside the protected cgroup, an unmarked socket is redirected…
	if out, code, _ := runIn(t, env.protected, target.String()); code != 0 {
		t.Fatalf("unmarked: exit %d, %q; want redirected", code, out)
	}
	// …and a socket with the agent's mark goes where it asked (and is
	// refused there, as nothing listens).
	if out, code, _ := runIn(t, env.protected, target.String(), fmt.Sprintf("CHIO_TEST_MARK=%d", mark)); code != 3 {
		t.Fatalf("marked: exit %d, %q; want a direct, refused connect", code, out)
	}
	// Another mark is not the agent's.
	if out, code, _ := runIn(t, env.protected, target.String(), "CHIO_TEST_MARK=7"); code != 0 {
		t.Fatalf("other mark: exit %d, %q; want redirected", code, out)
	}
}

// With AgentPID set, the mark is honoured only on that process's sockets: a
// workload able to set SO_MARK (CAP_NET_ADMIN or CAP_NET_RAW) puts it on
// its socket in vain, while the agent's own process, even inside a
// protected cgroup, still goes where it asked.
func TestAgentMarkHonouredOnlyOnTheAgentsSockets(t *testing.T) {
	const mark = 0x43484941
	target := freeAddr(t, "tcp4", "127.0.0.1")
	// The "agent": a process whose pid the programs are loaded with. It waits
	// for the protected cgroup's path, moves into it and becomes the dialing
	// client (exec keeps its pid).
	agent := exec.Command("sh", "-c", `read cg && echo $$ > "$cg/cgroup.procs" && exec "$0" -test.run='^$'`, os.Args[0])
	agent.Env = append(os.Environ(), "CHIO_TEST_DIAL="+target.String(), fmt.Sprintf("CHIO_TEST_MARK=%d", mark))
	stdin, err := agent.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	var out strings.Builder
	agent.Stdout = &out
	if err := agent.Start(); err != nil {
		t.Fatalf("start the agent's stand-in: %v", err)
	}
	defer agent.Wait()
	defer stdin.Close()
	env := newRedirectEnvWith(t, bpf.Options{AgentMark: mark, AgentPID: uint32(agent.Process.Pid)})

	// Another process setting the agent's mark is redirected…
	if out, code, _ := runIn(t, env.protected, target.String(), fmt.Sprintf("CHIO_TEST_MARK=%d", mark)); code != 0 {
		t.Fatalf("marked, not the agent: exit %d, %q; want redirected", code, out)
	}
	// …and the agent's process, in the same cgroup, goes where it asked (and
	// is refused there, as nothing listens).
	fmt.Fprintln(stdin, env.protected.Path)
	stdin.Close()
	var ee *exec.ExitError
	if err := agent.Wait(); !errors.As(err, &ee) || ee.ExitCode() != 3 {
		t.Fatalf("marked, the agent: %v, %q; want a direct, refused connect (exit 3)", err, out.String())
	}
}

// The programs outlive the agent, and the kernel gives its process id to
// another process once it is gone: pid_max is 32768 here, and root can pick
// the next id through ns_last_pid. A workload process given the dead agent's
// id and setting the agent's mark is still decided, because the programs
// know the agent by its id and its start time.
func TestAgentMarkNotHonouredOnAReusedProcessID(t *testing.T) {
	const mark = 0x43484941
	target := freeAddr(t, "tcp4", "127.0.0.1")
	gone := childIdentity(t) // the "agent", already exited
	env := newRedirectEnvWith(t, bpf.Options{AgentMark: mark, AgentPID: gone.PID, AgentStart: gone.Start})
	for range 50 {
		// The next process made gets the old id unless another fork on the
		// machine takes it first; then try again.
		if err := os.WriteFile("/proc/sys/kernel/ns_last_pid", []byte(fmt.Sprint(gone.PID-1)), 0); err != nil {
			t.Fatalf("set ns_last_pid: %v", err)
		}
		out, code, pid := runIn(t, env.protected, target.String(), fmt.Sprintf("CHIO_TEST_MARK=%d", mark))
		if pid != int(gone.PID) {
			continue
		}
		if code != 0 {
			t.Fatalf("a workload process with the dead agent's id %d and its mark: exit %d, %q; want redirected (exit 0)", pid, code, out)
		}
		return
	}
	t.Fatalf("no process got the id %d in 50 tries", gone.PID)
}

// A restarted agent pointed at another cgroup must not adopt links pinned on
// the first one: it would report itself attached to the new cgroup while its
// processes connected unmediated. It refuses, naming both cgroups.
func TestPinnedLinksOnAnotherCgroupRefused(t *testing.T) {
	testutil.RequireRoot(t)
	if err := bpf.EnsureBPFFS("/sys/fs/bpf"); err != nil {
		t.Fatalf("ensure bpffs: %v", err)
	}
	pinDir := testutil.PinDir(t)
	t.Cleanup(func() { bpf.Uninstall(pinDir) })
	first := testutil.NewCgroup(t, "")
	other := testutil.NewCgroup(t, "")

	objs, err := bpf.Load(bpf.Options{PinDir: pinDir})
	if err != nil {
		t.Fatalf("load pinned: %v", err)
	}
	if err := objs.AttachCgroup(first.Path); err != nil {
		t.Fatalf("attach: %v", err)
	}
	objs.Close()

	objs2, err := bpf.Load(bpf.Options{PinDir: pinDir})
	if err != nil {
		t.Fatalf("reload pinned: %v", err)
	}
	t.Cleanup(func() { objs2.Close() })
	err = objs2.AttachCgroup(other.Path)
	if !errors.Is(err, bpf.ErrPinnedElsewhere) {
		t.Fatalf("attach to another cgroup over pinned links: %v; want ErrPinnedElsewhere", err)
	}
	if !strings.Contains(err.Error(), fmt.Sprint(first.ID)) || !strings.Contains(err.Error(), other.Path) {
		t.Fatalf("error %q does not name both cgroups (%d, %s)", err, first.ID, other.Path)
	}
	for _, a := range objs2.Attachments() {
		t.Errorf("attachment %s kept after a refused adoption", a.Name)
	}

	// The same cgroup is adopted as before.
	if err := objs2.AttachCgroup(first.Path); err != nil {
		t.Fatalf("attach to the pinned links' own cgroup: %v", err)
	}
	for _, a := range objs2.Attachments() {
		if !a.Adopted {
			t.Errorf("attachment %s not adopted", a.Name)
		}
	}
}
