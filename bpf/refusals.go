package bpf

import (
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// refusalIdle is REFUSAL_IDLE_NS in chio.c: an entry with nothing pending
// and no refusal for this long is removed by a take.
const refusalIdle = time.Second

// RefusalStats account for the refusals the programs made, summed over
// CPUs since the maps were created (pinned maps outlive agents). Every
// refusal is either in an event, pending (TakeRefusals reports it), or Lost.
type RefusalStats struct {
	// Refused counts every refusal made in the kernel.
	Refused uint64 `json:"refused"`
	// Lost counts refusals that could be neither put in an event nor kept
	// pending (the ring was full and their entry was gone): never receipted.
	Lost uint64 `json:"lost"`
	// RingFull counts events the ring had no room for; their refusals were
	// kept pending (unless counted in Lost) and reported later.
	RingFull uint64 `json:"ring_full"`
	// MapFull counts refusals whose entry could not be made in the refusals
	// map (full, or a racing insert); each was reported alone.
	MapFull uint64 `json:"map_full"`
}

// Indexes of refusal_stats (enum refusal_stat in chio.c).
const (
	statRefused = iota
	statLost
	statRingFull
	statMapFull
)

// RefusalStats reads the refusal accounting.
func (o *Objects) RefusalStats() (RefusalStats, error) {
	read := func(i uint32) (uint64, error) {
		var per []uint64
		if err := o.objs.RefusalStats.Lookup(i, &per); err != nil {
			return 0, fmt.Errorf("read refusal stats: %w", err)
		}
		var sum uint64
		for _, v := range per {
			sum += v
		}
		return sum, nil
	}
	var s RefusalStats
	var errs []error
	for i, p := range []*uint64{statRefused: &s.Refused, statLost: &s.Lost, statRingFull: &s.RingFull, statMapFull: &s.MapFull} {
		v, err := read(uint32(i))
		errs = append(errs, err)
		*p = v
	}
	return s, errors.Join(errs...)
}

// TakeRefusals reports the refusals that wait in the kernel for their
// destination's next event: each key whose interval has passed (every key
// with final, as an agent does when it stops) gives one Event counting them.
// Entries with nothing pending that have gone idle are removed. The take is
// made in the kernel under each entry's lock, so a refusal is reported
// exactly once, by an event or here.
func (o *Objects) TakeRefusals(final bool) ([]Event, error) {
	// Only keys with something to do are taken (the values are read without
	// their lock: a hint, which the program checks under it).
	var now unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &now); err != nil { // bpf_ktime_get_ns's clock
		return nil, fmt.Errorf("take refusals: %w", err)
	}
	nowNs := uint64(now.Nano())
	var keys []chioRateKey
	var k chioRateKey
	var v chioRefusalAcc
	it := o.objs.Refusals.Iterate()
	for it.Next(&k, &v) {
		if final || v.Pending > 0 || nowNs-v.LastSeenNs >= uint64(refusalIdle) {
			keys = append(keys, k)
		}
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("take refusals: list: %w", err)
	}
	var out []Event
	for _, k := range keys {
		t := chioTakeRefusals{Key: k}
		if final {
			t.Final = 1
		}
		if _, err := o.objs.ChioTakeRefusals.Run(&ebpf.RunOptions{Context: &t, ContextOut: &t}); err != nil {
			return out, fmt.Errorf("take refusals: %w", err)
		}
		if t.Count == 0 {
			continue
		}
		e := Event{
			Kind:       EventKind(k.Kind),
			WorkloadID: k.WorkloadId,
			PID:        t.Last.Pid,
			UID:        t.Last.Uid,
			CgroupID:   t.Last.CgroupId,
			Proto:      Proto(k.Protocol),
			RuleID:     k.RuleId,
			Count:      t.Count,
			Comm:       unix.ByteSliceToString(t.Last.Comm[:]),
			Socket:     Socket{Family: int(k.Family), Type: int(k.SockType), Protocol: k.Protocol},
		}
		if hasDst(e.Kind, e.RuleID) {
			e.Dst = netip.AddrPortFrom(wordsAddr(k.Addr), k.Port)
		}
		out = append(out, e)
	}
	return out, nil
}

// RefusalKeys counts the entries of the refusals map: the destinations
// refused within about the last second or with refusals pending (near 0 on
// a quiet node; the map holds 65536).
func (o *Objects) RefusalKeys() (int, error) {
	n := 0
	var k chioRateKey
	var v chioRefusalAcc
	it := o.objs.Refusals.Iterate()
	for it.Next(&k, &v) {
		n++
	}
	if err := it.Err(); err != nil {
		return n, fmt.Errorf("count refusal keys: %w", err)
	}
	return n, nil
}
