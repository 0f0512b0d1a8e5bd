package bpf

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// Holder is a live process holding open a program, link or map pinned under
// a pin directory: an agent that owns that pinned state.
type Holder struct {
	PID  int
	Comm string
}

func (h Holder) String() string { return fmt.Sprintf("pid %d (%s)", h.PID, h.Comm) }

// pinnedIDs are the kernel ids of the objects pinned under a pin directory,
// by kind as /proc/PID/fd names them.
type pinnedIDs map[string]map[uint32]bool

// readPinnedIDs opens every pin under pinDir, of every layout, just long
// enough to read its id.
func readPinnedIDs(pinDir string) (pinnedIDs, error) {
	ids := pinnedIDs{"bpf-link": {}, "bpf-map": {}, "bpf-prog": {}}
	var errs []error
	each := func(sub string, id func(path string) (uint32, error)) {
		var paths []string
		for _, dir := range pinSets(pinDir) {
			p, _ := filepath.Glob(filepath.Join(dir, sub, "*"))
			paths = append(paths, p...)
		}
		for _, p := range paths {
			n, err := id(p)
			if errors.Is(err, os.ErrNotExist) {
				continue // unpinned meanwhile
			}
			if err != nil {
				errs = append(errs, err)
				continue
			}
			ids["bpf-"+strings.TrimSuffix(sub, "s")][n] = true
		}
	}
	each("links", func(p string) (uint32, error) {
		l, err := link.LoadPinnedLink(p, nil)
		if err != nil {
			return 0, fmt.Errorf("open pinned link %s: %w", p, err)
		}
		defer l.Close()
		info, err := l.Info()
		if err != nil {
			return 0, fmt.Errorf("read pinned link %s: %w", p, err)
		}
		return uint32(info.ID), nil
	})
	each("maps", func(p string) (uint32, error) {
		m, err := ebpf.LoadPinnedMap(p, nil)
		if err != nil {
			return 0, fmt.Errorf("open pinned map %s: %w", p, err)
		}
		defer m.Close()
		info, err := m.Info()
		if err != nil {
			return 0, fmt.Errorf("read pinned map %s: %w", p, err)
		}
		id, ok := info.ID()
		if !ok {
			return 0, fmt.Errorf("read pinned map %s: no id: %w", p, ErrNotSupported)
		}
		return uint32(id), nil
	})
	each("progs", func(p string) (uint32, error) {
		prog, err := ebpf.LoadPinnedProgram(p, nil)
		if err != nil {
			return 0, fmt.Errorf("open pinned program %s: %w", p, err)
		}
		defer prog.Close()
		info, err := prog.Info()
		if err != nil {
			return 0, fmt.Errorf("read pinned program %s: %w", p, err)
		}
		id, ok := info.ID()
		if !ok {
			return 0, fmt.Errorf("read pinned program %s: no id: %w", p, ErrNotSupported)
		}
		return uint32(id), nil
	})
	return ids, errors.Join(errs...)
}

// Holders returns the live processes other than this one that hold open any
// program, link or map pinned under pinDir. A running agent holds its links
// and maps for as long as it runs (a SIGKILLed one holds nothing), so this
// is read from the kernel's own state, whatever socket or flags the agent was
// started with. Nothing pinned: no holders.
func Holders(pinDir string) ([]Holder, error) {
	ids, err := readPinnedIDs(pinDir)
	if err != nil {
		return nil, fmt.Errorf("find holders of %s: %w", pinDir, err)
	}
	if len(ids["bpf-link"])+len(ids["bpf-map"])+len(ids["bpf-prog"]) == 0 {
		return nil, nil
	}
	return holdersOf(ids)
}

// holdersOf walks /proc/*/fd for bpf objects (anon_inode:bpf-link and so
// on) and reads their ids from /proc/PID/fdinfo.
func holdersOf(ids pinnedIDs) ([]Holder, error) {
	procs, err := os.ReadDir("/proc")
	if err != nil {
		return nil, fmt.Errorf("list processes: %w", err)
	}
	self := os.Getpid()
	var out []Holder
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil || pid == self {
			continue
		}
		if holds(pid, ids) {
			comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
			out = append(out, Holder{PID: pid, Comm: strings.TrimSpace(string(comm))})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].PID < out[j].PID })
	return out, nil
}

// holds reports whether process pid has an fd on one of ids. A process that
// exits meanwhile holds nothing.
func holds(pid int, ids pinnedIDs) bool {
	fdDir := fmt.Sprintf("/proc/%d/fd", pid)
	fds, err := os.ReadDir(fdDir)
	if err != nil {
		return false
	}
	for _, fd := range fds {
		target, err := os.Readlink(filepath.Join(fdDir, fd.Name()))
		if err != nil {
			continue
		}
		kind, ok := strings.CutPrefix(target, "anon_inode:")
		if !ok || ids[kind] == nil {
			continue
		}
		key := strings.TrimPrefix(kind, "bpf-") + "_id:"
		if id, ok := fdinfoField(fmt.Sprintf("/proc/%d/fdinfo/%s", pid, fd.Name()), key); ok && ids[kind][id] {
			return true
		}
	}
	return false
}

// fdinfoField reads one "key:\tvalue" line of an fdinfo file (a link's
// fdinfo also names its program's prog_id: the key is matched exactly).
func fdinfoField(path, key string) (uint32, bool) {
	f, err := os.Open(path)
	if err != nil {
		return 0, false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), "\t")
		if !ok || k != key {
			continue
		}
		n, err := strconv.ParseUint(strings.TrimSpace(v), 10, 32)
		return uint32(n), err == nil
	}
	return 0, false
}

// lockPinDir takes the pin directory's exclusive lock (flock on the
// directory), which the kernel drops when the holder dies however it dies.
// It is held from Load to Close so that two agents never adopt the same
// pinned state, even when they start at the same moment.
func lockPinDir(pinDir string) (*os.File, error) {
	f, err := os.Open(pinDir)
	if err != nil {
		return nil, fmt.Errorf("lock pin directory: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			if herr := checkHolders(pinDir); herr != nil {
				return nil, herr // names the processes
			}
			return nil, fmt.Errorf("lock pin directory %s: %w", pinDir, ErrPinDirInUse)
		}
		return nil, fmt.Errorf("lock pin directory %s: %w", pinDir, err)
	}
	return f, nil
}

func (o *Objects) closeLock() {
	if o.lock != nil {
		o.lock.Close()
		o.lock = nil
	}
}

// checkHolders refuses pinned state that another live process holds open.
func checkHolders(pinDir string) error {
	holders, err := Holders(pinDir)
	if err != nil {
		return err
	}
	if len(holders) == 0 {
		return nil
	}
	names := make([]string, len(holders))
	for i, h := range holders {
		names[i] = h.String()
	}
	return fmt.Errorf("%s is held open by %s: %w", pinDir, strings.Join(names, ", "), ErrPinDirInUse)
}

// CheckOwner returns an error wrapping ErrPinDirInUse, naming the processes,
// when a live process other than this one owns the state pinned under
// pinDir: it holds the pinned objects open or the directory's lock. nil when
// nothing is pinned there. Uninstall refuses on it; it is read from the
// kernel, not from a status socket that may be elsewhere.
func CheckOwner(pinDir string) error {
	if err := checkHolders(pinDir); err != nil {
		return err
	}
	if _, err := os.Stat(pinDir); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	f, err := lockPinDir(pinDir)
	if err != nil {
		return err
	}
	return f.Close()
}
