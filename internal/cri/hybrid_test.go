package cri

import (
	"bytes"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/backbay-labs/chio-agent/internal/cgroupfs"
	"github.com/backbay-labs/chio-agent/internal/testutil"
)

// TestProcCgroupOnThisHost reads a process's cgroup as the agent does (the
// cgroup2 mount from mountinfo, the "0::" line of /proc/PID/cgroup) for a
// process started in a test cgroup, and checks it names that cgroup. On a
// hybrid host (cgroup v1 hierarchies at /sys/fs/cgroup/<controller>, cgroup2
// at /sys/fs/cgroup/unified, as on the machines these tests run on) the v1
// lines come first in /proc/PID/cgroup and the mount is not /sys/fs/cgroup:
// a reader that took the first line, or assumed the mount, names another
// directory.
func TestProcCgroupOnThisHost(t *testing.T) {
	testutil.RequireRoot(t)
	mnt, err := cgroupfs.Mount()
	if err != nil {
		testutil.Skip(t, "no cgroup2 hierarchy: "+err.Error())
	}
	cg := testutil.NewCgroup(t, "")
	cmd := exec.Command("cat", "/proc/self/cgroup")
	cg.CommandIn(t, cmd)
	raw, err := cmd.Output()
	if err != nil {
		t.Fatalf("cat /proc/self/cgroup in %s: %v", cg.Path, err)
	}
	rel, err := ParseProcCgroup(bytes.NewReader(raw))
	if err != nil {
		t.Fatalf("parse %q: %v", raw, err)
	}
	hybrid := strings.Count(strings.TrimSpace(string(raw)), "\n") > 0
	t.Logf("cgroup2 at %s; v1 hierarchies beside it (hybrid): %v", mnt, hybrid)
	if hybrid && mnt == "/sys/fs/cgroup" {
		t.Errorf("v1 hierarchies listed beside a cgroup2 mount at /sys/fs/cgroup: %q", raw)
	}
	if got := Abs(mnt, rel); got != filepath.Clean(cg.Path) {
		t.Fatalf("process in %s read as in %s (from %q)", cg.Path, got, raw)
	}
}
