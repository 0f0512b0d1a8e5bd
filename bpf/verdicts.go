package bpf

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/cilium/ebpf"
)

// Proto is an IP protocol number as the verdict map keys it.
type Proto uint8

// Protocols the programs decide on.
const (
	ProtoTCP Proto = 6
	ProtoUDP Proto = 17
)

var protoNames = map[Proto]string{
	ProtoTCP: "tcp",
	ProtoUDP: "udp",
}

func (p Proto) String() string { return enumName(p, protoNames, "proto") }

// Verdict is what the static verdict map says of a destination.
type Verdict uint32

// Verdicts of the static map (enum verdict in chio.c).
const (
	// VerdictDeny refuses at connect()/sendmsg(); an event is reported.
	VerdictDeny Verdict = 1
	// VerdictExempt passes the connection untouched: no redirect, no receipt.
	// Operator-configured only; it widens access, so use it sparingly.
	VerdictExempt Verdict = 2
)

// VerdictRule is one entry of a workload's static verdict map.
type VerdictRule struct {
	Prefix  netip.Prefix // destination prefix; a single address is a /32 or /128
	Port    uint16       // destination port; 0 matches every port
	Proto   Proto        // ProtoTCP or ProtoUDP
	Verdict Verdict
	RuleID  uint32 // echoed in events so the agent can name the rule
}

func verdictKey(workloadID uint32, r VerdictRule) (chioVerdictKey, error) {
	if !r.Prefix.IsValid() {
		return chioVerdictKey{}, fmt.Errorf("verdict rule: invalid prefix")
	}
	if r.Proto != ProtoTCP && r.Proto != ProtoUDP {
		return chioVerdictKey{}, fmt.Errorf("verdict rule %s: protocol %d is neither tcp nor udp", r.Prefix, r.Proto)
	}
	p := r.Prefix.Masked()
	bits := p.Bits()
	if p.Addr().Is4() {
		bits += 96 // stored v4-mapped
	}
	return chioVerdictKey{
		Prefixlen:  uint32(64 + bits),
		WorkloadId: workloadID,
		Proto:      uint8(r.Proto),
		Port:       r.Port,
		Addr:       addrWords(p.Addr()),
	}, nil
}

// SetVerdicts replaces the static verdict rules of one workload: the new
// rules are written first, then the workload's stale ones removed, so a rule
// present in both sets is never absent. The workload's entries are told they
// have rules only once the rules are in place, and told they have none before
// the last ones go, so the programs never skip a rule in force.
func (o *Objects) SetVerdicts(workloadID uint32, rules []VerdictRule) error {
	if len(rules) == 0 {
		if err := o.setVerdictFlag(workloadID, false); err != nil {
			return err
		}
	}
	if err := o.putVerdicts(workloadID, rules); err != nil {
		return err
	}
	if len(rules) > 0 {
		return o.setVerdictFlag(workloadID, true)
	}
	return nil
}

// setVerdictFlag sets or clears WL_HAS_VERDICTS on every workloads-map entry
// of the workload.
func (o *Objects) setVerdictFlag(workloadID uint32, on bool) error {
	var k uint64
	var v chioWorkload
	type entry struct {
		k uint64
		v chioWorkload
	}
	var change []entry
	it := o.objs.Workloads.Iterate()
	for it.Next(&k, &v) {
		if v.Id == workloadID && (v.Flags&workloadHasVerdicts != 0) != on {
			v.Flags ^= workloadHasVerdicts
			change = append(change, entry{k, v})
		}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("set verdicts: list workloads: %w", err)
	}
	for _, e := range change {
		if err := o.objs.Workloads.Update(e.k, &e.v, ebpf.UpdateExist); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("set verdicts: flag workload %d: %w", workloadID, err)
		}
	}
	if len(change) == 0 {
		return nil
	}
	return o.bumpGeneration()
}

// hasVerdicts says whether the verdict map holds rules for the workload.
func (o *Objects) hasVerdicts(workloadID uint32) (bool, error) {
	var k chioVerdictKey
	var v chioVerdictVal
	it := o.objs.Verdicts.Iterate()
	for it.Next(&k, &v) {
		if k.WorkloadId == workloadID {
			return true, nil
		}
	}
	if err := it.Err(); err != nil {
		return false, fmt.Errorf("list verdicts: %w", err)
	}
	return false, nil
}

func (o *Objects) putVerdicts(workloadID uint32, rules []VerdictRule) error {
	want := make(map[chioVerdictKey]bool, len(rules))
	for _, r := range rules {
		if r.Verdict != VerdictDeny && r.Verdict != VerdictExempt {
			return fmt.Errorf("set verdicts: rule %s has unknown verdict %d", r.Prefix, r.Verdict)
		}
		k, err := verdictKey(workloadID, r)
		if err != nil {
			return fmt.Errorf("set verdicts: %w", err)
		}
		v := chioVerdictVal{Verdict: uint32(r.Verdict), RuleId: r.RuleID}
		if err := o.objs.Verdicts.Put(&k, &v); err != nil {
			return fmt.Errorf("set verdicts: put %s: %w", r.Prefix, err)
		}
		want[k] = true
	}
	err := deleteWhere(o.objs.Verdicts, func(k chioVerdictKey, _ chioVerdictVal) bool { return k.WorkloadId == workloadID && !want[k] })
	if err != nil {
		return fmt.Errorf("set verdicts: stale rules: %w", err)
	}
	return nil
}

// SetResolvers replaces the DNS resolvers protected workloads may reach over
// UDP (and TCP) without going through the proxy.
func (o *Objects) SetResolvers(resolvers []netip.AddrPort) error {
	want := make(map[chioResolverKey]bool, len(resolvers))
	one := uint8(1)
	for _, r := range resolvers {
		if !r.IsValid() || r.Port() == 0 {
			return fmt.Errorf("set resolvers: %s is not an address and port", r)
		}
		k := chioResolverKey{Addr: addrWords(r.Addr()), Port: r.Port()}
		if err := o.objs.Resolvers.Put(&k, &one); err != nil {
			return fmt.Errorf("set resolvers: put %s: %w", r, err)
		}
		want[k] = true
	}
	if err := deleteWhere(o.objs.Resolvers, func(k chioResolverKey, _ uint8) bool { return !want[k] }); err != nil {
		return fmt.Errorf("set resolvers: stale resolvers: %w", err)
	}
	return nil
}
