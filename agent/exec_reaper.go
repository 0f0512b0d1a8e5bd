package agent

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/backbay-labs/chio-agent/bpf"
	"github.com/backbay-labs/chio-agent/internal/cgroupfs"
)

// ExecPinRoot holds one directory per running `exec` (named by its run id),
// under which that run pins its programs, links and maps. Pinned, the hooks
// outlive an exec that is killed, so its workload's connections keep going
// to a listener that is gone and fail, until the run's reaper kills the
// workload and removes the pins.
const ExecPinRoot = "/sys/fs/bpf/chio-exec"

// execCgroupPrefix names an exec run's workload cgroup under the cgroup2
// mount: execCgroupPrefix + run id.
const execCgroupPrefix = "chio-exec-"

// reaperEnv selects the reaper in a re-executed copy of this binary (see
// init). It is set only in the reaper's own environment.
const reaperEnv = "CHIO_AGENT_EXEC_REAPER"

// reaperTimeout bounds how long a reaper waits for a killed workload to
// leave its cgroup; until it has, the pins stay (fail closed).
const reaperTimeout = 2 * time.Minute

// The reaper is this very binary run again, whatever binary that is
// (chio-agent, or a test binary that calls Exec): it is chosen here, before
// main or TestMain, by an environment variable only Exec sets.
func init() {
	if os.Getenv(reaperEnv) == "1" {
		os.Exit(reaperMain(os.Args[1:]))
	}
}

// execRun names what one Exec makes: <pid>-<start time of pid>-<n>. The pid
// and its start time tell a later sweep whether the exec that made it is
// alive (a reused pid has another start time); n tells apart the runs of
// one process.
type execRun struct {
	id     string
	cgroup string // the workload's cgroup
	pinDir string // ExecPinRoot/id
}

var execRuns atomic.Uint64

func newExecRun(cgroupMount string) (execRun, error) {
	pid := os.Getpid()
	start, err := procStartTime(pid)
	if err != nil {
		return execRun{}, err
	}
	id := fmt.Sprintf("%d-%d-%d", pid, start, execRuns.Add(1))
	return runFromID(cgroupMount, id), nil
}

func runFromID(cgroupMount, id string) execRun {
	return execRun{id: id, cgroup: filepath.Join(cgroupMount, execCgroupPrefix+id), pinDir: filepath.Join(ExecPinRoot, id)}
}

// ownerAlive reports whether the exec process that made run id still runs.
// An id that is not an exec run's is reported alive, so nothing touches it.
func ownerAlive(id string) bool {
	parts := strings.Split(id, "-")
	if len(parts) == 1 {
		// chio-exec-<pid>, from an older exec that pinned nothing: alive
		// while any process has that pid.
		pid, err := strconv.Atoi(id)
		if err != nil || pid <= 0 {
			return true
		}
		_, err = os.Stat(fmt.Sprintf("/proc/%d", pid))
		return !errors.Is(err, os.ErrNotExist)
	}
	if len(parts) != 3 {
		return true
	}
	pid, err1 := strconv.Atoi(parts[0])
	start, err2 := strconv.ParseUint(parts[1], 10, 64)
	if err1 != nil || err2 != nil || pid <= 0 {
		return true
	}
	now, err := procStartTime(pid)
	if errors.Is(err, os.ErrNotExist) {
		return false
	}
	return err != nil || now == start
}

// procStartTime returns a process's start time (clock ticks since boot,
// field 22 of /proc/PID/stat), which with its pid names it uniquely.
func procStartTime(pid int) (uint64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, fmt.Errorf("read process start time: %w", err)
	}
	// The command name (field 2) may hold spaces and parentheses: the
	// fields that follow start after its last ')'.
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return 0, fmt.Errorf("read process start time: malformed /proc/%d/stat", pid)
	}
	fields := strings.Fields(string(b[i+1:]))
	if len(fields) < 20 {
		return 0, fmt.Errorf("read process start time: malformed /proc/%d/stat", pid)
	}
	return strconv.ParseUint(fields[19], 10, 64)
}

// reaper is the process that cleans up after an Exec that dies: it holds
// the read end of a pipe whose write end only the exec process holds, so it
// sees EOF when that process ends however it ends (SIGKILL included).
type reaper struct {
	cmd  *exec.Cmd
	pipe *os.File // write end; closing it (or dying) starts the reaper
}

// startReaper starts the reaper for run and waits until it is ready. It
// runs as root, outside the workload's cgroup and outside exec's own: in
// the root of the cgroup2 hierarchy (when the kernel lets it start there),
// so that a supervisor stopping exec's whole cgroup (systemd's
// KillMode=control-group: SIGTERM, then SIGKILL to every process in it)
// kills exec but not the reaper, which then kills the workload. It is in
// its own process group (a terminal's ^C reaches exec and the workload, not
// it), and an unprivileged workload cannot signal it.
func startReaper(run execRun, cgroupMount string) (*reaper, error) {
	eofR, eofW, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("start exec reaper: %w", err)
	}
	readyR, readyW, err := os.Pipe()
	if err != nil {
		eofR.Close()
		eofW.Close()
		return nil, fmt.Errorf("start exec reaper: %w", err)
	}
	defer readyR.Close()
	newCmd := func() *exec.Cmd {
		cmd := exec.Command("/proc/self/exe", run.cgroup, run.pinDir)
		cmd.Args[0] = "chio-agent-exec-reaper"
		cmd.Env = []string{reaperEnv + "=1", "PATH=/usr/sbin:/usr/bin:/sbin:/bin"}
		cmd.Dir = "/"
		cmd.Stdin, cmd.Stdout, cmd.Stderr = eofR, readyW, os.Stderr
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		return cmd
	}
	cmd := newCmd()
	root, err := os.Open(cgroupMount)
	if err == nil {
		cgroupfs.PlaceCommand(cmd, root)
		err = cmd.Start()
		root.Close()
	}
	if err != nil {
		// No cgroup2 root to start in (a container's delegated subtree):
		// beside exec, where a supervisor that kills exec's cgroup kills
		// it too; the pinned hooks then still refuse the workload.
		cmd = newCmd()
		err = cmd.Start()
	}
	eofR.Close()
	readyW.Close()
	if err != nil {
		eofW.Close()
		return nil, fmt.Errorf("start exec reaper: %w", err)
	}
	r := &reaper{cmd: cmd, pipe: eofW}
	readyR.SetReadDeadline(time.Now().Add(30 * time.Second))
	line, err := bufio.NewReader(readyR).ReadString('\n')
	if err != nil || line != "ready\n" {
		r.cmd.Process.Kill()
		r.stop()
		return nil, fmt.Errorf("start exec reaper: not ready: %q, %v", line, err)
	}
	return r, nil
}

// stop tells the reaper that exec is done (it then finds nothing left, or
// cleans what exec could not) and waits for it.
func (r *reaper) stop() error {
	r.pipe.Close()
	if err := r.cmd.Wait(); err != nil {
		return fmt.Errorf("exec reaper: %w", err)
	}
	return nil
}

// reaperMain is the reaper process: args are the run's cgroup and pin dir.
func reaperMain(args []string) int {
	// Signals meant for exec's terminal or process group are not for it;
	// SIGKILL still ends it (and leaves the pins: still fail closed).
	signal.Ignore(syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGQUIT, syscall.SIGPIPE,
		syscall.SIGTSTP, syscall.SIGTTIN, syscall.SIGTTOU)
	if len(args) != 2 || !strings.HasPrefix(filepath.Base(args[0]), execCgroupPrefix) ||
		filepath.Dir(filepath.Clean(args[1])) != ExecPinRoot {
		fmt.Fprintf(os.Stderr, "chio-agent exec reaper: bad arguments %q\n", args)
		return 2
	}
	cg, pinDir := filepath.Clean(args[0]), filepath.Clean(args[1])
	os.Stdout.WriteString("ready\n")
	os.Stdout.Close()
	io.Copy(io.Discard, os.Stdin) // until EOF: exec is gone
	ctx, cancel := context.WithTimeout(context.Background(), reaperTimeout)
	defer cancel()
	if err := cleanupRun(ctx, cg, pinDir); err != nil {
		fmt.Fprintf(os.Stderr, "chio-agent exec reaper: %v\n", err)
		return 1
	}
	return 0
}

// cleanupRun ends an exec run: the workload is killed and gone before the
// hooks are detached, so it never runs unprotected. Until the cgroup is
// empty the pins stay. Whatever is already gone is skipped.
func cleanupRun(ctx context.Context, cg, pinDir string) error {
	if err := cgroupfs.Kill(ctx, cg); err != nil {
		return fmt.Errorf("clean up exec run: %w (its hooks stay pinned under %s)", err, pinDir)
	}
	var errs []error
	if _, err := bpf.Uninstall(pinDir); err != nil {
		errs = append(errs, err)
	}
	if err := cgroupfs.RemoveTree(cg); err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("clean up exec run: %w", err)
	}
	return nil
}

// StaleExecRun is what a run of exec left behind when its exec process is
// gone and its reaper did not finish (it was killed too).
type StaleExecRun struct {
	PinDir string
	Cgroup string
	// Running: processes are still in the cgroup (refused every
	// connection by the pinned hooks).
	Running bool
	// Removed: swept.
	Removed bool
}

// SweepExecRuns removes what dead exec runs left: pins under ExecPinRoot and
// chio-exec-* cgroups whose exec process is gone and which no live process
// holds. A run whose workload still runs is removed only with kill (its
// processes are killed first); otherwise it is reported and left pinned,
// fail closed.
func SweepExecRuns(ctx context.Context, kill bool) ([]StaleExecRun, error) {
	mnt, err := cgroupfs.Mount()
	if err != nil {
		return nil, fmt.Errorf("sweep exec runs: %w", err)
	}
	ids := map[string]bool{}
	if entries, err := os.ReadDir(ExecPinRoot); err == nil {
		for _, e := range entries {
			ids[e.Name()] = true
		}
	}
	if entries, err := os.ReadDir(mnt); err == nil {
		for _, e := range entries {
			if id, ok := strings.CutPrefix(e.Name(), execCgroupPrefix); ok && e.IsDir() {
				ids[id] = true
			}
		}
	}
	var out []StaleExecRun
	var errs []error
	for id := range ids {
		if ownerAlive(id) {
			continue
		}
		run := runFromID(mnt, id)
		if err := bpf.CheckOwner(run.pinDir); err != nil {
			continue // a live process holds it (or it cannot be read): not stale
		}
		populated, err := cgroupfs.Populated(run.cgroup)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		s := StaleExecRun{PinDir: run.pinDir, Cgroup: run.cgroup, Running: populated}
		if !populated || kill {
			if err := cleanupRun(ctx, run.cgroup, run.pinDir); err != nil {
				errs = append(errs, err)
			} else {
				s.Removed = true
			}
		}
		out = append(out, s)
	}
	if err := errors.Join(errs...); err != nil {
		return out, fmt.Errorf("sweep exec runs: %w", err)
	}
	return out, nil
}
