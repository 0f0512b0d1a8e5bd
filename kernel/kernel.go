package kernel

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/backbay-labs/chio-agent/internal/nolog"
	"github.com/backbay-labs/chio-agent/kernel/hushspec"
	"github.com/backbay-labs/chio-agent/kernel/jcs"
)

// GuardToolAccess names the HushSpec tool_access rules as a guard.
const GuardToolAccess = "HushSpecToolAccessGuard"

// ToolCallMetadataSchema versions the metadata of tool-call receipts.
const ToolCallMetadataSchema = "chio-agent.tool_call.v1"

// Log field keys.
const (
	logFieldAction  = "action"
	logFieldTarget  = "target"
	logFieldVerdict = "verdict"
	logFieldRule    = "matched_rule"
	logFieldReceipt = "receipt_id"
)

// Options configures New.
type Options struct {
	// Policy is the HushSpec policy to decide with. Required; replace it
	// later with SetPolicy.
	Policy *hushspec.Policy
	// SigningKey signs every receipt. Required. In the in-process shape the
	// agent's process holds it too, so receipts prove what the kernel
	// decided only as far as that process is trusted.
	SigningKey ed25519.PrivateKey
	// Clock gives the time of each decision. Default time.Now; tests pass a
	// fixed clock to get reproducible receipts.
	Clock func() time.Time
	// Logger receives one debug entry per decision. Default: discard.
	Logger logrus.FieldLogger
	// AddressOwner answers whether a name the client sent (TLS SNI, HTTP
	// Host) owns the address it dialled: the anti-spoofing check of egress
	// decisions. The node agent sets it. Nil: a sniffed name is refused, and
	// an event with nothing sniffed (in-process agents, which dial the name
	// themselves) is not checked.
	AddressOwner AddressOwner
}

// Kernel decides actions against a HushSpec policy and signs a receipt for
// every decision. It is safe for concurrent use; SetPolicy swaps the policy
// without blocking decisions in flight, each of which uses one policy (and
// its hash) from start to end.
type Kernel struct {
	policy atomic.Pointer[policyState]
	key    ed25519.PrivateKey
	clock  func() time.Time
	log    logrus.FieldLogger
	owner  AddressOwner
}

// policyState pairs a policy with its hash, so a reload between the two
// reads can never sign one policy's decision with the other's hash.
type policyState struct {
	p    *hushspec.Policy
	hash string
}

// New returns a Kernel for opts.
func New(opts Options) (*Kernel, error) {
	if opts.Policy == nil {
		return nil, fmt.Errorf("new kernel: %w", ErrNoPolicy)
	}
	if len(opts.SigningKey) != ed25519.PrivateKeySize {
		return nil, fmt.Errorf("new kernel: %w: signing key is %d bytes, want %d", ErrInvalidKey, len(opts.SigningKey), ed25519.PrivateKeySize)
	}
	k := &Kernel{key: opts.SigningKey, clock: opts.Clock, log: opts.Logger, owner: opts.AddressOwner}
	if k.clock == nil {
		k.clock = time.Now
	}
	k.log = nolog.Or(k.log)
	k.SetPolicy(opts.Policy)
	return k, nil
}

// SetPolicy replaces the policy for every later decision (hot reload). A
// nil policy is ignored: a kernel never loses its policy, since deciding
// without one could only fail open or fail everything.
func (k *Kernel) SetPolicy(p *hushspec.Policy) {
	if p == nil {
		return
	}
	k.policy.Store(&policyState{p: p, hash: p.Hash()})
}

// PolicyHash returns the hash of the current policy.
func (k *Kernel) PolicyHash() string { return k.policy.Load().hash }

// KernelKey returns the hex public key receipts carry as kernel_key.
func (k *Kernel) KernelKey() string { return PublicKeyHex(k.key.Public().(ed25519.PublicKey)) }

// EvaluateEgress decides one outbound connection and returns the outcome
// with its signed receipt: Snapshot().DecideEgress for an event with
// nothing peeked, signed at once. On error (a cancelled ctx, an event the
// receipt cannot describe) the outcome is a deny and there is no receipt:
// the caller must refuse the connection, as a decision that cannot be
// recorded cannot be allowed.
func (k *Kernel) EvaluateEgress(ctx context.Context, ev EgressEvent) (Outcome, Receipt, error) {
	if err := ctx.Err(); err != nil {
		return failClosed(err), Receipt{}, fmt.Errorf("evaluate egress: %w", err)
	}
	e := k.Snapshot().DecideEgress(ctx, Seen{Event: ev})
	p, err := e.Receipt()
	if err != nil {
		return failClosed(err), Receipt{}, fmt.Errorf("evaluate egress: %w", err)
	}
	r, err := p.Sign(k.key)
	if err != nil {
		return failClosed(err), Receipt{}, fmt.Errorf("evaluate egress: %w", err)
	}
	return e.Outcome, r, nil
}

// ToolCall is one tool invocation by an in-process agent.
type ToolCall struct {
	// ToolServer and ToolName name the tool, as the receipt records them.
	// Both required; ToolName is what tool_access rules match.
	ToolServer string
	ToolName   string
	// Arguments is the call's JSON arguments (an object in practice; nil
	// means {}). Their canonical size is checked against max_args_size.
	Arguments json.RawMessage
	// CapabilityID is recorded as capability_id when the call is made under
	// a capability token. The kernel does not verify the token here: verify
	// it with Capability.Verify before the call.
	CapabilityID string
	// RequestID, when set, is recorded as metadata.request_id: it keeps two
	// identical calls in one second from having one receipt id while their
	// parameters (and parameter_hash) stay identical.
	RequestID string
	// Decided, when set, is a decision made before the policy (the sidecar's
	// route, capability and request checks): the call is recorded with it
	// and the policy is not asked. It must deny: what allows is the policy.
	Decided *Outcome
	// Guard, when set, is consulted after the decision and before the
	// receipt is prepared (the session journal, kernel/session): it may
	// turn an allow into a deny and adds metadata; it learns the receipt's
	// id once prepared. Nil: no guard.
	Guard CallGuard
}

// EvaluateToolCall decides one tool call and returns the outcome with its
// signed receipt. Errors deny, as for EvaluateEgress.
func (k *Kernel) EvaluateToolCall(ctx context.Context, call ToolCall) (Outcome, Receipt, error) {
	out, p, err := k.PrepareToolCall(ctx, call)
	if err != nil {
		return out, Receipt{}, err
	}
	r, err := p.Sign(k.key)
	if err != nil {
		return failClosed(err), Receipt{}, fmt.Errorf("evaluate tool call: %w", err)
	}
	return out, r, nil
}

// PrepareToolCall is EvaluateToolCall with the receipt prepared but not yet
// signed (its id is final): for callers that sign off their critical path,
// such as Log.AppendPrepared in async mode.
func (k *Kernel) PrepareToolCall(ctx context.Context, call ToolCall) (Outcome, *Prepared, error) {
	if err := ctx.Err(); err != nil {
		return failClosed(err), nil, fmt.Errorf("evaluate tool call: %w", err)
	}
	if call.ToolServer == "" || call.ToolName == "" {
		err := fmt.Errorf("%w: tool server and tool name are required", ErrInvalidReceipt)
		return failClosed(err), nil, fmt.Errorf("evaluate tool call: %w", err)
	}
	args := call.Arguments
	if len(args) == 0 {
		args = json.RawMessage("{}")
	}
	// Canonicalize first so max_args_size measures what the receipt holds,
	// however the caller spaced its JSON.
	canon, err := jcs.Canonicalize(args)
	if err != nil {
		err = fmt.Errorf("%w: arguments: %w", ErrInvalidReceipt, err)
		return failClosed(err), nil, fmt.Errorf("evaluate tool call: %w", err)
	}
	st := k.policy.Load()
	var out Outcome
	if call.Decided != nil {
		if call.Decided.Verdict != VerdictDeny {
			err := fmt.Errorf("%w: a decision made before the policy must deny", ErrInvalidReceipt)
			return failClosed(err), nil, fmt.Errorf("evaluate tool call: %w", err)
		}
		out = *call.Decided
	} else {
		out = outcomeOf(st.p.Evaluate(hushspec.Action{Type: "tool_call", Target: call.ToolName, ArgsSize: int64(len(canon))}), GuardToolAccess)
	}
	now := k.clock()
	at := now.Unix()
	if at < 0 {
		err := fmt.Errorf("%w: clock before 1970", ErrInvalidReceipt)
		return failClosed(err), nil, fmt.Errorf("evaluate tool call: %w", err)
	}
	var extra map[string]any
	if call.Guard != nil {
		// From here the guard holds what it checked (a session's lock)
		// until Bind, which every return below calls.
		if extra, err = call.Guard.Check(&out, now); err != nil {
			call.Guard.Bind("", err)
			return failClosed(err), nil, fmt.Errorf("evaluate tool call: %w", err)
		}
	}
	p, err := k.prepareToolCall(call, canon, out, uint64(at), st.hash, extra)
	if call.Guard != nil {
		id := ""
		if p != nil {
			id = p.ID()
		}
		call.Guard.Bind(id, err)
	}
	if err != nil {
		return failClosed(err), nil, fmt.Errorf("evaluate tool call: %w", err)
	}
	k.logDecision("tool_call", call.ToolName, out, p.ID())
	return out, p, nil
}

// prepareToolCall builds a decided tool call's receipt. extra is the
// guard's metadata; it cannot replace the kernel's own members.
func (k *Kernel) prepareToolCall(call ToolCall, canon []byte, out Outcome, at uint64, policyHash string, extra map[string]any) (*Prepared, error) {
	meta := map[string]any{"schema": ToolCallMetadataSchema}
	putString(meta, "request_id", call.RequestID)
	putString(meta, "policy_decision", out.PolicyDecision)
	putString(meta, "matched_rule", out.MatchedRule)
	putString(meta, "pattern", out.Pattern)
	for name, v := range extra {
		if _, taken := meta[name]; !taken {
			meta[name] = v
		}
	}
	metaJSON, err := jcs.Marshal(meta)
	if err != nil {
		return nil, err
	}
	return Prepare(Receipt{
		Timestamp:     at,
		CapabilityID:  call.CapabilityID,
		ToolServer:    call.ToolServer,
		ToolName:      call.ToolName,
		Action:        Action{Parameters: canon},
		Decision:      &Decision{Verdict: out.Verdict, Reason: out.Reason, Guard: out.Guard},
		ReceiptKind:   KindMediatedDecision,
		BoundaryClass: BoundaryPrevent,
		TrustLevel:    TrustMediated,
		RedactionMode: "none",
		PolicyHash:    policyHash,
		Evidence:      []Evidence{{GuardName: out.Guard, Verdict: out.Verdict == VerdictAllow, Details: out.details(call.ToolName)}},
		Metadata:      metaJSON,
	}, ed25519.PublicKey(k.key[32:]))
}

// outcomeOf maps a HushSpec result onto an enforced outcome: only allow
// allows. A warn asks for confirmation, and no enforcement point of this
// agent has a channel to obtain it, so it is enforced as deny (HushSpec
// core 6), with the policy's own decision kept in the receipt.
func outcomeOf(res hushspec.Result, guard string) Outcome {
	out := Outcome{
		Verdict:        VerdictDeny,
		PolicyDecision: res.Decision,
		Guard:          guard,
		Reason:         res.Reason,
		MatchedRule:    res.MatchedRule,
		Pattern:        res.Pattern,
	}
	switch res.Decision {
	case hushspec.DecisionAllow:
		out.Verdict = VerdictAllow
	case hushspec.DecisionWarn:
		out.Reason = "confirmation required, and no confirmation channel is configured: " + res.Reason
	}
	return out
}

func failClosed(err error) Outcome {
	return Outcome{Verdict: VerdictDeny, Reason: err.Error()}
}

// DebugEnabled reports whether l would write a debug line: false only when
// it is a logrus Logger or Entry whose level is above debug. Per-decision
// debug lines check it first, to build no fields for nobody.
func DebugEnabled(l logrus.FieldLogger) bool { return LevelEnabled(l, logrus.DebugLevel) }

// LevelEnabled reports whether l would write a line at level: false only
// when it is a logrus Logger or Entry whose level is above it.
func LevelEnabled(l logrus.FieldLogger, level logrus.Level) bool {
	switch l := l.(type) {
	case *logrus.Logger:
		return l.IsLevelEnabled(level)
	case *logrus.Entry:
		return l.Logger.IsLevelEnabled(level)
	}
	return true
}

func (k *Kernel) logDecision(action, target string, out Outcome, id string) {
	if !DebugEnabled(k.log) {
		return // no fields map per decision for a line nobody sees
	}
	k.log.WithFields(logrus.Fields{
		logFieldAction:  action,
		logFieldTarget:  target,
		logFieldVerdict: out.Verdict,
		logFieldRule:    out.MatchedRule,
		logFieldReceipt: id,
	}).Debug("decision")
}
