package agent

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"

	"github.com/backbay-labs/chio-agent/bpf"
	"github.com/backbay-labs/chio-agent/internal/cgroupfs"
)

// A workload is named by its cgroup's path, but the datapath keys it by
// cgroup id (the directory's inode), which changes when the directory is
// removed and made again (a systemd unit restart, a pod's cgroup recreated).
// So every workload also has a guard in the kernel, (parent cgroup id,
// directory name): a directory at a guarded path that is not protected is
// refused in the kernel, with an event, until the agent protects its new id.
// The agent learns of the change from inotify on the parent directory, from
// the kernel's guarded event, and from a periodic resync as a safety net.

// WorkloadState says how far a configured workload is protected.
type WorkloadState string

const (
	// StateProtected: the cgroup exists and its id is in the datapath.
	StateProtected WorkloadState = "protected"
	// StateWaiting: the cgroup does not exist; its parent does and the path
	// is guarded, so a directory made there is refused until protected.
	StateWaiting WorkloadState = "waiting"
	// StateMissing: neither the cgroup nor its parent exists. Nothing can be
	// guarded yet: when the parent and then the cgroup appear, the cgroup's
	// processes may connect unprotected until the agent protects it (it
	// watches the nearest existing ancestor and reacts at once).
	StateMissing WorkloadState = "missing"
)

// DefaultResyncInterval is how often the agent checks every workload's
// cgroup path against the datapath when no notification came.
const DefaultResyncInterval = time.Second

// errCgroupMissing marks a cgroup path that does not exist.
var errCgroupMissing = errors.New("cgroup does not exist")

// cgroupAt returns the id of the cgroup directory at path, or
// errCgroupMissing.
func cgroupAt(path string) (uint64, error) {
	id, err := cgroupfs.ID(path)
	if errors.Is(err, os.ErrNotExist) || errors.Is(err, unix.ENOTDIR) {
		return 0, errCgroupMissing
	}
	return id, err
}

// guardOf returns the guard of a cgroup path, or errCgroupMissing when its
// parent does not exist.
func guardOf(path string) (bpf.Guard, error) {
	pid, err := cgroupAt(filepath.Dir(path))
	if err != nil {
		return bpf.Guard{}, err
	}
	return bpf.Guard{ParentID: pid, Name: filepath.Base(path)}, nil
}

// syncWorkload makes the datapath match the workload's path as it is now:
// the guard first (so that a directory made from here on is refused until
// protected), then the workloads entry of the directory's current id. force
// rewrites the entry even when the id is unchanged (its listener or rules
// changed). a.mu must be held.
func (a *Agent) syncWorkload(w *workload, force bool) error {
	g, gerr := guardOf(w.cgroup)
	switch {
	case gerr == nil:
		if w.guard == nil || *w.guard != g {
			if err := a.objs.SetGuard(g, w.id); err != nil {
				return fmt.Errorf("sync %s: %w", w.name, err)
			}
			if w.guard != nil {
				a.objs.RemoveGuard(*w.guard)
			}
			w.guard = &g
		}
	case errors.Is(gerr, errCgroupMissing):
		if w.guard != nil {
			a.objs.RemoveGuard(*w.guard)
			w.guard = nil
		}
	default:
		return fmt.Errorf("sync %s: %w", w.name, gerr)
	}

	id, err := cgroupAt(w.cgroup)
	switch {
	case err == nil:
		if id == w.cgroupID && w.state == StateProtected && !force {
			return nil
		}
		old := w.cgroupID
		w.cgroupID = id
		if err := a.syncDatapath(w, w.decider(a.kern).Snapshot().Policy()); err != nil {
			w.cgroupID = old
			return fmt.Errorf("sync %s: %w", w.name, err)
		}
		if old != 0 && old != id {
			// The old directory is gone: cgroup2 refuses rename, so a
			// directory leaves its path only by rmdir, which needs it
			// empty. Its entry protects nothing any more.
			a.objs.Unprotect(old)
		}
		was := w.state
		w.state = StateProtected
		if was != StateProtected || old != id {
			a.opts.Logger.WithFields(logrus.Fields{"workload": w.name, "cgroup": w.cgroup, "cgroup_id": id,
				"was": string(was)}).Info("protecting workload cgroup")
		}
		return nil
	case errors.Is(err, errCgroupMissing):
		if w.cgroupID != 0 {
			a.objs.Unprotect(w.cgroupID)
			w.cgroupID = 0
		}
		state := StateMissing
		if w.guard != nil {
			state = StateWaiting
		}
		if state != w.state {
			a.opts.Logger.WithFields(logrus.Fields{"workload": w.name, "cgroup": w.cgroup, "state": string(state)}).
				Warn("workload cgroup does not exist; protecting it when it appears")
		}
		w.state = state
		return nil
	default:
		return fmt.Errorf("sync %s: %w", w.name, err)
	}
}

// resync checks every workload's path against the datapath.
func (a *Agent) resync() {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, w := range a.reg.all() {
		if err := a.syncWorkload(w, false); err != nil {
			a.proxy.errs.add(err)
			a.opts.Logger.WithError(err).WithField("workload", w.name).Error("workload cgroup sync failed")
		}
	}
}

// requestResync asks the watcher for a resync soon (never blocks).
func (a *Agent) requestResync() {
	select {
	case a.resyncReq <- struct{}{}:
	default:
	}
}

// watchDirs returns the directories whose entries tell of the workloads'
// cgroups coming and going: each one's parent, or when that is missing its
// nearest existing ancestor.
func (a *Agent) watchDirs() map[string]bool {
	dirs := map[string]bool{}
	for _, w := range a.reg.all() {
		d := filepath.Dir(w.cgroup)
		for {
			if fi, err := os.Stat(d); err == nil && fi.IsDir() {
				dirs[d] = true
				break
			}
			next := filepath.Dir(d)
			if next == d {
				break
			}
			d = next
		}
	}
	return dirs
}

// watchCgroups resyncs on inotify events of the watched directories, on
// request (a guarded event), and every interval, until ctx ends.
func (a *Agent) watchCgroups(interval time.Duration) {
	in, err := newInotify()
	if err != nil {
		// The periodic resync still runs; the kernel guard keeps a
		// recreated cgroup refused meanwhile.
		a.proxy.errs.add(fmt.Errorf("watch cgroups: %w", err))
	} else {
		defer in.close()
	}
	var notes <-chan struct{}
	if in != nil {
		notes = in.events
	}
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		if in != nil {
			a.mu.Lock()
			dirs := a.watchDirs()
			a.mu.Unlock()
			if err := in.set(dirs); err != nil {
				a.proxy.errs.add(fmt.Errorf("watch cgroups: %w", err))
			}
		}
		select {
		case <-a.ctx.Done():
			return
		case <-notes:
		case <-a.resyncReq:
		case <-tick.C:
		}
		a.resync()
	}
}

// inotify watches directories for entries made and removed.
type inotify struct {
	fd      int
	f       *os.File
	watches map[string]watch // by path
	events  chan struct{}    // one token per batch of events
}

func newInotify() (*inotify, error) {
	fd, err := unix.InotifyInit1(unix.IN_NONBLOCK | unix.IN_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("inotify: %w", err)
	}
	in := &inotify{fd: fd, f: os.NewFile(uintptr(fd), "inotify"), watches: map[string]watch{}, events: make(chan struct{}, 1)}
	go func() {
		buf := make([]byte, 64*1024)
		for {
			if _, err := in.f.Read(buf); err != nil {
				return // closed
			}
			select {
			case in.events <- struct{}{}:
			default:
			}
		}
	}()
	return in, nil
}

// watch is one watched directory: its watch descriptor, and its inode, so
// that a directory made again at the same path is watched again.
type watch struct {
	wd  int
	ino uint64
}

// set makes the watched directories exactly dirs.
func (in *inotify) set(dirs map[string]bool) error {
	var errs []error
	for d, w := range in.watches {
		var st unix.Stat_t
		if !dirs[d] || unix.Stat(d, &st) != nil || st.Ino != w.ino {
			unix.InotifyRmWatch(in.fd, uint32(w.wd)) // fails for a removed directory: already gone
			delete(in.watches, d)
		}
	}
	for d := range dirs {
		if _, ok := in.watches[d]; ok {
			continue
		}
		var st unix.Stat_t
		if err := unix.Stat(d, &st); err != nil {
			continue // gone meanwhile: the next round watches its ancestor
		}
		wd, err := unix.InotifyAddWatch(in.fd, d, unix.IN_CREATE|unix.IN_DELETE|unix.IN_MOVED_FROM|unix.IN_MOVED_TO|unix.IN_DELETE_SELF|unix.IN_MOVE_SELF)
		if err != nil {
			errs = append(errs, fmt.Errorf("inotify %s: %w", d, err))
			continue
		}
		in.watches[d] = watch{wd: wd, ino: st.Ino}
	}
	return errors.Join(errs...)
}

func (in *inotify) close() { in.f.Close() }
