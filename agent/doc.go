// Package agent is the node agent: it attaches and pins the eBPF programs,
// keeps the registry of protected workloads, runs the transparent proxy that
// redirected connections reach, and serves the status socket.
package agent
