package agent

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"

	"golang.org/x/sys/unix"

	"github.com/backbay-labs/chio-agent/bpf"
	"github.com/backbay-labs/chio-agent/internal/cgroupfs"
)

// Protected from birth. A birth root is the cgroup directory of the pods'
// subtree: every cgroup made below it is refused the network in the kernel
// (socket(), connect() and sendmsg() on inet sockets fail with EPERM, each
// refusal receipted) until the agent classifies it, by protecting it
// (Protect) or exempting it (Exempt). Cgroups are classified by id, so a
// directory removed and made again at the same path is new and refused
// again. The agent itself must run outside every birth root, or in a cgroup
// exempted before the root is set: its own sockets are refused otherwise.

// unclassifiedName names the cgroups below a birth root that the agent has
// not classified, as receipts name their workload.
const unclassifiedName = "unclassified"

// SetBirthRoot makes the cgroup directory at path (absolute, existing) a
// birth root.
func (a *Agent) SetBirthRoot(path string) error {
	id, err := classifiedCgroup(path)
	if err != nil {
		return fmt.Errorf("set birth root: %w", err)
	}
	if err := a.objs.SetBirthRoot(id); err != nil {
		return fmt.Errorf("set birth root %s: %w", path, err)
	}
	a.opts.Logger.WithField("cgroup", path).Info("birth root set: unclassified cgroups below it are refused the network")
	return nil
}

// RemoveBirthRoot stops refusing the unclassified cgroups below the cgroup
// directory at path.
func (a *Agent) RemoveBirthRoot(path string) error {
	id, err := classifiedCgroup(path)
	if err != nil {
		return fmt.Errorf("remove birth root: %w", err)
	}
	return a.objs.RemoveBirthRoot(id)
}

// Exempt classifies the cgroup directory at path, as it is now, and every
// cgroup below it as exempt: not refused below a birth root, and not
// mediated. A directory made again at path later is not exempt.
func (a *Agent) Exempt(path string) error {
	id, err := classifiedCgroup(path)
	if err != nil {
		return fmt.Errorf("exempt: %w", err)
	}
	if err := a.objs.Exempt(id); err != nil {
		return fmt.Errorf("exempt %s: %w", path, err)
	}
	a.opts.Logger.WithField("cgroup", path).Info("cgroup exempt")
	return nil
}

// Unexempt withdraws the exemption of the cgroup directory at path.
func (a *Agent) Unexempt(path string) error {
	id, err := classifiedCgroup(path)
	if err != nil {
		return fmt.Errorf("unexempt: %w", err)
	}
	return a.objs.Unexempt(id)
}

// BirthStatus lists the birth roots and exempt cgroups the datapath holds,
// by path (the cgroup id when its directory is gone).
type BirthStatus struct {
	Roots  []string `json:"roots"`
	Exempt []string `json:"exempt"`
}

// Birth reads the birth roots and exemptions from the datapath.
func (a *Agent) Birth() (BirthStatus, error) {
	roots, err := a.objs.BirthRoots()
	if err != nil {
		return BirthStatus{}, err
	}
	ex, err := a.objs.Exempted()
	if err != nil {
		return BirthStatus{}, err
	}
	name := func(ids []uint64) []string {
		out := make([]string, 0, len(ids))
		for _, id := range ids {
			p, err := cgroupPathOf(id)
			if err != nil {
				p = "cgroup id " + strconv.FormatUint(id, 10)
			}
			out = append(out, p)
		}
		return out
	}
	return BirthStatus{Roots: name(roots), Exempt: name(ex)}, nil
}

// classifiedCgroup returns the id of the cgroup directory at path, which
// must be absolute and exist.
func classifiedCgroup(path string) (uint64, error) {
	if !filepath.IsAbs(path) {
		return 0, fmt.Errorf("cgroup path %q is not absolute", path)
	}
	id, err := cgroupAt(filepath.Clean(path))
	if errors.Is(err, errCgroupMissing) {
		return 0, fmt.Errorf("cgroup %s: %w", path, err)
	}
	return id, err
}

// unclassifiedWorkload is the workload receipts name for a refusal in an
// unclassified cgroup: none the agent knows, so the cgroup itself, by path
// while it exists.
func unclassifiedWorkload(cgroupID uint64) *workload {
	p, err := cgroupPathOf(cgroupID)
	if err != nil {
		p = ""
	}
	return &workload{name: unclassifiedName, cgroupID: cgroupID,
		ident: workloadIdentity(unclassifiedName, p, nil)}
}

// fileidKernfs is the file handle type of a kernfs node (FILEID_KERNFS),
// whose handle is the cgroup id.
const fileidKernfs = 0xfe

// cgroupPathOf returns the path of the cgroup directory with this id, found
// by opening it by its file handle (its id) on the cgroup2 mount.
func cgroupPathOf(id uint64) (string, error) {
	mnt, err := cgroupfs.Mount()
	if err != nil {
		return "", err
	}
	mfd, err := unix.Open(mnt, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return "", fmt.Errorf("open %s: %w", mnt, err)
	}
	defer unix.Close(mfd)
	var b [8]byte
	binary.NativeEndian.PutUint64(b[:], id)
	fd, err := unix.OpenByHandleAt(mfd, unix.NewFileHandle(fileidKernfs, b[:]), unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC)
	if err != nil {
		return "", fmt.Errorf("open cgroup %d: %w", id, err)
	}
	defer unix.Close(fd)
	p, err := os.Readlink("/proc/self/fd/" + strconv.Itoa(fd))
	if err != nil {
		return "", fmt.Errorf("path of cgroup %d: %w", id, err)
	}
	return p, nil
}

// unclassifiedReason says why the kernel refused a call in an unclassified
// cgroup.
func unclassifiedReason(e bpf.Event) string {
	return fmt.Sprintf("%s refused in the kernel: cgroup %d is below a birth root and not classified yet "+
		"(the agent has neither protected nor exempted it)", bpf.UnclassifiedOp(e.RuleID), e.CgroupID)
}
