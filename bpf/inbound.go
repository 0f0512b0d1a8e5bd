package bpf

import (
	"errors"
	"fmt"

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

var inboundOpNames = map[InboundOp]string{
	InboundBind:   "bind",
	InboundListen: "listen",
}

func (op InboundOp) String() string { return enumName(op, inboundOpNames, "inbound-op") }

// InboundRule lets a protected workload receive on a local port.
type InboundRule struct {
	Proto Proto  // ProtoTCP or ProtoUDP
	Port  uint16 // local port; 0 allows every port
}

// SetInbound replaces the ports a workload may bind to and listen on (a
// rule for port 0 allows every port, kernel-picked ones included); nil
// refuses every inbound port. New rules
// are written before stale ones are removed, so a port kept in both is never
// refused in between.
func (o *Objects) SetInbound(workloadID uint32, rules []InboundRule) error {
	m := o.objs.InboundAllow
	want := make(map[chioInboundKey]bool, len(rules))
	for _, r := range rules {
		if r.Proto != ProtoTCP && r.Proto != ProtoUDP {
			return fmt.Errorf("set inbound: port %d: protocol %d is neither tcp nor udp", r.Port, r.Proto)
		}
		k := chioInboundKey{WorkloadId: workloadID, Proto: uint8(r.Proto), Port: r.Port}
		if err := m.Put(&k, uint8(1)); err != nil {
			return fmt.Errorf("set inbound: put %s/%d: %w", r.Proto, r.Port, err)
		}
		want[k] = true
	}
	if err := deleteWhere(m, func(k chioInboundKey, _ uint8) bool { return k.WorkloadId == workloadID && !want[k] }); err != nil {
		return fmt.Errorf("set inbound: stale ports: %w", err)
	}
	return nil
}

// ForgetRefused removes a workload's listeners from the refused map, when
// it stops being protected.
func (o *Objects) ForgetRefused(workloadID uint32) error {
	if err := deleteWhere(o.objs.InboundRefused, func(_ uint64, id uint32) bool { return id == workloadID }); err != nil {
		return fmt.Errorf("forget refused listeners: %w", err)
	}
	return nil
}

// RefuseListener marks the listener whose socket cookie is cookie as
// refused, as inbound.c does at listen() time: every packet to it is dropped
// but the agent's relay. For listeners a workload opened before it was
// protected, which no hook saw. It reports false when the listener was
// refused already (by the hook, or by an agent before a restart).
func (o *Objects) RefuseListener(cookie uint64, workloadID uint32) (bool, error) {
	if err := o.objs.InboundRefused.Update(cookie, workloadID, ebpf.UpdateNoExist); err != nil {
		if errors.Is(err, ebpf.ErrKeyExist) {
			return false, nil
		}
		return false, fmt.Errorf("refuse listener %#x: %w", cookie, err)
	}
	return true, nil
}
