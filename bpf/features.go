package bpf

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"unicode"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/features"
	"golang.org/x/sys/unix"
)

// featureProbe is one kernel feature the programs need, named for the error
// an operator reads when it is missing.
type featureProbe struct {
	name  string       // e.g. "helper bpf_get_netns_cookie in SockOps programs"
	check func() error // nil: present; ErrNotSupported: missing; else the probe failed
}

// checkFeatures runs the probes in order and returns the first missing
// feature as an error wrapping ErrNotSupported that names it, so that an
// old kernel is refused with the reason rather than a verifier log.
func checkFeatures(probes []featureProbe) error {
	for _, p := range probes {
		err := p.check()
		switch {
		case err == nil:
		case errors.Is(err, ebpf.ErrNotSupported):
			return fmt.Errorf("kernel lacks %s: %w", p.name, ErrNotSupported)
		default:
			return fmt.Errorf("probe %s: %w", p.name, err)
		}
	}
	return nil
}

// featureProbes lists what the programs of spec need, read from spec itself
// so that the list cannot fall behind the C: kernel BTF and the kernel
// fields the guard walk reads by CO-RE, every map type, every program type
// with its attach type, and every helper each program type calls.
func featureProbes(spec *ebpf.CollectionSpec) []featureProbe {
	probes := []featureProbe{
		{"BTF (/sys/kernel/btf/vmlinux, CONFIG_DEBUG_INFO_BTF)", haveKernelBTF},
		{"the cgroup and kernfs fields the guard walk reads (CO-RE)", haveGuardWalkFields},
		// gen.go compiles for -mcpu=v3; the pending slots use its atomics.
		{"BPF ISA v3 (32-bit jumps, atomics)", features.HaveV3ISA},
	}
	seen := map[string]bool{}
	add := func(name string, check func() error) {
		if !seen[name] {
			seen[name] = true
			probes = append(probes, featureProbe{name, check})
		}
	}
	for _, name := range sortedKeys(spec.Maps) {
		typ := spec.Maps[name].Type
		add(fmt.Sprintf("%s maps", typ), func() error { return features.HaveMapType(typ) })
	}
	for _, name := range sortedKeys(spec.Programs) {
		p := spec.Programs[name]
		typ, at, section := p.Type, p.AttachType, p.SectionName
		add(fmt.Sprintf("%s programs", typ), func() error { return features.HaveProgramType(typ) })
		if at != ebpf.AttachNone {
			add(fmt.Sprintf("the %s attach point", section), func() error { return haveAttachType(typ, at) })
		}
		if typ == ebpf.Syscall {
			// features probes Syscall helpers as sleepable, which these
			// programs are not: the type is what matters here.
			continue
		}
		for _, ins := range p.Instructions {
			if !ins.IsBuiltinCall() {
				continue
			}
			fn := asm.BuiltinFunc(ins.Constant)
			add(fmt.Sprintf("helper %s in %s programs", helperName(fn), typ),
				func() error { return features.HaveProgramHelper(typ, fn) })
		}
	}
	return probes
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// helperName turns FnGetNetnsCookie into bpf_get_netns_cookie.
func helperName(fn asm.BuiltinFunc) string {
	s := strings.TrimPrefix(fn.String(), "Fn")
	var b strings.Builder
	b.WriteString("bpf")
	for _, r := range s {
		if unicode.IsUpper(r) {
			b.WriteByte('_')
			r = unicode.ToLower(r)
		}
		b.WriteRune(r)
	}
	return b.String()
}

func haveKernelBTF() error {
	if _, err := btf.LoadKernelSpec(); err != nil {
		if errors.Is(err, ebpf.ErrNotSupported) {
			return err
		}
		return fmt.Errorf("%w: %v", ebpf.ErrNotSupported, err)
	}
	return nil
}

// haveGuardWalkFields checks the kernel types chio.c reads through CO-RE:
// without them the relocations fail and the loader rejects the programs
// with a verifier log instead of a reason.
func haveGuardWalkFields() error {
	spec, err := btf.LoadKernelSpec()
	if err != nil {
		return haveKernelBTF()
	}
	need := []struct {
		typ    string
		fields []string // any one of a group separated by | will do
	}{
		{"task_struct", []string{"cgroups"}},
		{"css_set", []string{"dfl_cgrp"}},
		{"cgroup", []string{"level", "kn"}},
		{"kernfs_node", []string{"id", "name", "__parent|parent"}},
	}
	for _, n := range need {
		var s *btf.Struct
		if err := spec.TypeByName(n.typ, &s); err != nil {
			return fmt.Errorf("%w: struct %s: %v", ebpf.ErrNotSupported, n.typ, err)
		}
		for _, group := range n.fields {
			if !slices.ContainsFunc(strings.Split(group, "|"), func(f string) bool { return hasMember(s, f) }) {
				return fmt.Errorf("%w: struct %s has no %s", ebpf.ErrNotSupported, n.typ, group)
			}
		}
	}
	return nil
}

func hasMember(s *btf.Struct, name string) bool {
	for _, m := range s.Members {
		if m.Name == name {
			return true
		}
	}
	return false
}

// haveAttachType loads a program that does nothing with the expected attach
// type: a kernel that does not know the attach type refuses it (EINVAL, or
// E2BIG for a load attribute it does not know).
func haveAttachType(typ ebpf.ProgramType, at ebpf.AttachType) error {
	prog, err := ebpf.NewProgramWithOptions(&ebpf.ProgramSpec{
		Type:       typ,
		AttachType: at,
		License:    "GPL",
		Instructions: asm.Instructions{
			asm.LoadImm(asm.R0, 1, asm.DWord),
			asm.Return(),
		},
	}, ebpf.ProgramOptions{LogDisabled: true})
	if err == nil {
		prog.Close()
		return nil
	}
	if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.E2BIG) {
		return fmt.Errorf("%w: %v", ebpf.ErrNotSupported, err)
	}
	return err
}
