package bpf

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// Versioned pins. A pin directory holds one directory per map layout,
// <PinDir>/layout-<hash>/{maps,progs,links}, the hash taken over every
// pinned map's name, type, key and value sizes, max entries, flags and value
// BTF. Two binaries whose pinned maps are the same share a layout: the newer
// adopts the maps and swaps its programs into the pinned links (a restart).
// A binary whose layout differs cannot adopt the maps; it loads its own into
// its own layout directory, waits for the agent to rebuild its state there,
// then hands each pinned link over to its program with bpf_link_update
// (Handover), so that no hook is ever empty, and removes the other layout's
// pins. Pins made before layouts were versioned, directly under PinDir, are
// moved into their layout's directory when they match this binary's layout,
// and handed over like any other layout's when they do not.

// layoutPrefix starts the name of every layout directory.
const layoutPrefix = "layout-"

// pinSubdirs are the kinds of pins in a layout directory.
var pinSubdirs = []string{"maps", "progs", "links"}

// layoutOf names the layout of the spec's pinned maps.
func layoutOf(spec *ebpf.CollectionSpec) string {
	var names []string
	for name, m := range spec.Maps {
		if m.Pinning == ebpf.PinByName {
			names = append(names, name)
		}
	}
	slices.Sort(names)
	h := sha256.New()
	for _, name := range names {
		m := spec.Maps[name]
		fmt.Fprintf(h, "%s type=%d key=%d value=%d max=%d flags=%d btf=%s\n",
			name, m.Type, m.KeySize, m.ValueSize, m.MaxEntries, m.Flags, btfShape(m.Value))
	}
	return layoutPrefix + hex.EncodeToString(h.Sum(nil)[:8])
}

// btfShape spells out a map value's type: its name, size and, for a struct,
// each member's name, offset and size, so a member moved or resized within
// the same value size is a new layout.
func btfShape(t btf.Type) string {
	if t == nil {
		return "-"
	}
	size, _ := btf.Sizeof(t)
	var b strings.Builder
	fmt.Fprintf(&b, "%s/%d", t.TypeName(), size)
	if s, ok := btf.UnderlyingType(t).(*btf.Struct); ok {
		for _, m := range s.Members {
			ms, _ := btf.Sizeof(m.Type)
			fmt.Fprintf(&b, "{%s@%d:%d}", m.Name, m.Offset, ms)
		}
	}
	return b.String()
}

// LayoutDir is the directory this layout's maps, programs and links are
// pinned under (PinDir/layout-<hash>); empty without a PinDir.
func (o *Objects) LayoutDir() string { return o.layoutDir }

// pinSets returns the directories under pinDir that hold a layout's pins:
// pinDir itself when it holds unversioned pins, then each layout directory.
func pinSets(pinDir string) []string {
	var out []string
	if hasPins(pinDir) {
		out = append(out, pinDir)
	}
	dirs, _ := filepath.Glob(filepath.Join(pinDir, layoutPrefix+"*"))
	slices.Sort(dirs)
	return append(out, dirs...)
}

// hasPins reports whether dir has one of the pin subdirectories.
func hasPins(dir string) bool {
	for _, sub := range pinSubdirs {
		if _, err := os.Stat(filepath.Join(dir, sub)); err == nil {
			return true
		}
	}
	return false
}

// migrateUnversioned moves pins made before layouts were versioned (directly
// under pinDir) into layoutDir when every pinned map among them matches the
// spec: they are this binary's layout, and a restart adopts them. One pin is
// renamed at a time, never over another. Pins that do not match are left
// where they are, to be handed over; so are all of them when layoutDir has
// pins already (a migration interrupted midway, or an older binary run
// after a newer one): the handover then takes over their links for the
// hooks layoutDir has none for, and detaches the rest.
func migrateUnversioned(pinDir, layoutDir string, spec *ebpf.CollectionSpec) (bool, error) {
	if !hasPins(pinDir) || hasPins(layoutDir) {
		return false, nil
	}
	if err := compatibleMaps(filepath.Join(pinDir, "maps"), spec); err != nil {
		if errors.Is(err, ebpf.ErrMapIncompatible) {
			return false, nil
		}
		return false, fmt.Errorf("migrate unversioned pins: %w", err)
	}
	for _, sub := range pinSubdirs {
		from, to := filepath.Join(pinDir, sub), filepath.Join(layoutDir, sub)
		entries, err := os.ReadDir(from)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return false, fmt.Errorf("migrate unversioned pins: %w", err)
		}
		if err := os.MkdirAll(to, 0o700); err != nil {
			return false, fmt.Errorf("migrate unversioned pins: %w", err)
		}
		for _, e := range entries {
			if err := unix.Renameat2(unix.AT_FDCWD, filepath.Join(from, e.Name()), unix.AT_FDCWD, filepath.Join(to, e.Name()), unix.RENAME_NOREPLACE); err != nil {
				return false, fmt.Errorf("migrate unversioned pin %s: %w", filepath.Join(from, e.Name()), err)
			}
		}
		if err := os.Remove(from); err != nil {
			return false, fmt.Errorf("migrate unversioned pins: %w", err)
		}
	}
	return true, nil
}

// compatibleMaps checks every map pinned in dir that the spec pins under the
// same name: nil when each could be adopted, an error wrapping
// ebpf.ErrMapIncompatible naming the first that could not.
func compatibleMaps(dir string, spec *ebpf.CollectionSpec) error {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	for _, e := range entries {
		ms, ok := spec.Maps[e.Name()]
		if !ok || ms.Pinning != ebpf.PinByName {
			// A map this binary no longer has: another layout.
			return fmt.Errorf("pinned map %s: not in this binary: %w", e.Name(), ebpf.ErrMapIncompatible)
		}
		m, err := ebpf.LoadPinnedMap(filepath.Join(dir, e.Name()), nil)
		if err != nil {
			return fmt.Errorf("open pinned map %s: %w", e.Name(), err)
		}
		err = ms.Compatible(m)
		m.Close()
		if err != nil {
			return fmt.Errorf("pinned map %s: %w", e.Name(), err)
		}
	}
	return nil
}

// previousMaps are the maps of another layout whose programs are still
// attached while a handover waits: the agent's own cgroup must be exempted
// there too, or the old programs refuse the new agent's sockets.
type previousMaps struct {
	exempt, generation *ebpf.Map
}

// openPrevious opens another layout's birth_exempt and generation maps, when
// their key and value sizes are the ones Exempt writes; nil when they are
// not there or not those.
func openPrevious(dir string) *previousMaps {
	open := func(name string, key, value uint32) *ebpf.Map {
		m, err := ebpf.LoadPinnedMap(filepath.Join(dir, "maps", name), nil)
		if err != nil {
			return nil
		}
		if m.KeySize() != key || m.ValueSize() != value {
			m.Close()
			return nil
		}
		return m
	}
	p := &previousMaps{exempt: open(chioMapBirthExempt, 8, 4), generation: open(chioMapGeneration, 4, 4)}
	if p.exempt == nil || p.generation == nil {
		p.close()
		return nil
	}
	return p
}

func (p *previousMaps) close() {
	if p == nil {
		return
	}
	if p.exempt != nil {
		p.exempt.Close()
	}
	if p.generation != nil {
		p.generation.Close()
	}
}

// exemptCgroup writes an exemption where the previous programs read it, and bumps
// their generation so that their cached verdict for the cgroup is dropped.
func (p *previousMaps) exemptCgroup(cgroupID uint64) error {
	if err := p.exempt.Put(cgroupID, uint32(birthExempt)); err != nil {
		return fmt.Errorf("exempt cgroup %d for the previous layout: %w", cgroupID, err)
	}
	var gen uint32
	if err := p.generation.Lookup(uint32(0), &gen); err != nil {
		return fmt.Errorf("read the previous layout's generation: %w", err)
	}
	if err := p.generation.Put(uint32(0), gen+1); err != nil {
		return fmt.Errorf("bump the previous layout's generation: %w", err)
	}
	return nil
}

// HandoverPending reports that links of another layout are attached and
// AttachCgroup left them as they are: protection is the other layout's
// programs' (refusing, as their agent is gone) until Handover.
func (o *Objects) HandoverPending() bool { return o.pending != "" }

// PreviousLayouts names the pin sets of other layouts found at Load (their
// directories), which Handover removes.
func (o *Objects) PreviousLayouts() []string { return append([]string(nil), o.others...) }

// handoverFault, set by tests, fails the handover before the i-th link.
var handoverFault func(i int) error

// Handover swaps every link of another layout to this binary's program for
// its hook with bpf_link_update, so the hook goes from the old program to the
// new with nothing in between, pins it under this layout, attaches hooks the
// old layout did not have, detaches old links whose hook this binary does
// not have, and removes the other layouts' pins. Call it once this layout's
// maps hold the agent's state: the new programs decide from the moment of
// the swap. On an error the links not yet swapped keep their old programs
// (protected workloads stay refused) and a later Load and Handover resume.
func (o *Objects) Handover() error {
	if o.pending == "" {
		return nil
	}
	path := o.pending
	for i, h := range handoverOrder() {
		if handoverFault != nil {
			if err := handoverFault(i); err != nil {
				return fmt.Errorf("hand over %s: %w", h.name, err)
			}
		}
		if err := o.attach(path, h.name, h.text, h.typ, h.prog(&o.objs.chioPrograms)); err != nil {
			return fmt.Errorf("hand over: %w", err)
		}
	}
	o.pending, o.cgroup = "", path
	for _, p := range o.prev {
		p.close()
	}
	o.prev = nil
	var errs []error
	for _, dir := range o.others {
		if _, err := removePins(dir, true); err != nil {
			errs = append(errs, err)
		}
	}
	o.others = nil
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("hand over: remove the previous layout's pins: %w", err)
	}
	return nil
}

// handoverOrder is the hooks in the order Handover swaps them: the
// bookkeeping hooks first, the hooks that redirect (connect, sendmsg) last.
// A connection made midway is redirected by the old programs (to the old
// agent's listener: refused) until its connect hook is swapped, and after
// that finds every hook it meets next already reading the new maps.
func handoverOrder() []hook {
	redirects := func(h hook) bool {
		switch h.typ {
		case ebpf.AttachCGroupInet4Connect, ebpf.AttachCGroupInet6Connect, ebpf.AttachCGroupUDP4Sendmsg, ebpf.AttachCGroupUDP6Sendmsg:
			return true
		}
		return false
	}
	var first, last []hook
	for _, h := range hooks {
		if redirects(h) {
			last = append(last, h)
		} else {
			first = append(first, h)
		}
	}
	return append(first, last...)
}

// takeOver finds the link of another layout pinned for a hook, on the
// cgroup at path, swaps it to prog and pins it at pinPath. ok is false when
// there is none (or its cgroup is gone).
func (o *Objects) takeOver(name, path, pinPath string, typ ebpf.AttachType, prog *ebpf.Program) (link.Link, bool, error) {
	for _, dir := range o.others {
		old := filepath.Join(dir, "links", name)
		l, err := link.LoadPinnedLink(old, nil)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, false, fmt.Errorf("load %s link of the previous layout: %w", name, err)
		}
		gone, err := checkPinnedLink(l, name, path, typ)
		if err != nil {
			l.Close()
			return nil, false, err
		}
		if gone {
			l.Close()
			continue
		}
		if err := l.Update(prog); err != nil {
			l.Close()
			return nil, false, fmt.Errorf("hand over %s link: %w", name, err)
		}
		// The pin moves to this layout in one rename (the library's Pin of
		// a pinned link): the link is never without a pin, so an agent
		// dying here leaves it attached.
		if err := l.Pin(pinPath); err != nil {
			l.Close()
			return nil, false, fmt.Errorf("pin handed-over %s link: %w", name, err)
		}
		if err := os.Remove(old); err != nil && !errors.Is(err, os.ErrNotExist) {
			l.Close()
			return nil, false, fmt.Errorf("unpin handed-over %s link: %w", name, err)
		}
		return l, true, nil
	}
	return nil, false, nil
}

// checkOthersAttachedTo refuses the other layouts' links that are on
// another cgroup or hook than path: handing them over would leave path
// unprotected while status said it was. It reports whether any is attached.
func (o *Objects) checkOthersAttachedTo(path string) (bool, error) {
	attached := false
	for _, dir := range o.others {
		for _, h := range hooks {
			l, err := link.LoadPinnedLink(filepath.Join(dir, "links", h.name), nil)
			if errors.Is(err, os.ErrNotExist) {
				continue
			}
			if err != nil {
				return false, fmt.Errorf("load %s link of the previous layout: %w", h.name, err)
			}
			gone, err := checkPinnedLink(l, h.name, path, h.typ)
			l.Close()
			if err != nil {
				return false, err
			}
			attached = attached || !gone
		}
		// Links of hooks this binary lacks count too: they hold the old
		// programs, which refuse protected workloads' connections.
		links, _ := filepath.Glob(filepath.Join(dir, "links", "*"))
		for _, p := range links {
			if !slices.ContainsFunc(hooks, func(h hook) bool { return h.name == filepath.Base(p) }) {
				attached = true
			}
		}
	}
	return attached, nil
}

// removePins unpins everything in one pin set (detaching its links first
// when detach is set) and removes its directories. Missing pins are not an
// error.
func removePins(dir string, detach bool) ([]string, error) {
	var removed []string
	var errs []error
	if detach {
		links, _ := filepath.Glob(filepath.Join(dir, "links", "*"))
		for _, p := range links {
			l, err := link.LoadPinnedLink(p, nil)
			if errors.Is(err, os.ErrNotExist) {
				continue
			}
			if err != nil {
				errs = append(errs, fmt.Errorf("open pinned link %s: %w", p, err))
				continue
			}
			if err := l.Detach(); err != nil && !errors.Is(err, ErrNotSupported) {
				errs = append(errs, fmt.Errorf("detach %s: %w", p, err))
			}
			l.Close()
		}
	}
	for _, sub := range []string{"links", "progs", "maps"} {
		d := filepath.Join(dir, sub)
		entries, err := os.ReadDir(d)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("read %s: %w", d, err))
			continue
		}
		for _, e := range entries {
			p := filepath.Join(d, e.Name())
			if err := os.Remove(p); errors.Is(err, os.ErrNotExist) {
				continue // removed meanwhile (an exec reaper and a sweep may race)
			} else if err != nil {
				errs = append(errs, fmt.Errorf("unpin %s: %w", p, err))
				continue
			}
			removed = append(removed, p)
		}
		if err := os.Remove(d); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("remove %s: %w", d, err))
		}
	}
	if strings.HasPrefix(filepath.Base(dir), layoutPrefix) {
		if err := os.Remove(dir); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("remove %s: %w", dir, err))
		}
	}
	return removed, errors.Join(errs...)
}
