package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/sirupsen/logrus"

	"github.com/backbay-labs/chio-agent/bpf"
	"github.com/backbay-labs/chio-agent/internal/cgroupfs"
	"github.com/backbay-labs/chio-agent/kernel"
)

// ExecOptions configure Exec.
type ExecOptions struct {
	// Agent configures the proxy; AttachCgroup and PinDir are set by Exec
	// (a fresh cgroup, a fresh pin directory under ExecPinRoot).
	Agent Options
	// Name is the workload's name in receipts. Default "exec/<command>".
	Name string
	// Labels are recorded in every receipt.
	Labels map[string]string
	// EgressPorts, InboundPorts and InboundAll restrict the command's
	// destination ports and open local ones, as WorkloadSpec's fields do.
	EgressPorts  []uint16
	InboundPorts []uint16
	InboundAll   bool
	// Args is the command and its arguments. Required.
	Args []string
	// Stdin, Stdout, Stderr are the command's. Defaults: the process's own.
	Stdin          io.Reader
	Stdout, Stderr io.Writer
}

// Exec runs a command unmodified in a fresh protected cgroup, every TCP
// connection of it (and of its children) through the proxy, and returns its
// exit status. Everything Exec made is removed before it returns; the
// receipt log is the caller's to close.
//
// The workload never outlives its protection. The hooks are pinned under
// ExecPinRoot, so if this process dies (SIGKILL included) they stay and
// refuse the workload's connections; a reaper process started first sees
// this process end, kills the workload's cgroup, and only then removes the
// pins and the cgroup. Runs left by a dead exec whose reaper died too are
// swept by the next Exec (and by `chio-agent uninstall`).
func Exec(ctx context.Context, o ExecOptions) (code int, err error) {
	if len(o.Args) == 0 {
		return 0, errors.New("exec: no command given")
	}
	path, err := exec.LookPath(o.Args[0])
	if err != nil {
		return 0, fmt.Errorf("exec: %w", err)
	}
	mnt, err := cgroupfs.Mount()
	if err != nil {
		return 0, fmt.Errorf("exec: %w", err)
	}
	logger := o.Agent.Logger
	if logger == nil {
		l := logrus.New()
		l.Out = io.Discard
		logger = l
	}
	if stale, err := SweepExecRuns(ctx, false); err != nil {
		logger.WithError(err).Warn("could not sweep what dead exec runs left")
	} else {
		for _, s := range stale {
			logger.WithFields(logrus.Fields{"pin_dir": s.PinDir, "cgroup": s.Cgroup, "removed": s.Removed, "running": s.Running}).
				Warn("found a dead exec run")
		}
	}
	run, err := newExecRun(mnt)
	if err != nil {
		return 0, fmt.Errorf("exec: %w", err)
	}
	if err := bpf.EnsureBPFFS("/sys/fs/bpf"); err != nil {
		return 0, fmt.Errorf("exec: %w", err)
	}
	if err := os.MkdirAll(ExecPinRoot, 0o700); err != nil {
		return 0, fmt.Errorf("exec: make pin directory: %w", err)
	}
	// The reaper first: from here on, whatever this process makes is
	// cleaned up even if it is killed the next instant.
	rp, err := startReaper(run, mnt)
	if err != nil {
		return 0, fmt.Errorf("exec: %w", err)
	}
	var a *Agent
	defer func() {
		// The workload dies before its hooks go, never after.
		cctx, cancel := context.WithTimeout(context.Background(), reaperTimeout)
		defer cancel()
		kerr := cgroupfs.Kill(cctx, run.cgroup)
		if a != nil {
			a.Close()
		}
		var cerr error
		if kerr == nil {
			cerr = cleanupRun(cctx, run.cgroup, run.pinDir)
		} else {
			// The pins stay (fail closed); the reaper tries again.
			cerr = fmt.Errorf("exec: %w", kerr)
		}
		if rerr := rp.stop(); cerr == nil && rerr != nil {
			cerr = rerr
		}
		if err == nil && cerr != nil {
			err = cerr
		}
	}()
	if _, err := cgroupfs.Create(run.cgroup); err != nil {
		return 0, fmt.Errorf("exec: %w", err)
	}

	opts := o.Agent
	opts.AttachCgroup, opts.PinDir = run.cgroup, run.pinDir
	if a, err = Start(opts); err != nil {
		return 0, err
	}
	name := o.Name
	if name == "" {
		name = "exec/" + filepath.Base(o.Args[0])
	}
	if err := a.Protect(WorkloadSpec{Name: name, Cgroup: run.cgroup, Labels: o.Labels,
		EgressPorts: o.EgressPorts, InboundPorts: o.InboundPorts, InboundAll: o.InboundAll}); err != nil {
		return 0, err
	}

	dir, err := os.Open(run.cgroup)
	if err != nil {
		return 0, fmt.Errorf("exec: %w", err)
	}
	defer dir.Close()
	cmd := exec.Command(path, o.Args[1:]...)
	cmd.Args[0] = o.Args[0]
	cmd.Stdin, cmd.Stdout, cmd.Stderr = orReader(o.Stdin, os.Stdin), orWriter(o.Stdout, os.Stdout), orWriter(o.Stderr, os.Stderr)
	cgroupfs.PlaceCommand(cmd, dir)
	if err := cmd.Start(); err != nil {
		return 0, fmt.Errorf("exec %s: %w", o.Args[0], err)
	}
	// Signals meant for the command reach it; exec itself waits for it.
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGQUIT)
	defer signal.Stop(sigs)
	done := make(chan struct{})
	go func() {
		for {
			select {
			case s := <-sigs:
				cmd.Process.Signal(s)
			case <-ctx.Done():
				cmd.Process.Signal(syscall.SIGTERM)
				return
			case <-done:
				return
			}
		}
	}()
	err = cmd.Wait()
	close(done)
	if err == nil {
		return 0, nil
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return 128 + int(ws.Signal()), nil
		}
		return ee.ExitCode(), nil
	}
	return 0, fmt.Errorf("exec %s: %w", o.Args[0], err)
}

func orReader(r, def io.Reader) io.Reader {
	if r == nil {
		return def
	}
	return r
}

func orWriter(w, def io.Writer) io.Writer {
	if w == nil {
		return def
	}
	return w
}

// FormatDecision renders a decision as one line for a terminal.
func FormatDecision(d Decision) string {
	var b strings.Builder
	fmt.Fprintf(&b, "chio: %-5s %s", strings.ToUpper(d.Verdict), d.Comm)
	if d.PID != 0 {
		fmt.Fprintf(&b, "[%d]", d.PID)
	}
	b.WriteString(" → ")
	switch {
	case d.Name != "":
		fmt.Fprintf(&b, "%s (%s %s)", d.Name, d.Dst, d.Protocol)
	case !d.Dst.IsValid(): // a refused socket(): no destination yet
		fmt.Fprintf(&b, "socket/%s", d.Transport)
	default:
		fmt.Fprintf(&b, "%s/%s", d.Dst, d.Transport)
	}
	// The policy rule when the policy decided; else the agent's own guard.
	if d.MatchedRule != "" && (d.Guard == "" || d.Guard == kernel.GuardEgressPolicy) {
		fmt.Fprintf(&b, " %s", d.MatchedRule)
	} else if d.Guard != "" {
		fmt.Fprintf(&b, " %s", d.Guard)
	}
	if d.Reason != "" {
		fmt.Fprintf(&b, ": %s", d.Reason)
	}
	if d.ReceiptID != "" {
		id := d.ReceiptID
		if len(id) > 12 {
			id = id[:12]
		}
		fmt.Fprintf(&b, " [receipt %s seq %d]", id, d.Seq)
	}
	if d.Err != "" {
		fmt.Fprintf(&b, " (failed: %s)", d.Err)
	}
	return b.String()
}
