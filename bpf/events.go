package bpf

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"

	"github.com/cilium/ebpf/ringbuf"
	"golang.org/x/sys/unix"
)

// EventKind says why the programs refused something in the kernel.
type EventKind uint32

// Event kinds (enum event_kind in chio.c).
const (
	EventTCPDenied  EventKind = 1 // TCP connect refused by the static verdict map
	EventUDPRefused EventKind = 2 // UDP from a protected workload, not DNS, not exempt
	EventNoRecord   EventKind = 3 // the original could not be recorded: connect refused
	// EventSocketRefused: socket() of a kind the datapath does not mediate
	// (ICMP, raw, SCTP...). The event has no destination.
	EventSocketRefused EventKind = 4
	// EventProtoRefused: connect() or sendmsg() of such a socket, one made
	// before its workload was protected or passed in from outside.
	EventProtoRefused EventKind = 5
	// EventPortZero: a TCP connect() to port 0.
	EventPortZero EventKind = 6
	// EventGuarded: a connect or send from a guarded cgroup path the agent
	// has not protected yet (a workload's cgroup made again); refused.
	EventGuarded EventKind = 7
)

var eventKindNames = map[EventKind]string{
	EventTCPDenied:      "tcp_denied",
	EventUDPRefused:     "udp_refused",
	EventNoRecord:       "no_record",
	EventSocketRefused:  "socket_refused",
	EventProtoRefused:   "proto_refused",
	EventPortZero:       "port_zero",
	EventGuarded:        "guarded",
	EventInboundRefused: "inbound_refused",
	EventUnclassified:   "unclassified",
}

func (k EventKind) String() string { return enumName(k, eventKindNames, "event") }

// Event is a refusal made in the kernel, reported so that the agent still
// writes a receipt. Events are rate-limited per workload, protocol and
// destination (one a second); Count says how many refusals one stands for.
// The refusals of an interval after the first come in a later event, or
// from TakeRefusals.
type Event struct {
	Kind       EventKind
	WorkloadID uint32
	PID        uint32 // the (latest) refusing process
	UID        uint32
	CgroupID   uint64
	Dst        netip.AddrPort // invalid for EventSocketRefused and an UnclassifiedSocket
	Proto      Proto          // IP protocol (Protocol cut to 8 bits)
	RuleID     uint32
	Count      uint32
	Comm       string
	Socket     Socket // the refused socket
}

// hasDst says whether an event of this kind and rule id names a
// destination: refusals at socket() have none.
func hasDst(k EventKind, ruleID uint32) bool {
	switch k {
	case EventSocketRefused:
		return false
	case EventUnclassified:
		return UnclassifiedOp(ruleID) != UnclassifiedSocket
	}
	return true
}

// Socket describes the socket a refusal was made on.
type Socket struct {
	Family   int    // unix.AF_INET or unix.AF_INET6
	Type     int    // unix.SOCK_STREAM, unix.SOCK_DGRAM, unix.SOCK_RAW...
	Protocol uint16 // IP protocol number, as the kernel resolved it
}

// EventReader reads refusal events. Close unblocks Read, which then returns
// an error wrapping os.ErrClosed.
type EventReader struct {
	rd *ringbuf.Reader
}

// OpenEvents opens the ring buffer the programs report refusals through.
func (o *Objects) OpenEvents() (*EventReader, error) {
	rd, err := ringbuf.NewReader(o.objs.Events)
	if err != nil {
		return nil, fmt.Errorf("open events: %w", err)
	}
	return &EventReader{rd: rd}, nil
}

// Read blocks until the next event.
func (r *EventReader) Read() (Event, error) {
	rec, err := r.rd.Read()
	if err != nil {
		if errors.Is(err, ringbuf.ErrClosed) {
			return Event{}, fmt.Errorf("read event: %w", os.ErrClosed)
		}
		if errors.Is(err, ringbuf.ErrFlushed) {
			return Event{}, fmt.Errorf("read event: %w", ErrFlushed)
		}
		return Event{}, fmt.Errorf("read event: %w", err)
	}
	var e chioEvent
	if err := binary.Read(bytes.NewReader(rec.RawSample), binary.NativeEndian, &e); err != nil {
		return Event{}, fmt.Errorf("decode event: %w", err)
	}
	ev := Event{
		Kind:       EventKind(e.Kind),
		WorkloadID: e.WorkloadId,
		PID:        e.Pid,
		UID:        e.Uid,
		CgroupID:   e.CgroupId,
		Proto:      Proto(e.Proto),
		RuleID:     e.RuleId,
		Count:      e.Count,
		Comm:       unix.ByteSliceToString(e.Comm[:]),
		Socket:     Socket{Family: int(e.Family), Type: int(e.SockType), Protocol: e.Protocol},
	}
	if hasDst(ev.Kind, ev.RuleID) {
		ev.Dst = netip.AddrPortFrom(wordsAddr(e.Addr), e.Port)
	}
	return ev, nil
}

// Flush makes Read return the events already in the ring, then an error
// wrapping ErrFlushed: a reader that stops on it has read every event
// reported before the call.
func (r *EventReader) Flush() error { return r.rd.Flush() }

// ErrFlushed ends the events read after EventReader.Flush.
var ErrFlushed = ringbuf.ErrFlushed

// Close stops the reader.
func (r *EventReader) Close() error { return r.rd.Close() }
