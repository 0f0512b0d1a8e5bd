package bpf

import (
	"errors"
	"fmt"
	"slices"

	"github.com/cilium/ebpf"
)

// Protected from birth (the birth_* maps in chio.c). A birth root is the
// cgroup of a subtree (Kubernetes' kubepods) whose cgroups must each be
// classified before they may use the network: protected (Protect) or exempt
// (Exempt). Every socket(), connect() and sendmsg() on an inet socket from a
// cgroup strictly below a birth root that is neither, and has no exempt
// ancestor at or below the deepest birth root above it, is refused with
// EPERM and reported as EventUnclassified. Cgroups are named by id: a
// directory removed and made again is new, and unclassified. Protection
// always wins over exemption: Exempt never lifts a workload's redirection.

// EventUnclassified is a socket(), connect() or sendmsg() from a cgroup
// below a birth root that the agent has not classified yet, refused in the
// kernel. The event has no workload (WorkloadID 0); its CgroupID names the
// cgroup, its RuleID the UnclassifiedOp, and its Dst the destination (none
// for UnclassifiedSocket).
const EventUnclassified EventKind = 9

// UnclassifiedOp is the call an EventUnclassified refused (enum
// unclassified_op in chio.c).
type UnclassifiedOp uint32

// Calls refused in unclassified cgroups.
const (
	UnclassifiedSocket  UnclassifiedOp = 1 // socket(): any AF_INET/AF_INET6 socket, TCP and UDP too
	UnclassifiedConnect UnclassifiedOp = 2 // connect()
	UnclassifiedSendmsg UnclassifiedOp = 3 // sendmsg() on a UDP socket
)

var unclassifiedOpNames = map[UnclassifiedOp]string{
	UnclassifiedSocket:  "socket",
	UnclassifiedConnect: "connect",
	UnclassifiedSendmsg: "sendmsg",
}

func (op UnclassifiedOp) String() string { return enumName(op, unclassifiedOpNames, "op") }

// birthExempt is BIRTH_EXEMPT in chio.c.
const birthExempt = 1

// SetBirthRoot makes the cgroup with id cgroupID a birth root: from its
// return, every cgroup below it that is not classified is refused the
// network. The root itself is not refused.
func (o *Objects) SetBirthRoot(cgroupID uint64) error {
	if cgroupID == 0 {
		return errors.New("set birth root: cgroup id 0")
	}
	if err := o.objs.BirthRoots.Put(cgroupID, uint32(1)); err != nil {
		return fmt.Errorf("set birth root %d: %w", cgroupID, err)
	}
	return o.birthChanged()
}

// RemoveBirthRoot stops refusing unclassified cgroups below cgroupID. A
// missing root is not an error.
func (o *Objects) RemoveBirthRoot(cgroupID uint64) error {
	if err := o.objs.BirthRoots.Delete(cgroupID); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("remove birth root %d: %w", cgroupID, err)
	}
	return o.birthChanged()
}

// Exempt classifies the cgroup with id cgroupID, and every cgroup below it,
// as exempt: below a birth root they are no longer refused, and not
// mediated either (unless a workload protects them).
func (o *Objects) Exempt(cgroupID uint64) error {
	if cgroupID == 0 {
		return errors.New("exempt cgroup: cgroup id 0")
	}
	if err := o.objs.BirthExempt.Put(cgroupID, uint32(birthExempt)); err != nil {
		return fmt.Errorf("exempt cgroup %d: %w", cgroupID, err)
	}
	// While a handover waits, another layout's programs are the ones
	// attached: they must see the exemption too (the agent's own cgroup,
	// exempted before its first socket).
	if o.pending != "" {
		for _, p := range o.prev {
			if err := p.exemptCgroup(cgroupID); err != nil {
				return err
			}
		}
	}
	return o.bumpGeneration()
}

// Unexempt withdraws a cgroup's exemption: below a birth root it is
// refused again unless protected. A missing entry is not an error.
func (o *Objects) Unexempt(cgroupID uint64) error {
	if err := o.objs.BirthExempt.Delete(cgroupID); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("unexempt cgroup %d: %w", cgroupID, err)
	}
	return o.bumpGeneration()
}

// BirthRoots returns the birth roots' cgroup ids, sorted, as pinned state
// shows them to a restarted agent.
func (o *Objects) BirthRoots() ([]uint64, error) {
	ids, err := keys(o.objs.BirthRoots)
	if err != nil {
		return nil, fmt.Errorf("list birth roots: %w", err)
	}
	return ids, nil
}

// Exempted returns the ids of the cgroups classified exempt, sorted.
func (o *Objects) Exempted() ([]uint64, error) {
	ids, err := keys(o.objs.BirthExempt)
	if err != nil {
		return nil, fmt.Errorf("list exempt cgroups: %w", err)
	}
	return ids, nil
}

func keys(m *ebpf.Map) ([]uint64, error) {
	var out []uint64
	var k uint64
	var v uint32
	it := m.Iterate()
	for it.Next(&k, &v) {
		out = append(out, k)
	}
	if err := it.Err(); err != nil {
		return nil, err
	}
	slices.Sort(out)
	return out, nil
}

// birthChanged writes the number of birth roots where sock_create reads it
// (with none, a TCP or UDP socket() is passed before any lookup) and bumps
// the generation. The count is read back from the map itself, so a failed
// write earlier is mended by the next change.
func (o *Objects) birthChanged() error {
	roots, err := keys(o.objs.BirthRoots)
	if err != nil {
		return fmt.Errorf("count birth roots: %w", err)
	}
	if err := o.objs.BirthCount.Put(uint32(0), uint32(len(roots))); err != nil {
		return fmt.Errorf("count birth roots: %w", err)
	}
	return o.bumpGeneration()
}
