package cgroupfs

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// TestKillEmptiesCgroup kills a cgroup holding a process in a child cgroup,
// by cgroup.kill and by the fallback for kernels without it, then removes
// the tree.
func TestKillEmptiesCgroup(t *testing.T) {
	if os.Geteuid() != 0 {
		skip(t, "needs root to make cgroups")
	}
	mnt, err := Mount()
	if err != nil {
		skip(t, "no cgroup v2: "+err.Error())
	}
	for name, kill := range map[string]func(context.Context, string) error{
		"cgroup.kill": Kill,
		"fallback": func(ctx context.Context, p string) error {
			if err := killEach(ctx, p); err != nil {
				return err
			}
			return WaitEmpty(ctx, p)
		},
	} {
		t.Run(name, func(t *testing.T) {
			dir, err := os.MkdirTemp(mnt, "chio-test-kill-")
			if err != nil {
				t.Fatal(err)
			}
			child := filepath.Join(dir, "child")
			if err := os.Mkdir(child, 0o755); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { Kill(context.Background(), dir); RemoveTree(dir) })
			f, err := os.Open(child)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			cmd := exec.Command("sleep", "1000")
			PlaceCommand(cmd, f)
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			go cmd.Wait()
			if p, err := Populated(dir); err != nil || !p {
				t.Fatalf("populated = %v, %v; want true", p, err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			if err := kill(ctx, dir); err != nil {
				t.Fatalf("kill: %v", err)
			}
			if p, err := Populated(dir); err != nil || p {
				t.Fatalf("populated after kill = %v, %v; want false", p, err)
			}
			if err := RemoveTree(dir); err != nil {
				t.Fatalf("remove: %v", err)
			}
			if _, err := os.Stat(dir); !os.IsNotExist(err) {
				t.Fatalf("cgroup left: %v", err)
			}
		})
	}
}

// skip is testutil.Skip (which imports this package): under CI=true a
// privileged test that cannot run fails.
func skip(t *testing.T, reason string) {
	t.Helper()
	if os.Getenv("CI") == "true" {
		t.Fatalf("privileged test cannot run under CI=true: %s", reason)
	}
	t.Skip(reason)
}
