package agent

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/backbay-labs/chio-agent/bpf"
	"github.com/backbay-labs/chio-agent/internal/cgroupfs"
	"github.com/backbay-labs/chio-agent/internal/testutil"
	"github.com/backbay-labs/chio-agent/kernel/hushspec"
	"github.com/backbay-labs/chio-agent/receipts"
)

// TestExecFromTestBinaryKillsLeftovers calls Exec in this (test) process:
// its reaper is this test binary run again, and a daemon the command leaves
// behind is killed before the hooks go, then pins and cgroup are removed.
func TestExecFromTestBinaryKillsLeftovers(t *testing.T) {
	testutil.RequireRoot(t)
	policy, err := hushspec.Parse([]byte("hushspec: \"0.1.0\"\nrules:\n  egress:\n    default: block\n"))
	if err != nil {
		t.Fatal(err)
	}
	_, key, _ := ed25519.GenerateKey(rand.Reader)
	log, err := receipts.Open(filepath.Join(t.TempDir(), "receipts.db"), receipts.Options{Key: key})
	if err != nil {
		t.Fatal(err)
	}
	defer log.Close()
	var out bytes.Buffer
	code, err := Exec(context.Background(), ExecOptions{
		Agent:  Options{Policy: policy, Key: key, Log: log},
		Args:   []string{"sh", "-c", "sleep 1000 >/dev/null 2>&1 & echo $! $(grep ^0:: /proc/self/cgroup)"},
		Stdout: &out,
	})
	if errors.Is(err, bpf.ErrNotSupported) {
		testutil.Skip(t, "kernel lacks an eBPF feature: "+err.Error())
	}
	if err != nil || code != 0 {
		t.Fatalf("exec: %d, %v", code, err)
	}
	fields := strings.Fields(out.String())
	if len(fields) != 2 {
		t.Fatalf("command printed %q", out.String())
	}
	pid, _ := strconv.Atoi(fields[0])
	// Killed: gone, or a zombie its new parent has not reaped yet.
	if st, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid)); err == nil && !strings.Contains(string(st), ") Z ") {
		t.Fatalf("the command's background sleep %d after exec returned: %s; want it killed", pid, st)
	}
	mnt, _ := cgroupfs.Mount()
	cg := filepath.Join(mnt, strings.TrimPrefix(fields[1], "0::"))
	id, ok := strings.CutPrefix(filepath.Base(cg), execCgroupPrefix)
	if !ok {
		t.Fatalf("command ran in cgroup %s, not an exec run's", cg)
	}
	for _, p := range []string{cg, filepath.Join(ExecPinRoot, id)} {
		if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s after exec returned: %v; want it removed", p, err)
		}
	}
}

// TestSweepExecRunsRemovesDeadRuns: a run whose exec process is gone and
// whose cgroup is empty is swept; a live process's run is not.
func TestSweepExecRunsRemovesDeadRuns(t *testing.T) {
	testutil.RequireRoot(t)
	mnt, err := cgroupfs.Mount()
	if err != nil {
		testutil.Skip(t, "no cgroup v2: "+err.Error())
	}
	if err := bpf.EnsureBPFFS("/sys/fs/bpf"); err != nil {
		t.Fatal(err)
	}
	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}
	live, err := newExecRun(mnt)
	if err != nil {
		t.Fatal(err)
	}
	stale := runFromID(mnt, fmt.Sprintf("%d-1-1", dead.Process.Pid))
	for _, r := range []execRun{live, stale} {
		if err := os.MkdirAll(r.pinDir, 0o700); err != nil {
			t.Fatal(err)
		}
		if _, err := cgroupfs.Create(r.cgroup); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cleanupRun(context.Background(), r.cgroup, r.pinDir) })
	}
	got, err := SweepExecRuns(context.Background(), false)
	if err != nil {
		t.Fatalf("sweep: %v", err)
	}
	found := false
	for _, s := range got {
		if s.PinDir == live.pinDir {
			t.Fatalf("swept a live exec's run: %+v", s)
		}
		if s.PinDir == stale.pinDir {
			found = s.Removed && !s.Running
		}
	}
	if !found {
		t.Fatalf("sweep = %+v; want %s removed", got, stale.pinDir)
	}
	for _, p := range []string{stale.pinDir, stale.cgroup} {
		if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s after the sweep: %v", p, err)
		}
	}
	for _, p := range []string{live.pinDir, live.cgroup} {
		if _, err := os.Stat(p); err != nil {
			t.Errorf("live run's %s after the sweep: %v", p, err)
		}
	}
}
