// Package dnsproxy answers the DNS queries of protected workloads: the
// agent's DNS listeners (agent/dns.go) hand it each message a workload sent
// to port 53, and it decides, forwards, remembers and receipts.
//
// The path of one query, file by file:
//
//   - message.go reads the message: anything that is not a well-formed
//     single-question query is answered with nothing and receipted.
//   - limits.go bounds each workload's queries (a token bucket and distinct
//     names per window); queries past a bound are refused and their
//     receipts aggregated with counts (flood.go).
//   - the decision is kernel.Snapshot.DecideDNS under the workload's own
//     policy: the egress rules on QNAME, normalised as egress hosts are,
//     then on every name of the answer's chain.
//   - upstream.go forwards an allowed query to the configured upstreams
//     (UDP, then TCP when the answer is truncated; TCP queries over TCP) as
//     a fresh message carrying only the question, so nothing else a
//     workload put in its message leaves the node.
//   - told.go remembers, per workload, the addresses each allowed name was
//     answered with and for how long: the anti-spoofing check's truth
//     (Proxy.Told, the agent's resolver).
//
// Every decision has a receipt, written through Options.Record before the
// answer is returned: no receipt, no answer (REFUSED instead). See
// docs/dns.md for the rules and their defaults.
package dnsproxy
