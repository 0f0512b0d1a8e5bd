package bpf_test

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/backbay-labs/chio-agent/bpf"
	"github.com/backbay-labs/chio-agent/internal/cgroupfs"
	"github.com/backbay-labs/chio-agent/internal/testutil"
)

// TestGuardedPathRefusedUntilProtected removes a protected cgroup and makes
// it again at the same path, as a systemd unit restart does: the new
// directory has a new id, which the workloads map does not know, and its
// connects must be refused in the kernel (not passed unprotected) until its
// new id is protected.
func TestGuardedPathRefusedUntilProtected(t *testing.T) {
	env := newRedirectEnv(t)
	rd := openEvents(t, env.objs)
	parentID, err := cgroupfs.ID(filepath.Dir(env.protected.Path))
	if err != nil {
		t.Fatal(err)
	}
	g := bpf.Guard{ParentID: parentID, Name: filepath.Base(env.protected.Path)}
	if err := env.objs.SetGuard(g, 7); err != nil {
		t.Fatalf("set guard: %v", err)
	}
	target := freeAddr(t, "tcp4", "127.0.0.1")
	// Protected and guarded: the protection wins, the connect is redirected.
	if out, code, _ := runIn(t, env.protected, target.String()); code != 0 {
		t.Fatalf("protected client: exit %d, %q; want redirected", code, out)
	}
	<-env.seen

	// rmdir then mkdir: same path, new cgroup id.
	if err := cgroupfs.Remove(env.protected.Path); err != nil {
		t.Fatal(err)
	}
	newID, err := cgroupfs.Create(env.protected.Path)
	if err != nil {
		t.Fatal(err)
	}
	if newID == env.protected.ID {
		t.Fatalf("recreated cgroup kept id %d", newID)
	}
	again := testutil.Cgroup{Path: env.protected.Path, ID: newID}
	for _, tc := range []struct {
		name  string
		run   func() (string, int, int)
		code  int
		proto bpf.Proto
	}{
		{"tcp", func() (string, int, int) { return runIn(t, again, target.String()) }, 2, bpf.ProtoTCP},
		{"udp", func() (string, int, int) { return runUDPIn(t, again, target.String()) }, 4, bpf.ProtoUDP},
	} {
		out, code, pid := tc.run()
		if code != tc.code || !strings.Contains(out, "operation not permitted") {
			t.Fatalf("%s from the recreated cgroup: exit %d, %q; want EPERM, never a connection", tc.name, code, out)
		}
		e := readEvent(t, rd)
		if e.Kind != bpf.EventGuarded || e.WorkloadID != 7 || e.CgroupID != newID || int(e.PID) != pid || e.Proto != tc.proto || e.Dst != target {
			t.Fatalf("%s event = %+v; want guarded, workload 7, cgroup %d, pid %d", tc.name, e, newID, pid)
		}
	}
	// A sibling nobody guards is untouched; a child of the guarded
	// directory is refused too.
	if out, code, _ := runIn(t, env.plain, target.String()); code != 3 {
		t.Fatalf("unguarded sibling: exit %d, %q; want a direct, refused connect", code, out)
	}
	child := testutil.NewCgroup(t, again.Path)
	other := freeAddr(t, "tcp4", "127.0.0.1") // another destination: not rate-limited
	if out, code, _ := runIn(t, child, other.String()); code != 2 {
		t.Fatalf("child of the recreated cgroup: exit %d, %q; want EPERM", code, out)
	}
	if e := readEvent(t, rd); e.Kind != bpf.EventGuarded || e.CgroupID != child.ID {
		t.Fatalf("child event = %+v; want guarded from cgroup %d", e, child.ID)
	}

	// Protecting the new id lifts the refusal: redirected again.
	l4 := env.listen(t, "tcp4", "127.0.0.1:0")
	if err := env.objs.Protect(newID, bpf.Workload{ID: 7, Listen4: l4}); err != nil {
		t.Fatal(err)
	}
	if out, code, _ := runIn(t, again, target.String()); code != 0 || out != "redirected "+target.String() {
		t.Fatalf("re-protected client: exit %d, %q; want redirected", code, out)
	}
	guards, err := env.objs.Guards()
	if err != nil || guards[g] != 7 {
		t.Fatalf("guards = %v, %v; want %v → 7", guards, err, g)
	}
	if err := env.objs.RemoveGuard(g); err != nil {
		t.Fatal(err)
	}
	if guards, _ := env.objs.Guards(); len(guards) != 0 {
		t.Fatalf("guards after removal = %v", guards)
	}
}
