// Package agent is the node agent: it attaches and pins the eBPF programs,
// keeps the registry of protected workloads, runs the transparent proxy that
// redirected connections reach, and serves the status socket.
//
// One connection's path, by file (docs/datapath.md walks it):
//
//   - agent.go: Start attaches the hooks (bpf/) that redirect a protected
//     workload's connect() to the agent; Protect adds a workload.
//   - registry.go: the protected workloads, by id and by name.
//   - listen.go: the agent's listeners, one pair per network namespace.
//   - accept.go: accept, take the original destination the hook saved,
//     admit against the pending bounds, sniff the first bytes.
//   - internal/sniff: what the first bytes claim (TLS SNI, HTTP Host ...).
//   - decide.go: what the agent saw, for kernel.Snapshot.DecideEgress, which
//     decides (own listener, protocol, policy, ports, anti-spoofing).
//   - record.go: write the receipt, then allow or refuse the connection.
//   - relay.go: dial the original destination from the workload's
//     namespace and copy both ways (splice); httpgate.go for plain HTTP.
//   - idle.go: the reaper of relays that have gone quiet.
//
// Beside it: events.go reads the kernel's refusals from the ring buffer and
// refusals.go and inbound.go turn them into receipts; ports.go, limits.go and
// resolver.go hold the per-workload port allow-list, the bounds and the
// anti-spoofing resolver; reload.go and rules.go follow the policy into the
// datapath; birth.go sets birth roots and exemptions (cgroups below a root
// are refused the network until classified); exec.go, daemon.go and
// status.go are the shapes users run.
package agent
