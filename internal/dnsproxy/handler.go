package dnsproxy

import (
	"context"
	"net/netip"
)

// Query is one DNS message a protected workload sent to port 53.
type Query struct {
	Workload  uint32         // the agent's workload id
	Msg       []byte         // one DNS message (TCP: without the 2-byte length prefix)
	Transport string         // "udp" or "tcp"
	Client    netip.AddrPort // the workload's socket (in its netns)
	Resolver  netip.AddrPort // where it sent it (the original destination)
	PID       uint32         // when known, else 0
	Comm      string         // when known
}

// Handler answers a workload's DNS queries; the agent's DNS listeners call it,
// concurrently.
type Handler interface {
	// Answer returns the message to send back: the upstream's answer for an
	// allowed name, NXDOMAIN/REFUSED for a name the policy refuses, or nil to
	// send nothing (not a DNS query at all: refused and receipted; the UDP
	// sender gets nothing, a TCP connection is closed).
	Answer(ctx context.Context, q Query) []byte
}
