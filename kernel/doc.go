// Package kernel is Chio's local evaluator: it decides an action (an egress
// connection, a tool call, a file read ...) against a HushSpec policy and
// builds the signed chio.receipt.v1 receipt for the decision.
//
// It is a plain Go library with no I/O of its own beyond loading policy files,
// so a trusted agent can link it and call it without any IPC; the node agent
// and the sidecar use it the same way.
package kernel
