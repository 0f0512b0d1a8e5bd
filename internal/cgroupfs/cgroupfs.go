// Package cgroupfs finds the cgroup v2 hierarchy and names cgroups the way the
// eBPF programs see them (by cgroup id).
//
// The cgroup2 mount point differs between machines (/sys/fs/cgroup on a
// unified host, /sys/fs/cgroup/unified on a hybrid one), so it is always read
// from /proc/self/mountinfo and never hard-coded.
package cgroupfs

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// ErrNoCgroup2 means no cgroup v2 hierarchy is mounted in this mount namespace.
var ErrNoCgroup2 = errors.New("no cgroup2 filesystem mounted")

// Mount returns the mount point of the cgroup v2 hierarchy.
func Mount() (string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return "", fmt.Errorf("read mountinfo: %w", err)
	}
	defer f.Close()
	return parseMountinfo(f)
}

// parseMountinfo returns the first cgroup2 mount point in a mountinfo stream
// (proc(5): fields up to " - ", then fstype, source, options).
func parseMountinfo(r io.Reader) (string, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		line := sc.Text()
		pre, post, ok := strings.Cut(line, " - ")
		if !ok {
			continue
		}
		fields := strings.Fields(pre)
		tail := strings.Fields(post)
		if len(fields) < 5 || len(tail) < 1 || tail[0] != "cgroup2" {
			continue
		}
		return unescapeMountinfo(fields[4]), nil
	}
	if err := sc.Err(); err != nil {
		return "", fmt.Errorf("read mountinfo: %w", err)
	}
	return "", ErrNoCgroup2
}

// unescapeMountinfo undoes the octal escapes (\040 for space …) of mountinfo.
func unescapeMountinfo(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) && isOctal(s[i+1]) && isOctal(s[i+2]) && isOctal(s[i+3]) {
			b.WriteByte((s[i+1]-'0')<<6 | (s[i+2]-'0')<<3 | (s[i+3] - '0'))
			i += 3
			continue
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func isOctal(c byte) bool { return c >= '0' && c <= '7' }

// ID returns the cgroup id of the cgroup directory at path: the kernfs inode
// number, which is what bpf_get_current_cgroup_id() reports.
func ID(path string) (uint64, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return 0, fmt.Errorf("stat cgroup %s: %w", path, err)
	}
	var fs unix.Statfs_t
	if err := unix.Statfs(path, &fs); err != nil {
		return 0, fmt.Errorf("statfs cgroup %s: %w", path, err)
	}
	if fs.Type != unix.CGROUP2_SUPER_MAGIC {
		return 0, fmt.Errorf("cgroup %s: not on a cgroup2 filesystem", path)
	}
	return st.Ino, nil
}

// Resolve turns a cgroup path given by an operator into an absolute path under
// the cgroup2 mount: an absolute path inside the mount is kept, anything else
// is taken relative to the mount ("kubepods/pod1" or "/kubepods/pod1").
func Resolve(mount, p string) (string, error) {
	clean := filepath.Clean("/" + p)
	if strings.HasPrefix(clean+"/", mount+"/") {
		return clean, nil
	}
	full := filepath.Join(mount, clean)
	if !strings.HasPrefix(full+"/", mount+"/") {
		return "", fmt.Errorf("cgroup path %q escapes %s", p, mount)
	}
	return full, nil
}

// Create makes a new cgroup directory and returns its absolute path and id.
func Create(path string) (uint64, error) {
	if err := os.Mkdir(path, 0o755); err != nil {
		return 0, fmt.Errorf("create cgroup: %w", err)
	}
	return ID(path)
}

// Remove deletes an empty cgroup, killing what is left in it first (cgroup.kill)
// so that a cleanup after a failed run does not leave it behind.
func Remove(path string) error {
	if err := os.WriteFile(filepath.Join(path, "cgroup.kill"), []byte("1"), 0); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("kill cgroup %s: %w", path, err)
	}
	var err error
	// rmdir fails with EBUSY until the killed tasks are reaped; retry briefly.
	for i := 0; i < 200; i++ {
		if err = unix.Rmdir(path); err == nil || errors.Is(err, unix.ENOENT) {
			return nil
		}
		if !errors.Is(err, unix.EBUSY) {
			break
		}
		unix.Nanosleep(&unix.Timespec{Nsec: 5_000_000}, nil)
	}
	return fmt.Errorf("remove cgroup %s: %w", path, err)
}

// PlaceCommand makes cmd start directly inside the cgroup whose directory is
// open as dir (clone3 with CLONE_INTO_CGROUP), so that not even its first
// instruction runs outside. dir must stay open until cmd has started.
func PlaceCommand(cmd *exec.Cmd, dir *os.File) {
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.UseCgroupFD = true
	cmd.SysProcAttr.CgroupFD = int(dir.Fd())
}
