package agent

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/backbay-labs/chio-agent/bpf"
	"github.com/backbay-labs/chio-agent/internal/cgroupfs"
)

// listener is a TCP listening socket as sock_diag describes it.
type listener struct {
	local    netip.AddrPort
	cookie   uint64
	cgroupID uint64
}

// refuseExistingListeners refuses the listeners w's processes opened before
// w was protected, which no hook saw: each on a port the workload does not
// allow is marked refused in the kernel (packets to it dropped but the
// agent's relay) and gets a deny receipt. Called once the workload is
// protected, so that a listener made meanwhile is the hooks' to refuse.
func (a *Agent) refuseExistingListeners(w *workload) error {
	if _, all := w.inboundPorts(); all {
		return nil
	}
	cgroups, err := subtreeIDs(w.cgroup)
	if err != nil {
		return fmt.Errorf("refuse existing listeners of %s: %w", w.name, err)
	}
	var ls []listener
	err = inNetns(w.netns, func() error {
		for _, family := range []uint8{unix.AF_INET, unix.AF_INET6} {
			got, err := tcpListeners(family)
			if err != nil {
				return err
			}
			ls = append(ls, got...)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("refuse existing listeners of %s: %w", w.name, err)
	}
	allowed, _ := w.inboundPorts()
	for _, l := range ls {
		if !cgroups[l.cgroupID] || slices.Contains(allowed, l.local.Port()) {
			continue
		}
		fresh, err := a.objs.RefuseListener(l.cookie, w.id)
		if err != nil {
			return fmt.Errorf("refuse existing listeners of %s: %w", w.name, err)
		}
		if !fresh {
			continue // refused and receipted already
		}
		// The agent's refusal, not the kernel's: receipted, but not in the
		// kernel's refusal accounting.
		a.receiptRefusal(bpf.Event{Kind: bpf.EventInboundRefused, WorkloadID: w.id, CgroupID: l.cgroupID,
			Dst: l.local, Proto: bpf.ProtoTCP, RuleID: uint32(inboundExisting), Count: 1}, w)
	}
	return nil
}

// inboundExisting is an InboundOp of the agent's own: a listener found when
// the workload was protected.
const inboundExisting = bpf.InboundOp(100)

// subtreeIDs are the cgroup ids of dir and every cgroup below it.
func subtreeIDs(dir string) (map[uint64]bool, error) {
	ids := map[uint64]bool{}
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) && path != dir {
				return nil // removed while walking
			}
			return err
		}
		if !d.IsDir() {
			return nil
		}
		id, err := cgroupfs.ID(path)
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) && path != dir {
				return nil
			}
			return err
		}
		ids[id] = true
		return nil
	})
	return ids, err
}

// Sizes and attributes of sock_diag (linux/inet_diag.h).
const (
	inetDiagReqLen   = 56 // struct inet_diag_req_v2
	inetDiagMsgLen   = 72 // struct inet_diag_msg
	inetDiagCgroupID = 21 // INET_DIAG_CGROUP_ID
	tcpListenState   = 10 // TCP_LISTEN
)

// tcpListeners dumps the TCP listeners of one family in the calling
// thread's network namespace.
func tcpListeners(family uint8) ([]listener, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_SOCK_DIAG)
	if err != nil {
		return nil, fmt.Errorf("list listeners: %w", os.NewSyscallError("socket", err))
	}
	defer unix.Close(fd)
	tv := unix.Timeval{Sec: 5}
	unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
	req := make([]byte, unix.SizeofNlMsghdr+inetDiagReqLen)
	ne := binary.NativeEndian
	ne.PutUint32(req[0:], uint32(len(req)))
	ne.PutUint16(req[4:], unix.SOCK_DIAG_BY_FAMILY)
	ne.PutUint16(req[6:], unix.NLM_F_REQUEST|unix.NLM_F_DUMP)
	ne.PutUint32(req[8:], 1)
	r := req[unix.SizeofNlMsghdr:]
	r[0], r[1] = family, unix.IPPROTO_TCP
	ne.PutUint32(r[4:], 1<<tcpListenState)
	if err := unix.Sendto(fd, req, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return nil, fmt.Errorf("list listeners: %w", os.NewSyscallError("sendto", err))
	}
	var out []listener
	buf := make([]byte, 1<<16)
	for {
		n, _, err := unix.Recvfrom(fd, buf, 0)
		if err != nil {
			return nil, fmt.Errorf("list listeners: %w", os.NewSyscallError("recvfrom", err))
		}
		msgs, err := syscall.ParseNetlinkMessage(buf[:n])
		if err != nil {
			return nil, fmt.Errorf("list listeners: %w", err)
		}
		for _, m := range msgs {
			switch m.Header.Type {
			case unix.NLMSG_DONE:
				return out, nil
			case unix.NLMSG_ERROR:
				if len(m.Data) >= 4 {
					if errno := int32(ne.Uint32(m.Data[:4])); errno != 0 {
						return nil, fmt.Errorf("list listeners: %w", unix.Errno(-errno))
					}
				}
				return out, nil
			case unix.SOCK_DIAG_BY_FAMILY:
				if l, ok := parseDiagMsg(m.Data); ok {
					out = append(out, l)
				}
			}
		}
	}
}

// parseDiagMsg reads one inet_diag_msg and its INET_DIAG_CGROUP_ID.
func parseDiagMsg(b []byte) (listener, bool) {
	if len(b) < inetDiagMsgLen {
		return listener{}, false
	}
	ne := binary.NativeEndian
	var l listener
	port := binary.BigEndian.Uint16(b[4:])
	var addr netip.Addr
	if b[0] == unix.AF_INET {
		addr = netip.AddrFrom4([4]byte(b[8:12]))
	} else {
		addr = netip.AddrFrom16([16]byte(b[8:24])).Unmap()
	}
	l.local = netip.AddrPortFrom(addr, port)
	l.cookie = uint64(ne.Uint32(b[44:])) | uint64(ne.Uint32(b[48:]))<<32
	for rest := b[inetDiagMsgLen:]; len(rest) >= 4; {
		alen, atype := int(ne.Uint16(rest[0:])), ne.Uint16(rest[2:])
		if alen < 4 || alen > len(rest) {
			break
		}
		if atype == inetDiagCgroupID && alen >= 12 {
			l.cgroupID = ne.Uint64(rest[4:])
		}
		rest = rest[min((alen+3)&^3, len(rest)):]
	}
	return l, l.cgroupID != 0
}
