package cri

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"unsafe"

	"golang.org/x/sys/unix"
)

// NotifyCgroups sends on kick (without blocking: kick should have room for
// one) whenever a cgroup directory is made one to three levels below root: a
// QoS class's, a pod's (the first sign of a pod being born, before its
// runtime lists it) or a container's (a sandbox or container made again in a
// pod that stays). It follows the directories of the first two levels as they
// come, and runs until ctx ends. A runtime's container events are not needed for it:
// containerd before 1.7 sends none, and polling alone leaves a new pod
// unclassified (its connections refused) for up to a poll interval.
func NotifyCgroups(ctx context.Context, root string, kick chan<- struct{}) error {
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		return fmt.Errorf("watch cgroups under %s: %w", root, err)
	}
	f := os.NewFile(uintptr(fd), "inotify") // the runtime's poller: Close ends Read
	n := &notifier{fd: fd, dirs: map[int32]int{}}
	if err := n.add(root, 0); err != nil {
		f.Close()
		return fmt.Errorf("watch cgroups under %s: %w", root, err)
	}
	entries, err := os.ReadDir(root)
	if err != nil {
		f.Close()
		return fmt.Errorf("watch cgroups under %s: %w", root, err)
	}
	for _, e := range entries {
		if !e.IsDir() {
			continue
		}
		dir := filepath.Join(root, e.Name())
		if n.add(dir, 1) != nil {
			continue // gone already: nothing to follow
		}
		sub, _ := os.ReadDir(dir)
		for _, e := range sub {
			if e.IsDir() {
				n.add(filepath.Join(dir, e.Name()), 2)
			}
		}
	}
	go func() {
		<-ctx.Done()
		f.Close()
	}()
	go n.read(f, kick)
	return nil
}

type notifier struct {
	fd    int
	dirs  map[int32]int // watch descriptor -> depth below root
	paths map[int32]string
}

func (n *notifier) add(dir string, depth int) error {
	wd, err := unix.InotifyAddWatch(n.fd, dir, unix.IN_CREATE|unix.IN_ONLYDIR)
	if err != nil {
		return err
	}
	if n.paths == nil {
		n.paths = map[int32]string{}
	}
	n.dirs[int32(wd)], n.paths[int32(wd)] = depth, dir
	return nil
}

func (n *notifier) read(f *os.File, kick chan<- struct{}) {
	buf := make([]byte, 64*(unix.SizeofInotifyEvent+unix.NAME_MAX+1))
	for {
		m, err := f.Read(buf)
		if err != nil {
			// Closed when ctx ended; any other failure only costs speed:
			// the poll still finds every pod.
			return
		}
		born := false
		for off := 0; off+unix.SizeofInotifyEvent <= m; {
			ev := (*unix.InotifyEvent)(unsafe.Pointer(&buf[off]))
			name := buf[off+unix.SizeofInotifyEvent : off+unix.SizeofInotifyEvent+int(ev.Len)]
			off += unix.SizeofInotifyEvent + int(ev.Len)
			if ev.Mask&unix.IN_Q_OVERFLOW != 0 {
				born = true
				continue
			}
			if ev.Mask&unix.IN_IGNORED != 0 { // the directory went
				delete(n.dirs, ev.Wd)
				delete(n.paths, ev.Wd)
				continue
			}
			depth, ok := n.dirs[ev.Wd]
			if !ok || ev.Mask&unix.IN_CREATE == 0 || ev.Mask&unix.IN_ISDIR == 0 {
				continue
			}
			born = true
			if depth < 2 {
				n.add(filepath.Join(n.paths[ev.Wd], cstring(name)), depth+1)
			}
		}
		if born {
			select {
			case kick <- struct{}{}:
			default:
			}
		}
	}
}

// cstring is an inotify event's NUL-padded name.
func cstring(b []byte) string {
	for i, c := range b {
		if c == 0 {
			return string(b[:i])
		}
	}
	return string(b)
}
