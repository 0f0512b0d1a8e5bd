package main

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/backbay-labs/chio-agent/agent"
	"github.com/backbay-labs/chio-agent/internal/cgroupfs"
	"github.com/backbay-labs/chio-agent/internal/testutil"
)

// TestRunMissingWorkloadThenReload starts `run` with one present and two
// absent cgroups (one whose parent exists, one whose parent does not): the
// agent starts, protects the present one and reports the others (status,
// log, metric); making them protects them; SIGHUP with an edited kernel.yaml
// adds and removes workloads, and a kernel.yaml that cannot be read changes
// nothing.
func TestRunMissingWorkloadThenReload(t *testing.T) {
	bin, dir, pinDir, keyPath := daemonTest(t)
	parent := testutil.NewCgroup(t, "")
	present := testutil.NewCgroup(t, parent.Path)
	suffix := filepath.Base(pinDir)
	late := filepath.Join(parent.Path, "late-"+suffix)       // parent exists
	deepParent := filepath.Join(parent.Path, "deep-"+suffix) // parent missing too
	deep := filepath.Join(deepParent, "unit")
	t.Cleanup(func() { cgroupfs.Remove(deep); cgroupfs.Remove(deepParent); cgroupfs.Remove(late) })

	port := serveBody(t, "upstream")
	policy := filepath.Join(dir, "policy.yaml")
	if err := os.WriteFile(policy, []byte("hushspec: \"0.1.0\"\nname: by-path\nrules:\n  egress:\n    allow: [\"api.allowed.test\"]\n    block: [\"api.blocked.test\"]\n    default: block\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	db := filepath.Join(dir, "receipts.db")
	d := newDaemon(t, bin, dir)
	writeConfig := func(workloads map[string]string) {
		t.Helper()
		var b strings.Builder
		b.WriteString(agentYAML(policy, keyPath, db, pinDir, d.socket))
		b.WriteString("  hosts: {api.allowed.test: [127.0.0.1], api.blocked.test: [127.0.0.1]}\n  workloads:\n")
		for name, cg := range workloads {
			fmt.Fprintf(&b, "    - name: %s\n      cgroup: %s\n", name, cg)
		}
		replaceFile(t, d.config, b.String(), 0o600)
	}
	// curl asks for host from inside cg: 200 when allowed (or when not
	// protected at all), 403 when the agent denied it.
	curl := func(cg string, host string) string {
		t.Helper()
		id, err := cgroupfs.ID(cg)
		if err != nil {
			t.Fatal(err)
		}
		out, _ := curlIn(t, testutil.Cgroup{Path: cg, ID: id}, host, port)
		return out
	}
	workload := func(name string) (agent.WorkloadStatus, bool) {
		for _, w := range d.status().Workloads {
			if w.Name == name {
				return w, true
			}
		}
		return agent.WorkloadStatus{}, false
	}
	stateIs := func(name string, st agent.WorkloadState) func() bool {
		return func() bool { w, ok := workload(name); return ok && w.State == st }
	}

	writeConfig(map[string]string{"present": present.Path, "late": late, "deep": deep})
	d.start()
	defer func() {
		d.signal(syscall.SIGTERM)
		<-d.exited
	}()

	// Started: the present one protected, the absent ones reported.
	if w, _ := workload("present"); w.State != agent.StateProtected || w.CgroupID != present.ID {
		t.Fatalf("present workload = %+v; want protected, cgroup %d", w, present.ID)
	}
	if w, _ := workload("late"); w.State != agent.StateWaiting || w.CgroupID != 0 {
		t.Fatalf("late workload = %+v; want waiting (parent exists, path guarded)", w)
	}
	if w, _ := workload("deep"); w.State != agent.StateMissing || w.CgroupID != 0 {
		t.Fatalf("deep workload = %+v; want missing (parent missing)", w)
	}
	if !strings.Contains(d.logs.String(), "workload cgroup does not exist") {
		t.Fatalf("no log line for the missing workloads:\n%s", d.logs)
	}
	metrics, err := exec.Command("curl", "-sS", "--unix-socket", d.socket, "http://agent/metrics").CombinedOutput()
	if err != nil {
		t.Fatalf("metrics: %v: %s", err, metrics)
	}
	for _, want := range []string{
		`chio_agent_workload_state{state="protected",workload="present"} 1`,
		`chio_agent_workload_state{state="waiting",workload="late"} 1`,
		`chio_agent_workload_state{state="missing",workload="deep"} 1`,
	} {
		if !strings.Contains(string(metrics), want) {
			t.Fatalf("metrics lack %s:\n%s", want, metrics)
		}
	}
	if got := curl(present.Path, "api.blocked.test"); got != "403" {
		t.Fatalf("blocked host from the present workload: %q; want 403", got)
	}

	// The absent cgroups appear: protected, their connections decided.
	if err := os.Mkdir(late, 0o755); err != nil {
		t.Fatal(err)
	}
	lateID, _ := cgroupfs.ID(late)
	d.eventually("late protected", func() bool { w, _ := workload("late"); return w.State == agent.StateProtected && w.CgroupID == lateID })
	if got := curl(late, "api.blocked.test"); got != "403" {
		t.Fatalf("blocked host from the late workload: %q; want 403", got)
	}
	if err := os.Mkdir(deepParent, 0o755); err != nil {
		t.Fatal(err)
	}
	d.eventually("deep waiting once its parent exists", stateIs("deep", agent.StateWaiting))
	if err := os.Mkdir(deep, 0o755); err != nil {
		t.Fatal(err)
	}
	d.eventually("deep protected", stateIs("deep", agent.StateProtected))
	if got := curl(deep, "api.allowed.test"); got != "200" {
		t.Fatalf("allowed host from the deep workload: %q; want 200", got)
	}
	out, err := exec.Command(bin, "receipts", "list", "--receipts", db, "--status-socket", d.socket, "--lock-timeout", "100ms", "--json").CombinedOutput()
	if err != nil || !strings.Contains(string(out), `"workload":"late"`) || !strings.Contains(string(out), `"workload":"deep"`) {
		t.Fatalf("receipts of the late workloads: %v\n%s", err, out)
	}

	// SIGHUP with an edited kernel.yaml: "present" dropped, "added" added.
	added := testutil.NewCgroup(t, parent.Path)
	if got := curl(added.Path, "api.blocked.test"); got != "200" {
		t.Fatalf("blocked host from a cgroup nobody protects yet: %q; want 200 (direct)", got)
	}
	writeConfig(map[string]string{"late": late, "deep": deep, "added": added.Path})
	d.signal(syscall.SIGHUP)
	d.eventually("added protected", stateIs("added", agent.StateProtected))
	d.eventually("present dropped", func() bool { _, ok := workload("present"); return !ok })
	if got := curl(added.Path, "api.blocked.test"); got != "403" {
		t.Fatalf("blocked host from the added workload: %q; want 403", got)
	}
	if got := curl(present.Path, "api.blocked.test"); got != "200" {
		t.Fatalf("blocked host from the dropped workload: %q; want 200 (no longer protected)", got)
	}

	// A kernel.yaml that cannot be read: refused, nothing changes.
	if err := os.WriteFile(d.config, []byte("agent: [not, a, map\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	d.signal(syscall.SIGHUP)
	d.eventually("bad kernel.yaml refused", func() bool { return d.statusError("workload reload refused") })
	if ws := d.status().Workloads; len(ws) != 3 {
		t.Fatalf("workloads after a refused reload = %+v; want late, deep and added", ws)
	}
	if got := curl(added.Path, "api.blocked.test"); got != "403" {
		t.Fatalf("after a refused reload: %q; want 403 (still protected)", got)
	}
	if _, err := os.Stat(d.ready); errors.Is(err, os.ErrNotExist) {
		t.Fatalf("agent stopped:\n%s", d.logs)
	}
}
