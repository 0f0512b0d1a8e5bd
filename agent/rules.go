package agent

import (
	"crypto/sha256"
	"encoding/binary"
	"net/netip"
	"sync"

	"github.com/backbay-labs/chio-agent/bpf"
	"github.com/backbay-labs/chio-agent/kernel/hushspec"
)

// Static verdict rules (the policy's blocked IP literals, refused at
// connect() in the kernel) carry a rule id that the kernel echoes in its
// refusal events. The id names one pattern of one policy: it is derived from
// the policy's hash and the pattern, never from a position in a list, so an
// event raised before a reload still names the rule that refused it, and the
// same policy gets the same ids after a restart (pinned verdict maps then
// resolve too). Exemptions keep id 0.

// ruleGenerations is how many policies' rule ids the table keeps beside
// those a workload uses now: the ones before them, for events raised before
// a reload and read after it. Older ids resolve to nothing, and the receipt
// says so. A policy some workload uses is never let go, however many pod
// policies there are.
const ruleGenerations = 8

// staticRule is what a rule id stands for.
type staticRule struct {
	addr       netip.Addr
	pattern    string // as written in the policy
	policyHash string // the policy the rule came from
}

// ruleTable maps the rule ids of the last ruleGenerations policies to their
// patterns.
type ruleTable struct {
	mu    sync.Mutex
	gens  []ruleGeneration  // oldest first
	users map[uint32]string // workload id -> the policy hash its rules came from
}

type ruleGeneration struct {
	policyHash string
	ids        map[uint32]staticRule
	rules      []bpf.VerdictRule // the policy's static rules, ids filled in
}

// staticRuleID is the id of one blocked address of one policy: the first
// four bytes of SHA-256 over the policy hash, the pattern and the address.
// Never 0, which exemptions use.
func staticRuleID(policyHash, pattern string, addr netip.Addr) uint32 {
	h := sha256.New()
	h.Write([]byte(policyHash))
	h.Write([]byte{0})
	h.Write([]byte(pattern))
	h.Write([]byte{0})
	h.Write(addr.AsSlice())
	id := binary.BigEndian.Uint32(h.Sum(nil))
	if id == 0 {
		id = 1
	}
	return id
}

// rulesOf returns the static verdict rules of workload id's policy pol, and
// keeps pol's ids while the workload uses it.
func (t *ruleTable) rulesOf(id uint32, pol *hushspec.Policy) []bpf.VerdictRule {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.users == nil {
		t.users = map[uint32]string{}
	}
	t.users[id] = pol.Hash()
	return t.rulesForLocked(pol)
}

// release forgets which policy workload id used (it is gone): that policy's
// ids age out like any other's once no workload uses it.
func (t *ruleTable) release(id uint32) {
	t.mu.Lock()
	defer t.mu.Unlock()
	delete(t.users, id)
}

// rulesFor returns the static verdict rules of pol, registering their ids
// (once per policy: a policy already in the table becomes the newest).
func (t *ruleTable) rulesFor(pol *hushspec.Policy) []bpf.VerdictRule {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.rulesForLocked(pol)
}

func (t *ruleTable) rulesForLocked(pol *hushspec.Policy) []bpf.VerdictRule {
	hash := pol.Hash()
	for i, g := range t.gens {
		if g.policyHash == hash {
			t.gens = append(append(t.gens[:i:i], t.gens[i+1:]...), g)
			return g.rules
		}
	}
	g := ruleGeneration{policyHash: hash, ids: map[uint32]staticRule{}}
	for _, b := range pol.EgressBlockedAddrs() {
		id := staticRuleID(hash, b.Pattern, b.Addr)
		for { // two patterns of one policy on one id: the later one moves on
			if _, taken := g.ids[id]; !taken {
				break
			}
			if id++; id == 0 {
				id = 1
			}
		}
		g.ids[id] = staticRule{addr: b.Addr, pattern: b.Pattern, policyHash: hash}
		g.rules = append(g.rules, bpf.VerdictRule{
			Prefix: netip.PrefixFrom(b.Addr, b.Addr.BitLen()), Proto: bpf.ProtoTCP,
			Verdict: bpf.VerdictDeny, RuleID: id,
		})
	}
	t.gens = append(t.gens, g)
	t.evict()
	return g.rules
}

// evict drops the oldest generations no workload uses until at most
// ruleGenerations of those are left.
func (t *ruleTable) evict() {
	inUse := map[string]bool{}
	for _, h := range t.users {
		inUse[h] = true
	}
	spare := 0
	for _, g := range t.gens {
		if !inUse[g.policyHash] {
			spare++
		}
	}
	if spare <= ruleGenerations {
		return
	}
	kept := t.gens[:0:0]
	for _, g := range t.gens {
		if !inUse[g.policyHash] && spare > ruleGenerations {
			spare--
			continue
		}
		kept = append(kept, g)
	}
	t.gens = kept
}

// lookup resolves a rule id from a kernel event for a connection to dst,
// newest policy first. ok is false when no policy the table holds has that
// id for that address.
func (t *ruleTable) lookup(id uint32, dst netip.Addr) (staticRule, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for i := len(t.gens) - 1; i >= 0; i-- {
		if r, ok := t.gens[i].ids[id]; ok && r.addr.Unmap() == dst.Unmap() {
			return r, true
		}
	}
	return staticRule{}, false
}
