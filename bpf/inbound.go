package bpf

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/cilium/ebpf"
)

// EventInboundRefused is a protected workload's attempt to receive refused
// by inbound.c (EVENT_INBOUND_REFUSED). The event's Dst is the local address
// and port, and its RuleID the InboundOp.
const EventInboundRefused EventKind = 8

// InboundOp is what an inbound refusal refused (enum inbound_op).
type InboundOp uint32

// Inbound operations.
const (
	// InboundBind is a bind() to a fixed port, TCP or UDP: it failed with
	// EPERM.
	InboundBind InboundOp = 1
	// InboundListen is a TCP listen() on a port the kernel picked: it
	// succeeded, but every packet to the listener is dropped, the agent's
	// marked relay excepted.
	InboundListen InboundOp = 2
)

func (op InboundOp) String() string {
	switch op {
	case InboundBind:
		return "bind"
	case InboundListen:
		return "listen"
	}
	return fmt.Sprintf("inbound-op-%d", uint32(op))
}

// InboundRule lets a protected workload receive on a local port.
type InboundRule struct {
	Proto Proto  // ProtoTCP or ProtoUDP
	Port  uint16 // local port; 0 allows every port
}

// inboundObjs are inbound.c's programs and its own maps.
type inboundObjs struct {
	Bind4   *ebpf.Program `ebpf:"chio_inbound_bind4"`
	Bind6   *ebpf.Program `ebpf:"chio_inbound_bind6"`
	Sockops *ebpf.Program `ebpf:"chio_inbound_sockops"`
	Ingress *ebpf.Program `ebpf:"chio_inbound_ingress"`
	Allow   *ebpf.Map     `ebpf:"inbound_allow"`
	Refused *ebpf.Map     `ebpf:"inbound_refused"`
}

func (i *inboundObjs) close() error {
	return errors.Join(i.Bind4.Close(), i.Bind6.Close(), i.Sockops.Close(), i.Ingress.Close(),
		i.Allow.Close(), i.Refused.Close())
}

var inboundHooks = []hook{
	{"chio_inbound_bind4", ebpf.AttachCGroupInet4Bind, "cgroup/bind4", nil},
	{"chio_inbound_bind6", ebpf.AttachCGroupInet6Bind, "cgroup/bind6", nil},
	{"chio_inbound_sockops", ebpf.AttachCGroupSockOps, "sockops", nil},
	{"chio_inbound_ingress", ebpf.AttachCGroupInetIngress, "cgroup_skb/ingress", nil},
}

func (i *inboundObjs) prog(name string) *ebpf.Program {
	switch name {
	case "chio_inbound_bind4":
		return i.Bind4
	case "chio_inbound_bind6":
		return i.Bind6
	case "chio_inbound_sockops":
		return i.Sockops
	case "chio_inbound_ingress":
		return i.Ingress
	}
	return nil
}

// loadInbound loads inbound.c's programs beside chio.c's, sharing its maps.
func (o *Objects) loadInbound() error {
	spec, err := loadInbound()
	if err != nil {
		return fmt.Errorf("load inbound spec: %w", err)
	}
	if err := spec.Variables["agent_mark"].Set(o.opts.AgentMark); err != nil {
		return fmt.Errorf("set inbound agent_mark: %w", err)
	}
	copts := ebpf.CollectionOptions{MapReplacements: map[string]*ebpf.Map{
		"workloads":  o.objs.Workloads,
		"cg_cache":   o.objs.CgCache,
		"generation": o.objs.Generation,
		"event_rate": o.objs.EventRate,
		"events":     o.objs.Events,
	}}
	if o.opts.PinDir == "" {
		for _, m := range []string{"inbound_allow", "inbound_refused"} {
			spec.Maps[m].Pinning = ebpf.PinNone
		}
	} else {
		copts.Maps.PinPath = filepath.Join(o.opts.PinDir, "maps")
	}
	var objs inboundObjs
	if err := spec.LoadAndAssign(&objs, &copts); err != nil {
		var verr *ebpf.VerifierError
		if errors.As(err, &verr) {
			return fmt.Errorf("load inbound programs: %+v", verr)
		}
		return fmt.Errorf("load inbound programs: %w", err)
	}
	if o.opts.PinDir != "" {
		for _, h := range inboundHooks {
			path := filepath.Join(o.opts.PinDir, "progs", h.name)
			if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
				objs.close()
				return fmt.Errorf("replace pinned program %s: %w", path, err)
			}
			if err := objs.prog(h.name).Pin(path); err != nil {
				objs.close()
				return fmt.Errorf("pin program %s: %w", h.name, err)
			}
		}
	}
	o.inbound = &objs
	return nil
}

// attachInbound attaches inbound.c's programs.
func (o *Objects) attachInbound(path string) error {
	for _, h := range inboundHooks {
		if err := o.attach(path, h.name, h.text, h.typ, o.inbound.prog(h.name)); err != nil {
			return err
		}
	}
	return nil
}

// SetInbound replaces the ports a workload may bind to and listen on (a
// rule for port 0 allows every port, kernel-picked ones included); nil
// refuses every inbound port. New rules
// are written before stale ones are removed, so a port kept in both is never
// refused in between.
func (o *Objects) SetInbound(workloadID uint32, rules []InboundRule) error {
	m := o.inbound.Allow
	want := make(map[inboundInboundKey]bool, len(rules))
	for _, r := range rules {
		if r.Proto != ProtoTCP && r.Proto != ProtoUDP {
			return fmt.Errorf("set inbound: port %d: protocol %d is neither tcp nor udp", r.Port, r.Proto)
		}
		k := inboundInboundKey{WorkloadId: workloadID, Proto: uint8(r.Proto), Port: r.Port}
		if err := m.Put(&k, uint8(1)); err != nil {
			return fmt.Errorf("set inbound: put %s/%d: %w", r.Proto, r.Port, err)
		}
		want[k] = true
	}
	var stale []inboundInboundKey
	var k inboundInboundKey
	var v uint8
	it := m.Iterate()
	for it.Next(&k, &v) {
		if k.WorkloadId == workloadID && !want[k] {
			stale = append(stale, k)
		}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("set inbound: list: %w", err)
	}
	for _, k := range stale {
		if err := m.Delete(&k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("set inbound: delete %d/%d: %w", k.Proto, k.Port, err)
		}
	}
	return nil
}

// ForgetRefused removes a workload's listeners from the refused map, when
// it stops being protected.
func (o *Objects) ForgetRefused(workloadID uint32) error {
	var cookies []uint64
	var c uint64
	var id uint32
	it := o.inbound.Refused.Iterate()
	for it.Next(&c, &id) {
		if id == workloadID {
			cookies = append(cookies, c)
		}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("forget refused listeners: %w", err)
	}
	for _, c := range cookies {
		if err := o.inbound.Refused.Delete(c); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("forget refused listener %#x: %w", c, err)
		}
	}
	return nil
}

// RefuseListener marks the listener whose socket cookie is cookie as
// refused, as inbound.c does at listen() time: every packet to it is dropped
// but the agent's relay. For listeners a workload opened before it was
// protected, which no hook saw. It reports false when the listener was
// refused already (by the hook, or by an agent before a restart).
func (o *Objects) RefuseListener(cookie uint64, workloadID uint32) (bool, error) {
	if err := o.inbound.Refused.Update(cookie, workloadID, ebpf.UpdateNoExist); err != nil {
		if errors.Is(err, ebpf.ErrKeyExist) {
			return false, nil
		}
		return false, fmt.Errorf("refuse listener %#x: %w", cookie, err)
	}
	return true, nil
}
