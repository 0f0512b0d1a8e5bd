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
)

func (k EventKind) String() string {
	switch k {
	case EventTCPDenied:
		return "tcp_denied"
	case EventUDPRefused:
		return "udp_refused"
	case EventNoRecord:
		return "no_record"
	case EventInboundRefused:
		return "inbound_refused"
	}
	return fmt.Sprintf("event-%d", uint32(k))
}

// Event is a refusal made in the kernel, reported so that the agent still
// writes a receipt. Events are rate-limited per workload, protocol and
// destination (one a second); Count says how many refusals one stands for.
type Event struct {
	Kind       EventKind
	WorkloadID uint32
	PID        uint32
	UID        uint32
	CgroupID   uint64
	Dst        netip.AddrPort
	Proto      Proto
	RuleID     uint32
	Count      uint32
	Comm       string
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
		return Event{}, fmt.Errorf("read event: %w", err)
	}
	var e chioEvent
	if err := binary.Read(bytes.NewReader(rec.RawSample), binary.NativeEndian, &e); err != nil {
		return Event{}, fmt.Errorf("decode event: %w", err)
	}
	return Event{
		Kind:       EventKind(e.Kind),
		WorkloadID: e.WorkloadId,
		PID:        e.Pid,
		UID:        e.Uid,
		CgroupID:   e.CgroupId,
		Dst:        netip.AddrPortFrom(wordsAddr(e.Addr), e.Port),
		Proto:      Proto(e.Proto),
		RuleID:     e.RuleId,
		Count:      e.Count,
		Comm:       unix.ByteSliceToString(e.Comm[:]),
	}, nil
}

// Close stops the reader.
func (r *EventReader) Close() error { return r.rd.Close() }
