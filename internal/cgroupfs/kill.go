package cgroupfs

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Kill kills every process in the cgroup and its descendants, and waits
// until none is left (or ctx ends). It writes cgroup.kill (Linux 5.14);
// where that is missing it freezes the cgroup (cgroup.freeze, Linux 5.2)
// so that nothing forks meanwhile, sends SIGKILL to every process listed,
// and repeats until the cgroup is empty. A cgroup that does not exist is
// empty.
func Kill(ctx context.Context, path string) error {
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	err := os.WriteFile(filepath.Join(path, "cgroup.kill"), []byte("1"), 0)
	switch {
	case err == nil, errors.Is(err, os.ErrNotExist) && gone(path):
	case errors.Is(err, os.ErrNotExist):
		// No cgroup.kill: an older kernel.
		if err := killEach(ctx, path); err != nil {
			return err
		}
	default:
		return fmt.Errorf("kill cgroup %s: %w", path, err)
	}
	return WaitEmpty(ctx, path)
}

// killEach is Kill for kernels without cgroup.kill: freeze (so that
// nothing forks meanwhile; SIGKILL still reaches frozen tasks), SIGKILL
// every process listed until none is, thaw.
func killEach(ctx context.Context, path string) error {
	os.WriteFile(filepath.Join(path, "cgroup.freeze"), []byte("1"), 0)
	defer os.WriteFile(filepath.Join(path, "cgroup.freeze"), []byte("0"), 0)
	for {
		pids, err := procs(path)
		if err != nil {
			return fmt.Errorf("kill cgroup %s: %w", path, err)
		}
		if len(pids) == 0 {
			return nil
		}
		for _, pid := range pids {
			unix.Kill(pid, unix.SIGKILL)
		}
		if err := pause(ctx); err != nil {
			return fmt.Errorf("kill cgroup %s: %w", path, err)
		}
	}
}

// WaitEmpty waits until no process is left in the cgroup or its
// descendants (cgroup.events says "populated 0"), or ctx ends.
func WaitEmpty(ctx context.Context, path string) error {
	for {
		populated, err := Populated(path)
		if err != nil {
			return fmt.Errorf("wait for cgroup %s: %w", path, err)
		}
		if !populated {
			return nil
		}
		if err := pause(ctx); err != nil {
			return fmt.Errorf("wait for cgroup %s: %w", path, err)
		}
	}
}

// Populated reports whether any process is in the cgroup or its
// descendants. A cgroup that does not exist is not populated.
func Populated(path string) (bool, error) {
	b, err := os.ReadFile(filepath.Join(path, "cgroup.events"))
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("read cgroup events: %w", err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "populated "); ok {
			return v != "0", nil
		}
	}
	return false, fmt.Errorf("read cgroup events of %s: no populated field", path)
}

// RemoveTree removes an empty cgroup and its (empty) descendants, deepest
// first. Gone already is not an error.
func RemoveTree(path string) error {
	var dirs []string
	err := walkDirs(path, func(dir string) error {
		dirs = append(dirs, dir)
		return nil
	})
	if err != nil {
		return fmt.Errorf("remove cgroup %s: %w", path, err)
	}
	for i := len(dirs) - 1; i >= 0; i-- {
		if err := unix.Rmdir(dirs[i]); err != nil && !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("remove cgroup %s: %w", dirs[i], err)
		}
	}
	return nil
}

// procs lists the processes of a cgroup and its descendants.
func procs(path string) ([]int, error) {
	var pids []int
	err := walkDirs(path, func(dir string) error {
		f, err := os.Open(filepath.Join(dir, "cgroup.procs"))
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		if err != nil {
			return err
		}
		defer f.Close()
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if pid, err := strconv.Atoi(strings.TrimSpace(sc.Text())); err == nil {
				pids = append(pids, pid)
			}
		}
		return sc.Err()
	})
	return pids, err
}

// walkDirs calls fn for the cgroup at path and every cgroup below it,
// parents first. A cgroup removed while it is walked is passed over: cgroups
// come and go under a walk.
func walkDirs(path string, fn func(dir string) error) error {
	return filepath.WalkDir(path, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, os.ErrNotExist) {
				return nil
			}
			return err
		}
		if !d.IsDir() {
			return nil
		}
		return fn(p)
	})
}

func gone(path string) bool {
	_, err := os.Stat(path)
	return errors.Is(err, os.ErrNotExist)
}

// pause waits a little between looks at a cgroup, or until ctx ends.
func pause(ctx context.Context) error {
	t := time.NewTimer(5 * time.Millisecond)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
