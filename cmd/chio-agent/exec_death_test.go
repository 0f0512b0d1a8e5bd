package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/backbay-labs/chio-agent/internal/cgroupfs"
	"github.com/backbay-labs/chio-agent/internal/testutil"
	"github.com/backbay-labs/chio-agent/kernel"
)

// execUnderTest is one `chio-agent exec` whose workload, running as the
// unprivileged user nobody, waits for a line on its stdin and then tries a
// TCP connect to a local server that no policy allows.
type execUnderTest struct {
	t       *testing.T
	cmd     *exec.Cmd
	exited  chan struct{}
	stdin   *os.File // the workload's stdin (write end)
	stdout  *bufio.Reader
	outPipe *os.File
	stderr  string // exec's own stderr (a file)
	accepts *atomic.Int64
	pinDir  string
	cgroup  string
	reaper  int
}

// startExecWorkload starts exec, inside the cgroup unit when it is not nil
// (as a systemd service runs it). The workload ignores SIGTERM, as a
// workload that makes its supervisor escalate to SIGKILL does.
func startExecWorkload(t *testing.T, unit *testutil.Cgroup) *execUnderTest {
	return startExecWorkloadWith(t, unit, true)
}

func startExecWorkloadWith(t *testing.T, unit *testutil.Cgroup, ignoreTerm bool) *execUnderTest {
	t.Helper()
	testutil.RequireRoot(t)
	testutil.RequireTools(t, "curl", "setpriv")
	bin := binary(t)
	dir := t.TempDir()
	key := filepath.Join(dir, "chio.key")
	if _, err := kernel.GenerateKeyFile(key); err != nil {
		t.Fatal(err)
	}
	policy := filepath.Join(dir, "policy.yaml")
	if err := os.WriteFile(policy, []byte("hushspec: \"0.1.0\"\nname: nothing\nrules:\n  egress:\n    default: block\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	// The server counts every connection that reaches it: any is a bypass.
	e := &execUnderTest{t: t, accepts: &atomic.Int64{}, stderr: filepath.Join(dir, "exec.stderr")}
	listening, _ := testutil.ServeTCP(t, "tcp4", "127.0.0.1:0", func(c net.Conn) {
		e.accepts.Add(1)
		c.Close()
	})
	port := listening.Port()

	inR, inW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	outR, outW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	errFile, err := os.Create(e.stderr)
	if err != nil {
		t.Fatal(err)
	}
	defer errFile.Close()
	trap := `trap "" TERM; `
	if !ignoreTerm {
		trap = ""
	}
	script := trap + fmt.Sprintf(`echo ready $$; while read x; do curl -sS --noproxy '*' --max-time 5 -o /dev/null -w '%%{http_code}' http://127.0.0.1:%d/; echo " exit=$?"; done`, port)
	e.cmd = exec.Command(bin, "exec", "--policy", policy, "--key", key, "--receipts", filepath.Join(dir, "receipts.db"), "--",
		"setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups", "--", "sh", "-c", script)
	e.cmd.Stdin, e.cmd.Stdout, e.cmd.Stderr = inR, outW, errFile
	if unit != nil {
		unit.CommandIn(t, e.cmd)
	}
	if err := e.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	inR.Close()
	outW.Close()
	e.stdin, e.outPipe, e.stdout = inW, outR, bufio.NewReader(outR)
	e.exited = make(chan struct{})
	go func() { e.cmd.Wait(); close(e.exited) }()
	t.Cleanup(func() {
		e.cmd.Process.Kill()
		<-e.exited
		inW.Close()
		outR.Close()
		// This run's workload only (a failed test may leave it refused but
		// running), then a sweep that kills nobody else's.
		if e.cgroup != "" {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			cgroupfs.Kill(ctx, e.cgroup)
		}
		exec.Command(bin, "uninstall", "--pin-dir", filepath.Join(dir, "no-pins")).Run()
	})
	outR.SetReadDeadline(time.Now().Add(60 * time.Second))
	line, err := e.stdout.ReadString('\n')
	pid, ok := strings.CutPrefix(strings.TrimSpace(line), "ready ")
	if err != nil || !ok {
		t.Fatalf("workload not ready: %q, %v\n%s", line, err, e.logs())
	}

	// What this run made (its cgroup as the workload's /proc shows it), and
	// its reaper.
	cg, err := os.ReadFile("/proc/" + pid + "/cgroup")
	if err != nil {
		t.Fatal(err)
	}
	mnt, err := cgroupfs.Mount()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(cg), "\n") {
		if rel, ok := strings.CutPrefix(l, "0::"); ok {
			e.cgroup = filepath.Join(mnt, rel)
		}
	}
	if id, ok := strings.CutPrefix(filepath.Base(e.cgroup), "chio-exec-"); ok {
		e.pinDir = filepath.Join("/sys/fs/bpf/chio-exec", id)
	}
	if _, err := os.Stat(e.pinDir); err != nil {
		t.Errorf("pins while exec runs: %v", err)
	}
	e.reaper = findProcess(t, e.pinDir)
	return e
}

// findProcess returns the pid of the process whose command line names arg.
func findProcess(t *testing.T, arg string) int {
	t.Helper()
	procs, _ := os.ReadDir("/proc")
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil {
			continue
		}
		b, _ := os.ReadFile(filepath.Join("/proc", p.Name(), "cmdline"))
		for _, a := range strings.Split(string(b), "\x00") {
			if a == arg {
				return pid
			}
		}
	}
	t.Errorf("no process has %s in its command line", arg)
	return 0
}

func (e *execUnderTest) logs() string {
	b, _ := os.ReadFile(e.stderr)
	return string(b)
}

// tryConnect tells the workload to connect (if it still lives) and returns
// what it printed until its stdout closed: it loops on its stdin, so only
// its death closes it. Every line it prints is checked for a bypass.
func (e *execUnderTest) tryConnect() string {
	e.t.Helper()
	e.stdin.Write([]byte("go\n")) // EPIPE when the workload is already dead
	e.outPipe.SetReadDeadline(time.Now().Add(60 * time.Second))
	var out strings.Builder
	for {
		line, err := e.stdout.ReadString('\n')
		out.WriteString(line)
		e.assertNoBypass(out.String())
		if errors.Is(err, io.EOF) {
			return out.String()
		}
		if err != nil {
			e.t.Fatalf("workload still running after exec died: %v (it printed %q)\n%s", err, out.String(), e.logs())
		}
	}
}

// assertNoBypass: the server was never reached, and a connect the workload
// made failed: refused (curl exit 7) once the listener is gone, or reset
// (52, 56) when the dying exec's listener had already queued it.
func (e *execUnderTest) assertNoBypass(out string) {
	e.t.Helper()
	if n := e.accepts.Load(); n != 0 {
		e.t.Fatalf("the unallowed server got %d connections after exec died (workload said %q)", n, out)
	}
	if out != "" && !strings.Contains(out, "exit=7") && !strings.Contains(out, "exit=52") && !strings.Contains(out, "exit=56") {
		e.t.Fatalf("workload's connect after exec died: %q; want refused or reset (curl exit 7, 52, 56) or no connect at all", out)
	}
}

// assertCleaned waits until the pins and the cgroup are gone.
func (e *execUnderTest) assertCleaned() {
	e.t.Helper()
	for i := 0; ; i++ {
		_, perr := os.Stat(e.pinDir)
		_, cerr := os.Stat(e.cgroup)
		if errors.Is(perr, os.ErrNotExist) && errors.Is(cerr, os.ErrNotExist) {
			return
		}
		if i == 3000 {
			e.t.Fatalf("left behind: pins %v, cgroup %v\n%s", perr, cerr, e.logs())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (e *execUnderTest) waitExited() {
	e.t.Helper()
	select {
	case <-e.exited:
	case <-time.After(60 * time.Second):
		e.t.Fatal("exec did not exit")
	}
}

// TestExecKilledWorkloadDiesWithIt: a supervisor (or an attacker who can
// signal exec) SIGKILLs `chio-agent exec` while its workload runs. The
// workload must not outlive its protection: its next connect is refused
// (the pinned hooks stay) or it is already dead (the reaper killed its
// cgroup), and never reaches the server; then the pins and the cgroup go.
// The unprivileged workload cannot kill the reaper (nor exec) first.
func TestExecKilledWorkloadDiesWithIt(t *testing.T) {
	e := startExecWorkload(t, nil)
	for _, pid := range []int{e.reaper, e.cmd.Process.Pid} {
		if pid == 0 {
			continue
		}
		kill := exec.Command("setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups", "--", "kill", "-KILL", strconv.Itoa(pid))
		testutil.Cgroup{Path: e.cgroup}.CommandIn(t, kill)
		if out, err := kill.CombinedOutput(); err == nil {
			t.Fatalf("an unprivileged workload killed pid %d: %s", pid, out)
		}
		if err := syscall.Kill(pid, 0); err != nil {
			t.Fatalf("pid %d after the workload's kill: %v", pid, err)
		}
	}
	e.cmd.Process.Signal(syscall.SIGKILL)
	e.waitExited()
	e.t.Logf("the workload after exec died: %q", e.tryConnect())
	e.assertCleaned()
	if err := syscall.Kill(e.reaper, 0); e.reaper != 0 && err == nil {
		if st, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", e.reaper)); !strings.Contains(string(st), ") Z ") {
			t.Fatalf("reaper %d still running after cleaning up", e.reaper)
		}
	}
}

// TestExecTermThenKillWorkloadDiesWithIt: a supervisor's stop: SIGTERM
// (which exec passes to the workload, which ignores it), then SIGKILL.
func TestExecTermThenKillWorkloadDiesWithIt(t *testing.T) {
	e := startExecWorkload(t, nil)
	e.cmd.Process.Signal(syscall.SIGTERM)
	e.cmd.Process.Signal(syscall.SIGKILL)
	e.waitExited()
	e.t.Logf("the workload after exec died: %q", e.tryConnect())
	e.assertCleaned()
}

// TestExecAndReaperKilledHooksStillRefuse: exec and its reaper are both
// SIGKILLed (a supervisor killing the whole unit): the workload survives,
// but the pinned hooks refuse its connects; `uninstall --force` sweeps the
// dead run, killing the workload first.
func TestExecAndReaperKilledHooksStillRefuse(t *testing.T) {
	e := startExecWorkload(t, nil)
	if e.reaper != 0 {
		syscall.Kill(e.reaper, syscall.SIGKILL)
	}
	e.cmd.Process.Signal(syscall.SIGKILL)
	e.waitExited()
	for i := 0; e.reaper != 0 && syscall.Kill(e.reaper, 0) == nil; i++ {
		if st, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", e.reaper)); strings.Contains(string(st), ") Z ") || i == 3000 {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	// The workload still runs: one connect, refused by the pinned hooks.
	e.stdin.Write([]byte("go\n"))
	e.outPipe.SetReadDeadline(time.Now().Add(60 * time.Second))
	line, err := e.stdout.ReadString('\n')
	if err != nil {
		t.Fatalf("workload output: %q, %v\n%s", line, err, e.logs())
	}
	if !strings.Contains(line, "exit=7") || e.accepts.Load() != 0 {
		t.Fatalf("connect with exec and reaper dead: %q, %d accepted; want refused and none", line, e.accepts.Load())
	}
	// Without --force the live workload is reported, left pinned.
	bin := binary(t)
	out, err := exec.Command(bin, "uninstall", "--pin-dir", filepath.Join(t.TempDir(), "none")).CombinedOutput()
	if err == nil || !strings.Contains(string(out), e.cgroup) {
		t.Fatalf("uninstall with a dead exec's workload running: %v\n%s\nwant it named and an error", err, out)
	}
	if populated, _ := cgroupfs.Populated(e.cgroup); !populated {
		t.Fatalf("uninstall without --force killed the workload")
	}
	out, err = exec.Command(bin, "uninstall", "--force", "--pin-dir", filepath.Join(t.TempDir(), "none")).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "removed "+e.pinDir) {
		t.Fatalf("uninstall --force: %v\n%s", err, out)
	}
	if rest := e.tryConnect(); rest != "" {
		t.Fatalf("workload printed %q after the sweep killed it", rest)
	}
	e.assertCleaned()
}

// TestExecUnitStoppedWorkloadDiesWithIt: exec runs as a service whose
// supervisor stops it as systemd does (KillMode=control-group): SIGTERM to
// every process of the service's cgroup, then SIGKILL to all of them. The
// workload (in its own cgroup) must not outlive exec.
func TestExecUnitStoppedWorkloadDiesWithIt(t *testing.T) {
	unit := testutil.NewCgroup(t, "")
	e := startExecWorkload(t, &unit)
	b, err := os.ReadFile(filepath.Join(unit.Path, "cgroup.procs"))
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range strings.Fields(string(b)) {
		pid, _ := strconv.Atoi(f)
		syscall.Kill(pid, syscall.SIGTERM)
	}
	if err := os.WriteFile(filepath.Join(unit.Path, "cgroup.kill"), []byte("1"), 0); err != nil {
		t.Fatal(err)
	}
	e.waitExited()
	e.t.Logf("the workload after exec died: %q", e.tryConnect())
	e.assertCleaned()
}

// TestExecTermCleansUp: the ordinary stop. SIGTERM reaches the workload,
// which exits; exec exits with 128+15 only after it has removed its pins,
// its cgroup and its reaper.
func TestExecTermCleansUp(t *testing.T) {
	e := startExecWorkloadWith(t, nil, false)
	e.cmd.Process.Signal(syscall.SIGTERM)
	e.waitExited()
	if code := e.cmd.ProcessState.ExitCode(); code != 128+15 {
		t.Fatalf("exec exit status %d; want 143\n%s", code, e.logs())
	}
	for _, p := range []string{e.pinDir, e.cgroup} {
		if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s when exec has exited: %v; want removed", p, err)
		}
	}
	if st, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", e.reaper)); err == nil && !strings.Contains(string(st), ") Z ") {
		t.Errorf("reaper still running when exec has exited: %s", st)
	}
}
