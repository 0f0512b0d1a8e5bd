// Package kernel is Chio's local evaluator: it decides an action (an egress
// connection, a tool call, a file read ...) against a HushSpec policy and
// builds the signed chio.receipt.v1 receipt for the decision.
//
// It is a plain Go library with no I/O of its own beyond loading policy files
// (and the anti-spoofing lookups of the AddressOwner its caller gives it), so
// a trusted agent can link it and call it without any IPC. Every shape
// decides through it: the node agent's proxy and its kernel refusals through
// Snapshot.DecideEgress, its DNS proxy through Snapshot.DecideDNS, the sidecar through PrepareToolCall, in-process
// agents through EvaluateEgress and EvaluateToolCall, which are those calls
// signed at once.
//
// What lives where:
//
//   - kernel.go: Kernel, the facade: New, EvaluateEgress, EvaluateToolCall,
//     PrepareToolCall, SetPolicy (hot reload by atomic swap; each decision
//     sees one policy).
//   - decide.go: the egress decision. DecideEgress is a pure function of
//     what was seen (Seen), the policy and an AddressOwner: the own-listener,
//     protocol, policy, port and anti-spoofing guards, in that order.
//     Snapshot binds a decision and the receipt it prepares to one policy.
//   - dns.go: the DNS decision. DecideDNS is a pure function of a query
//     (Seen with Event.DNS) and the policy: the egress rules on QNAME, then
//     on every name of the answer's chain; receipts name it dns.query.
//   - receipt.go: the chio.receipt.v1 format, Sign, Verify and VerifyJSON.
//   - egress.go: how one network connection becomes a receipt
//     (docs/receipts.md documents the mapping).
//   - capability.go: chio.capability.v1 tokens and trusted issuers.
//   - session_guard.go: CallGuard, the hook PrepareToolCall consults after
//     a decision (kernel/session's journal and limits), and a token's
//     session claim.
//   - keys.go: loading, generating and printing Ed25519 keys.
//   - jcs/: RFC 8785 canonical JSON, the bytes every hash and signature
//     covers.
//
// Every error path fails closed: an evaluation that errs returns a deny
// outcome and no receipt, and the caller must refuse the action.
package kernel
