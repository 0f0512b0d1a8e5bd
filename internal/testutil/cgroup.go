package testutil

import (
	"crypto/rand"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/backbay-labs/chio-agent/internal/cgroupfs"
)

// Cgroup is a temporary cgroup v2 directory made by a test.
type Cgroup struct {
	Path string
	ID   uint64
}

// NewCgroup creates a cgroup under parent (the cgroup2 mount when parent is
// empty) and removes it, killing anything left inside, in t.Cleanup.
func NewCgroup(t testing.TB, parent string) Cgroup {
	t.Helper()
	RequireRoot(t)
	if parent == "" {
		mnt, err := cgroupfs.Mount()
		if err != nil {
			Skip(t, "no cgroup v2 hierarchy: "+err.Error())
		}
		parent = mnt
	}
	var b [6]byte
	rand.Read(b[:])
	path := filepath.Join(parent, "chio-test-"+hex.EncodeToString(b[:]))
	id, err := cgroupfs.Create(path)
	if err != nil {
		t.Fatalf("create test cgroup: %v", err)
	}
	t.Cleanup(func() {
		if err := cgroupfs.Remove(path); err != nil {
			t.Errorf("remove test cgroup: %v", err)
		}
	})
	return Cgroup{Path: path, ID: id}
}

// CommandIn prepares cmd to start directly inside the cgroup (clone3 with
// CLONE_INTO_CGROUP), so that not even its first instruction runs outside.
// The directory fd is closed in t.Cleanup.
func (c Cgroup) CommandIn(t testing.TB, cmd *exec.Cmd) {
	t.Helper()
	f, err := os.Open(c.Path)
	if err != nil {
		t.Fatalf("open cgroup: %v", err)
	}
	t.Cleanup(func() { f.Close() })
	cgroupfs.PlaceCommand(cmd, f)
}
