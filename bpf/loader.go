package bpf

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"syscall"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// workloadHasVerdicts is WL_HAS_VERDICTS in chio.c.
const workloadHasVerdicts = 1

// DefaultPinDir is where the node agent pins its maps, programs and links.
const DefaultPinDir = "/sys/fs/bpf/chio"

// Options configure the programs at load time.
type Options struct {
	// AgentMark is the SO_MARK the agent puts on its own sockets; sockets with
	// it are never touched, so the proxy's upstream dials cannot loop. 0 (the
	// default) disables the check: then the agent must run outside every
	// protected cgroup.
	AgentMark uint32
	// AgentPID, when not 0, is the agent's process id in the initial pid
	// namespace: the mark is honoured only on that process's sockets, so a
	// workload able to set SO_MARK (CAP_NET_ADMIN, or CAP_NET_RAW since
	// Linux 5.17) cannot use the agent's mark to pass. 0 (the default): the
	// mark is honoured on any process's sockets.
	AgentPID uint32
	// AgentStart, when not 0, is the agent's start time (Identity.Start):
	// with AgentPID it names the agent's process rather than a process id,
	// which the kernel can give to another process once the agent is gone
	// while the programs stay attached. 0: any process with AgentPID's id.
	AgentStart uint64
	// PinDir, when set, pins maps, programs and links under the layout's
	// directory, PinDir/layout-<hash>/{maps,progs,links} (layout.go), so
	// that they outlive the process: while the agent is down, protected
	// connections still go to its (absent) listener and fail. A later Load
	// of the same layout adopts the pinned maps, and Attach swaps the new
	// programs into the pinned links atomically; a Load of another layout
	// leaves the pinned links as they are until Handover. Load takes the
	// directory's lock until Close and refuses one that a live process owns
	// (ErrPinDirInUse). Empty (the default): nothing outlives Close.
	PinDir string
	// EditSpec, when set, changes the programs and maps before they are
	// loaded. Danger: for tests only, which use it to make a binary of
	// another map layout (a map's max_entries changed) out of this one.
	EditSpec func(*ebpf.CollectionSpec) error
}

// Objects are the loaded programs and maps, and the links that attach them.
type Objects struct {
	objs   chioObjects
	opts   Options
	links  []Attachment
	cgroup string
	lock   *os.File // the pin directory's lock, held until Close
	// layoutDir is where this layout's maps, programs and links are
	// pinned (PinDir/layout-<hash>); empty without a PinDir.
	layoutDir string
	// others are the pin sets of other layouts found at Load; pending is
	// the cgroup whose links of another layout wait for Handover; prev are
	// the maps the still attached programs of those layouts read.
	others  []string
	pending string
	prev    []*previousMaps
}

// Attachment is one program attached to a cgroup through a bpf_link.
type Attachment struct {
	Name    string // program name in chio.c
	Hook    string // attach point, e.g. cgroup/connect4
	Cgroup  string // cgroup directory it is attached to
	PinPath string // where the link is pinned; empty when not pinned
	Adopted bool   // the link was pinned by an earlier agent and reused
	// HandedOver: the link was another layout's, swapped to this program.
	HandedOver bool
	link       link.Link
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
	// DNSPort4 is the port of the agent's DNS listener (UDP and TCP) on
	// Listen4's address, which the workload's DNS over IPv4 (port 53, any
	// address) is sent to; DNSPort6 likewise on Listen6's. Both 0: no DNS
	// listener, and DNS to the resolvers (SetResolvers) passes untouched;
	// one 0: that family's DNS is refused.
	DNSPort4, DNSPort6 uint16
	// HasVerdicts reports that the workload has verdict rules (kept by
	// SetVerdicts and Protect; ignored on input). Without it the programs
	// skip the verdict map: most workloads have none.
	HasVerdicts bool
}

// Original is what a redirected connection wanted, and who asked.
type Original struct {
	Dst        netip.AddrPort // original destination (IPv4 unmapped)
	Family     int            // unix.AF_INET or unix.AF_INET6 of the client socket
	WorkloadID uint32
	PID        uint32 // thread-group id of the connecting task
	UID        uint32
	CgroupID   uint64
	Comm       string
}

type hook struct {
	name string
	typ  ebpf.AttachType
	text string
	prog func(*chioPrograms) *ebpf.Program
}

var hooks = []hook{
	{chioProgChioConnect4, ebpf.AttachCGroupInet4Connect, "cgroup/connect4", func(p *chioPrograms) *ebpf.Program { return p.ChioConnect4 }},
	{chioProgChioConnect6, ebpf.AttachCGroupInet6Connect, "cgroup/connect6", func(p *chioPrograms) *ebpf.Program { return p.ChioConnect6 }},
	{chioProgChioSendmsg4, ebpf.AttachCGroupUDP4Sendmsg, "cgroup/sendmsg4", func(p *chioPrograms) *ebpf.Program { return p.ChioSendmsg4 }},
	{chioProgChioSendmsg6, ebpf.AttachCGroupUDP6Sendmsg, "cgroup/sendmsg6", func(p *chioPrograms) *ebpf.Program { return p.ChioSendmsg6 }},
	{chioProgChioSockops, ebpf.AttachCGroupSockOps, "sockops", func(p *chioPrograms) *ebpf.Program { return p.ChioSockops }},
	{chioProgChioSockRelease, ebpf.AttachCgroupInetSockRelease, "cgroup/sock_release", func(p *chioPrograms) *ebpf.Program { return p.ChioSockRelease }},
	{chioProgChioSockCreate, ebpf.AttachCGroupInetSockCreate, "cgroup/sock_create", func(p *chioPrograms) *ebpf.Program { return p.ChioSockCreate }},
	// dns.c
	{chioProgChioRecvmsg4, ebpf.AttachCGroupUDP4Recvmsg, "cgroup/recvmsg4", func(p *chioPrograms) *ebpf.Program { return p.ChioRecvmsg4 }},
	{chioProgChioRecvmsg6, ebpf.AttachCGroupUDP6Recvmsg, "cgroup/recvmsg6", func(p *chioPrograms) *ebpf.Program { return p.ChioRecvmsg6 }},
	// inbound.c
	{chioProgChioInboundBind4, ebpf.AttachCGroupInet4Bind, "cgroup/bind4", func(p *chioPrograms) *ebpf.Program { return p.ChioInboundBind4 }},
	{chioProgChioInboundBind6, ebpf.AttachCGroupInet6Bind, "cgroup/bind6", func(p *chioPrograms) *ebpf.Program { return p.ChioInboundBind6 }},
	{chioProgChioInboundSockops, ebpf.AttachCGroupSockOps, "sockops", func(p *chioPrograms) *ebpf.Program { return p.ChioInboundSockops }},
	{chioProgChioInboundIngress, ebpf.AttachCGroupInetIngress, "cgroup_skb/ingress", func(p *chioPrograms) *ebpf.Program { return p.ChioInboundIngress }},
}

// Load loads the programs and maps into the kernel (adopting pinned maps when
// Options.PinDir names a directory that has them). Close releases them. On a
// kernel that lacks a feature the programs use, it returns an error wrapping
// ErrNotSupported that names the feature.
func Load(opts Options) (*Objects, error) {
	spec, err := loadChio()
	if err != nil {
		return nil, fmt.Errorf("load spec: %w", err)
	}
	// Name a missing kernel feature before the loader fails on it with a
	// verifier log.
	if err := checkFeatures(featureProbes(spec)); err != nil {
		return nil, fmt.Errorf("load programs: %w", err)
	}
	if err := spec.Variables[chioVarAgentMark].Set(opts.AgentMark); err != nil {
		return nil, fmt.Errorf("set agent_mark: %w", err)
	}
	if err := spec.Variables[chioVarAgentTgid].Set(opts.AgentPID); err != nil {
		return nil, fmt.Errorf("set agent_tgid: %w", err)
	}
	if err := spec.Variables[chioVarAgentStart].Set(opts.AgentStart); err != nil {
		return nil, fmt.Errorf("set agent_start: %w", err)
	}
	if opts.EditSpec != nil {
		if err := opts.EditSpec(spec); err != nil {
			return nil, fmt.Errorf("edit spec: %w", err)
		}
	}
	var copts ebpf.CollectionOptions
	o := &Objects{opts: opts}
	if opts.PinDir == "" {
		for _, m := range spec.Maps {
			m.Pinning = ebpf.PinNone
		}
	} else {
		if err := o.openPinDir(spec); err != nil {
			return nil, err
		}
		copts.Maps.PinPath = filepath.Join(o.layoutDir, "maps")
	}
	if err := spec.LoadAndAssign(&o.objs, &copts); err != nil {
		o.closeLock()
		var verr *ebpf.VerifierError
		switch {
		case errors.As(err, &verr):
			return nil, fmt.Errorf("load programs: %+v", verr)
		case errors.Is(err, ebpf.ErrMapIncompatible):
			return nil, fmt.Errorf("load programs: a map pinned under %s by another version does not match this one (run chio-agent uninstall first): %w", opts.PinDir, err)
		}
		return nil, fmt.Errorf("load programs: %w", err)
	}
	if opts.PinDir != "" {
		for _, h := range hooks {
			path := filepath.Join(o.layoutDir, "progs", h.name)
			if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
				o.objs.Close()
				o.closeLock()
				return nil, fmt.Errorf("replace pinned program %s: %w", path, err)
			}
			if err := h.prog(&o.objs.chioPrograms).Pin(path); err != nil {
				o.objs.Close()
				o.closeLock()
				return nil, fmt.Errorf("pin program %s: %w", h.name, err)
			}
		}
	}
	// The maps the other layouts' attached programs read, for Exempt.
	for _, dir := range o.others {
		if p := openPrevious(dir); p != nil {
			o.prev = append(o.prev, p)
		}
	}
	return o, nil
}

// openPinDir takes the pin directory's lock, moves unversioned pins of this
// layout into its directory, makes that directory, and finds the pin sets
// of other layouts.
func (o *Objects) openPinDir(spec *ebpf.CollectionSpec) error {
	pinDir := o.opts.PinDir
	if err := EnsureBPFFS(filepath.Dir(pinDir)); err != nil {
		return err
	}
	if err := os.MkdirAll(pinDir, 0o700); err != nil {
		return fmt.Errorf("make pin directory: %w", err)
	}
	// One agent per pinned state: a second one would swap its programs
	// into the first one's links and answer for its workloads.
	var err error
	if o.lock, err = lockPinDir(pinDir); err != nil {
		return fmt.Errorf("load programs: %w", err)
	}
	// An older agent holds the objects open without the lock.
	if err := checkHolders(pinDir); err != nil {
		o.closeLock()
		return fmt.Errorf("load programs: %w", err)
	}
	o.layoutDir = filepath.Join(pinDir, layoutOf(spec))
	if _, err := migrateUnversioned(pinDir, o.layoutDir, spec); err != nil {
		o.closeLock()
		return fmt.Errorf("load programs: %w", err)
	}
	for _, d := range pinSubdirs {
		if err := os.MkdirAll(filepath.Join(o.layoutDir, d), 0o700); err != nil {
			o.closeLock()
			return fmt.Errorf("make pin directory: %w", err)
		}
	}
	for _, dir := range pinSets(pinDir) {
		if dir != o.layoutDir {
			o.others = append(o.others, dir)
		}
	}
	return nil
}

// AttachCgroup attaches every program to the cgroup v2 directory at path
// through bpf_links. With a PinDir, links pinned by an earlier agent of
// this layout are adopted and their programs replaced in place (the hooks
// never go empty), and new links are pinned. When links of another layout
// are attached there, it attaches nothing and leaves them (and their
// programs, which refuse protected connections with their agent gone) as
// they are: HandoverPending reports it, and Handover, once the maps hold
// the agent's state, swaps them over.
func (o *Objects) AttachCgroup(path string) error {
	if len(o.others) > 0 {
		attached, err := o.checkOthersAttachedTo(path)
		if err != nil {
			return err
		}
		if attached {
			o.pending = path
			return nil
		}
		// Pins of another layout with nothing attached: only leftovers.
		for _, dir := range o.others {
			if _, err := removePins(dir, true); err != nil {
				return fmt.Errorf("remove pins of another layout: %w", err)
			}
		}
		o.others = nil
	}
	for _, h := range hooks {
		if err := o.attach(path, h.name, h.text, h.typ, h.prog(&o.objs.chioPrograms)); err != nil {
			return err
		}
	}
	o.cgroup = path
	return nil
}

// attach attaches one program to the cgroup at path, adopting (and
// updating) the link pinned under its name when there is one.
func (o *Objects) attach(path, name, text string, typ ebpf.AttachType, prog *ebpf.Program) error {
	a := Attachment{Name: name, Hook: text, Cgroup: path}
	if o.opts.PinDir != "" {
		a.PinPath = filepath.Join(o.layoutDir, "links", name)
		l, err := link.LoadPinnedLink(a.PinPath, nil)
		if err == nil {
			// Adopt only a link on this cgroup and hook: one found elsewhere
			// would leave path unprotected while status said it was.
			var gone bool
			if gone, err = checkPinnedLink(l, name, path, typ); err != nil {
				l.Close()
				return err
			}
			if gone {
				// Its cgroup was removed, which detached it: replace it.
				l.Close()
				if err := os.Remove(a.PinPath); err != nil {
					return fmt.Errorf("replace detached %s link: %w", name, err)
				}
				err = os.ErrNotExist
			}
		}
		switch {
		case err == nil:
			if err := l.Update(prog); err != nil {
				l.Close()
				return fmt.Errorf("adopt pinned %s link: %w", name, err)
			}
			a.link, a.Adopted = l, true
			o.links = append(o.links, a)
			return nil
		case !errors.Is(err, os.ErrNotExist):
			return fmt.Errorf("load pinned %s link: %w", name, err)
		}
		if o.pending != "" {
			l, ok, err := o.takeOver(name, path, a.PinPath, typ, prog)
			if err != nil {
				return err
			}
			if ok {
				a.link, a.Adopted, a.HandedOver = l, true, true
				o.links = append(o.links, a)
				return nil
			}
		}
	}
	l, err := link.AttachCgroup(link.CgroupOptions{Path: path, Attach: typ, Program: prog})
	if err != nil {
		return fmt.Errorf("attach %s to %s: %w", name, path, err)
	}
	if a.PinPath != "" {
		if err := l.Pin(a.PinPath); err != nil {
			l.Close()
			return fmt.Errorf("pin %s link: %w", name, err)
		}
	}
	a.link = l
	o.links = append(o.links, a)
	return nil
}

// checkPinnedLink reads where a pinned link is attached, from the kernel's
// link info: gone when its cgroup no longer exists (the kernel detached it),
// ErrPinnedElsewhere when it is on another cgroup or hook than path and typ.
func checkPinnedLink(l link.Link, name, path string, typ ebpf.AttachType) (gone bool, err error) {
	info, err := l.Info()
	if err != nil {
		return false, fmt.Errorf("adopt pinned %s link: %w", name, err)
	}
	cg := info.Cgroup()
	if cg == nil {
		return false, fmt.Errorf("adopt pinned %s link: a %v link, not a cgroup's: %w", name, info.Type, ErrPinnedElsewhere)
	}
	if cg.CgroupId == 0 {
		return true, nil
	}
	want, err := cgroupID(path)
	if err != nil {
		return false, fmt.Errorf("adopt pinned %s link: %w", name, err)
	}
	if cg.CgroupId != want || ebpf.AttachType(cg.AttachType) != typ {
		return false, fmt.Errorf("adopt pinned %s link: attached to cgroup %d (%v), not %s (cgroup %d, %v); run chio-agent uninstall first: %w",
			name, cg.CgroupId, ebpf.AttachType(cg.AttachType), path, want, typ, ErrPinnedElsewhere)
	}
	return false, nil
}

// cgroupID returns the id of the cgroup v2 directory at path: its inode.
func cgroupID(path string) (uint64, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return 0, fmt.Errorf("cgroup id of %s: %w", path, err)
	}
	return st.Ino, nil
}

// Attachments describes the attached links (for status).
func (o *Objects) Attachments() []Attachment { return append([]Attachment(nil), o.links...) }

// LinkID returns the kernel id of an attachment's link, and of its program.
func (a Attachment) IDs() (linkID, progID uint32, err error) {
	info, err := a.link.Info()
	if err != nil {
		return 0, 0, fmt.Errorf("link info %s: %w", a.Name, err)
	}
	return uint32(info.ID), uint32(info.Program), nil
}

// Protect starts redirecting the TCP connections of every process in the
// cgroup (and its descendants) to the workload's listeners, its DNS to its
// DNS listener (or, without one, to the resolvers), and refusing the rest
// of its UDP.
func (o *Objects) Protect(cgroupID uint64, w Workload) error {
	var v chioWorkload
	v.Id = w.ID
	has, err := o.hasVerdicts(w.ID)
	if err != nil {
		return fmt.Errorf("protect cgroup %d: %w", cgroupID, err)
	}
	if has {
		v.Flags |= workloadHasVerdicts
	}
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
		v.ListenIp6 = addrWords(w.Listen6.Addr())
		v.ListenPort6 = htons(w.Listen6.Port())
	}
	if err := dnsPorts(&v, w); err != nil {
		return fmt.Errorf("protect cgroup %d: %w", cgroupID, err)
	}
	if err := o.objs.Workloads.Put(cgroupID, &v); err != nil {
		return fmt.Errorf("protect cgroup %d: %w", cgroupID, err)
	}
	return o.bumpGeneration()
}

// bumpGeneration invalidates the programs' per-cgroup workload cache. It
// must follow every change to the workloads map.
func (o *Objects) bumpGeneration() error {
	var gen uint32
	if err := o.objs.Generation.Lookup(uint32(0), &gen); err != nil {
		return fmt.Errorf("read generation: %w", err)
	}
	gen++
	if err := o.objs.Generation.Put(uint32(0), gen); err != nil {
		return fmt.Errorf("bump generation: %w", err)
	}
	return nil
}

// Unprotect stops redirecting the cgroup's connections.
func (o *Objects) Unprotect(cgroupID uint64) error {
	if err := o.objs.Workloads.Delete(cgroupID); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("unprotect cgroup %d: %w", cgroupID, err)
	}
	return o.bumpGeneration()
}

// Workloads returns the protected cgroups, as pinned state shows them to a
// restarted agent.
func (o *Objects) Workloads() (map[uint64]Workload, error) {
	out := make(map[uint64]Workload)
	var k uint64
	var v chioWorkload
	it := o.objs.Workloads.Iterate()
	for it.Next(&k, &v) {
		w := Workload{ID: v.Id, HasVerdicts: v.Flags&workloadHasVerdicts != 0}
		if v.ListenPort4 != 0 {
			var b [4]byte
			netFromNative(b[:], v.ListenIp4)
			w.Listen4 = netip.AddrPortFrom(netip.AddrFrom4(b), ntohs(v.ListenPort4))
		}
		if v.ListenPort6 != 0 {
			w.Listen6 = netip.AddrPortFrom(wordsAddr(v.ListenIp6), ntohs(v.ListenPort6))
		}
		w.DNSPort4, w.DNSPort6 = ntohs(v.DnsPort4), ntohs(v.DnsPort6)
		out[k] = w
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("list workloads: %w", err)
	}
	return out, nil
}

// TakeOriginal returns and forgets the original destination of the redirected
// connection whose client side is client in the network namespace netnsCookie
// (the peer address and SO_NETNS_COOKIE of the accepted socket).
func (o *Objects) TakeOriginal(netnsCookie uint64, client netip.AddrPort) (Original, error) {
	var k chioTupleKey
	k.NetnsCookie = netnsCookie
	k.Addr = addrWords(client.Addr())
	k.Port = client.Port()
	var v chioOrigDst
	if err := o.objs.OrigByTuple.LookupAndDelete(&k, &v); err != nil {
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return Original{}, fmt.Errorf("take original of %s: %w", client, ErrNoOriginal)
		}
		return Original{}, fmt.Errorf("take original of %s: %w", client, err)
	}
	return originalOf(&v), nil
}

// MapCounts returns how many originals wait between connect() and the
// handshake (pending) and for the proxy to take them (established), so tests
// and status can show that connections leave nothing behind.
func (o *Objects) MapCounts() (pending, established int, err error) {
	count := func(m *ebpf.Map, k, v any) (int, error) {
		n := 0
		it := m.Iterate()
		for it.Next(k, v) {
			n++
		}
		return n, it.Err()
	}
	var ck uint64
	var tk chioTupleKey
	var ov chioOrigDst
	if pending, err = count(o.objs.OrigPending, &ck, &ov); err != nil {
		return 0, 0, fmt.Errorf("count pending originals: %w", err)
	}
	// And the pending originals in their slots (most of them).
	var i uint32
	var slot chioPendingSlot
	it := o.objs.PendingSlots.Iterate()
	for it.Next(&i, &slot) {
		if slot.Cookie != 0 {
			pending++
		}
	}
	if err := it.Err(); err != nil {
		return 0, 0, fmt.Errorf("count pending originals: %w", err)
	}
	if established, err = count(o.objs.OrigByTuple, &tk, &ov); err != nil {
		return 0, 0, fmt.Errorf("count established originals: %w", err)
	}
	return pending, established, nil
}

// Close releases the process's handles. Links, programs and maps that are
// pinned stay in the kernel (that is the point of pinning); unpinned ones are
// detached and freed.
func (o *Objects) Close() error {
	var errs []error
	for _, a := range o.links {
		if a.PinPath == "" {
			// Detach now: closing the last fd detaches too, but only once the
			// kernel gets round to freeing the link.
			if err := a.link.Detach(); err != nil && !errors.Is(err, ErrNotSupported) {
				errs = append(errs, fmt.Errorf("detach %s: %w", a.Name, err))
			}
		}
		errs = append(errs, a.link.Close())
	}
	o.links = nil
	for _, p := range o.prev {
		p.close()
	}
	o.prev = nil
	errs = append(errs, o.objs.Close())
	o.closeLock()
	return errors.Join(errs...)
}

// Uninstall detaches every link pinned under pinDir, of every layout, and
// removes every pin. Links are detached explicitly before they are
// unpinned, so that the hooks are gone when Uninstall returns rather than
// when the kernel frees them. Missing pins are not an error.
func Uninstall(pinDir string) ([]string, error) {
	var removed []string
	var errs []error
	for _, dir := range pinSets(pinDir) {
		r, err := removePins(dir, true)
		removed = append(removed, r...)
		errs = append(errs, err)
	}
	if err := os.Remove(pinDir); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, fmt.Errorf("remove %s: %w", pinDir, err))
	}
	return removed, errors.Join(errs...)
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
