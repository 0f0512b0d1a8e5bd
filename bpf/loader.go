package bpf

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"syscall"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// Options configure the programs at load time.
type Options struct {
	// AgentMark is the SO_MARK the agent puts on its own sockets; sockets with
	// it are never redirected, so the proxy's upstream dials cannot loop. 0
	// (the default) disables the check: then the agent must run outside every
	// protected cgroup.
	AgentMark uint32
}

// Objects are the loaded programs and maps, and the links that attach them.
type Objects struct {
	objs  chioObjects
	links []link.Link
}

// Workload is what the programs need to know of a protected cgroup.
type Workload struct {
	// ID names the workload in events and recovered originals.
	ID uint32
	// Listen4 is the IPv4 listener that protected IPv4 (and v4-mapped IPv6)
	// connections are sent to. Invalid means such connections are refused.
	Listen4 netip.AddrPort
	// Listen6 is the IPv6 listener for native IPv6 connections. Invalid means
	// such connections are refused.
	Listen6 netip.AddrPort
}

// Original is what a redirected connection wanted, and who asked.
type Original struct {
	Dst         netip.AddrPort // original destination (IPv4 unmapped)
	Family      int            // unix.AF_INET or unix.AF_INET6 of the client socket
	WorkloadID  uint32
	PID         uint32 // thread-group id of the connecting task
	UID         uint32
	CgroupID    uint64
	NetnsCookie uint64
	Comm        string
}

// Load loads the programs and maps into the kernel. Close releases them.
func Load(opts Options) (*Objects, error) {
	spec, err := loadChio()
	if err != nil {
		return nil, fmt.Errorf("load spec: %w", err)
	}
	if err := spec.Variables[chioVarAgentMark].Set(opts.AgentMark); err != nil {
		return nil, fmt.Errorf("set agent_mark: %w", err)
	}
	o := &Objects{}
	if err := spec.LoadAndAssign(&o.objs, nil); err != nil {
		var verr *ebpf.VerifierError
		if errors.As(err, &verr) {
			return nil, fmt.Errorf("load programs: %+v", verr)
		}
		return nil, fmt.Errorf("load programs: %w", err)
	}
	return o, nil
}

// AttachCgroup attaches every program to the cgroup v2 directory at path
// through bpf_links, which the kernel detaches when they are closed.
func (o *Objects) AttachCgroup(path string) error {
	for _, a := range []struct {
		name string
		typ  ebpf.AttachType
		prog *ebpf.Program
	}{
		{"connect4", ebpf.AttachCGroupInet4Connect, o.objs.ChioConnect4},
		{"connect6", ebpf.AttachCGroupInet6Connect, o.objs.ChioConnect6},
		{"sockops", ebpf.AttachCGroupSockOps, o.objs.ChioSockops},
		{"sock_release", ebpf.AttachCgroupInetSockRelease, o.objs.ChioSockRelease},
	} {
		l, err := link.AttachCgroup(link.CgroupOptions{Path: path, Attach: a.typ, Program: a.prog})
		if err != nil {
			return fmt.Errorf("attach %s to %s: %w", a.name, path, err)
		}
		o.links = append(o.links, l)
	}
	return nil
}

// Protect starts redirecting the TCP connections of every process in the
// cgroup (and its descendants) to the workload's listeners.
func (o *Objects) Protect(cgroupID uint64, w Workload) error {
	var v chioWorkload
	v.Id = w.ID
	if w.Listen4.IsValid() {
		a := w.Listen4.Addr().Unmap()
		if !a.Is4() {
			return fmt.Errorf("protect cgroup %d: IPv4 listener %s is not IPv4", cgroupID, w.Listen4)
		}
		b := a.As4()
		v.ListenIp4 = nativeFromNet(b[:])
		v.ListenPort4 = htons(w.Listen4.Port())
	}
	if w.Listen6.IsValid() {
		if !w.Listen6.Addr().Is6() || w.Listen6.Addr().Is4In6() {
			return fmt.Errorf("protect cgroup %d: IPv6 listener %s is not IPv6", cgroupID, w.Listen6)
		}
		b := w.Listen6.Addr().As16()
		for i := range v.ListenIp6 {
			v.ListenIp6[i] = nativeFromNet(b[4*i : 4*i+4])
		}
		v.ListenPort6 = htons(w.Listen6.Port())
	}
	if err := o.objs.Workloads.Put(cgroupID, &v); err != nil {
		return fmt.Errorf("protect cgroup %d: %w", cgroupID, err)
	}
	return nil
}

// Unprotect stops redirecting the cgroup's connections.
func (o *Objects) Unprotect(cgroupID uint64) error {
	if err := o.objs.Workloads.Delete(cgroupID); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("unprotect cgroup %d: %w", cgroupID, err)
	}
	return nil
}

// TakeOriginal returns and forgets the original destination of the redirected
// connection whose client side is client in the network namespace netnsCookie
// (the peer address and SO_NETNS_COOKIE of the accepted socket).
func (o *Objects) TakeOriginal(netnsCookie uint64, client netip.AddrPort) (Original, error) {
	var k chioTupleKey
	k.NetnsCookie = netnsCookie
	b := client.Addr().As16() // IPv4 becomes v4-mapped, as the programs store it
	for i := range k.Addr {
		k.Addr[i] = nativeFromNet(b[4*i : 4*i+4])
	}
	k.Port = client.Port()
	var v chioOrigDst
	if err := o.objs.OrigByTuple.LookupAndDelete(&k, &v); err != nil {
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return Original{}, fmt.Errorf("take original of %s: %w", client, ErrNoOriginal)
		}
		return Original{}, fmt.Errorf("take original of %s: %w", client, err)
	}
	var addr [16]byte
	for i, w := range v.Addr {
		netFromNative(addr[4*i:4*i+4], w)
	}
	return Original{
		Dst:         netip.AddrPortFrom(netip.AddrFrom16(addr).Unmap(), ntohs(v.Port)),
		Family:      int(v.Family),
		WorkloadID:  v.WorkloadId,
		PID:         v.Pid,
		UID:         v.Uid,
		CgroupID:    v.CgroupId,
		NetnsCookie: v.NetnsCookie,
		Comm:        unix.ByteSliceToString(v.Comm[:]),
	}, nil
}

// Close detaches every link and releases programs and maps.
func (o *Objects) Close() error {
	var errs []error
	for _, l := range o.links {
		errs = append(errs, l.Close())
	}
	o.links = nil
	errs = append(errs, o.objs.Close())
	return errors.Join(errs...)
}

// NetnsCookie returns the network-namespace cookie of a socket
// (SO_NETNS_COOKIE), the key the programs file originals under.
func NetnsCookie(c syscall.Conn) (uint64, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return 0, fmt.Errorf("netns cookie: %w", err)
	}
	var cookie uint64
	var serr error
	if err := rc.Control(func(fd uintptr) {
		cookie, serr = unix.GetsockoptUint64(int(fd), unix.SOL_SOCKET, unix.SO_NETNS_COOKIE)
	}); err != nil {
		return 0, fmt.Errorf("netns cookie: %w", err)
	}
	if serr != nil {
		return 0, fmt.Errorf("netns cookie: %w", os.NewSyscallError("getsockopt", serr))
	}
	return cookie, nil
}

// EnsureBPFFS mounts a bpf filesystem at path unless one is already there.
func EnsureBPFFS(path string) error {
	var fs unix.Statfs_t
	if err := unix.Statfs(path, &fs); err == nil && fs.Type == unix.BPF_FS_MAGIC {
		return nil
	}
	if err := os.MkdirAll(path, 0o700); err != nil {
		return fmt.Errorf("mount bpffs: %w", err)
	}
	if err := unix.Mount("bpf", path, "bpf", 0, "mode=0700"); err != nil {
		return fmt.Errorf("mount bpffs at %s: %w", path, err)
	}
	return nil
}
