package agent

import (
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/backbay-labs/chio-agent/bpf"
	"github.com/backbay-labs/chio-agent/kernel"
	"github.com/backbay-labs/chio-agent/receipts"
)

// Guards named in receipts for decisions the agent makes itself rather than
// the policy's egress rules (kernel/decide.go documents each).
const (
	GuardAntiSpoof = kernel.GuardAntiSpoof
	GuardProtocol  = kernel.GuardProtocol
	GuardDatapath  = kernel.GuardDatapath
)

// Timeouts bound each proxied connection.
type Timeouts struct {
	// FirstBytes is how long a client has to send its first message
	// (ClientHello, request head). Default 5s.
	FirstBytes time.Duration
	// Idle closes a connection with no data either way for this long.
	// Default 5m.
	Idle time.Duration
	// Total closes a connection this long after it was accepted. Default 1h.
	Total time.Duration
	// Dial bounds the upstream connect. Default 10s.
	Dial time.Duration
}

func (t Timeouts) withDefaults() Timeouts {
	if t.FirstBytes <= 0 {
		t.FirstBytes = 5 * time.Second
	}
	if t.Idle <= 0 {
		t.Idle = 5 * time.Minute
	}
	if t.Total <= 0 {
		t.Total = time.Hour
	}
	if t.Dial <= 0 {
		t.Dial = 10 * time.Second
	}
	return t
}

// Decision is one decided connection (or kernel refusal), as the agent
// reports it to its OnDecision hook and its status.
type Decision struct {
	Time        time.Time      `json:"time"`
	Workload    string         `json:"workload"`
	PID         uint32         `json:"pid,omitempty"`
	Comm        string         `json:"comm,omitempty"`
	Dst         netip.AddrPort `json:"dst"`
	Transport   string         `json:"transport"`
	Name        string         `json:"name,omitempty"`     // SNI or Host, when seen
	Protocol    string         `json:"protocol,omitempty"` // tls, http, opaque …
	Verdict     string         `json:"verdict"`            // allow or deny
	Guard       string         `json:"guard"`
	MatchedRule string         `json:"matched_rule,omitempty"`
	Reason      string         `json:"reason,omitempty"`
	ReceiptID   string         `json:"receipt_id,omitempty"`
	Seq         uint64         `json:"seq,omitempty"`
	Count       uint32         `json:"count,omitempty"` // kernel refusals this stands for
	Err         string         `json:"error,omitempty"` // why the connection failed after the decision
}

// counters are the allowed/denied/failed totals status shows.
type counters struct {
	allowed, denied, failed, receiptErrors atomic.Uint64
}

// proxy decides and relays the connections redirected to its listeners.
type proxy struct {
	objs *bpf.Objects
	log  *receipts.Log
	// kern decides every connection and prepares its receipt, under the
	// policy snapshot a connection takes when it is accepted.
	kern      *kernel.Kernel
	workloads *registry
	// resolver is kern's AddressOwner (anti-spoofing), held here for tests
	// that seed its answers.
	resolver *resolver
	timeouts Timeouts // defaults applied (Start)
	limits   Limits   // defaults applied (Start)
	mark     uint32
	logger   logrus.FieldLogger
	onDecide func(Decision)
	counts   *counters
	errs     *errorRing
	now      func() time.Time
	// idle closes relays that have gone quiet.
	idle *idleSet
	// metrics are the Prometheus metrics.
	metrics *metrics
	// pending and relays count connections held over all workloads
	// (each workload counts its own too), against limits.
	pending, relays atomic.Int64
	// overflow aggregates the receipts of connections refused at accept.
	overflow *overflow

	wg sync.WaitGroup
}

func firstNonEmpty(s ...string) string {
	for _, v := range s {
		if v != "" {
			return v
		}
	}
	return ""
}
